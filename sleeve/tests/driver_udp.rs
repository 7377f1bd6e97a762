//! The UDP driver against the real kernel, in namespaces joined by veth links: GSO sends
//! arrive as the exact datagrams (one by one or GRO-coalesced), batches go through
//! `sendmmsg`/`recvmmsg`, DF holds through a router with a smaller MTU (no fragments, no
//! kernel PMTU cache), GSO refusals fall back to separate datagrams, and a full send buffer
//! yields `WouldBlock` after a bounded wait.

#![allow(unsafe_code)] // syscalls and FFI; each use has its SAFETY note

mod driver_util;

use std::io;
use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

use driver_util::{pattern, require_root, veth, Ns};
use weft_sleeve::driver::{
    wait_readable, RecvMeta, Tap, TapOffloads, Udp, UdpConfig, RECV_BUF_LEN, TAP_BUF_LEN,
    VNET_HDR_LEN,
};

fn addr(s: &str) -> SocketAddrV4 {
    s.parse().unwrap()
}

fn bind_in(ns: &Ns, at: &str, cfg: UdpConfig) -> Udp {
    let at = addr(at);
    ns.run(move || Udp::bind_with(at, cfg)).expect("bind")
}

const NO_GSO: UdpConfig = UdpConfig {
    gso: false,
    gro: true,
    buffer_bytes: 1 << 20,
    reuse_port: false,
};
const NO_GRO: UdpConfig = UdpConfig {
    gso: true,
    gro: false,
    buffer_bytes: 1 << 20,
    reuse_port: false,
};

/// Receive until `want` payload bytes arrived or `wait` passed (from the last arrival).
/// Returns the buffers as received.
fn recv_bytes(udp: &Udp, want: usize, wait: Duration) -> Vec<(RecvMeta, Vec<u8>)> {
    let mut bufs = vec![vec![0u8; RECV_BUF_LEN]; 8];
    let mut metas = [RecvMeta::default(); 8];
    let mut out = Vec::new();
    let mut got = 0;
    while got < want {
        if !wait_readable(&[udp.as_raw_fd()], Some(wait)).unwrap().any() {
            break;
        }
        let n = match udp.recv_many(&mut bufs, &mut metas) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => panic!("recv_many: {e}"),
        };
        for i in 0..n {
            got += metas[i].len;
            out.push((metas[i], bufs[i][..metas[i].len].to_vec()));
        }
    }
    out
}

/// The datagrams in received buffers, split at their GRO segment size.
fn datagrams(bufs: &[(RecvMeta, Vec<u8>)]) -> Vec<Vec<u8>> {
    bufs.iter()
        .flat_map(|(m, b)| m.datagrams(b).map(<[u8]>::to_vec))
        .collect()
}

