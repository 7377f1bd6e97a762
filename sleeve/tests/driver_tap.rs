//! The TAP driver against the real kernel: attaching to a multi-queue TAP like the one the
//! router creates, and the key property of the offloads — a TCP stream crosses from one TAP
//! to another as whole GSO frames (vnet header included, copied verbatim) and arrives intact.
//!
//! Topology of the transfer tests: namespaces A and B, each with a TAP `wsd0` (10.200.0.1/24
//! and 10.200.0.2/24). A pump thread copies every frame read from one TAP into the other, as
//! the sleeve does across the tunnel, and records what it saw.

mod driver_util;

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use driver_util::{pattern, require_root, Ns};
use weft_sleeve::driver::{
    wait_readable, Offload, Tap, TapOffloads, F_NEEDS_CSUM, GSO_ECN, GSO_NONE, GSO_TCPV4,
    TAP_BUF_LEN, VNET_HDR_LEN,
};

/// Length of the repeating transfer pattern: a prime, so that no shift, duplication or loss
/// of data lines up with it.
const PATTERN_LEN: usize = 1_000_003;

#[test]
#[ignore = "needs root (network namespaces): run as root with --include-ignored, as scripts/test.sh does"]
fn attach_to_existing_multiqueue_tap() {
    require_root!();
    let ns = Ns::new("mq");
    // Like the router's weft-tap: persistent, multi-queue, no packet info.
    ns.ip(&["tuntap", "add", "dev", "wsdq", "mode", "tap", "multi_queue"]);
    ns.ip(&["tuntap", "add", "dev", "wsds", "mode", "tap"]);
    let (q1, q2, single) = ns.run(|| {
        (
            Tap::attach("wsdq"),
            Tap::attach("wsdq"),
            Tap::attach("wsds"),
        )
    });
    let (q1, q2) = (q1.expect("first queue"), q2.expect("second queue"));
    assert_eq!(q1.offloads(), TapOffloads::ALL, "offloads granted");
    assert_eq!(q2.offloads(), TapOffloads::ALL);
    assert_ne!(q1.as_raw_fd(), q2.as_raw_fd());
    let err = single.expect_err("a single-queue TAP must refuse a multi-queue attach");
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{err}");
    let details = ns.ip(&["-d", "link", "show", "wsdq"]);
    assert!(details.contains("vnet_hdr on"), "{details}");
    assert!(details.contains("multi_queue"), "{details}");
    assert!(details.contains("numqueues 2"), "{details}");
    // An empty queue reads WouldBlock (non-blocking descriptor).
    let mut buf = vec![0u8; TAP_BUF_LEN];
    assert_eq!(
        q1.read(&mut buf).unwrap_err().kind(),
        io::ErrorKind::WouldBlock
    );
    println!("queues attached; offloads {:?}", q1.offloads());
}

/// A frame that does not fit the read buffer is reported, not handed over cut short; and a
/// plain (non-GSO) frame may still carry a pending checksum (`NEEDS_CSUM`), so the sleeve must
/// carry the header of every frame, not only of GSO ones.
#[test]
#[ignore = "needs root (network namespaces): run as root with --include-ignored, as scripts/test.sh does"]
fn short_read_buffer_is_an_error_and_small_frames_have_partial_checksums() {
    require_root!();
    let ns = Ns::new("short");
    let tap = ns.run(|| Tap::attach("wsd2")).expect("TAP");
    ns.ip(&["addr", "add", "10.230.0.1/24", "dev", "wsd2"]);
    // No IPv6 chatter: every frame on the TAP is one this test sends.
    ns.sysctl("net/ipv6/conf/wsd2/disable_ipv6", "1");
    ns.ip(&["link", "set", "wsd2", "up"]);
    ns.ip(&[
        "neigh",
        "add",
        "10.230.0.2",
        "lladdr",
        "02:00:00:00:00:02",
        "dev",
        "wsd2",
        "nud",
        "permanent",
    ]);
    let sock = ns
        .run(|| std::net::UdpSocket::bind("10.230.0.1:0"))
        .unwrap();
    // Read the next frame, waiting up to 2 s.
    let next = |buf: &mut [u8]| -> io::Result<usize> {
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let _ = wait_readable(&[tap.as_raw_fd()], Some(Duration::from_millis(100)));
            match tap.read(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < deadline => {}
                r => return r,
            }
        }
    };
    sock.send_to(&[7u8; 1000], "10.230.0.2:9").unwrap();
    let mut frame = vec![0u8; TAP_BUF_LEN];
    let n = next(&mut frame).unwrap();
    let hdr = Offload::parse(&frame[..n]).unwrap();
    println!("1000-byte UDP datagram: {n} bytes read, header {hdr:?}");
    assert_eq!(n, VNET_HDR_LEN + 14 + 20 + 8 + 1000);
    assert_eq!(hdr.gso_type, GSO_NONE);
    assert_eq!(
        hdr.flags & F_NEEDS_CSUM,
        F_NEEDS_CSUM,
        "checksum left to us"
    );
    assert_eq!((hdr.csum_start, hdr.csum_offset), (14 + 20, 6));

    // Now with a buffer too small for the next one.
    sock.send_to(&[7u8; 1000], "10.230.0.2:9").unwrap();
    let err = next(&mut [0u8; 200]).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
}

