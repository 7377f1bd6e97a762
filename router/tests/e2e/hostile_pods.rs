//! Hostile pods: what a pod with the default container capabilities (`NET_RAW` included) can
//! send from its interface, tried against real routers in a `weft lab` with raw packet
//! sockets inside the pod namespaces. Each test is one attack; each attack must fail: no
//! spoofed source reaches anyone, no ARP, NDP or frame re-points anyone's traffic, no router
//! advertisement is taken, a pod sees no traffic not addressed to it, and no pod reaches its
//! router's own ports. Needs root, iproute2 and nft; `#[ignore]`d unless asked for (see main.rs).

use crate::common::frames::*;
use crate::common::*;
use std::net::{Ipv4Addr, Ipv6Addr, UdpSocket};
use std::process::Command;
use std::time::{Duration, Instant};

use weft::lab::pods::LabPod;
use weft::lab::{Lab, LabGuard, LabPassword};
use weft_fastpath::netns::Netns;

/// Two nodes, two pods each: `attacker` and `victim` on n1, `remote` and `remote2` on n2.
struct Scene {
    // Dropped in this order: the pods' namespaces, then the lab.
    pods: Pods,
    lab: Lab,
    _guard: LabGuard,
}

impl Scene {
    async fn new(prefix: &str, password: LabPassword, args: &[&str]) -> Scene {
        let (lab, guard) = lab_with(prefix, 2, password, args).await;
        let plugin = weft::lab::pods::weft_net_beside(std::path::Path::new(WEFT));
        let pods = Pods(weft::lab::pods::start_pods(&lab, &plugin, 2).expect("pods"));
        let s = Scene {
            pods,
            lab,
            _guard: guard,
        };
        // Every pod reaches every other before any attack: the mesh and paths are up.
        for a in &s.pods.0 {
            for b in &s.pods.0 {
                if a.namespace != b.namespace {
                    assert!(
                        ping_within(&a.namespace, &b.ip, Duration::from_secs(15)),
                        "{} -> {}",
                        a.namespace,
                        b.ip
                    );
                }
            }
        }
        s
    }
    fn attacker(&self) -> &LabPod {
        &self.pods.0[0]
    }
    fn victim(&self) -> &LabPod {
        &self.pods.0[1]
    }
    fn remote(&self) -> &LabPod {
        &self.pods.0[2]
    }
    fn remote2(&self) -> &LabPod {
        &self.pods.0[3]
    }
}

/// Waits (the router reads the guard's counters every few seconds) until the pod guard on
/// `node` has counted at least `min` drops for `reason`; returns the count.
async fn guard_drops(lab: &Lab, node: usize, reason: &str, min: u64) -> u64 {
    let name = format!("weft_pod_guard_drops_total{{reason=\"{reason}\"}}");
    let end = Instant::now() + Duration::from_secs(12);
    loop {
        let n = metric(lab, node, &name).await;
        if n >= min || Instant::now() > end {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn ip4(p: &LabPod) -> Ipv4Addr {
    p.ip.parse().unwrap()
}

fn pod_mac(p: &LabPod) -> Mac {
    mac_in(&p.namespace, "eth0")
}

/// The MAC that `ns` has for `ip` in its neighbour table, if any.
fn neigh(ns: &str, ip: &str) -> Option<Mac> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "ip", "-j", "neigh", "show", ip])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v.as_array()?
        .iter()
        .find_map(|e| Some(parse_mac(e["lladdr"].as_str()?)))
}

/// The port of the node bridge that `mac` is on, in node namespace `ns`.
fn fdb_port(ns: &str, mac: &Mac) -> Option<String> {
    let out = Command::new("ip")
        .args([
            "netns", "exec", ns, "bridge", "-j", "fdb", "show", "br", "weft",
        ])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let want = fmt_mac(mac);
    v.as_array()?.iter().find_map(|e| {
        (e["mac"].as_str()? == want && e["master"].as_str() == Some("weft"))
            .then(|| e["ifname"].as_str().map(String::from))
            .flatten()
    })
}

