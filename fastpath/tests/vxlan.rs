//! The VXLAN device and pod traffic over it, with the real kernel. Needs root; every node is a
//! namespace of its own.

#![allow(unsafe_code)] // syscalls and FFI; each use has its SAFETY note

mod common;
mod twonode;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{require_root, TestNs};
use twonode::{two_nodes, Mac};
use weft_fastpath::tap::TAP_CREATE_FLAGS;
use weft_fastpath::{setup_node, setup_vxlan, Error, NodeConfig, VxlanConfig};

fn node_cfg() -> NodeConfig {
    NodeConfig {
        bridge: "weft".into(),
        tap: "weft-tap".into(),
        mtu: 1400,
        bridge_mac: None,
    }
}

#[tokio::test]
#[ignore = "needs root (network namespaces): run as root with --include-ignored, as scripts/test.sh does"]
async fn vxlan_device_is_created_adopted_replaced_and_refuses_other_kinds() {
    require_root!();
    let host = TestNs::new("host");
    // No bridge yet: a clear error.
    let err = host
        .open()
        .run(|_| async { setup_vxlan(&VxlanConfig::default()).await })
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::LinkNotFound { ref name, .. } if name == "weft"),
        "{err}"
    );

    let vx = VxlanConfig {
        mtu: 1400,
        local: Some("198.18.0.1".parse().unwrap()),
        ..VxlanConfig::default()
    };
    let v = vx.clone();
    let first = host
        .open()
        .run(move |_| async move {
            setup_node(&node_cfg()).await?;
            setup_vxlan(&v).await
        })
        .await
        .unwrap();
    assert!(first.created && first.replaced.is_none());
    assert!(first.df, "this kernel supports IFLA_VXLAN_DF");
    let v = vx.clone();
    let second = host
        .open()
        .run(move |_| async move { setup_vxlan(&v).await })
        .await
        .unwrap();
    assert!(!second.created && second.replaced.is_none());
    assert_eq!(first.index, second.index, "adopted, not recreated");

    let d = host.ip(&["-d", "link", "show", "weft-vxlan"]);
    for want in [
        "vxlan id 6785",
        "local 198.18.0.1",
        "dstport 6785",
        "nolearning",
        "df set",
        "master weft",
        "mtu 1400",
        "learning off",
        "flood off",
        "mcast_flood off",
        "bcast_flood off",
        "UP",
    ] {
        assert!(d.contains(want), "missing {want:?} in {d}");
    }
    // No default destination: nothing is sprayed to all nodes.
    let fdb = common::run(
        "bridge",
        &["-n", &host.name, "fdb", "show", "dev", "weft-vxlan"],
    );
    assert!(!fdb.contains("00:00:00:00:00:00"), "{fdb}");

    // Someone turned learning on and flooding back on: re-applied.
    host.ip(&[
        "link",
        "set",
        "weft-vxlan",
        "type",
        "bridge_slave",
        "learning",
        "on",
        "flood",
        "on",
    ]);
    let v = vx.clone();
    host.open()
        .run(move |_| async move { setup_vxlan(&v).await })
        .await
        .unwrap();
    let d = host.ip(&["-d", "link", "show", "weft-vxlan"]);
    assert!(
        d.contains("learning off") && d.contains(" flood off"),
        "{d}"
    );

    // Another VNI: replaced, with the reason.
    host.ip(&["link", "del", "weft-vxlan"]);
    host.ip(&[
        "link",
        "add",
        "weft-vxlan",
        "type",
        "vxlan",
        "id",
        "42",
        "dstport",
        "6785",
    ]);
    let v = vx.clone();
    let third = host
        .open()
        .run(move |_| async move { setup_vxlan(&v).await })
        .await
        .unwrap();
    let why = third.replaced.expect("replaced");
    assert!(
        why.contains("VNI Some(42)") && why.contains("learning on"),
        "{why}"
    );
    assert!(host
        .ip(&["-d", "link", "show", "weft-vxlan"])
        .contains("vxlan id 6785"));

    // A link of another kind with our name: refused, named, untouched.
    host.ip(&["link", "del", "weft-vxlan"]);
    host.ip(&[
        "link",
        "add",
        "weft-vxlan",
        "type",
        "veth",
        "peer",
        "name",
        "wx1",
    ]);
    let v = vx.clone();
    let err = host
        .open()
        .run(move |_| async move { setup_vxlan(&v).await })
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::WrongLinkType { ref found, expected: "vxlan", .. } if found == "veth"),
        "{err}"
    );
    assert!(host.link_names().contains(&"weft-vxlan".to_string()));

    // Removal leaves foreign links alone.
    let removed = host
        .open()
        .run(|_| async { weft_fastpath::remove_vxlan("weft-vxlan").await })
        .await
        .unwrap();
    assert!(!removed);
}

