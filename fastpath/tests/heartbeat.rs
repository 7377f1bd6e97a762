//! Heartbeats through the real kernel VXLAN path between two node namespaces, and fastpath
//! health driven by them with the real clock: UDP 6785 blocked with nftables in the underlay
//! moves traffic to the sleeve within 2 s, unblocking brings it back within 10 s. Needs root.

#![allow(unsafe_code)] // syscalls and FFI; each use has its SAFETY note

mod common;
mod twonode;

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{require_root, run, TestNs};
use twonode::{two_nodes, Node};
use weft_fastpath::health::{Event, Path};
use weft_fastpath::heartbeat::{HeartbeatSocket, Received};
use weft_fastpath::{Health, HealthConfig};

fn open(n: &Node) -> HeartbeatSocket {
    let (me, mac, mtu) = (n.name, n.bridge_mac, n.mtu);
    n.ns.open()
        .run_blocking(move || HeartbeatSocket::open("weft-vxlan", me, mac, mtu))
        .unwrap()
        .expect("heartbeat socket")
}

fn recv_within(s: &HeartbeatSocket, d: Duration) -> Option<Received> {
    let end = Instant::now() + d;
    while Instant::now() < end {
        if let Some(r) = s.try_recv().unwrap() {
            return Some(r);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    None
}

/// A packet socket on the pod's eth0 counting heartbeat frames (EtherType 0x88B5).
fn pod_sniffer(pod: &TestNs) -> OwnedFd {
    pod.open()
        .run_blocking(|| {
            // SAFETY: plain socket(2); checked below.
            let raw = unsafe {
                libc::socket(
                    libc::AF_PACKET,
                    libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                    (0x88B5u16).to_be() as i32,
                )
            };
            assert!(raw >= 0, "{}", std::io::Error::last_os_error());
            // SAFETY: new descriptor.
            unsafe { OwnedFd::from_raw_fd(raw) }
        })
        .unwrap()
}

fn count_frames(fd: &OwnedFd) -> usize {
    let mut n = 0;
    let mut buf = [0u8; 2048];
    // SAFETY: buf valid for its length.
    while unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) } > 0 {
        n += 1;
    }
    n
}

#[tokio::test]
#[ignore = "needs root (network namespaces): run as root with --include-ignored, as scripts/test.sh does"]
async fn heartbeats_cross_the_kernel_path_at_full_mtu_and_never_reach_pods() {
    require_root!();
    let mtu = 1376;
    let (a, b) = two_nodes(mtu, false).await;
    // Peers are candidates but not healthy: MACs on the sleeve, probe entries only.
    a.program(&b, false, "weft-tap").await;
    b.program(&a, false, "weft-tap").await;
    let (sa, sb) = (open(&a), open(&b));
    let sniff = pod_sniffer(&b.pod);

    sa.send(b.name, b.bridge_mac, 1, 0xfeed).unwrap();
    let r = recv_within(&sb, Duration::from_secs(2)).expect("heartbeat arrived");
    assert_eq!(
        r,
        Received {
            from: a.name,
            seq: 1,
            token: 0xfeed,
            frame_len: 14 + mtu as usize,
            payload_len: mtu as u16,
        }
    );
    // The other way too; and the sender's socket does not see its own frame.
    sb.send(a.name, a.bridge_mac, 9, 7).unwrap();
    let r = recv_within(&sa, Duration::from_secs(2)).expect("heartbeat arrived at A");
    assert_eq!((r.from, r.seq, r.token), (b.name, 9, 7));
    assert!(sb.try_recv().unwrap().is_none());

    // Addressed to another peer name (right MAC): dropped by the receiver.
    sa.send(b.name + 1, b.bridge_mac, 2, 0).unwrap();
    assert!(recv_within(&sb, Duration::from_millis(300)).is_none());
    assert_eq!(sb.drops().not_ours.load(Ordering::Relaxed), 1);
    // Nothing reached the pod behind B's bridge.
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        count_frames(&sniff),
        0,
        "a heartbeat was forwarded to a pod"
    );

    // MTU: an underlay too small for MTU + 50 drops the full-size heartbeat (DF on the outer
    // header), so a path that cannot carry full-size pod packets does not look healthy.
    a.ns.ip(&["link", "set", "ul0", "mtu", &(mtu + 49).to_string()]);
    sa.send(b.name, b.bridge_mac, 3, 0).unwrap();
    assert!(
        recv_within(&sb, Duration::from_millis(500)).is_none(),
        "an oversized heartbeat got through: DF not set?"
    );
    a.ns.ip(&["link", "set", "ul0", "mtu", &(mtu + 50).to_string()]);
    a.ns.ip(&["route", "flush", "cache"]);
    sa.send(b.name, b.bridge_mac, 4, 0).unwrap();
    let r = recv_within(&sb, Duration::from_secs(2)).expect("exactly MTU + 50 fits");
    assert_eq!(r.seq, 4);
    // A heartbeat bigger than the device MTU cannot even be sent.
    let big =
        a.ns.open()
            .run_blocking(move || HeartbeatSocket::open("weft-vxlan", 1, [2, 0, 0, 0, 0, 1], 1500))
            .unwrap()
            .unwrap();
    let e = big.send(b.name, b.bridge_mac, 1, 1).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EMSGSIZE), "{e}");
}