fn fdb_len(ns: &str) -> usize {
    let out = Command::new("ip")
        .args([
            "netns", "exec", ns, "bridge", "-j", "fdb", "show", "br", "weft",
        ])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v.as_array().map_or(0, Vec::len)
}

/// Datagrams that arrive at UDP `port` in `ns` during `dur`, with their source addresses;
/// `send` runs once the socket is bound.
fn udp_received(ns: &str, port: u16, dur: Duration, send: impl FnOnce()) -> Vec<(String, Vec<u8>)> {
    let netns = Netns::open(format!("/var/run/netns/{ns}")).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::scope(|s| {
        let h = s.spawn(move || {
            netns
                .run_blocking(move || {
                    let sock = UdpSocket::bind(("0.0.0.0", port)).unwrap();
                    sock.set_read_timeout(Some(Duration::from_millis(100)))
                        .unwrap();
                    tx.send(()).unwrap();
                    let mut got = Vec::new();
                    let end = Instant::now() + dur;
                    let mut buf = [0u8; 2048];
                    while Instant::now() < end {
                        if let Ok((n, from)) = sock.recv_from(&mut buf) {
                            got.push((from.ip().to_string(), buf[..n].to_vec()));
                        }
                    }
                    got
                })
                .unwrap()
        });
        rx.recv().unwrap();
        send();
        h.join().unwrap()
    })
}

/// A UDP datagram as `from` would send it to `to` (same node: `to`'s MAC; other node: the MAC
/// the attacker's neighbour table has for `to`, learned by the pings of [`Scene::new`]).
fn udp_frame(
    src_mac: Mac,
    dst_mac: Mac,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    port: u16,
    payload: &[u8],
) -> Vec<u8> {
    eth(
        dst_mac,
        src_mac,
        ETH_IPV4,
        &udp4(src, dst, 40000, port, payload),
    )
}

