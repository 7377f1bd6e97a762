//! End to end in network namespaces: two "nodes" (each a namespace with bridge `weft`),
//! joined by a veth underlay with a VXLAN port on each bridge; the nine pods of the truth
//! tables (plus one outside address) are namespaces on veths, split across the nodes so
//! both bridged same-node traffic and traffic arriving from the overlay are exercised. Each
//! node applies the ruleset for its own pods with real `nft`; real TCP and UDP probes give the
//! observed matrix, compared with the compiled policy's: every truth-table scenario and a
//! dozen seeded generated policy sets. Needs root.

#![allow(unsafe_code)] // syscalls and FFI; each use has its SAFETY note

mod common;

use common::generate::gen_policy;
use common::scenarios::scenarios;
use common::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use weft_policy::nflog::NflogReader;
use weft_policy::render::{LogSettings, Ruleset};
use weft_policy::{Compiled, Direction, Enforcer, Nft};

/// Fails the test unless running as root. The tests that use it are `#[ignore]`d ("needs
/// root"): they run when asked for (`--include-ignored`, as scripts/test.sh does), and then
/// never pass without having run.
macro_rules! require_root {
    () => {
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            panic!("this test needs root (network namespaces, links, nftables)");
        }
    };
}

const TIMEOUT: Duration = Duration::from_millis(700);
/// Generated policy sets probed end to end (each about a second).
const GENERATED: usize = 12;
/// TCP and UDP probes (SCTP sockets are not in this kernel; SCTP is covered by the tables).
const NET_PROBES: [(&str, u16); 5] = [
    ("TCP", 80),
    ("TCP", 81),
    ("UDP", 80),
    ("UDP", 81),
    ("UDP", 53),
];
const NODE_IPS: [Ipv4Addr; 2] = [Ipv4Addr::new(10, 0, 0, 101), Ipv4Addr::new(10, 0, 0, 102)];

fn run(cmd: &[&str]) {
    let out = Command::new(cmd[0])
        .args(&cmd[1..])
        .output()
        .expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `f` on a thread inside the named network namespace.
fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> JoinHandle<T> {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).expect("netns file");
        // SAFETY: setns on this thread only, with a valid namespace fd.
        let rc = unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&file), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
        f()
    })
}

/// The topology; dropping it stops the listeners and deletes every namespace.
struct Lab {
    prefix: String,
    namespaces: Vec<String>,
    /// Endpoint index → (node index, namespace).
    eps: Vec<(Ep, usize, String)>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        for ns in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

/// Node 1: x/a, x/b, x/c, y/a. Node 2: y/b, y/c, z/*, and the outside address.
fn node_of(e: &Ep) -> usize {
    if e.in_ns("x") || e.is("y", "a") {
        0
    } else {
        1
    }
}

impl Lab {
    fn node(&self, i: usize) -> String {
        format!("{}-n{}", self.prefix, i + 1)
    }