/// UDP echo traffic from pod A to pod B every 20 ms; records when each echo came back.
struct Traffic {
    stop: Arc<AtomicBool>,
    ok: Arc<Mutex<Vec<Instant>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Traffic {
    fn start(a: &Node, b: &Node) -> Traffic {
        let to = SocketAddr::new(b.pod_ip.into(), 7100);
        let srv = b
            .pod
            .open()
            .run_blocking(move || UdpSocket::bind(to))
            .unwrap()
            .unwrap();
        let cli = a
            .pod
            .open()
            .run_blocking(|| UdpSocket::bind("0.0.0.0:0"))
            .unwrap()
            .unwrap();
        srv.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        cli.set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(Mutex::new(Vec::new()));
        let s1 = stop.clone();
        let echo = std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            while !s1.load(Ordering::Relaxed) {
                if let Ok((n, p)) = srv.recv_from(&mut buf) {
                    let _ = srv.send_to(&buf[..n], p);
                }
            }
        });
        let (s2, ok2) = (stop.clone(), ok.clone());
        let client = std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            while !s2.load(Ordering::Relaxed) {
                let _ = cli.send_to(b"weft", to);
                let t = Instant::now();
                while t.elapsed() < Duration::from_millis(20) {
                    if cli.recv_from(&mut buf).is_ok() {
                        ok2.lock().unwrap().push(Instant::now());
                    }
                }
            }
        });
        Traffic {
            stop,
            ok,
            threads: vec![echo, client],
        }
    }

    /// Longest time without a successful echo within [from, to].
    fn max_gap(&self, from: Instant, to: Instant) -> Duration {
        let ok = self.ok.lock().unwrap();
        let mut last = from;
        let mut gap = Duration::ZERO;
        for &t in ok.iter().filter(|&&t| t >= from && t <= to) {
            gap = gap.max(t - last);
            last = t;
        }
        gap.max(to.saturating_duration_since(last))
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Both nodes run heartbeats + health for each other; acks are handed over directly (the
/// router sends them over the control connection); every switch is carried out with
/// `reconcile`. The "sleeve" is a veth joining the two bridges (a stand-in for the TAP +
/// userspace sleeve, which this crate treats as an opaque bridge port), so traffic has
/// somewhere to go when the fastpath fails and the gap can be measured.
struct Mesh<'a> {
    a: &'a Node,
    b: &'a Node,
    sa: HeartbeatSocket,
    sb: HeartbeatSocket,
    ha: Health,
    hb: Health,
    /// (when, which node, to)
    switches: Vec<(Instant, char, Path)>,
}

impl Mesh<'_> {
    async fn step(&mut self) {
        let now = Instant::now();
        for d in self.ha.poll(now) {
            self.sa
                .send(d.peer, self.b.bridge_mac, d.seq, d.token)
                .unwrap();
        }
        for d in self.hb.poll(now) {
            self.sb
                .send(d.peer, self.a.bridge_mac, d.seq, d.token)
                .unwrap();
        }
        // B received A's heartbeat: B acks to A over "control", A's health takes it.
        while let Some(r) = self.sb.try_recv().unwrap() {
            self.ha.on_ack(self.b.name, r.seq, r.token, Instant::now());
        }
        while let Some(r) = self.sa.try_recv().unwrap() {
            self.hb.on_ack(self.a.name, r.seq, r.token, Instant::now());
        }
        for (h, me, peer, tag) in [
            (&mut self.ha, self.a, self.b, 'a'),
            (&mut self.hb, self.b, self.a, 'b'),
        ] {
            for e in h.drain_events() {
                let Event::Switched { to, .. } = e;
                let r = me.program(peer, to == Path::Fastpath, "wsl0").await;
                assert!(r.failed.is_empty(), "{:?}", r.failed);
                self.switches.push((Instant::now(), tag, to));
            }
        }
    }

    async fn run_until(&mut self, limit: Duration, done: impl Fn(&Self) -> bool) -> bool {
        let end = Instant::now() + limit;
        while Instant::now() < end {
            self.step().await;
            if done(self) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }

    fn both(&self, p: Path) -> bool {
        self.ha.use_fastpath(self.b.name) == (p == Path::Fastpath)
            && self.hb.use_fastpath(self.a.name) == (p == Path::Fastpath)
    }
}

const BLOCK: &str = "add table inet wfptest; \
    add chain inet wfptest input { type filter hook input priority 0; policy accept; }; \
    add rule inet wfptest input udp dport 6785 drop";

#[tokio::test]
#[ignore = "needs root (network namespaces): run as root with --include-ignored, as scripts/test.sh does"]
async fn blocked_udp_moves_traffic_to_the_sleeve_within_2s_and_back_within_10s() {
    require_root!();
    if std::process::Command::new("nft")
        .arg("--version")
        .output()
        .is_err()
    {
        panic!("nft is required for this test (apt-get install nftables)");
    }
    let (a, b) = two_nodes(1376, true).await;
    a.program(&b, false, "wsl0").await;
    b.program(&a, false, "wsl0").await;
    let mut m = Mesh {
        sa: open(&a),
        sb: open(&b),
        ha: Health::new(HealthConfig::default(), 1),
        hb: Health::new(HealthConfig::default(), 2),
        a: &a,
        b: &b,
        switches: Vec::new(),
    };
    let t0 = Instant::now();
    m.ha.add_peer(b.name, t0);
    m.hb.add_peer(a.name, t0);
    let traffic = Traffic::start(&a, &b);

    assert!(
        m.run_until(Duration::from_secs(5), |m| m.both(Path::Fastpath))
            .await
    );
    let up = t0.elapsed();
    // Traffic really is on VXLAN now.
    let before = a.tx_bytes("weft-vxlan");
    m.run_until(Duration::from_millis(500), |_| false).await;
    assert!(
        a.tx_bytes("weft-vxlan") - before > 20 * 32,
        "pod traffic not on VXLAN"
    );

    // Block UDP 6785 in the underlay (both nodes' input).
    for n in [&a, &b] {
        run("ip", &["netns", "exec", &n.ns.name, "nft", BLOCK]);
    }
    let blocked = Instant::now();
    assert!(
        m.run_until(Duration::from_secs(5), |m| m.both(Path::Sleeve))
            .await,
        "did not fail over"
    );
    let failover = m
        .switches
        .iter()
        .filter(|s| s.0 > blocked && s.2 == Path::Sleeve)
        .map(|s| s.0 - blocked)
        .max()
        .unwrap();
    m.run_until(Duration::from_millis(1500), |_| false).await;
    let gap_fail = traffic.max_gap(blocked, Instant::now());
    let st = m.ha.status(b.name, Instant::now()).unwrap();
    assert!(
        st.reason.starts_with("no heartbeat ack for"),
        "{}",
        st.reason
    );

    // Unblock: back on the fastpath within 10 s.
    for n in [&a, &b] {
        run(
            "ip",
            &[
                "netns",
                "exec",
                &n.ns.name,
                "nft",
                "delete table inet wfptest",
            ],
        );
    }
    let unblocked = Instant::now();
    assert!(
        m.run_until(Duration::from_secs(12), |m| m.both(Path::Fastpath))
            .await,
        "did not come back"
    );
    let failback = Instant::now() - unblocked;
    m.run_until(Duration::from_millis(500), |_| false).await;
    let gap_back = traffic.max_gap(unblocked, Instant::now());
    let sw = m.ha.status(b.name, Instant::now()).unwrap().switches;
    drop(traffic);
    eprintln!(
        "fastpath up after {up:?}; blocked: switched to sleeve after {failover:?}, longest traffic gap {gap_fail:?}; \
         unblocked: back on fastpath after {failback:?}, longest traffic gap {gap_back:?}; switches A->B: {sw}"
    );
    assert!(
        failover <= Duration::from_secs(2),
        "failover took {failover:?}"
    );
    assert!(
        gap_fail <= Duration::from_secs(2),
        "traffic gap {gap_fail:?}"
    );
    assert!(
        failback <= Duration::from_secs(10),
        "failback took {failback:?}"
    );
    assert!(
        gap_back <= Duration::from_millis(500),
        "traffic gap on failback {gap_back:?}"
    );
    assert_eq!(sw, 3);
}
