//! Test scaffolding: throwaway network namespaces (removed on drop), `ip` for inspection, and
//! a UDP echo to prove connectivity without depending on `ping` being installed.
//!
//! Every test plays "host" inside a namespace of its own, so the machine's real network is
//! never touched.
#![allow(dead_code)]
#![allow(unsafe_code)] // syscalls and FFI; each use has its SAFETY note

use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use weft_fastpath::Netns;

/// Fails the test unless running as root. The tests that use it are `#[ignore]`d ("needs
/// root"): they run when asked for (`--include-ignored`, as scripts/test.sh does), and then
/// never pass without having run.
macro_rules! require_root {
    () => {
        if !common::is_root() {
            panic!("this test needs root (network namespaces, links)");
        }
    };
}
pub(crate) use require_root;

pub fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A network namespace made with `ip netns add`, deleted on drop.
pub struct TestNs {
    pub name: String,
}

impl TestNs {
    pub fn new(tag: &str) -> TestNs {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let name = format!(
            "wfp-{}-{}-{:05x}-{tag}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed),
            nanos & 0xfffff
        );
        run("ip", &["netns", "add", &name]);
        // lo up: local traffic in "host" namespaces works like on a real host.
        run("ip", &["-n", &name, "link", "set", "lo", "up"]);
        TestNs { name }
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/var/run/netns/{}", self.name))
    }

    pub fn open(&self) -> Netns {
        Netns::open(self.path()).expect("open test netns")
    }

    /// `ip -n NS ARGS...`, stdout; panics on failure.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// `ip -n NS ARGS...`, not panicking: (success, stdout+stderr).
    pub fn try_ip(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new("ip")
            .arg("-n")
            .arg(&self.name)
            .args(args)
            .output()
            .expect("run ip");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    /// Names of the links in this namespace.
    pub fn link_names(&self) -> Vec<String> {
        self.ip(&["-o", "link", "show"])
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n).to_string())
            .collect()
    }

    /// A sysctl as seen inside this namespace.
    pub fn sysctl(&self, key: &str) -> String {
        let path = format!("/proc/sys/{key}");
        run("ip", &["netns", "exec", &self.name, "cat", &path])
            .trim()
            .to_string()
    }

    pub fn delete(&self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

impl Drop for TestNs {
    fn drop(&mut self) {
        self.delete();
    }
}

/// Run a command, panic with its output if it fails, return stdout.
pub fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

static PORT: AtomicU32 = AtomicU32::new(0);

/// Send one UDP datagram from namespace `from` to `ip` (an address inside namespace `server`)
/// and wait for the echo: proves L3 connectivity (with ARP) both ways. Each call uses a port
/// of its own: a just-closed socket can linger in a child that another test thread forked
/// (until it execs), so reusing a port right away can hit EADDRINUSE.
pub fn udp_echo(from: &TestNs, server: &TestNs, ip: &str) -> Result<(), String> {
    let port = 20000 + PORT.fetch_add(1, Ordering::Relaxed);
    let to: SocketAddr = format!("{ip}:{port}").parse().unwrap();
    let srv = server
        .open()
        .run_blocking(move || UdpSocket::bind(to))
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("bind {to}: {e}"))?;
    srv.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let echo = std::thread::spawn(move || -> Result<(), String> {
        let mut buf = [0u8; 64];
        let (n, peer) = srv
            .recv_from(&mut buf)
            .map_err(|e| format!("server recv: {e}"))?;
        srv.send_to(&buf[..n], peer)
            .map_err(|e| format!("server send: {e}"))?;
        Ok(())
    });
    let cli = from
        .open()
        .run_blocking(|| UdpSocket::bind("0.0.0.0:0"))
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("client bind: {e}"))?;
    cli.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    cli.send_to(b"weft-echo", to)
        .map_err(|e| format!("client send: {e}"))?;
    let mut buf = [0u8; 64];
    let got = cli
        .recv_from(&mut buf)
        .map_err(|e| format!("client recv from {to}: {e}"));
    echo.join().unwrap()?;
    let (n, _) = got?;
    if &buf[..n] != b"weft-echo" {
        return Err("echo mismatch".into());
    }
    Ok(())
}

/// `ping -c1 -W1` from namespace `from`, if `ping` is installed (`None` otherwise).
pub fn ping(from: &TestNs, to: &str) -> Option<bool> {
    let out = Command::new("ip")
        .args(["netns", "exec", &from.name, "ping", "-c1", "-W1", to])
        .output()
        .ok()?;
    if !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("No such file") {
        return None;
    }
    Some(out.status.success())
}

/// Parse "aa:bb:cc:dd:ee:ff".
pub fn parse_mac(s: &str) -> [u8; 6] {
    s.parse::<weft_types::Mac>().unwrap().octets()
}

/// The `link/ether` address of `ifname` in `ns`.
pub fn mac_of(ns: &TestNs, ifname: &str) -> [u8; 6] {
    let out = ns.ip(&["-o", "link", "show", ifname]);
    let mac = out
        .split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .unwrap();
    parse_mac(mac)
}
