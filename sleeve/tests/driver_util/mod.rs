//! Scaffolding for the driver tests: throwaway network namespaces (deleted on drop, also when
//! a test panics), running code on a thread inside one, and a byte pattern for transfers.
//!
//! Every test builds its own topology from namespaces named `wsd-<pid>-<n>-<tag>`; nothing is
//! created in the machine's own namespace and traffic stays inside the test's namespaces.
#![allow(dead_code)]
#![allow(unsafe_code)] // syscalls and FFI; each use has its SAFETY note

use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// Fails the test unless running as root. The tests that use it are `#[ignore]`d ("needs
/// root"): they run when asked for (`--include-ignored`, as scripts/test.sh does), and then
/// never pass without having run.
macro_rules! require_root {
    () => {
        if !driver_util::is_root() {
            panic!("this test needs root (network namespaces, TAP devices)");
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
pub struct Ns {
    pub name: String,
}

impl Ns {
    pub fn new(tag: &str) -> Ns {
        let name = format!(
            "wsd-{}-{}-{tag}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        run("ip", &["netns", "add", &name]);
        let ns = Ns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// `ip -n NS ARGS...`; panics on failure.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// Run a command inside the namespace; `Err(output)` on failure.
    pub fn exec(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .output()
            .map_err(|e| e.to_string())?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if out.status.success() {
            Ok(text)
        } else {
            Err(text)
        }
    }

    /// Write a sysctl inside the namespace (e.g. `net/ipv4/ip_forward`).
    pub fn sysctl(&self, key: &str, value: &str) {
        let name = key.to_string();
        let value = value.to_string();
        self.run(move || std::fs::write(format!("/proc/sys/{name}"), value).expect("write sysctl"));
    }

    /// Run `f` on a new thread that has entered this namespace; wait for its result.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        self.spawn(f).join().expect("namespace thread panicked")
    }

    /// Start `f` on a new thread inside this namespace.
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let path = format!("/var/run/netns/{}", self.name);
        let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
        std::thread::spawn(move || {
            // SAFETY: setns on a valid namespace descriptor; it moves only this new thread.
            let r = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(r, 0, "setns: {}", std::io::Error::last_os_error());
            drop(file);
            f()
        })
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// A veth pair `a` (in `na`) — `b` (in `nb`), both up, with addresses (CIDR) and MTU.
pub fn veth(na: &Ns, a: &str, addr_a: &str, nb: &Ns, b: &str, addr_b: &str, mtu: u32) {
    let mtu = mtu.to_string();
    na.ip(&[
        "link", "add", a, "mtu", &mtu, "type", "veth", "peer", "name", b, "mtu", &mtu, "netns",
        &nb.name,
    ]);
    na.ip(&["addr", "add", addr_a, "dev", a]);
    nb.ip(&["addr", "add", addr_b, "dev", b]);
    na.ip(&["link", "set", a, "up"]);
    nb.ip(&["link", "set", b, "up"]);
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

/// Deterministic pseudo-random bytes (xorshift64*), for payloads that expose misplaced data.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}
