//! ESP (IPsec transport mode) for the fastpath: the capability probe, checked against an
//! independent oracle (iproute2 installing the same SA), and, where the kernel has ESP, the
//! encrypted fastpath end to end. This machine's kernel lacks ESP, so the end-to-end test
//! skips here (saying so) and runs in the VM with Debian's stock kernel:
//!
//! ```sh
//! cargo test -p weft-fastpath --test esp --no-run   # note the binary path
//! ../shared/vm/run-in-vm.sh -- target/debug/deps/esp-XXXX --nocapture --test-threads 1
//! ```
//! (`scripts/test.sh` does this on every run, with the release build.) Needs root.

#![allow(unsafe_code)] // syscalls and FFI; each use has its SAFETY note

mod common;
mod twonode;

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use common::{require_root, TestNs};
use twonode::{two_nodes, Node};
use weft_fastpath::heartbeat::HeartbeatSocket;
use weft_fastpath::xfrm::{self, EspPeer, KEY_LEN};
use weft_fastpath::{detect_capabilities, Probe};

fn ip_xfrm_can_install_esp() -> (bool, String) {
    let ns = TestNs::new("esporacle");
    let key = format!("0x{}", "42".repeat(KEY_LEN));
    ns.try_ip(&[
        "xfrm",
        "state",
        "add",
        "src",
        "192.0.2.1",
        "dst",
        "192.0.2.2",
        "proto",
        "esp",
        "spi",
        "0x100",
        "reqid",
        "1",
        "mode",
        "transport",
        "flag",
        "esn",
        "replay-window",
        "1024",
        "aead",
        xfrm::AEAD_ALG,
        &key,
        "128",
    ])
}

#[test]
#[ignore = "needs root (network namespaces): run as root with --include-ignored, as scripts/test.sh does"]
fn esp_capability_matches_what_iproute2_can_install() {
    require_root!();
    let caps = detect_capabilities();
    let (ok, out) = ip_xfrm_can_install_esp();
    eprintln!("esp capability: {:?}; ip xfrm: {ok} {out}", caps.esp);
    match &caps.esp {
        Probe::Available => assert!(ok, "probe says available, ip xfrm failed: {out}"),
        Probe::Missing(why) => {
            assert!(
                !ok,
                "probe says missing ({why}) but ip xfrm installed the SA"
            );
            assert!(why.starts_with("kernel lacks ESP: "), "{why}");
        }
        Probe::Unknown(why) => panic!("as root the ESP probe must decide: {why}"),
    }
}

fn keys(tag: u8) -> [u8; KEY_LEN] {
    let mut k = [0u8; KEY_LEN];
    for (i, b) in k.iter_mut().enumerate() {
        *b = tag ^ (i as u8).wrapping_mul(31);
    }
    k
}

/// A's view and B's view of the same pair of SAs (mirrored).
fn esp_pair(a: &Node, b: &Node) -> (EspPeer, EspPeer) {
    let ab = EspPeer {
        local: a.underlay,
        remote: b.underlay,
        port: twonode::PORT,
        reqid: 7,
        spi_out: 0x1000_0001,
        key_out: keys(1),
        spi_in: 0x1000_0002,
        key_in: keys(2),
    };
    let ba = EspPeer {
        local: b.underlay,
        remote: a.underlay,
        spi_out: ab.spi_in,
        key_out: ab.key_in,
        spi_in: ab.spi_out,
        key_in: ab.key_out,
        ..ab.clone()
    };
    (ab, ba)
}

async fn install(n: &Node, p: &EspPeer) {
    let p = p.clone();
    n.ns.open()
        .run(move |_| async move { xfrm::install(&p).await })
        .await
        .expect("install ESP");
}

/// Counts IPv4 packets arriving on `dev` in `ns` (a protocol-specific packet socket does not
/// see outgoing ones): (ESP, plaintext UDP to the VXLAN port).
struct Sniffer(OwnedFd);