/// Counts unicast frames read from an attached TAP queue whose source or destination is one of
/// `macs` (broadcast and multicast belong on the sleeve: they are flooded to it by design).
struct TapWatch {
    seen: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TapWatch {
    fn attach(ns: &TestNs, tap: &str, macs: Vec<Mac>) -> TapWatch {
        let name = tap.to_string();
        let fd = ns
            .open()
            .run_blocking(move || -> std::io::Result<OwnedFd> {
                // SAFETY: constant path; checked.
                let raw = unsafe {
                    libc::open(
                        c"/dev/net/tun".as_ptr(),
                        libc::O_RDWR | libc::O_CLOEXEC | libc::O_NONBLOCK,
                    )
                };
                if raw < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // SAFETY: fresh descriptor.
                let fd = unsafe { OwnedFd::from_raw_fd(raw) };
                // SAFETY: ifreq is POD.
                let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
                for (d, s) in req.ifr_name.iter_mut().zip(name.bytes()) {
                    *d = s as libc::c_char;
                }
                req.ifr_ifru.ifru_flags = TAP_CREATE_FLAGS as libc::c_short;
                // SAFETY: TUNSETIFF with an ifreq.
                if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut req) } < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(fd)
            })
            .unwrap()
            .unwrap();
        let seen = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (s2, st2) = (seen.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 65536];
            while !st2.load(Ordering::Relaxed) {
                // SAFETY: buf valid for its length.
                let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
                if n < 12 {
                    std::thread::sleep(Duration::from_millis(2));
                    continue;
                }
                let f = &buf[..n as usize];
                let unicast = f[0] & 1 == 0;
                if unicast && macs.iter().any(|m| f[0..6] == *m || f[6..12] == *m) {
                    s2.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        TapWatch {
            seen,
            stop,
            thread: Some(thread),
        }
    }

    fn seen(&self) -> u64 {
        self.seen.load(Ordering::Relaxed)
    }
}

impl Drop for TapWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn ping(from: &TestNs, args: &[&str]) -> bool {
    let mut all = vec!["netns", "exec", from.name.as_str(), "ping"];
    all.extend_from_slice(args);
    std::process::Command::new("ip")
        .args(&all)
        .output()
        .expect("ping")
        .status
        .success()
}

/// TCP from `from` to `to_ip:port` in `server`: send `len` bytes, get them echoed back.
fn tcp_echo(from: &TestNs, server: &TestNs, addr: SocketAddr, len: usize) -> Result<(), String> {
    let listener = server
        .open()
        .run_blocking(move || TcpListener::bind(addr))
        .unwrap()
        .map_err(|e| format!("bind: {e}"))?;
    let srv = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut s, _) = listener.accept()?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut buf = vec![0u8; 65536];
        let mut left = len;
        while left > 0 {
            let n = s.read(&mut buf)?;
            if n == 0 {
                break;
            }
            s.write_all(&buf[..n])?;
            left -= n;
        }
        Ok(())
    });
    let mut c = from
        .open()
        .run_blocking(move || TcpStream::connect_timeout(&addr, Duration::from_secs(3)))
        .unwrap()
        .map_err(|e| format!("connect {addr}: {e}"))?;
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
    let mut c2 = c.try_clone().unwrap();
    let sender = std::thread::spawn(move || c2.write_all(&data).map(|_| data));
    let mut back = vec![0u8; len];
    c.read_exact(&mut back).map_err(|e| format!("read: {e}"))?;
    let data = sender.join().unwrap().map_err(|e| format!("write: {e}"))?;
    srv.join().unwrap().map_err(|e| format!("server: {e}"))?;
    if back != data {
        return Err("echo differs".into());
    }
    Ok(())
}

#[tokio::test]
#[ignore = "needs root (network namespaces): run as root with --include-ignored, as scripts/test.sh does"]
async fn pods_talk_over_vxlan_and_nothing_crosses_the_tap() {
    require_root!();
    let mtu = 1376;
    let (a, b) = two_nodes(mtu, false).await;
    let ra = a.program(&b, true, "weft-tap").await;
    let rb = b.program(&a, true, "weft-tap").await;
    for r in [&ra, &rb] {
        assert!(r.failed.is_empty(), "{:?}", r.failed);
        // The peer's pod MAC and bridge MAC, both on the fastpath.
        assert_eq!((r.bridge.added, r.vxlan.added), (2, 2), "{r:?}");
    }
    let vx = common::run(
        "bridge",
        &["-n", &a.ns.name, "fdb", "show", "dev", "weft-vxlan"],
    );
    let pod_b = twonode::fmt_mac(&b.pod_mac);
    assert!(
        vx.contains(&format!("{pod_b} dst 198.18.0.2 self permanent")),
        "{vx}"
    );
    assert!(
        vx.contains(&format!("{pod_b} sticky master weft static")),
        "{vx}"
    );

    let watch = TapWatch::attach(&a.ns, "weft-tap", vec![a.pod_mac, b.pod_mac]);
    let before = a.tx_bytes("weft-vxlan");
    let to = b.pod_ip.to_string();
    assert!(
        ping(&a.pod, &["-c3", "-i0.2", "-W2", &to]),
        "ping over VXLAN"
    );
    // A full-MTU packet with DF: the MTU holds end to end.
    let size = (mtu - 28).to_string();
    assert!(
        ping(
            &a.pod,
            &["-c2", "-i0.2", "-W2", "-M", "do", "-s", &size, &to]
        ),
        "full-size ping"
    );
    tcp_echo(
        &a.pod,
        &b.pod,
        SocketAddr::new(b.pod_ip.into(), 7001),
        4 << 20,
    )
    .unwrap();
    let sent = a.tx_bytes("weft-vxlan") - before;
    assert!(
        sent > 4 << 20,
        "only {sent} bytes went through the VXLAN device"
    );
    assert_eq!(watch.seen(), 0, "pod traffic went through the TAP");

    // Move B's MACs to the sleeve: frames now go to the TAP (no sleeve here, so they stop
    // there), none to VXLAN.
    let r = a.program(&b, false, "weft-tap").await;
    assert_eq!((r.bridge.changed, r.vxlan.removed), (2, 1), "{r:?}");
    let before = a.tx_bytes("weft-vxlan");
    assert!(!ping(&a.pod, &["-c2", "-i0.2", "-W1", &to]));
    assert!(watch.seen() >= 2, "frames for B should reach the TAP");
    // Only the probe entry (B's bridge MAC) is left on VXLAN; pod frames did not use it.
    assert_eq!(a.tx_bytes("weft-vxlan"), before);
}