#[test]
#[ignore = "needs root (network namespaces): run as root with --include-ignored, as scripts/test.sh does"]
fn send_segments_arrive_as_the_exact_datagrams() {
    require_root!();
    let x = Ns::new("x");
    let y = Ns::new("y");
    veth(&x, "vx", "10.201.0.1/24", &y, "vy", "10.201.0.2/24", 1500);
    let tx_gso = bind_in(&x, "10.201.0.1:0", UdpConfig::default());
    let tx_plain = bind_in(&x, "10.201.0.1:0", NO_GSO);
    let rx_gro = bind_in(&y, "10.201.0.2:7001", UdpConfig::default());
    let rx_plain = bind_in(&y, "10.201.0.2:7002", NO_GRO);
    assert!(tx_gso.gso(), "this kernel should support UDP GSO");
    assert!(!tx_plain.gso());
    assert!(rx_gro.gro(), "this kernel should support UDP GRO");
    assert!(!rx_plain.gro());
    println!(
        "socket buffers (snd, rcv): {:?}",
        tx_gso.buffer_sizes().unwrap()
    );

    let (seg, count, last) = (1200, 41, 700);
    let mut seed = 1;
    for (tname, tx) in [("gso", &tx_gso), ("sendmmsg", &tx_plain)] {
        for (rname, rx) in [("gro", &rx_gro), ("plain", &rx_plain)] {
            seed += 1;
            let buf = pattern(seed, seg * (count - 1) + last);
            let dst = rx.local_addr().unwrap();
            let src = tx.local_addr().unwrap();
            tx.send_segments(dst, &buf, seg).expect("send_segments");
            let got = recv_bytes(rx, buf.len(), Duration::from_secs(2));
            let dgrams = datagrams(&got);
            let expect: Vec<Vec<u8>> = buf.chunks(seg).map(<[u8]>::to_vec).collect();
            assert_eq!(dgrams.len(), count, "{tname} -> {rname}: datagram count");
            assert!(dgrams == expect, "{tname} -> {rname}: datagrams differ");
            assert!(got.iter().all(|(m, _)| m.src == src), "source address");
            let segs: Vec<(usize, usize)> = got.iter().map(|(m, _)| (m.len, m.segment)).collect();
            println!(
                "{tname} -> {rname}: {count} datagrams in {} receive buffers (len, segment): {:?}",
                got.len(),
                if segs.len() > 4 {
                    &segs[..4]
                } else {
                    &segs[..]
                },
            );
            if rname == "plain" {
                assert!(got.iter().all(|(m, _)| m.segment == m.len));
            }
        }
    }
    assert!(tx_gso.gso(), "GSO must stay on after successful sends");
}

#[test]
#[ignore = "needs root (network namespaces): run as root with --include-ignored, as scripts/test.sh does"]
fn send_many_and_recv_many_batch() {
    require_root!();
    let x = Ns::new("x");
    let y = Ns::new("y");
    veth(&x, "vx", "10.202.0.1/24", &y, "vy", "10.202.0.2/24", 1500);
    let tx = bind_in(&x, "10.202.0.1:0", UdpConfig::default());
    let rxs = [
        bind_in(&y, "10.202.0.2:7003", UdpConfig::default()),
        bind_in(&y, "10.202.0.2:7004", NO_GRO),
    ];
    let dsts = [rxs[0].local_addr().unwrap(), rxs[1].local_addr().unwrap()];
    let payloads: Vec<Vec<u8>> = (0..150)
        .map(|i| pattern(1000 + i, 100 + (i as usize * 97) % 1300))
        .collect();
    let msgs: Vec<(SocketAddrV4, &[u8])> = payloads
        .iter()
        .enumerate()
        .map(|(i, p)| (dsts[i % 2], p.as_slice()))
        .collect();
    let mut sent = 0;
    let deadline = Instant::now() + Duration::from_secs(5);
    while sent < msgs.len() {
        match tx.send_many(&msgs[sent..]) {
            Ok(n) => sent += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                assert!(Instant::now() < deadline, "send buffer never drained");
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => panic!("send_many: {e}"),
        }
    }
    for (r, rx) in rxs.iter().enumerate() {
        let expect: Vec<Vec<u8>> = payloads.iter().skip(r).step_by(2).cloned().collect();
        let want: usize = expect.iter().map(Vec::len).sum();
        // All were sent before receiving starts: one recv_many should return a full batch.
        let mut bufs = vec![vec![0u8; RECV_BUF_LEN]; 32];
        let mut metas = [RecvMeta::default(); 32];
        let first = rx
            .recv_many(&mut bufs, &mut metas)
            .expect("queued datagrams");
        let mut got: Vec<(RecvMeta, Vec<u8>)> = (0..first)
            .map(|i| (metas[i], bufs[i][..metas[i].len].to_vec()))
            .collect();
        let already: usize = got.iter().map(|(m, _)| m.len).sum();
        got.extend(recv_bytes(rx, want - already, Duration::from_secs(2)));
        println!(
            "receiver {r}: first recv_many returned {first} buffers; {} buffers in all",
            got.len()
        );
        assert!(first > 1, "recv_many did not batch");
        assert!(datagrams(&got) == expect, "receiver {r}: datagrams differ");
    }
    assert_eq!(
        rxs[0]
            .recv_many(&mut [vec![0; 2048]], &mut [RecvMeta::default()])
            .unwrap_err()
            .kind(),
        io::ErrorKind::WouldBlock
    );
}