impl Sniffer {
    fn new(ns: &TestNs, dev: &str) -> Sniffer {
        let dev = std::ffi::CString::new(dev).unwrap();
        Sniffer(
            ns.open()
                .run_blocking(move || {
                    // SAFETY: plain socket(2); checked.
                    let raw = unsafe {
                        libc::socket(
                            libc::AF_PACKET,
                            libc::SOCK_DGRAM | libc::SOCK_NONBLOCK,
                            (libc::ETH_P_IP as u16).to_be() as i32,
                        )
                    };
                    assert!(raw >= 0);
                    // SAFETY: new descriptor.
                    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
                    // SAFETY: sockaddr_ll is POD; valid C string.
                    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
                    sll.sll_family = libc::AF_PACKET as u16;
                    sll.sll_protocol = (libc::ETH_P_IP as u16).to_be();
                    sll.sll_ifindex = unsafe { libc::if_nametoindex(dev.as_ptr()) } as i32;
                    // SAFETY: sll valid for its size.
                    let rc = unsafe {
                        libc::bind(
                            fd.as_raw_fd(),
                            (&sll as *const libc::sockaddr_ll).cast(),
                            std::mem::size_of::<libc::sockaddr_ll>() as u32,
                        )
                    };
                    assert_eq!(rc, 0);
                    fd
                })
                .unwrap(),
        )
    }

    /// Every IPv4 packet that arrived.
    fn ip_packets(&self) -> usize {
        let mut n = 0;
        let mut buf = [0u8; 65536];
        // SAFETY: buf valid for its length.
        while unsafe { libc::recv(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) } > 0 {
            n += 1;
        }
        n
    }

