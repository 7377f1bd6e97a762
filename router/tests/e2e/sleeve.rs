//! The sleeve end to end: real routers in a `weft lab`, pods attached through `weft-net`,
//! real TCP between pods on different nodes over the encrypted (or plain) userspace
//! transport; a flood of garbage on UDP 6784; an MTU black hole on the underlay.
//! Needs root, iproute2, nft and ping; `#[ignore]`d unless asked for (see main.rs).

use crate::common::*;
use std::process::Command;
use std::time::{Duration, Instant};

use weft::lab::{self, Lab, LabGuard, LabOptions, LabPassword};
use weft_fastpath::netns::Netns;

async fn lab_up(prefix: &str, nodes: usize, password: LabPassword) -> (Lab, LabGuard) {
    // The sleeve under test: without --no-fastpath a plain mesh would use the kernel VXLAN.
    lab_with(prefix, nodes, password, &["--no-fastpath"]).await
}

/// Waits until every node reports its connection to every other node on the sleeve.
async fn wait_sleeve(lab: &Lab, limit: Duration) {
    let n = lab.nodes();
    lab.wait_until(limit, "every connection on the sleeve", |all| {
        all.iter().all(|s| {
            s.as_ref().is_some_and(|st| {
                st.connections
                    .iter()
                    .filter(|c| c.path.as_deref() == Some("sleeve"))
                    .count()
                    == n - 1
            })
        })
    })
    .await
    .unwrap();
}