    fn new(tag: &str) -> Lab {
        let prefix = format!("wp{}{tag}", std::process::id());
        let mut lab = Lab {
            prefix: prefix.clone(),
            namespaces: Vec::new(),
            eps: Vec::new(),
            stop: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
        };
        for (i, node_ip) in NODE_IPS.iter().enumerate() {
            let n = lab.node(i);
            run(&["ip", "netns", "add", &n]);
            lab.namespaces.push(n.clone());
            run(&["ip", "-n", &n, "link", "set", "lo", "up"]);
            run(&["ip", "-n", &n, "link", "add", "weft", "type", "bridge"]);
            run(&["ip", "-n", &n, "link", "set", "weft", "up"]);
            run(&[
                "ip",
                "-n",
                &n,
                "addr",
                "add",
                &format!("{node_ip}/8"),
                "dev",
                "weft",
            ]);
            in_netns(&n, || {
                weft_policy::apply::ensure_br_netfilter().expect("br_netfilter")
            })
            .join()
            .unwrap();
        }
        let (n1, n2) = (lab.node(0), lab.node(1));
        run(&[
            "ip", "-n", &n1, "link", "add", "u0", "type", "veth", "peer", "name", "u0", "netns",
            &n2,
        ]);
        for (i, n) in [&n1, &n2].into_iter().enumerate() {
            let (me, peer) = if i == 0 {
                ("10.200.0.1", "10.200.0.2")
            } else {
                ("10.200.0.2", "10.200.0.1")
            };
            run(&[
                "ip",
                "-n",
                n,
                "addr",
                "add",
                &format!("{me}/24"),
                "dev",
                "u0",
            ]);
            run(&["ip", "-n", n, "link", "set", "u0", "up"]);
            run(&[
                "ip", "-n", n, "link", "add", "vx0", "type", "vxlan", "id", "42", "local", me,
                "remote", peer, "dstport", "4789", "dev", "u0",
            ]);
            run(&["ip", "-n", n, "link", "set", "vx0", "master", "weft", "up"]);
        }
        for (i, e) in endpoints().into_iter().enumerate() {
            let node = node_of(&e);
            let ns = format!("{prefix}-e{i}");
            run(&["ip", "netns", "add", &ns]);
            lab.namespaces.push(ns.clone());
            let host = format!("pv{i}");
            run(&[
                "ip",
                "-n",
                &lab.node(node),
                "link",
                "add",
                &host,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                &ns,
            ]);
            run(&[
                "ip",
                "-n",
                &lab.node(node),
                "link",
                "set",
                &host,
                "master",
                "weft",
                "up",
            ]);
            run(&[
                "ip",
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/8", e.ip),
                "dev",
                "eth0",
            ]);
            run(&["ip", "-n", &ns, "link", "set", "eth0", "up"]);
            run(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
            lab.listen(&ns);
            lab.eps.push((e, node, ns));
        }
        // The nodes listen too (node traffic is exempt from policy).
        for i in 0..2 {
            let n = lab.node(i);
            lab.listen(&n);
        }
        std::thread::sleep(Duration::from_millis(200));
        lab
    }

    /// TCP listeners on 80 and 81, UDP echo on 80, 81 and 53.
    fn listen(&mut self, ns: &str) {
        for (proto, port) in NET_PROBES {
            let stop = self.stop.clone();
            self.threads.push(in_netns(ns, move || {
                let addr = SocketAddr::from(([0, 0, 0, 0], port));
                if proto == "TCP" {
                    let l = TcpListener::bind(addr).expect("bind tcp");
                    l.set_nonblocking(true).unwrap();
                    while !stop.load(Ordering::SeqCst) {
                        match l.accept() {
                            Ok(_) => {}
                            Err(_) => std::thread::sleep(Duration::from_millis(5)),
                        }
                    }
                } else {
                    let s = UdpSocket::bind(addr).expect("bind udp");
                    s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
                    let mut buf = [0u8; 64];
                    while !stop.load(Ordering::SeqCst) {
                        if let Ok((n, from)) = s.recv_from(&mut buf) {
                            let _ = s.send_to(&buf[..n], from);
                        }
                    }
                }
            }));
        }
    }

    fn ns_of(&self, e: &Ep) -> &str {
        &self
            .eps
            .iter()
            .find(|(x, _, _)| x.label() == e.label())
            .unwrap()
            .2
    }

    /// The observed matrix: (src label, dst label, proto, port) → connected.
    fn probe_all(&self) -> Vec<(String, String, &'static str, u16, bool)> {
        let mut handles = Vec::new();
        for (s, _, ns) in &self.eps {
            let targets: Vec<Ep> = self
                .eps
                .iter()
                .map(|e| e.0.clone())
                .filter(|d| d.label() != s.label())
                .collect();
            let src = s.label();
            handles.push(in_netns(ns, move || {
                let probes: Vec<_> = targets
                    .iter()
                    .flat_map(|d| {
                        NET_PROBES
                            .iter()
                            .map(move |&(p, port)| (d.clone(), p, port))
                    })
                    .map(|(d, p, port)| {
                        // Threads made here inherit this thread's namespace.
                        let h = std::thread::spawn(move || probe(IpAddr::V4(d.ip), p, port));
                        (d.label(), p, port, h)
                    })
                    .collect();
                probes
                    .into_iter()
                    .map(|(d, p, port, h)| (src.clone(), d, p, port, h.join().unwrap()))
                    .collect::<Vec<_>>()
            }));
        }
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    }

    fn probe_from(&self, ns: &str, dst: IpAddr, proto: &'static str, port: u16) -> bool {
        in_netns(ns, move || probe(dst, proto, port))
            .join()
            .unwrap()
    }

    fn local_ips(&self, node: usize) -> Vec<IpAddr> {
        self.eps
            .iter()
            .filter(|(e, n, _)| *n == node && e.pod.is_some())
            .map(|(e, _, _)| IpAddr::V4(e.ip))
            .collect()
    }

    fn enforcers(&self) -> Vec<Enforcer> {
        (0..2)
            .map(|i| Enforcer::new(Nft::in_netns(format!("/run/netns/{}", self.node(i)))))
            .collect()
    }
}

/// Source ports of UDP probes: never reused within a run. A random ephemeral port can repeat
/// the 5-tuple of an earlier probe whose conntrack entry (established, 30-120 s) is still
/// there, and that entry would let the datagram pass as a reply of an allowed flow after the
/// policy changed. (TCP does not reuse a tuple that conntrack still tracks as open.)
static NEXT_UDP_PORT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(10_000);

/// One probe: a TCP connection, or a UDP datagram echoed back, from a fresh socket (a new
/// conntrack entry every time).
fn probe(dst: IpAddr, proto: &str, port: u16) -> bool {
    let to = SocketAddr::new(dst, port);
    if proto == "TCP" {
        TcpStream::connect_timeout(&to, TIMEOUT).is_ok()
    } else {
        let src = NEXT_UDP_PORT.fetch_add(1, Ordering::Relaxed);
        assert!(src >= 10_000, "UDP probe source ports ran out");
        let s = UdpSocket::bind(("0.0.0.0", src)).unwrap();
        s.set_read_timeout(Some(TIMEOUT)).unwrap();
        if s.connect(to).is_err() || s.send(b"probe").is_err() {
            return false;
        }
        let mut buf = [0u8; 16];
        matches!(s.recv(&mut buf), Ok(5))
    }
}

/// The IPv6 link-local address of `eth0` in namespace `ns`.
fn link_local(ns: &str) -> std::net::Ipv6Addr {
    let out = Command::new("ip")
        .args([
            "-n", ns, "-6", "-o", "addr", "show", "dev", "eth0", "scope", "link",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let addr = text
        .split_whitespace()
        .find_map(|w| w.strip_suffix("/64"))
        .unwrap_or_else(|| panic!("no link-local address in {ns}: {text}"));
    addr.parse().unwrap()
}

/// A TCP connection over IPv6 link-local from `from` to `to`'s address (the listeners are
/// IPv4-only: a packet that arrives is refused; a dropped one times out).
fn v6_probe(from: &str, to: std::net::Ipv6Addr, port: u16) -> std::io::ErrorKind {
    in_netns(from, move || {
        // SAFETY: a NUL-terminated name.
        let idx = unsafe { libc::if_nametoindex(c"eth0".as_ptr()) };
        let to = std::net::SocketAddrV6::new(to, port, 0, idx);
        match TcpStream::connect_timeout(&to.into(), Duration::from_millis(500)) {
            Ok(_) => std::io::ErrorKind::Other,
            Err(e) => e.kind(),
        }
    })
    .join()
    .unwrap()
}

fn apply_all(lab: &Lab, enforcers: &mut [Enforcer], c: &Compiled) -> Vec<String> {
    (0..2)
        .map(|i| {
            let rs = Ruleset::build(c, &lab.local_ips(i), &LogSettings::default());
            let r = enforcers[i].apply(&rs).expect("apply");
            format!("{:?}", r.mode)
        })
        .collect()
}

fn compare(lab: &Lab, case: &str, c: &Compiled) {
    let observed = lab.probe_all();
    let eps = endpoints();
    let ep = |l: &str| eps.iter().find(|e| e.label() == l).unwrap().clone();
    let wrong: Vec<String> = observed
        .iter()
        .filter(|(s, d, p, port, got)| c.allowed(ip(&ep(s)), ip(&ep(d)), proto(p), *port) != *got)
        .map(|(s, d, p, port, got)| format!("{s} -> {d} {p}/{port}: observed {got}"))
        .collect();
    assert!(
        wrong.is_empty(),
        "{case}: {} cells differ from the compiled policy:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}

#[test]
#[ignore = "needs root (network namespaces): run as root with --include-ignored, as scripts/test.sh does"]
fn observed_matrices_match_the_compiled_policy() {
    require_root!();
    let lab = Lab::new("m");
    let mut enf = lab.enforcers();
    let (none, _) = compile(&[]);
    apply_all(&lab, &mut enf, &none);
    // Warm-up (ARP, FDB), then everything must connect.
    let _ = lab.probe_all();
    compare(&lab, "no policy", &none);
    let mut modes = Vec::new();
    // Every truth-table scenario, then seeded generated sets (as in truth.rs).
    for (name, policies, _) in scenarios() {
        let (c, rejected) = compile(&policies);
        assert_eq!(rejected, 0, "{name}");
        modes.extend(apply_all(&lab, &mut enf, &c));
        compare(&lab, name, &c);
    }
    let mut r = ChaCha8Rng::seed_from_u64(0x5eed7);
    for case in 0..GENERATED {
        let n = r.random_range(1..=4);
        let policies: Vec<Value> = (0..n).map(|i| gen_policy(&mut r, i)).collect();
        let (c, _) = compile(&policies);
        modes.extend(apply_all(&lab, &mut enf, &c));
        compare(&lab, &format!("generated case {case}: {policies:?}"), &c);
    }
    // A change of peers only (a pod relabelled, so that it now matches a selector) goes in
    // as an element update of the shared peer set.
    let p = vec![policy(
        "x",
        "p",
        json!({"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"tier": "db"}}}]}]}),
    )];
    let (c1, _) = compile(&p);
    apply_all(&lab, &mut enf, &c1);
    compare(&lab, "from tier=db (y/b)", &c1);
    let mut pods = pods_json();
    let zc = pods
        .iter_mut()
        .find(|p| p["metadata"]["namespace"] == "z" && p["metadata"]["name"] == "c")
        .unwrap();
    zc["metadata"]["labels"]["tier"] = json!("db");
    let (c2, _) = compile_with(&p, &pods, &namespaces_json());
    let m = apply_all(&lab, &mut enf, &c2);
    assert_eq!(m[0], "Diff", "a relabelled peer is an element update");
    compare(&lab, "from tier=db (y/b, z/c: element update)", &c2);
    eprintln!("apply modes: {modes:?}");
}

fn deny(ns: &str, types: Value) -> Vec<Value> {
    vec![policy(
        ns,
        "deny",
        json!({"podSelector": {}, "policyTypes": types}),
    )]
}

#[test]
#[ignore = "needs root (network namespaces): run as root with --include-ignored, as scripts/test.sh does"]
fn latency_logging_counters_node_traffic_and_failed_apply() {
    require_root!();
    let lab = Lab::new("d");
    let mut enf = lab.enforcers();
    let eps = endpoints();
    let get = |ns: &str, n: &str| eps.iter().find(|e| e.is(ns, n)).unwrap().clone();
    let (xb, yb) = (get("x", "b"), get("y", "b"));
    let (none, _) = compile(&[]);
    apply_all(&lab, &mut enf, &none);
    let _ = lab.probe_from(lab.ns_of(&xb), ip(&yb), "TCP", 80);
    assert!(
        lab.probe_from(lab.ns_of(&xb), ip(&yb), "TCP", 80),
        "open before any policy"
    );
    // IPv6 link-local across the bridge: not filtered while nothing is isolated (the
    // addresses may still be tentative for a moment).
    let (yb_ll, zc) = (link_local(lab.ns_of(&yb)), get("z", "c"));
    let deadline = Instant::now() + Duration::from_secs(5);
    while v6_probe(lab.ns_of(&zc), yb_ll, 80) != std::io::ErrorKind::ConnectionRefused {
        assert!(
            Instant::now() < deadline,
            "IPv6 link-local never reached y/b"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // NFLOG listener on node 2 (where y/b lives) before the blocked attempt.
    let events = in_netns(&lab.node(1), {
        let want = ip(&yb);
        move || {
            let mut r = NflogReader::open(LogSettings::default().group).expect("nflog bind");
            r.set_timeout(Some(Duration::from_millis(200))).unwrap();
            let end = Instant::now() + Duration::from_secs(5);
            while Instant::now() < end {
                if let Ok(ev) = r.recv() {
                    if let Some(e) = ev.into_iter().find(|e| e.dst == want) {
                        return Some(e);
                    }
                }
            }
            None
        }
    });
    std::thread::sleep(Duration::from_millis(200));

    // Update latency: from the change to a new connection being refused.
    let t0 = Instant::now();
    let (c, _) = compile(&deny("y", json!(["Ingress", "Egress"])));
    apply_all(&lab, &mut enf, &c);
    let applied = t0.elapsed();
    let blocked = !lab.probe_from(lab.ns_of(&xb), ip(&yb), "TCP", 80);
    assert!(blocked, "a new connection after the apply is refused");
    assert!(
        applied < Duration::from_secs(1),
        "compile + render + apply took {applied:?}"
    );
    eprintln!("policy change enforced after {applied:?} (compile, render, nft on two nodes)");

    // The drop was logged with the namespace, and counted.
    let ev = events
        .join()
        .unwrap()
        .expect("an NFLOG event for the blocked connection");
    assert_eq!(
        (ev.direction, ev.namespace.as_str()),
        (Direction::Ingress, "y")
    );
    assert_eq!((ev.src, ev.protocol, ev.port), (ip(&xb), 6, Some(80)));
    let drops = enf[1].drop_counts().unwrap();
    let d = drops
        .iter()
        .find(|d| d.direction == Direction::Ingress && d.namespace == "y")
        .expect("counter");
    assert!(d.packets >= 1, "{drops:?}");

    // An isolated pod is not reachable over IPv6 link-local, which its IPv4 rules cannot
    // name (weft's pod network is IPv4: the guard drops IPv6 on the bridge).
    assert_eq!(
        v6_probe(lab.ns_of(&zc), yb_ll, 80),
        std::io::ErrorKind::TimedOut,
        "IPv6 link-local to an isolated pod is dropped"
    );

    // Node traffic is exempt: the node reaches its isolated pod, and the pod its node.
    let node2 = lab.node(1);
    assert!(
        lab.probe_from(&node2, ip(&yb), "TCP", 80),
        "node -> local pod"
    );
    assert!(
        lab.probe_from(lab.ns_of(&yb), IpAddr::V4(NODE_IPS[1]), "TCP", 80),
        "pod -> its node"
    );
    assert!(
        !lab.probe_from(lab.ns_of(&yb), ip(&get("z", "a")), "TCP", 80),
        "pod -> other pod blocked"
    );

    // Reverting is as quick.
    let t1 = Instant::now();
    apply_all(&lab, &mut enf, &none);
    assert!(lab.probe_from(lab.ns_of(&xb), ip(&yb), "TCP", 80));
    assert!(t1.elapsed() < Duration::from_secs(1));
    apply_all(&lab, &mut enf, &c);

    // A ruleset nft refuses leaves the previous one in force, and says why.
    let mut bad = enf[1].applied().unwrap().clone();
    let mut g = bad.groups.values().next().unwrap().clone();
    g.namespace = "bad\"ns".into();
    bad.groups.insert("i-ffffffffffff".into(), g);
    let err = enf[1].apply(&bad).unwrap_err().to_string();
    assert!(err.contains("nft refused"), "{err}");
    assert!(enf[1].last_report().unwrap().error.is_some());
    assert!(
        !lab.probe_from(lab.ns_of(&xb), ip(&yb), "TCP", 80),
        "the previous rules still block"
    );
    assert!(
        lab.probe_from(&node2, ip(&yb), "TCP", 81),
        "and still exempt node traffic"
    );
    let good = Ruleset::build(&c, &lab.local_ips(1), &LogSettings::default());
    assert_eq!(enf[1].applied(), Some(&good));

    // Counters survive a whole-table replacement.
    let before = enf[1]
        .drop_counts()
        .unwrap()
        .iter()
        .map(|d| d.packets)
        .sum::<u64>();
    let (other, _) = compile(&deny("y", json!(["Ingress"])));
    let m = apply_all(&lab, &mut enf, &other);
    assert_eq!(m[1], "Full");
    let after = enf[1]
        .drop_counts()
        .unwrap()
        .iter()
        .map(|d| d.packets)
        .sum::<u64>();
    assert!(after >= before && before > 0, "{before} -> {after}");
    for e in &mut enf {
        e.remove().unwrap();
    }
}

/// The dual-stack form of the table (pods with IPv6 addresses too; weft's own pod network is
/// IPv4) is valid nft, whole and as an element update, and its IPv6 sets hold the pods'.
#[test]
#[ignore = "needs root (network namespaces): run as root with --include-ignored, as scripts/test.sh does"]
fn dual_stack_table_is_accepted_by_nft() {
    require_root!();
    let ns = format!("wp{}v6", std::process::id());
    run(&["ip", "netns", "add", &ns]);
    struct Del(String);
    impl Drop for Del {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
        }
    }
    let _del = Del(ns.clone());
    let dual = |extra: bool| {
        let mut pods = pods_json();
        for p in pods.iter_mut() {
            let v4: Ipv4Addr = p["status"]["podIPs"][0]["ip"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap();
            let o = v4.octets();
            let v6 = format!("fd00::{}:{}", o[2], o[3]);
            p["status"]["podIPs"]
                .as_array_mut()
                .unwrap()
                .push(json!({ "ip": v6 }));
        }
        if extra {
            let mut p = pods[0].clone();
            p["metadata"]["name"] = json!("a2");
            p["status"]["podIPs"] = json!([{"ip": "10.0.1.9"}, {"ip": "fd00::1:9"}]);
            pods.push(p);
        }
        pods
    };
    let policies = vec![
        policy(
            "x",
            "in",
            json!({"podSelector": {}, "ingress": [{"from": [
                {"namespaceSelector": {}, "podSelector": {"matchLabels": {"pod": "a"}}},
                {"ipBlock": {"cidr": "fd00::/16", "except": ["fd00::2:0/112"]}},
                {"ipBlock": {"cidr": "10.9.0.0/16"}}
            ], "ports": [{"port": "web"}, {"port": 53, "protocol": "UDP"}]}]}),
        ),
        policy(
            "x",
            "out",
            json!({"podSelector": {}, "policyTypes": ["Egress"], "egress": [
                {"to": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}], "ports": [{"port": "serve-80-udp", "protocol": "UDP"}]},
                {"to": [{"ipBlock": {"cidr": "::/0"}}], "ports": [{"port": 443}]}
            ]}),
        ),
    ];
    let local: Vec<IpAddr> = ["10.0.1.1", "fd00::1:1", "10.0.1.2", "fd00::1:2"]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
    let (c, rejected) = compile_with(&policies, &dual(false), &namespaces_json());
    assert_eq!(rejected, 0);
    let rs = Ruleset::build(&c, &local, &LogSettings::default());
    assert!(rs.ipv6);
    let mut enf = Enforcer::new(Nft::in_netns(format!("/run/netns/{ns}")));
    let r = enf.apply(&rs).expect("dual-stack table");
    assert_eq!(r.mode, weft_policy::ApplyMode::Full);
    let (c2, _) = compile_with(&policies, &dual(true), &namespaces_json());
    let rs2 = Ruleset::build(&c2, &local, &LogSettings::default());
    let r = enf.apply(&rs2).expect("dual-stack element update");
    assert_eq!(r.mode, weft_policy::ApplyMode::Diff, "{r:?}");
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns,
            "nft",
            "list",
            "table",
            "inet",
            "weft-policy",
        ])
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(listing.contains("fd00::1:9"), "{listing}");
    assert!(listing.contains("ip6 saddr fe80::/10 drop"), "{listing}");
    // The rendered data (every pod local) agrees with the compiled policy on IPv6 too.
    let every: Vec<IpAddr> = c2.pods().iter().flat_map(|p| p.ips.clone()).collect();
    let all = Ruleset::build(&c2, &every, &LogSettings::default());
    let v6 = |s: &str| -> IpAddr { s.parse().unwrap() };
    let mut allowed = 0;
    for (src, dst, p, port) in [
        ("fd00::1:9", "fd00::1:2", "TCP", 81),
        ("fd00::1:9", "fd00::2:2", "UDP", 80),
        ("fd00::2:2", "fd00::1:2", "TCP", 81),
        ("fd00::3:3", "fd00::1:2", "UDP", 53),
        ("fd00::1:1", "fd00::2:3", "UDP", 80),
        ("fd00::1:1", "fd00::3:3", "UDP", 80),
        ("fd00::1:1", "2001:db8::1", "TCP", 443),
    ] {
        let (s, d) = (v6(src), v6(dst));
        assert_eq!(
            all.admits(s, d, proto(p), port),
            c2.allowed(s, d, proto(p), port),
            "{src} -> {dst} {p}/{port}"
        );
        allowed += usize::from(c2.allowed(s, d, proto(p), port));
    }
    assert!(
        (2..7).contains(&allowed),
        "{allowed} of 7 allowed: not trivial"
    );
    enf.remove().unwrap();
}