async fn spoofed_sources_are_dropped(password: LabPassword, args: &[&str]) {
    let s = Scene::new("hs", password, args).await;
    let (a, v, r) = (s.attacker(), s.victim(), s.remote());
    let am = pod_mac(a);
    let (vm, rm) = (pod_mac(v), pod_mac(r));
    // Same node: the attacker pretends to be the remote pod, towards the victim. Other node:
    // it pretends to be the victim, towards the remote pod. Each time also once with its own
    // address, which must arrive (the attack is refused, not the path).
    for (target, target_mac, spoofed, port) in [(v, vm, ip4(r), 7001), (r, rm, ip4(v), 7002)] {
        let got = udp_received(&target.namespace, port, Duration::from_secs(2), || {
            let mut frames = Vec::new();
            for i in 0..5u8 {
                frames.push(udp_frame(
                    am,
                    target_mac,
                    spoofed,
                    ip4(target),
                    port,
                    &[b'S', i],
                ));
                frames.push(udp_frame(
                    am,
                    target_mac,
                    ip4(a),
                    ip4(target),
                    port,
                    &[b'O', i],
                ));
                // The same with the victim's MAC as well, and in a VLAN tag.
                frames.push(udp_frame(
                    vm,
                    target_mac,
                    spoofed,
                    ip4(target),
                    port,
                    &[b'M', i],
                ));
                frames.push(eth_vlan(
                    target_mac,
                    am,
                    0,
                    ETH_IPV4,
                    &udp4(spoofed, ip4(target), 40000, port, &[b'V', i]),
                ));
            }
            send_frames(&a.namespace, "eth0", &frames);
        });
        let own = got.iter().filter(|(_, p)| p[0] == b'O').count();
        let spoofed_in: Vec<_> = got.iter().filter(|(_, p)| p[0] != b'O').collect();
        assert_eq!(
            own, 5,
            "the attacker's own datagrams to {}: {got:?}",
            target.ip
        );
        assert!(
            spoofed_in.is_empty(),
            "spoofed datagrams reached {}: {spoofed_in:?}",
            target.ip
        );
    }
    let spoofed = guard_drops(&s.lab, 1, "spoofed-ip", 10).await;
    let foreign = guard_drops(&s.lab, 1, "spoofed-mac", 10).await;
    assert!(
        spoofed >= 10 && foreign >= 10,
        "counted: ip {spoofed}, mac {foreign}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root (network namespaces): run as root with --include-ignored, as scripts/test.sh does"]
async fn a_pod_cannot_send_with_another_pods_address_fastpath() {
    prerequisites();
    spoofed_sources_are_dropped(LabPassword::None, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root (network namespaces): run as root with --include-ignored, as scripts/test.sh does"]
async fn a_pod_cannot_send_with_another_pods_address_sleeve() {
    prerequisites();
    spoofed_sources_are_dropped(LabPassword::Random, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root (network namespaces): run as root with --include-ignored, as scripts/test.sh does"]
async fn arp_poisoning_is_not_believed_by_pods_or_nodes() {
    prerequisites();
    let s = Scene::new("ha", LabPassword::None, &[]).await;
    let (a, v, r) = (s.attacker(), s.victim(), s.remote());
    let am = pod_mac(a);
    let gw: Ipv4Addr = v.gateway.parse().unwrap();
    let node1 = s.lab.namespace(1);
    // The node knows the victim (a ping from the node fills its cache).
    assert!(ping_within(&node1, &v.ip, Duration::from_secs(5)));
    let before = (
        neigh(&v.namespace, &v.gateway),
        neigh(&r.namespace, &v.ip),
        neigh(&node1, &v.ip),
    );
    assert!(
        before.0.is_some() && before.1.is_some() && before.2.is_some(),
        "{before:?}"
    );
    let node_mac = mac_in(&node1, "weft");
    let mut frames = Vec::new();
    for _ in 0..3 {
        // Gratuitous ARP claiming the victim's address and the gateway's, to everyone.
        for claimed in [ip4(v), gw] {
            frames.push(eth(
                BROADCAST,
                am,
                ETH_ARP,
                &arp(2, am, claimed, BROADCAST, claimed),
            ));
            frames.push(eth(
                BROADCAST,
                am,
                ETH_ARP,
                &arp(1, am, claimed, [0; 6], claimed),
            ));
        }
        // A reply to the node itself: "the victim is at my MAC".
        frames.push(eth(
            node_mac,
            am,
            ETH_ARP,
            &arp(2, am, ip4(v), node_mac, gw),
        ));
        // A reply to the victim: "the gateway is at my MAC".
        frames.push(eth(
            pod_mac(v),
            am,
            ETH_ARP,
            &arp(2, am, gw, pod_mac(v), ip4(v)),
        ));
        // The right sender address, but another MAC inside the ARP.
        frames.push(eth(
            BROADCAST,
            am,
            ETH_ARP,
            &arp(2, [2, 0xde, 0xad, 0, 0, 1], ip4(a), BROADCAST, ip4(a)),
        ));
    }
    send_frames(&a.namespace, "eth0", &frames);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = (
        neigh(&v.namespace, &v.gateway),
        neigh(&r.namespace, &v.ip),
        neigh(&node1, &v.ip),
    );
    assert_eq!(
        before,
        after,
        "neighbour caches changed by the attacker ({})",
        fmt_mac(&am)
    );
    for m in [after.0, after.1, after.2].into_iter().flatten() {
        assert_ne!(m, am);
    }
    assert!(ping(&r.namespace, &v.ip), "the victim is still reachable");
    let arp_drops = guard_drops(&s.lab, 1, "spoofed-arp", 15).await;
    assert!(arp_drops >= 15, "counted: {arp_drops}");
}

async fn mac_spoofing_moves_nothing(password: LabPassword, path: &str) {
    let s = Scene::new("hm", password, &[]).await;
    let (a, v, r, r2) = (s.attacker(), s.victim(), s.remote(), s.remote2());
    let (vm, rm) = (pod_mac(v), pod_mac(r));
    let (n1, n2) = (s.lab.namespace(1), s.lab.namespace(2));
    let v_port = fdb_port(&n1, &vm).expect("the victim's FDB entry");
    let r_port_n1 = fdb_port(&n1, &rm);
    let conns = s.lab.status(1).await.unwrap().connections;
    assert!(
        conns.iter().all(|c| c.path.as_deref() == Some(path)),
        "{conns:?}"
    );
    // From n1: frames with the victim's and the remote pod's MACs as source. From n2: frames
    // with the victim's MAC (which would move it to the overlay port on n1).
    // Frames nobody answers (an answer from the victim would move its entry back at once):
    // a local experimental EtherType, and UDP to a port nobody listens on.
    let burst = |src: Mac| {
        (0..10)
            .flat_map(|_| {
                [
                    eth(BROADCAST, src, 0x88b6, &[0u8; 46]),
                    eth(
                        BROADCAST,
                        src,
                        ETH_IPV4,
                        &udp4(ip4(a), ip4(r), 40000, 9, b"x"),
                    ),
                ]
            })
            .collect::<Vec<_>>()
    };
    send_frames(&a.namespace, "eth0", &burst(vm));
    send_frames(&a.namespace, "eth0", &burst(rm));
    send_frames(&r2.namespace, "eth0", &burst(vm));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        fdb_port(&n1, &vm).as_deref(),
        Some(v_port.as_str()),
        "victim moved on n1"
    );
    assert_eq!(fdb_port(&n1, &rm), r_port_n1, "remote pod moved on n1");
    assert_ne!(
        fdb_port(&n2, &vm)
            .as_deref()
            .map(|p| p.starts_with("vethwe")),
        Some(true),
        "victim's MAC on a pod port of n2"
    );
    // Everyone still reaches the victim, at once.
    for p in [r, r2] {
        assert!(ping(&p.namespace, &v.ip), "{} -> victim", p.namespace);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root (network namespaces): run as root with --include-ignored, as scripts/test.sh does"]
async fn a_pods_mac_cannot_be_taken_fastpath() {
    prerequisites();
    mac_spoofing_moves_nothing(LabPassword::None, "fastpath").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root (network namespaces): run as root with --include-ignored, as scripts/test.sh does"]
async fn a_pods_mac_cannot_be_taken_sleeve() {
    prerequisites();
    mac_spoofing_moves_nothing(LabPassword::Random, "sleeve").await;
}

/// The IPv6 addresses (global scope) and default routes of `ns`, as `ip` prints them.
fn ipv6_state(ns: &str, dev: &str) -> String {
    let run = |args: &[&str]| {
        let out = Command::new("ip")
            .args(["netns", "exec", ns, "ip"])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    run(&["-6", "addr", "show", "dev", dev, "scope", "global"])
        + &run(&["-6", "route", "show", "default"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root (network namespaces): run as root with --include-ignored, as scripts/test.sh does"]
async fn router_advertisements_from_a_pod_are_dropped() {
    prerequisites();
    let s = Scene::new("hr", LabPassword::None, &[]).await;
    let (a, v, r) = (s.attacker(), s.victim(), s.remote());
    let am = pod_mac(a);
    let prefix: Ipv6Addr = "2001:db8:77::".parse().unwrap();
    // The pods would take one (a fresh namespace accepts RAs), so would a bridge with IPv6
    // defaults.
    for p in [v, r] {
        let acc = Command::new("ip")
            .args([
                "netns",
                "exec",
                &p.namespace,
                "sysctl",
                "-n",
                "net.ipv6.conf.eth0.accept_ra",
            ])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&acc.stdout).trim(), "1");
    }
    // Honest neighbour discovery still works: pods reach each other's link-local addresses,
    // on one node and across nodes.
    for (from, to) in [(a, v), (r, v), (v, r)] {
        let dst = format!("{}%eth0", link_local(pod_mac(to)));
        let ok = (0..20).any(|_| {
            Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &from.namespace,
                    "ping",
                    "-6",
                    "-c1",
                    "-W1",
                    &dst,
                ])
                .output()
                .is_ok_and(|o| o.status.success())
        });
        assert!(ok, "{} cannot reach {dst}", from.namespace);
    }
    let ra = router_advert(link_local(am), am, prefix);
    let frames: Vec<Vec<u8>> = (0..5)
        .map(|_| eth([0x33, 0x33, 0, 0, 0, 1], am, ETH_IPV6, &ra))
        .collect();
    send_frames(&a.namespace, "eth0", &frames);
    tokio::time::sleep(Duration::from_secs(2)).await;
    for (ns, dev) in [
        (v.namespace.clone(), "eth0"),
        (r.namespace.clone(), "eth0"),
        (s.lab.namespace(1), "weft"),
        (s.lab.namespace(2), "weft"),
    ] {
        let st = ipv6_state(&ns, dev);
        assert!(!st.contains("2001:db8:77"), "{ns} took the prefix:\n{st}");
        assert!(
            !st.contains("default"),
            "{ns} took the default route:\n{st}"
        );
    }
    let ra_drops = guard_drops(&s.lab, 1, "router-messages", 5).await;
    assert!(ra_drops >= 5, "counted: {ra_drops}");
    // Neighbour advertisements for someone else's link-local address go nowhere either.
    let vll = link_local(pod_mac(v));
    let na = neighbour_advert(link_local(am), vll, am);
    let caught = std::thread::scope(|sc| {
        let h = sc.spawn(|| {
            capture(&v.namespace, "eth0", Duration::from_secs(1), |f| {
                f.len() > 54 && f[12..14] == ETH_IPV6.to_be_bytes() && f[54] == 136
            })
        });
        std::thread::sleep(Duration::from_millis(200));
        send_frames(
            &a.namespace,
            "eth0",
            &[eth([0x33, 0x33, 0, 0, 0, 1], am, ETH_IPV6, &na)],
        );
        h.join().unwrap()
    });
    assert!(caught.is_empty(), "a forged NA reached the victim");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root (network namespaces): run as root with --include-ignored, as scripts/test.sh does"]
async fn pods_see_no_traffic_for_others_and_cannot_fill_the_fdb() {
    prerequisites();
    let s = Scene::new("hf", LabPassword::None, &[]).await;
    let (a, v, r) = (s.attacker(), s.victim(), s.remote());
    let (n1, n2) = (s.lab.namespace(1), s.lab.namespace(2));
    // Unknown unicast: frames to a MAC nobody has, from a pod on the other node and from the
    // node itself, must not be flooded to the pods of n1.
    let nobody: Mac = [0x02, 0xde, 0xad, 0xbe, 0xef, 0x01];
    let rm = pod_mac(r);
    let to_nobody = eth(
        nobody,
        rm,
        ETH_IPV4,
        &udp4(ip4(r), ip4(v), 40000, 7100, b"sniff"),
    );
    let seen = std::thread::scope(|sc| {
        let ha = sc.spawn(|| {
            capture(&a.namespace, "eth0", Duration::from_secs(2), |f| {
                is_udp_with(f, 7100, b"sniff")
            })
        });
        let hv = sc.spawn(|| {
            capture(&v.namespace, "eth0", Duration::from_secs(2), |f| {
                is_udp_with(f, 7100, b"sniff")
            })
        });
        std::thread::sleep(Duration::from_millis(300));
        send_frames(&r.namespace, "eth0", &vec![to_nobody.clone(); 5]);
        (ha.join().unwrap().len(), hv.join().unwrap().len())
    });
    assert_eq!(
        seen,
        (0, 0),
        "unknown unicast flooded to pods (attacker, victim)"
    );

    // 20,000 random source MACs from one pod: neither node's FDB grows.
    let before = (fdb_len(&n1), fdb_len(&n2));
    let am = pod_mac(a);
    let frames: Vec<Vec<u8>> = (0..20_000u32)
        .map(|i| {
            let b = i.to_be_bytes();
            let src = [0x02, 0x5e, b[0], b[1], b[2], b[3]];
            eth(
                BROADCAST,
                src,
                ETH_ARP,
                &arp(1, src, ip4(a), [0; 6], ip4(v)),
            )
        })
        .collect();
    send_frames(&a.namespace, "eth0", &frames);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = (fdb_len(&n1), fdb_len(&n2));
    assert!(
        after.0 <= before.0 + 4 && after.1 <= before.1 + 4,
        "FDB grew: {before:?} -> {after:?}"
    );
    let _ = am;
    assert!(ping(&r.namespace, &v.ip));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root (network namespaces): run as root with --include-ignored, as scripts/test.sh does"]
async fn pods_cannot_reach_their_routers_ports() {
    prerequisites();
    // The router listens on every address of its node here, so only the guard stands between
    // a pod and its ports.
    let s = Scene::new(
        "hp",
        LabPassword::None,
        &[
            "--metrics-addr",
            "0.0.0.0:6782",
            "--status-addr",
            "0.0.0.0:6784",
        ],
    )
    .await;
    let (a, v) = (s.attacker(), s.victim());
    let n1 = s.lab.namespace(1);
    let gw = v.gateway.clone();
    let underlay = s.lab.underlay_addr(1).to_string();
    // TCP: status and metrics, by the gateway address and by the node's underlay address.
    for addr in [&gw, &underlay] {
        for port in [6782u16, 6784] {
            let target = format!("{addr}:{port}");
            let ns = Netns::open(format!("/var/run/netns/{}", a.namespace)).unwrap();
            let t = target.clone();
            let r = ns
                .run_blocking(move || {
                    std::net::TcpStream::connect_timeout(
                        &t.parse().unwrap(),
                        Duration::from_millis(700),
                    )
                    .map(|_| ())
                })
                .unwrap();
            assert!(r.is_err(), "a pod reached {target}");
        }
    }
    // The node itself still does (the refusal is the guard's, not a closed port).
    let ns = Netns::open(format!("/var/run/netns/{n1}")).unwrap();
    let t = format!("{gw}:6782");
    assert!(ns
        .run_blocking(move || std::net::TcpStream::connect_timeout(
            &t.parse().unwrap(),
            Duration::from_secs(2)
        )
        .is_ok())
        .unwrap());
    // UDP: garbage to the sleeve, and a VXLAN datagram whose inner frame would carry a spoofed
    // packet to the victim straight onto the bridge.
    let malformed_before = metric(&s.lab, 1, "weft_sleeve_dropped_total").await;
    let am = pod_mac(a);
    let gw_mac = mac_in(&n1, "weft");
    let gw4: Ipv4Addr = gw.parse().unwrap();
    let inner = eth(
        pod_mac(v),
        [2, 0xba, 0xd0, 0, 0, 1],
        ETH_IPV4,
        &udp4(ip4(s.remote()), ip4(v), 40000, 7200, b"decap"),
    );
    let got = udp_received(&v.namespace, 7200, Duration::from_secs(2), || {
        let mut frames = Vec::new();
        for port in [6783u16, 6784, 6785] {
            let payload = if port == 6785 {
                vxlan(6785, &inner)
            } else {
                vec![0u8; 64]
            };
            frames.push(eth(
                gw_mac,
                am,
                ETH_IPV4,
                &udp4(ip4(a), gw4, 40000, port, &payload),
            ));
        }
        send_frames(&a.namespace, "eth0", &frames);
    });
    assert!(got.is_empty(), "decapsulated into the bridge: {got:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        metric(&s.lab, 1, "weft_sleeve_dropped_total").await,
        malformed_before,
        "the sleeve saw the pod's datagram"
    );
    let blocked = guard_drops(&s.lab, 1, "node-ports", 3).await;
    assert!(blocked >= 3, "counted: {blocked}");
}