async fn pods_across_two_nodes(password: LabPassword, encrypted: bool) {
    let (lab, _g) = lab_up("s", 2, password).await;
    let p = pods(&lab);
    let (a, b) = (&p.0[0], &p.0[1]);
    assert_ne!(a.node, b.node);
    wait_sleeve(&lab, Duration::from_secs(10)).await;
    assert!(
        ping_within(&a.namespace, &b.ip, Duration::from_secs(10)),
        "pod on n1 -> pod on n2"
    );
    assert!(ping(&b.namespace, &a.ip), "pod on n2 -> pod on n1");

    let st = lab.status(1).await.unwrap();
    let c = st
        .connections
        .iter()
        .find(|c| c.path.as_deref() == Some("sleeve"))
        .expect("a sleeve connection");
    assert_eq!(c.encrypted, encrypted, "{c:?}");
    assert!((1200..=1500).contains(&c.mtu), "{c:?}");

    let gbps = transfer(&lab, b, a, 64 << 20).await;
    eprintln!("64 MiB pod -> pod across nodes, encrypted={encrypted}: {gbps:.2} Gbit/s");
    let gbps = transfer(&lab, a, b, 16 << 20).await;
    eprintln!("16 MiB the other way: {gbps:.2} Gbit/s");

    let sent = metric(&lab, 1, "weft_sleeve_packets_total{direction=\"sent\"}").await;
    assert!(sent > 1000, "sleeve packets counted: {sent}");
    for node in [1, 2] {
        let auth = metric(&lab, node, "weft_sleeve_dropped_total{reason=\"auth\"}").await;
        assert_eq!(auth, 0, "no authentication failures between honest peers");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root (network namespaces): run as root with --include-ignored, as scripts/test.sh does"]
async fn encrypted_pods_talk_across_nodes() {
    prerequisites();
    pods_across_two_nodes(LabPassword::Random, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root (network namespaces): run as root with --include-ignored, as scripts/test.sh does"]
async fn plain_pods_talk_across_nodes() {
    prerequisites();
    pods_across_two_nodes(LabPassword::None, false).await;
}

/// Sends `count` hostile datagrams to `target`:6784 from inside namespace `ns`: random
/// bytes, truncated headers, headers with every packet type and random indices, and
/// oversize junk.
fn flood(ns: &str, target: std::net::Ipv4Addr, count: usize) {
    let netns = Netns::open(format!("/var/run/netns/{ns}")).unwrap();
    netns
        .run_blocking(move || {
            let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
            let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
            let mut next = || {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x
            };
            let mut buf = vec![0u8; 1400];
            for i in 0..count {
                let len = match i % 4 {
                    0 => (next() % 1400) as usize,
                    1 => (next() % 16) as usize,
                    _ => 16 + (next() % 1000) as usize,
                };
                for b in buf.iter_mut().take(len) {
                    *b = next() as u8;
                }
                if i % 4 >= 2 && len >= 16 {
                    buf[0] = 1 + (i % 4) as u8;
                    buf[1] = 0;
                    buf[2] = 0;
                    buf[3] = 0;
                }
                let _ = s.send_to(&buf[..len], (target, 6784));
            }
        })
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root (network namespaces): run as root with --include-ignored, as scripts/test.sh does"]
async fn garbage_on_the_sleeve_port_is_dropped_and_counted() {
    prerequisites();
    let (lab, _g) = lab_up("g", 2, LabPassword::Random).await;
    let p = pods(&lab);
    let (a, b) = (&p.0[0], &p.0[1]);
    wait_sleeve(&lab, Duration::from_secs(10)).await;
    assert!(ping_within(&a.namespace, &b.ip, Duration::from_secs(10)));
    let target = lab.underlay_addr(2);
    let flooder = lab.namespace(1);
    std::thread::scope(|s| {
        let f = s.spawn(|| flood(&flooder, target, 30_000));
        let gbps = tcp_transfer(b, a, 32 << 20).expect("transfer during the flood");
        eprintln!("32 MiB during a garbage flood: {gbps:.2} Gbit/s");
        f.join().unwrap();
    });
    // Metrics follow the engine's counters within a second.
    let t = Instant::now();
    let mut dropped = 0;
    while t.elapsed() < Duration::from_secs(5) {
        dropped = metric(&lab, 2, "weft_sleeve_dropped_total").await;
        if dropped >= 20_000 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(dropped >= 20_000, "garbage counted as dropped: {dropped}");
    assert!(ping(&a.namespace, &b.ip), "sessions survive the flood");
    assert!(lab.pid(2).is_some(), "router still running");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root (network namespaces): run as root with --include-ignored, as scripts/test.sh does"]
async fn tcp_passes_an_mtu_black_hole() {
    prerequisites();
    let (lab, _g) = lab_up("m", 2, LabPassword::Random).await;
    let p = pods(&lab);
    let (a, b) = (&p.0[0], &p.0[1]);
    // The underlay switch silently drops frames over 1300 bytes (its ports' MTU; a bridge
    // sends no ICMP): a black hole. The nodes' own links stay at 1500, so nothing tells
    // them. It is there before node 2's router starts, so the session's probes meet it.
    lab.stop_node(2).await.unwrap();
    let sw = lab.topology().segments[0].namespace.clone();
    let links = Command::new("ip")
        .args(["-n", &sw, "-o", "link", "show"])
        .output()
        .unwrap();
    let mut ports = 0;
    for line in String::from_utf8_lossy(&links.stdout).lines() {
        let name = line.split(':').nth(1).unwrap_or("").trim();
        let name = name.split('@').next().unwrap_or("");
        if name.is_empty() || name == "lo" || line.contains("bridge") || !line.contains("master") {
            continue;
        }
        let ok = Command::new("ip")
            .args(["-n", &sw, "link", "set", name, "mtu", "1300"])
            .status()
            .unwrap()
            .success();
        assert!(ok, "setting MTU 1300 on switch port {name}");
        ports += 1;
    }
    assert_eq!(
        ports,
        2,
        "both switch ports narrowed: {}",
        String::from_utf8_lossy(&links.stdout)
    );
    lab.start_node(2, &[], None).await.unwrap();
    lab.wait_for_mesh(Duration::from_secs(20)).await.unwrap();
    wait_sleeve(&lab, Duration::from_secs(10)).await;
    lab.wait_until(
        Duration::from_secs(10),
        "path MTU found below the hole",
        |all| {
            all.iter().all(|s| {
                s.as_ref().is_some_and(|st| {
                    st.connections.iter().any(|c| {
                        c.path.as_deref() == Some("sleeve")
                            && c.reason.as_deref().is_some_and(|r| r.contains("confirmed"))
                            && c.mtu + 111 <= 1300
                    })
                })
            })
        },
    )
    .await
    .unwrap();
    // Status says what a pod created now gets: the confirmed path's MTU, below the hole.
    for i in 1..=2 {
        let st = lab.status(i).await.unwrap();
        let path = st
            .connections
            .iter()
            .filter(|c| c.path.as_deref() == Some("sleeve"))
            .map(|c| c.mtu)
            .min()
            .unwrap();
        assert_eq!(st.pod_mtu, path, "n{i}: pod MTU follows the path MTU");
        assert!(st.pod_mtu + 111 <= 1300, "n{i}: {}", st.pod_mtu);
    }
    assert!(ping_within(&a.namespace, &b.ip, Duration::from_secs(5)));
    // The pods were created with MTU 1376: TCP must learn the smaller size from our ICMP.
    let gbps = transfer(&lab, b, a, 8 << 20).await;
    eprintln!("8 MiB through a 1300-byte black hole: {gbps:.2} Gbit/s");
    // Metrics follow within a second.
    let mut icmp = 0;
    for _ in 0..15 {
        icmp = metric(&lab, 1, "weft_sleeve_icmp_frag_needed_total").await;
        if icmp > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(icmp > 0, "the pod was told the path MTU");
}

async fn segmented_lab(prefix: &str, nodes: usize, spec: &str) -> (Lab, LabGuard) {
    let id = format!("{prefix}{}", lab::random_alnum(5));
    let guard = LabGuard::new(&id);
    let mut opts = LabOptions::new(&id, nodes, WEFT);
    opts.password = LabPassword::Random;
    opts.timeout = Duration::from_secs(20);
    opts.segments = Some(lab::segments::SegmentSpec::parse(spec, nodes).unwrap());
    (Lab::up(opts).await.expect("lab up"), guard)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root (network namespaces): run as root with --include-ignored, as scripts/test.sh does"]
async fn frames_are_relayed_between_segments() {
    prerequisites();
    // n1 and n3 share no segment: only n2 is on both.
    let (lab, _g) = segmented_lab("r", 3, "1,2|2,3").await;
    let p = pods(&lab);
    let (a, c) = (&p.0[0], &p.0[2]);
    assert_eq!((a.node, c.node), (1, 3));
    assert!(
        ping_within(&a.namespace, &c.ip, Duration::from_secs(10)),
        "n1's pod reaches n3's pod through n2"
    );
    let gbps = transfer(&lab, c, a, 16 << 20).await;
    eprintln!("16 MiB relayed through a middle node: {gbps:.2} Gbit/s");
    // The metrics read the sleeve's counters at scrape time: the transfer is complete, so is
    // the count (16 MiB is more than 11,000 full datagrams).
    let relayed = metric(&lab, 2, "weft_sleeve_relayed_records_total").await;
    eprintln!("n2 relayed {relayed} records");
    assert!(relayed > 11_000, "n2 relayed the records: {relayed}");
    // n1 shows the path to n3 as a relay, if it has tried a direct connection to it.
    let st = lab.status(1).await.unwrap();
    for c in st
        .connections
        .iter()
        .filter(|c| c.nickname.as_deref() == Some("n3"))
    {
        assert_eq!(c.path.as_deref(), Some("relay"), "{c:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root (network namespaces): run as root with --include-ignored, as scripts/test.sh does"]
async fn a_node_behind_nat_works() {
    prerequisites();
    // n3 is behind a NAT gateway: it can dial out, nobody can dial in.
    let (lab, _g) = segmented_lab("t", 3, "1,2|nat:3").await;
    let p = pods(&lab);
    let (a, c) = (&p.0[0], &p.0[2]);
    assert!(
        ping_within(&a.namespace, &c.ip, Duration::from_secs(10)),
        "public -> NATed pod"
    );
    assert!(ping(&c.namespace, &a.ip), "NATed -> public pod");
    let gbps = transfer(&lab, a, c, 16 << 20).await;
    eprintln!("16 MiB from behind NAT: {gbps:.2} Gbit/s");
    // n1 reaches n3 at the NAT gateway's public address, learned from n3's packets.
    let st = lab.status(1).await.unwrap();
    let c3 = st
        .connections
        .iter()
        .find(|c| c.nickname.as_deref() == Some("n3") && c.path.as_deref() == Some("sleeve"))
        .expect("n1 has a sleeve session with n3");
    assert!(c3.address.starts_with("10.201.0.254:"), "{c3:?}");
}