/// The key proof: TSO frames read from one TAP and written whole into another carry TCP
/// streams intact (100 MB each way, every byte compared), with frames far larger than the MTU.
#[test]
#[ignore = "needs root (network namespaces): run as root with --include-ignored, as scripts/test.sh does"]
fn tap_to_tap_gso_frames_carry_tcp_intact() {
    require_root!();
    let r = transfer(TapOffloads::ALL, 100 << 20);
    println!(
        "offloads {:?}: {} MB (both ways at once) in {:.2} s = {:.2} Gbit/s",
        r.offloads,
        r.bytes >> 20,
        r.secs,
        r.bytes as f64 * 8.0 / r.secs / 1e9,
    );
    assert_eq!(r.offloads, TapOffloads::ALL);
    for (name, d) in ["A->B", "B->A"].iter().zip(&r.stats.dir) {
        println!(
            "{name}: {} frames, {} GSO (mean {} B, max frame {} B), gso_size {:?}, gso_type {:?}",
            d.frames,
            d.gso_frames,
            d.gso_bytes.checked_div(d.gso_frames).unwrap_or(0),
            d.max_frame,
            d.gso_sizes,
            d.gso_types,
        );
        assert!(d.gso_frames > 0, "{name}: no GSO frames with offloads on");
        assert!(
            d.max_frame > 1514 + 1000,
            "{name}: largest frame {} B is not a GSO frame",
            d.max_frame
        );
        for &size in d.gso_sizes.keys() {
            assert!((500..=1460).contains(&size), "{name}: odd gso_size {size}");
        }
        assert!(
            d.gso_types.keys().all(|&t| t & !GSO_ECN == GSO_TCPV4),
            "{name}: gso types {:?}",
            d.gso_types
        );
    }
}

/// Without offloads the kernel segments before the TAP: every frame fits the MTU, and the same
/// pump still carries the stream (the fallback when a kernel refuses TUNSETOFFLOAD).
#[test]
#[ignore = "needs root (network namespaces): run as root with --include-ignored, as scripts/test.sh does"]
fn tap_to_tap_without_offloads() {
    require_root!();
    let r = transfer(TapOffloads::NONE, 8 << 20);
    let data = &r.stats.dir[0];
    let back = &r.stats.dir[1];
    println!(
        "offloads {:?}: {} MB in {:.2} s = {:.2} Gbit/s; {} frames, max {} B",
        r.offloads,
        r.bytes >> 20,
        r.secs,
        r.bytes as f64 * 8.0 / r.secs / 1e9,
        data.frames,
        data.max_frame
    );
    assert_eq!(r.offloads, TapOffloads::NONE);
    assert_eq!(data.gso_frames + back.gso_frames, 0);
    assert!(
        data.max_frame.max(back.max_frame) <= 1514,
        "frame over the MTU"
    );
}

#[derive(Default, Debug)]
struct DirStats {
    frames: u64,
    gso_frames: u64,
    gso_bytes: u64,
    max_frame: usize,
    gso_sizes: BTreeMap<u16, u64>,
    gso_types: BTreeMap<u8, u64>,
}

#[derive(Default, Debug)]
struct PumpStats {
    dir: [DirStats; 2],
}

struct Report {
    offloads: TapOffloads,
    bytes: u64,
    secs: f64,
    stats: PumpStats,
}