/// A (10.210.1.1) — R — B (10.210.2.2), R–B with MTU 1300: DF datagrams over 1300 bytes are
/// dropped at R (no fragments reach B), smaller ones arrive; the kernel's learned PMTU does not
/// make our sends fail; only the local MTU does (EMSGSIZE).
#[test]
#[ignore = "needs root (network namespaces): run as root with --include-ignored, as scripts/test.sh does"]
fn df_datagrams_over_the_path_mtu_vanish() {
    require_root!();
    let a = Ns::new("a");
    let r = Ns::new("r");
    let b = Ns::new("b");
    veth(&a, "va", "10.210.1.1/24", &r, "ra", "10.210.1.2/24", 1500);
    veth(&r, "rb", "10.210.2.1/24", &b, "vb", "10.210.2.2/24", 1300);
    r.sysctl("net/ipv4/ip_forward", "1");
    a.ip(&["route", "add", "10.210.2.0/24", "via", "10.210.1.2"]);
    b.ip(&["route", "add", "10.210.1.0/24", "via", "10.210.2.1"]);
    let tx = bind_in(&a, "10.210.1.1:0", UdpConfig::default());
    let tx_plain = bind_in(&a, "10.210.1.1:0", NO_GSO);
    let rx = bind_in(&b, "10.210.2.2:7100", UdpConfig::default());
    let dst = rx.local_addr().unwrap();
    let quiet = Duration::from_millis(300);

    // Waits long for what must arrive, briefly for what must not.
    let arrives = |payload: usize, wait: Duration| -> bool {
        let buf = pattern(payload as u64, payload);
        tx.send_to(dst, &buf).expect("send within the local MTU");
        let got = recv_bytes(&rx, buf.len(), wait);
        if got.is_empty() {
            return false;
        }
        assert_eq!(datagrams(&got), vec![buf], "payload of {payload} B altered");
        true
    };
    let long = Duration::from_secs(3);
    // IP sizes: payload + 28.
    assert!(arrives(1200, long), "1228-byte packet must pass");
    assert!(arrives(1272, long), "1300-byte packet must pass");
    assert!(
        !arrives(1273, quiet),
        "1301-byte DF packet must not pass (nor be fragmented)"
    );
    assert!(!arrives(1400, quiet), "1428-byte DF packet must not pass");
    let learned = a.ip(&["route", "get", "10.210.2.2"]);
    println!("kernel route cache in A after R's ICMP: {}", learned.trim());
    assert!(learned.contains("mtu 1300"), "R's ICMP was not seen");
    // The kernel has learned PMTU 1300 from R's ICMP, yet our sends are not refused: the
    // sleeve's probes must go out.
    assert!(!arrives(1400, quiet), "sent again, still dropped at R");
    let err = tx.send_to(dst, &[0u8; 1473]).unwrap_err();
    assert_eq!(
        err.raw_os_error(),
        Some(libc::EMSGSIZE),
        "over the local MTU: {err}"
    );

    // GSO and sendmmsg alike: 10 x 1400 vanish, 10 x 1200 arrive.
    for (name, sock) in [("gso", &tx), ("sendmmsg", &tx_plain)] {
        let big = pattern(7, 14_000);
        sock.send_segments(dst, &big, 1400).expect("send 10 x 1400");
        assert!(
            recv_bytes(&rx, 1, quiet).is_empty(),
            "{name}: 1400-byte segments passed"
        );
        let small = pattern(8, 12_000);
        sock.send_segments(dst, &small, 1200)
            .expect("send 10 x 1200");
        let got = recv_bytes(&rx, small.len(), long);
        let expect: Vec<Vec<u8>> = small.chunks(1200).map(<[u8]>::to_vec).collect();
        assert!(
            datagrams(&got) == expect,
            "{name}: 1200-byte segments altered or lost"
        );
        // Over the local MTU: EMSGSIZE (with GSO the kernel says EINVAL; the driver checks
        // by sending separately and reports EMSGSIZE, keeping GSO on).
        let err = sock
            .send_segments(dst, &pattern(9, 6_000), 1500)
            .unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EMSGSIZE), "{name}: {err}");
    }
    assert!(tx.gso(), "a size error must not turn GSO off");
    assert!(arrives(1200, long), "path still works");
}