    fn counts(&self) -> (usize, usize) {
        let (mut esp, mut plain) = (0, 0);
        let mut buf = [0u8; 65536];
        loop {
            // SAFETY: buf valid for its length.
            let n =
                unsafe { libc::recv(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 28 {
                return (esp, plain);
            }
            let ihl = usize::from(buf[0] & 0xf) * 4;
            match buf[9] {
                50 => esp += 1,
                17 if u16::from_be_bytes([buf[ihl + 2], buf[ihl + 3]]) == twonode::PORT => {
                    plain += 1
                }
                _ => {}
            }
        }
    }
}

fn ping(from: &TestNs, to: Ipv4Addr, count: &str) -> bool {
    std::process::Command::new("ip")
        .args([
            "netns", "exec", &from.name, "ping", "-c", count, "-i0.2", "-W2",
        ])
        .arg(to.to_string())
        .output()
        .expect("ping")
        .status
        .success()
}

#[tokio::test]
#[ignore = "needs root (network namespaces): run as root with --include-ignored, as scripts/test.sh does"]
async fn encrypted_fastpath_carries_pod_traffic_and_heartbeats_as_esp() {
    require_root!();
    let caps = detect_capabilities();
    if !caps.esp.is_available() {
        eprintln!(
            "skipped: {:?} (this test runs where the kernel has ESP, e.g. ../shared/vm/run-in-vm.sh)",
            caps.esp
        );
        return;
    }
    let (a, b) = two_nodes(1376, false).await;
    a.program(&b, true, "weft-tap").await;
    b.program(&a, true, "weft-tap").await;
    let (ab, ba) = esp_pair(&a, &b);
    install(&a, &ab).await;
    install(&b, &ba).await;
    // Installing again (same keys) is a no-op update, not an error.
    install(&a, &ab).await;

    let sniff = Sniffer::new(&b.ns, "ul0");
    assert!(ping(&a.pod, b.pod_ip, "3"), "pod ping over encrypted VXLAN");
    // Heartbeats take the same path, so they prove the encrypted path (and its MTU).
    let (me, mac) = (a.name, a.bridge_mac);
    let sa =
        a.ns.open()
            .run_blocking(move || HeartbeatSocket::open("weft-vxlan", me, mac, 1376))
            .unwrap()
            .unwrap();
    let (me, mac) = (b.name, b.bridge_mac);
    let sb =
        b.ns.open()
            .run_blocking(move || HeartbeatSocket::open("weft-vxlan", me, mac, 1376))
            .unwrap()
            .unwrap();
    sa.send(b.name, b.bridge_mac, 1, 1).unwrap();
    let end = Instant::now() + Duration::from_secs(3);
    let mut got = None;
    while got.is_none() && Instant::now() < end {
        got = sb.try_recv().unwrap();
        std::thread::sleep(Duration::from_millis(5));
    }
    let got = got.expect("full-MTU heartbeat through ESP");
    assert_eq!(got.frame_len, 14 + 1376);
    let (esp, plain) = sniff.counts();
    eprintln!("underlay at B: {esp} ESP packets, {plain} plaintext VXLAN packets");
    // 3 echo requests + 1 heartbeat from A.
    assert!(esp >= 4, "expected ESP on the underlay, saw {esp}");
    assert_eq!(plain, 0, "plaintext VXLAN on the underlay");
    // Rekey without loss: new SPIs and keys on both nodes, then the old SAs go.
    let (mut ab2, mut ba2) = esp_pair(&a, &b);
    ab2.spi_out += 0x10;
    ab2.spi_in += 0x10;
    ab2.key_out = keys(3);
    ab2.key_in = keys(4);
    ba2.spi_out = ab2.spi_in;
    ba2.spi_in = ab2.spi_out;
    ba2.key_out = ab2.key_in;
    ba2.key_in = ab2.key_out;
    install(&a, &ab2).await;
    install(&b, &ba2).await;
    for (n, p) in [(&a, ab.clone()), (&b, ba.clone())] {
        n.ns.open()
            .run(move |_| async move {
                xfrm::remove_sa(p.local, p.remote, p.spi_out).await?;
                xfrm::remove_sa(p.remote, p.local, p.spi_in).await
            })
            .await
            .unwrap();
    }
    assert!(ping(&a.pod, b.pod_ip, "3"), "pod ping after rekey");
    let st = b.ns.ip(&["xfrm", "state"]);
    assert!(
        st.contains("spi 0x10000011") && st.contains("spi 0x10000012"),
        "{st}"
    );
    assert!(
        !st.contains("spi 0x10000001") && !st.contains("spi 0x10000002"),
        "{st}"
    );
    let (esp, plain) = sniff.counts();
    assert!(
        esp >= 3 && plain == 0,
        "after rekey: {esp} ESP, {plain} plaintext"
    );
    let (ab, _) = (ab2, ba2);

    // Plaintext VXLAN injected from A's address (A drops its ESP; B keeps requiring it):
    // B's inbound policy must drop it before it reaches the bridge.
    let a2 = ab.clone();
    a.ns.open()
        .run(move |_| async move { xfrm::remove(&a2).await })
        .await
        .unwrap();
    let pod_b = Sniffer::new(&b.pod, "eth0");
    let stat = |ns: &TestNs| {
        common::run(
            "ip",
            &["netns", "exec", &ns.name, "cat", "/proc/net/xfrm_stat"],
        )
    };
    let before = stat(&b.ns);
    let answered = ping(&a.pod, b.pod_ip, "3");
    let (_, plain) = sniff.counts();
    let reached_pod = pod_b.ip_packets();
    let after = stat(&b.ns);
    eprintln!(
        "A sends plaintext: {plain} plaintext VXLAN packets at B, {reached_pod} reached B's pod, ping answered: {answered}\nxfrm_stat before:\n{before}after:\n{after}"
    );
    assert!(plain >= 3, "A should now send plaintext VXLAN");
    assert_eq!(
        reached_pod, 0,
        "plaintext VXLAN from an encrypted peer reached a pod"
    );
    assert!(!answered);
    // Removing twice is fine.
    let a3 = ab.clone();
    a.ns.open()
        .run(move |_| async move { xfrm::remove(&a3).await })
        .await
        .unwrap();
}