/// Stops the pump when dropped, also when the test panics.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Build A and B with TAPs, pump frames between them, and send `total` bytes over TCP each
/// way at once (A->B and B->A, so both write paths carry GSO frames); every byte is checked
/// on arrival.
fn transfer(offloads: TapOffloads, total: usize) -> Report {
    let a = Ns::new("a");
    let b = Ns::new("b");
    let tap_a = a
        .run(move || Tap::attach_with("wsd0", offloads))
        .expect("TAP in A");
    let tap_b = b
        .run(move || Tap::attach_with("wsd0", offloads))
        .expect("TAP in B");
    assert_eq!(tap_a.offloads(), tap_b.offloads());
    let granted = tap_a.offloads();
    for (ns, addr) in [(&a, "10.200.0.1/24"), (&b, "10.200.0.2/24")] {
        ns.ip(&["addr", "add", addr, "dev", "wsd0"]);
        ns.ip(&["link", "set", "wsd0", "up"]);
    }

    let stop = Arc::new(AtomicBool::new(false));
    let _guard = StopOnDrop(stop.clone());
    let pump = {
        let stop = stop.clone();
        std::thread::spawn(move || pump([tap_a, tap_b], &stop))
    };

    let block = Arc::new(pattern(0x5eed, PATTERN_LEN));
    let start = Instant::now();
    let flows =
        [(&a, &b, "10.200.0.2:5001"), (&b, &a, "10.200.0.1:5002")].map(|(from, to, addr)| {
            let addr: SocketAddr = addr.parse().unwrap();
            let listener = to.run(move || TcpListener::bind(addr)).expect("listen");
            let server = {
                let block = block.clone();
                std::thread::spawn(move || receive_and_check(listener, &block))
            };
            let client = from
                .run(move || TcpStream::connect_timeout(&addr, Duration::from_secs(10)))
                .expect("connect through the TAPs");
            let sender = {
                let block = block.clone();
                std::thread::spawn(move || send_pattern(client, &block, total))
            };
            (sender, server)
        });
    let mut bytes = 0;
    for (sender, server) in flows {
        sender.join().expect("sender thread").expect("send");
        let received = server.join().expect("server thread").expect("receive");
        assert_eq!(received, total as u64, "bytes received");
        bytes += received;
    }
    let secs = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let stats = pump.join().expect("pump thread");
    Report {
        offloads: granted,
        bytes,
        secs,
        stats,
    }
}

/// Write `total` bytes of the repeating pattern, then close the sending side.
fn send_pattern(mut s: TcpStream, block: &[u8], total: usize) -> io::Result<()> {
    s.set_write_timeout(Some(Duration::from_secs(60)))?;
    let mut sent = 0usize;
    while sent < total {
        let at = sent % PATTERN_LEN;
        let n = (PATTERN_LEN - at).min(total - sent).min(256 << 10);
        s.write_all(&block[at..at + n])?;
        sent += n;
    }
    s.shutdown(std::net::Shutdown::Write)
}

/// Accept one connection, read to EOF, compare every byte with the pattern. Returns the count.
fn receive_and_check(listener: TcpListener, block: &[u8]) -> io::Result<u64> {
    let (mut s, _) = listener.accept()?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut buf = vec![0u8; 256 << 10];
    let mut pos = 0usize;
    loop {
        let n = s.read(&mut buf)?;
        if n == 0 {
            return Ok(pos as u64);
        }
        let mut off = 0;
        while off < n {
            let at = (pos + off) % PATTERN_LEN;
            let k = (PATTERN_LEN - at).min(n - off);
            if buf[off..off + k] != block[at..at + k] {
                return Err(io::Error::other(format!(
                    "data differs in the 0x{:x} bytes after offset {}",
                    k,
                    pos + off
                )));
            }
            off += k;
        }
        pos += n;
    }
}

/// Copy frames between the two TAPs verbatim until `stop`; A->B with `write_parts`, B->A with
/// `write`. Panics on any error other than an empty queue.
fn pump(taps: [Tap; 2], stop: &AtomicBool) -> PumpStats {
    let mut stats = PumpStats::default();
    let mut buf = vec![0u8; TAP_BUF_LEN];
    let fds = [taps[0].as_raw_fd(), taps[1].as_raw_fd()];
    while !stop.load(Ordering::Relaxed) {
        let ready = wait_readable(&fds, Some(Duration::from_millis(50))).expect("poll");
        for from in 0..2 {
            if !ready.is_ready(from) {
                continue;
            }
            let to = &taps[1 - from];
            for _ in 0..64 {
                let n = match taps[from].read(&mut buf) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => panic!("TAP read: {e}"),
                };
                assert!(n > VNET_HDR_LEN, "short read {n}");
                let hdr = Offload::parse(&buf[..n]).unwrap();
                let frame_len = n - VNET_HDR_LEN;
                hdr.check(frame_len)
                    .unwrap_or_else(|e| panic!("kernel header refused by check: {e:?} {hdr:?}"));
                let d = &mut stats.dir[from];
                d.frames += 1;
                d.max_frame = d.max_frame.max(frame_len);
                if hdr.gso_type != GSO_NONE {
                    d.gso_frames += 1;
                    d.gso_bytes += frame_len as u64;
                    *d.gso_sizes.entry(hdr.gso_size).or_default() += 1;
                    *d.gso_types.entry(hdr.gso_type).or_default() += 1;
                }
                let w = if from == 0 {
                    to.write_parts(&buf[..VNET_HDR_LEN], &buf[VNET_HDR_LEN..n])
                } else {
                    to.write(&buf[..n])
                };
                match w {
                    Ok(w) => assert_eq!(w, n, "short TAP write"),
                    Err(e) => panic!("TAP write of {hdr:?} ({frame_len} B): {e}"),
                }
            }
        }
    }
    stats
}