/// The kernel refusing GSO at run time although the socket option exists: here provoked with
/// `SO_NO_CHECK` (UDP GSO needs checksums, so the kernel answers EINVAL). The driver sends the
/// same datagrams separately, they arrive intact, and GSO stays off from then on.
#[test]
#[ignore = "needs root (network namespaces): run as root with --include-ignored, as scripts/test.sh does"]
fn gso_refused_at_run_time_falls_back() {
    require_root!();
    let x = Ns::new("x");
    let y = Ns::new("y");
    veth(&x, "vx", "10.204.0.1/24", &y, "vy", "10.204.0.2/24", 1500);
    let tx = bind_in(&x, "10.204.0.1:0", UdpConfig::default());
    let rx = bind_in(&y, "10.204.0.2:7200", UdpConfig::default());
    let one: libc::c_int = 1;
    // SAFETY: setsockopt with a live int of the size given, on the test's own socket.
    let r = unsafe {
        libc::setsockopt(
            tx.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NO_CHECK,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(r, 0);
    assert!(tx.gso());
    let dst = rx.local_addr().unwrap();
    let buf = pattern(42, 9 * 1000 + 321);
    let expect: Vec<Vec<u8>> = buf.chunks(1000).map(<[u8]>::to_vec).collect();
    for round in 0..2 {
        tx.send_segments(dst, &buf, 1000)
            .expect("data must go out one way or the other");
        assert!(
            !tx.gso(),
            "round {round}: the refusal should have turned GSO off"
        );
        let got = recv_bytes(&rx, buf.len(), Duration::from_secs(2));
        assert!(datagrams(&got) == expect, "round {round}: datagrams differ");
    }
}

/// GSO through a device without checksum offload (a TAP without offloads). Kernels before
/// 6.11 refuse this with EIO (the driver then falls back, as above); later ones checksum in
/// software. Either way the datagrams must come out of the device intact.
#[test]
#[ignore = "needs root (network namespaces): run as root with --include-ignored, as scripts/test.sh does"]
fn gso_through_a_device_without_checksum_offload() {
    require_root!();
    let ns = Ns::new("t");
    let tap = ns
        .run(|| Tap::attach_with("wsd1", TapOffloads::NONE))
        .expect("TAP");
    ns.ip(&["addr", "add", "10.220.0.1/24", "dev", "wsd1"]);
    ns.ip(&["link", "set", "wsd1", "up"]);
    ns.ip(&[
        "neigh",
        "add",
        "10.220.0.2",
        "lladdr",
        "02:00:00:00:00:02",
        "dev",
        "wsd1",
        "nud",
        "permanent",
    ]);
    let tx = bind_in(&ns, "10.220.0.1:0", UdpConfig::default());
    assert!(tx.gso());
    let buf = pattern(42, 4 * 1000 + 321);
    for _ in 0..2 {
        tx.send_segments(addr("10.220.0.2:9000"), &buf, 1000)
            .expect("data must go out one way or the other");
    }
    println!(
        "GSO after sending through a TAP without checksum offload: {}",
        tx.gso()
    );

    let mut frames = Vec::new();
    let mut fb = vec![0u8; TAP_BUF_LEN];
    let deadline = Instant::now() + Duration::from_secs(2);
    while frames.len() < 10 && Instant::now() < deadline {
        let _ = wait_readable(&[tap.as_raw_fd()], Some(Duration::from_millis(100)));
        while let Ok(n) = tap.read(&mut fb) {
            if let Some(p) = udp_payload(&fb[VNET_HDR_LEN..n], 9000) {
                frames.push(p.to_vec());
            }
        }
    }
    let mut expect: Vec<Vec<u8>> = buf.chunks(1000).map(<[u8]>::to_vec).collect();
    expect.extend(expect.clone());
    assert_eq!(frames.len(), expect.len(), "datagrams seen on the TAP");
    assert!(frames == expect, "datagram payloads differ");
}

/// The UDP payload of an Ethernet/IPv4/UDP frame to `port`.
fn udp_payload(frame: &[u8], port: u16) -> Option<&[u8]> {
    if frame.len() < 14 + 20 + 8 || frame[12..14] != [0x08, 0x00] || frame[14 + 9] != 17 {
        return None;
    }
    let ihl = (frame[14] & 0x0f) as usize * 4;
    let udp = frame.get(14 + ihl..)?;
    if u16::from_be_bytes([udp[2], udp[3]]) != port {
        return None;
    }
    let len = u16::from_be_bytes([udp[4], udp[5]]) as usize;
    udp.get(8..len)
}

/// With the send buffer full (packets held in a slow qdisc), `send_segments` waits a bounded
/// time, then says `WouldBlock`; it never spins forever.
#[test]
#[ignore = "needs root (network namespaces): run as root with --include-ignored, as scripts/test.sh does"]
fn full_send_buffer_gives_would_block_after_a_bounded_wait() {
    require_root!();
    let x = Ns::new("x");
    let y = Ns::new("y");
    veth(&x, "vx", "10.203.0.1/24", &y, "vy", "10.203.0.2/24", 1500);
    if let Err(e) = x.exec(&[
        "tc", "qdisc", "add", "dev", "vx", "root", "tbf", "rate", "8mbit", "burst", "16kb",
        "limit", "10mb",
    ]) {
        eprintln!("skipped: no tbf qdisc here ({e})");
        return;
    }
    let cfg = UdpConfig {
        buffer_bytes: 64 << 10,
        ..UdpConfig::default()
    };
    for (name, cfg) in [("gso", cfg), ("sendmmsg", UdpConfig { gso: false, ..cfg })] {
        let tx = bind_in(&x, "10.203.0.1:0", cfg);
        let buf = pattern(3, 12_000);
        let mut slowest = Duration::ZERO;
        let mut blocked = None;
        for _ in 0..1000 {
            let t = Instant::now();
            let r = tx.send_segments(addr("10.203.0.2:9"), &buf, 1200);
            slowest = slowest.max(t.elapsed());
            if let Err(e) = r {
                blocked = Some((e, t.elapsed()));
                break;
            }
        }
        let (e, took) = blocked.expect("the send buffer never filled");
        println!("{name}: WouldBlock after {took:?} (slowest call {slowest:?})");
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock, "{name}: {e}");
        assert!(took < Duration::from_millis(500), "{name}: waited {took:?}");
    }
}

/// `reuse_port` lets several workers bind the sleeve port; without it the second bind fails.
#[test]
#[ignore = "needs root (network namespaces): run as root with --include-ignored, as scripts/test.sh does"]
fn reuse_port_allows_one_socket_per_worker() {
    require_root!();
    let ns = Ns::new("rp");
    let shared = UdpConfig {
        reuse_port: true,
        ..UdpConfig::default()
    };
    let first = bind_in(&ns, "127.0.0.1:6784", shared);
    let second = ns.run(move || Udp::bind_with(addr("127.0.0.1:6784"), shared));
    assert_eq!(
        second
            .expect("second reuse_port socket")
            .local_addr()
            .unwrap(),
        first.local_addr().unwrap()
    );
    let err = ns
        .run(|| Udp::bind(addr("127.0.0.1:6784")))
        .expect_err("plain bind of a taken port");
    assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
}
