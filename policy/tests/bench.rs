//! The benchmark (run by `bench/policy.sh`, ignored in normal test runs): 10,000
//! pods in 100 namespaces on 100 nodes, 1,000 policies (ten kinds, ten per namespace).
//! Measures compile and render; apply with real `nft` in a throwaway namespace: whole table
//! (a node with 100 local pods and a dense one with 1,000) and element updates for one pod
//! added or removed elsewhere in the cluster or added on the node (compile, render, diff and
//! nft timed apart); `nft -f` of text against JSON; and the rate of new flows between two
//! isolated pods on one bridge with no table, 10 and 1,000 policies (the path through the
//! table is the same for both: per-packet cost must not depend on the number of policies).
//! Repeated measurements give the median and the range. Prints a markdown table. Needs root
//! and a release build for meaningful figures.

#![allow(unsafe_code)] // syscalls and FFI; each use has its SAFETY note

use serde_json::{json, Value};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use weft_policy::model::{Cluster, Pod};
use weft_policy::render::{LogSettings, Ruleset};
use weft_policy::{k8s, Compiled, Enforcer, Nft, Protocol};

const NAMESPACES: usize = 100;
const PODS_PER_NS: usize = 100;
const NODES: usize = 100;

/// Pod `k` of namespace `n` (global number g): pairs of consecutive pods share a node, so a
/// namespace spreads over 50 nodes; address 10.32.<node>.<slot>.
fn pod_ip(n: usize, k: usize) -> Ipv4Addr {
    let g = n * PODS_PER_NS + k;
    let node = (g / 2) % NODES;
    let slot = (g / (2 * NODES)) * 2 + g % 2 + 1;
    Ipv4Addr::new(10, 32, node as u8, slot as u8)
}

fn cluster_pods() -> (Vec<Value>, Vec<Value>) {
    let mut nss = Vec::new();
    let mut pods = Vec::new();
    for n in 0..NAMESPACES {
        let env = if n % 3 == 0 { "prod" } else { "dev" };
        nss.push(json!({"metadata": {"name": format!("ns-{n}"), "labels": {"team": format!("t{}", n % 10), "env": env}}}));
        for k in 0..PODS_PER_NS {
            let http = if k % 2 == 0 { 8080 } else { 8081 };
            pods.push(json!({
                "metadata": {"name": format!("p-{k}"), "namespace": format!("ns-{n}"),
                             "labels": {"app": format!("a{}", k % 10), "tier": (["web", "api", "db"][k % 3]), "v": format!("{}", k % 4)}},
                "spec": {"containers": [{"name": "c", "ports": [{"name": "http", "containerPort": http}, {"name": "metrics", "containerPort": 9100}]}]},
                "status": {"podIPs": [{"ip": pod_ip(n, k).to_string()}]}
            }));
        }
    }
    (nss, pods)
}

/// Ten kinds of policy per namespace.
fn policies(n: usize) -> Vec<Value> {
    let ns = format!("ns-{n}");
    let p = |j: usize, spec: Value| json!({"metadata": {"name": format!("pol-{j}"), "namespace": ns}, "spec": spec});
    vec![
        p(0, json!({"podSelector": {}, "policyTypes": ["Ingress"]})),
        p(
            1,
            json!({"podSelector": {"matchLabels": {"app": "a1"}}, "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "a0"}}}], "ports": [{"port": 80}, {"port": "http"}, {"port": 5353, "protocol": "UDP"}]}]}),
        ),
        p(
            2,
            json!({"podSelector": {"matchLabels": {"app": "a2"}}, "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": format!("t{}", (n + 1) % 10)}}, "podSelector": {"matchLabels": {"tier": "web"}}}], "ports": [{"port": 8000, "endPort": 8100}]}]}),
        ),
        p(
            3,
            json!({"podSelector": {"matchLabels": {"app": "a3"}}, "policyTypes": ["Egress"], "egress": [
            {"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ns-0"}}, "podSelector": {"matchLabels": {"app": "a9"}}}], "ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]},
            {"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8"]}}], "ports": [{"port": 443}]}]}),
        ),
        p(
            4,
            json!({"podSelector": {"matchExpressions": [{"key": "tier", "operator": "In", "values": ["web", "api"]}]}, "ingress": [{"from": [{"ipBlock": {"cidr": format!("10.32.{}.0/24", n % NODES), "except": [format!("10.32.{}.0/28", n % NODES)]}}], "ports": [{"port": 9000, "protocol": "TCP"}]}]}),
        ),
        p(
            5,
            json!({"podSelector": {"matchLabels": {"tier": "db"}}, "ingress": [{"from": [{"namespaceSelector": {"matchExpressions": [{"key": "env", "operator": "In", "values": ["prod"]}]}, "podSelector": {"matchLabels": {"tier": "api"}}}], "ports": [{"port": 5432}]}]}),
        ),
        p(
            6,
            json!({"podSelector": {"matchLabels": {"app": "a6"}}, "ingress": [{"from": [{"podSelector": {}}]}]}),
        ),
        p(
            7,
            json!({"podSelector": {"matchLabels": {"v": "1"}}, "ingress": [{"ports": [{"port": "metrics"}]}]}),
        ),
        p(
            8,
            json!({"podSelector": {"matchLabels": {"app": "a8"}}, "policyTypes": ["Ingress", "Egress"], "ingress": [{"from": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": "a8"}}}]}], "egress": [{"to": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": "a8"}}}]}, {"ports": [{"port": 53, "protocol": "UDP"}]}]}),
        ),
        p(
            9,
            json!({"podSelector": {"matchLabels": {"app": "a0"}}, "policyTypes": ["Egress"], "egress": [{"to": [{"podSelector": {"matchLabels": {"app": "a1"}}}]}, {"to": [{"namespaceSelector": {"matchLabels": {"team": "t0"}}}], "ports": [{"port": 80}, {"port": 443}]}]}),
        ),
    ]
}

fn build(policy_count: usize) -> Cluster {
    let (nss, pods) = cluster_pods();
    let mut cl = Cluster::default();
    for n in nss {
        cl.namespaces
            .push(k8s::namespace(&serde_json::from_value(n).unwrap()).unwrap());
    }
    for p in pods {
        cl.pods.push(
            k8s::pod(&serde_json::from_value(p).unwrap())
                .unwrap()
                .unwrap(),
        );
    }
    // Policies of ns-0 first (the probe pods live there), then the other namespaces.
    for n in 0..NAMESPACES {
        for p in policies(n) {
            if cl.policies.len() < policy_count {
                cl.policies
                    .push(k8s::network_policy(&serde_json::from_value(p).unwrap()).unwrap());
            }
        }
    }
    cl
}

fn local_ips(pods: &[Pod], nodes: usize) -> Vec<IpAddr> {
    pods.iter()
        .flat_map(|p| p.ips.iter().copied())
        .filter(|ip| matches!(ip, IpAddr::V4(a) if usize::from(a.octets()[2]) < nodes))
        .collect()
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn sh(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

struct Netns(Vec<String>);
impl Drop for Netns {
    fn drop(&mut self) {
        for n in &self.0 {
            let _ = Command::new("ip").args(["netns", "del", n]).output();
        }
    }
}

fn in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap();
        // SAFETY: setns on this thread, valid fd.
        assert_eq!(
            unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&file), libc::CLONE_NEWNET) },
            0
        );
        f()
    })
}

/// New flows per second from `a` to `b:port`: each a UDP request/response from a fresh
/// socket (a new source port, so the request is a NEW connection that walks the policy
/// lookups; the response is an established one). Median of 3 runs of `n`.
fn flow_rate(a: &str, b: &str, dst: Ipv4Addr, port: u16, n: usize) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let st = stop.clone();
    let (ready, bound) = std::sync::mpsc::channel();
    let server = in_netns(b, move || {
        let s = UdpSocket::bind(("0.0.0.0", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        ready.send(()).unwrap();
        let mut buf = [0u8; 16];
        while !st.load(Ordering::SeqCst) {
            if let Ok((len, from)) = s.recv_from(&mut buf) {
                let _ = s.send_to(&buf[..len], from);
            }
        }
    });
    bound.recv().expect("echo server bound");
    let mut rates: Vec<f64> = (0..3)
        .map(|_| {
            in_netns(a, move || {
                let to = SocketAddr::from((dst, port));
                let t = Instant::now();
                let mut buf = [0u8; 16];
                for _ in 0..n {
                    let s = UdpSocket::bind("0.0.0.0:0").unwrap();
                    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                    s.connect(to).unwrap();
                    s.send(b"x").unwrap();
                    s.recv(&mut buf).expect("echo");
                }
                n as f64 / t.elapsed().as_secs_f64()
            })
            .join()
            .unwrap()
        })
        .collect();
    stop.store(true, Ordering::SeqCst);
    server.join().unwrap();
    rates.sort_by(|x, y| x.partial_cmp(y).unwrap());
    rates[1]
}

/// CPU time of waited-for children so far: (user, system).
fn child_cpu() -> (Duration, Duration) {
    // SAFETY: getrusage fills the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut u) }, 0);
    let d = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    (d(u.ru_utime), d(u.ru_stime))
}

/// Applies `rs` as a whole table with a fresh enforcer, `n` times: the last enforcer and
/// "median (range) (nft CPU per apply: user, kernel)".
fn apply_whole(ns: &str, rs: &Ruleset, n: u32) -> (Enforcer, String) {
    let (u0, s0) = child_cpu();
    let mut walls = Vec::new();
    let mut last = None;
    for _ in 0..n {
        let mut enf = Enforcer::new(Nft::in_netns(format!("/run/netns/{ns}")));
        let t = Instant::now();
        let r = enf.apply(rs).expect("apply");
        walls.push(t.elapsed());
        assert_eq!(r.mode, weft_policy::ApplyMode::Full);
        last = Some(enf);
    }
    let (u1, s1) = child_cpu();
    (
        last.unwrap(),
        format!(
            "{} (nft CPU per apply: {} user, {} kernel)",
            spread(walls),
            ms((u1 - u0) / n),
            ms((s1 - s0) / n)
        ),
    )
}

/// Compile + render + diff + apply of a changed cluster through an enforcer holding the
/// previous ruleset; then back to `before`. `n` times: "median total (range): parts".
fn update(
    enf: &mut Enforcer,
    (before, before_local): (&Cluster, &[IpAddr]),
    (cl, local): (&Cluster, &[IpAddr]),
    log: &LogSettings,
    n: u32,
) -> String {
    let mut parts: [Vec<Duration>; 5] = Default::default();
    let mut what = String::new();
    for _ in 0..n {
        let t0 = Instant::now();
        let c = Compiled::new(cl);
        let t1 = Instant::now();
        let rs = Ruleset::build(&c, local, log);
        let t2 = Instant::now();
        let d = rs.diff(enf.applied().unwrap());
        let t3 = Instant::now();
        let r = enf.apply(&rs).expect("update");
        let t4 = Instant::now();
        assert!(d.is_some(), "same structure");
        for (v, d) in parts
            .iter_mut()
            .zip([t4 - t0, t1 - t0, t2 - t1, t3 - t2, t4 - t3])
        {
            v.push(d);
        }
        what = format!("{:?} +{} −{}", r.mode, r.added, r.deleted);
        // Back, the same way.
        let back = Ruleset::build(&Compiled::new(before), before_local, log);
        assert_eq!(enf.apply(&back).unwrap().mode, weft_policy::ApplyMode::Diff);
    }
    let med = |v: &mut Vec<Duration>| {
        v.sort();
        ms(v[v.len() / 2])
    };
    let total = spread(parts[0].clone());
    format!(
        "{total}: {what}; compile {}, render {}, diff {}, nft {}",
        med(&mut parts[1]),
        med(&mut parts[2]),
        med(&mut parts[3]),
        med(&mut parts[4])
    )
}

fn describe(rs: &Ruleset, script: &str) -> String {
    let lookups = rs.groups.values().map(|g| g.lookups()).max().unwrap_or(0);
    format!(
        "{} / {} / {} / {} KiB / {}",
        rs.groups.len(),
        rs.peer_sets.len() + rs.port_sets.len(),
        rs.elements(),
        script.len() / 1024,
        lookups
    )
}

/// Median and range of some durations, in ms.
fn spread(mut v: Vec<Duration>) -> String {
    v.sort();
    format!(
        "{} ({}–{})",
        ms(v[v.len() / 2]),
        ms(v[0]),
        ms(v[v.len() - 1])
    )
}

/// Deletes `table` (if there) in namespace `ns`, then times `nft ARGS` fed `input`.
fn nft_load(ns: &str, table: &str, args: &[&str], input: &str) -> Duration {
    let _ = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "delete", "table", "inet", table])
        .output();
    let t = Instant::now();
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "nft"])
        .args(args)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success(), "nft {args:?}");
    t.elapsed()
}

/// A whole rendered table as text and as JSON — nft's own JSON listing of it, reordered so
/// that every object follows what it refers to — each loaded 5 times, interleaved.
fn table_text_vs_json(ns: &str, rs: &Ruleset) -> String {
    let text = rs.to_nft();
    nft_load(ns, &rs.table, &["-f", "-"], &text);
    let out = Command::new("ip")
        .args([
            "netns", "exec", ns, "nft", "-j", "list", "table", "inet", &rs.table,
        ])
        .output()
        .unwrap();
    let listing: Value = serde_json::from_slice(&out.stdout).unwrap();
    let rank = |v: &Value| {
        ["table", "counter", "set", "chain", "map", "rule"]
            .iter()
            .position(|k| v.get(*k).is_some())
    };
    let mut items: Vec<Value> = listing["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| rank(v).is_some())
        .cloned()
        .collect();
    for v in &mut items {
        for (_, o) in v.as_object_mut().unwrap().iter_mut() {
            o.as_object_mut().unwrap().remove("handle");
        }
    }
    items.sort_by_key(|v| rank(v));
    let json = json!({ "nftables": items }).to_string();
    let (mut tt, mut tj) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        tt.push(nft_load(ns, &rs.table, &["-f", "-"], &text));
        tj.push(nft_load(ns, &rs.table, &["-j", "-f", "-"], &json));
    }
    format!(
        "{} / {} ({} / {} KiB)",
        spread(tt),
        spread(tj),
        text.len() / 1024,
        json.len() / 1024
    )
}

/// `nft -f` of one set of `n` elements, text and JSON, 5 runs each, interleaved: a hash set
/// of addresses (like the shared peer sets), an interval set of the same addresses, and a
/// concatenated interval set (like a group's own `-p` set).
fn text_vs_json(ns: &str, n: u32) -> Vec<(String, String)> {
    let addr = |i: u32| Ipv4Addr::from(0x0a00_0000 + 2 * i).to_string();
    let mut rows = Vec::new();
    for (what, ty, flags, concat) in [
        ("hash set of addresses", json!("ipv4_addr"), false, false),
        ("interval set of addresses", json!("ipv4_addr"), true, false),
        (
            "concatenated interval set",
            json!(["ipv4_addr", "inet_proto", "inet_service"]),
            true,
            true,
        ),
    ] {
        let elems: Vec<String> = (0..n)
            .map(|i| {
                if concat {
                    format!("{} . tcp . 80", addr(i))
                } else {
                    addr(i)
                }
            })
            .collect();
        let tys = if concat {
            "ipv4_addr . inet_proto . inet_service"
        } else {
            "ipv4_addr"
        };
        let fl = if flags { " flags interval;" } else { "" };
        let mut text = format!(
            "table inet wb\ndelete table inet wb\ntable inet wb {{\n\tset s {{ type {tys};{fl} }}\n}}\n"
        );
        for chunk in elems.chunks(4096) {
            text.push_str(&format!(
                "add element inet wb s {{ {} }}\n",
                chunk.join(", ")
            ));
        }
        let jelems: Vec<Value> = (0..n)
            .map(|i| {
                if concat {
                    json!({"concat": [addr(i), "tcp", 80]})
                } else {
                    json!(addr(i))
                }
            })
            .collect();
        let mut set = json!({"family": "inet", "table": "wb", "name": "s", "type": ty});
        if flags {
            set["flags"] = json!(["interval"]);
        }
        let json = json!({"nftables": [
            {"add": {"table": {"family": "inet", "name": "wb"}}},
            {"delete": {"table": {"family": "inet", "name": "wb"}}},
            {"add": {"table": {"family": "inet", "name": "wb"}}},
            {"add": {"set": set}},
            {"add": {"element": {"family": "inet", "table": "wb", "name": "s", "elem": jelems}}}
        ]})
        .to_string();
        let (mut tt, mut tj) = (Vec::new(), Vec::new());
        for _ in 0..5 {
            tt.push(nft_load(ns, "wb", &["-f", "-"], &text));
            tj.push(nft_load(ns, "wb", &["-j", "-f", "-"], &json));
        }
        sh(&[
            "ip", "netns", "exec", ns, "nft", "delete", "table", "inet", "wb",
        ]);
        rows.push((
            format!("nft -f, {what} ({n} elements): text / JSON"),
            format!("{} / {}", spread(tt), spread(tj)),
        ));
    }
    rows
}

#[test]
#[ignore = "benchmark: run by bench/policy.sh"]
fn bench_10k_pods_1k_policies() {
    let mut rows: Vec<(String, String)> = Vec::new();
    let full = build(1000);
    assert_eq!((full.pods.len(), full.policies.len()), (10_000, 1_000));
    let t = Instant::now();
    let c = Compiled::new(&full);
    let compile = t.elapsed();
    rows.push(("compile (10,000 pods, 1,000 policies)".into(), ms(compile)));

    let log = LogSettings::default();
    let node = local_ips(c.pods(), 1);
    let dense = local_ips(c.pods(), 10);
    let t = Instant::now();
    let rs = Ruleset::build(&c, &node, &log);
    let render = t.elapsed();
    let t = Instant::now();
    let script = rs.to_nft();
    let text = t.elapsed();
    rows.push((
        format!("render, one node ({} local pods)", node.len()),
        format!("{} + {} text", ms(render), ms(text)),
    ));
    rows.push((
        "  groups / shared sets / elements / script / max lookups per chain".into(),
        describe(&rs, &script),
    ));
    let t = Instant::now();
    let rs_dense = Ruleset::build(&c, &dense, &log);
    let render_dense = t.elapsed();
    let t = Instant::now();
    let script_dense = rs_dense.to_nft();
    let text_dense = t.elapsed();
    rows.push((
        format!("render, dense node ({} local pods)", dense.len()),
        format!("{} + {} text", ms(render_dense), ms(text_dense)),
    ));
    rows.push((
        "  groups / shared sets / elements / script / max lookups per chain".into(),
        describe(&rs_dense, &script_dense),
    ));

    // Apply in a throwaway namespace with a bridge and two pods of ns-0 on node 0.
    let pfx = format!("wpb{}", std::process::id());
    let (n, a, b) = (format!("{pfx}-n"), format!("{pfx}-a"), format!("{pfx}-b"));
    let _guard = Netns(vec![n.clone(), a.clone(), b.clone()]);
    for x in [&n, &a, &b] {
        sh(&["ip", "netns", "add", x]);
        sh(&["ip", "-n", x, "link", "set", "lo", "up"]);
    }
    sh(&["ip", "-n", &n, "link", "add", "weft", "type", "bridge"]);
    sh(&["ip", "-n", &n, "link", "set", "weft", "up"]);
    // ns-0/p-1 (app a1) accepts from ns-0/p-0 (app a0) on UDP 5353; p-0's
    // egress (pol-9) allows app a1. Both are on node 0.
    let (ipa, ipb) = (pod_ip(0, 0), pod_ip(0, 1));
    for (x, ip, v) in [(&a, ipa, "va"), (&b, ipb, "vb")] {
        sh(&[
            "ip", "-n", &n, "link", "add", v, "type", "veth", "peer", "name", "eth0", "netns", x,
        ]);
        sh(&["ip", "-n", &n, "link", "set", v, "master", "weft", "up"]);
        sh(&[
            "ip",
            "-n",
            x,
            "addr",
            "add",
            &format!("{ip}/16"),
            "dev",
            "eth0",
        ]);
        sh(&["ip", "-n", x, "link", "set", "eth0", "up"]);
    }
    assert!(c.allowed(IpAddr::V4(ipa), IpAddr::V4(ipb), Protocol::Udp, 5353));
    assert!(!c.allowed(IpAddr::V4(ipa), IpAddr::V4(ipb), Protocol::Tcp, 9999));

    // Changes: one pod added on another node (a clone of ns-0/p-0, app a0: a peer of
    // several rules across namespaces), one removed on another node, one added here.
    let mut added = full.clone();
    let mut extra = added.pods[0].clone();
    extra.name = "p-extra".into();
    extra.ips = vec![IpAddr::V4(Ipv4Addr::new(10, 33, 0, 1))];
    added.pods.push(extra.clone());
    let mut removed = full.clone();
    let gone = removed
        .pods
        .iter()
        .position(|p| {
            p.ips
                .iter()
                .all(|ip| !node.contains(ip) && !dense.contains(ip))
        })
        .unwrap();
    removed.pods.remove(gone);
    let mut local_added = full.clone();
    extra.name = "p-local".into();
    let local_ip = IpAddr::V4(Ipv4Addr::new(10, 32, 0, 250));
    extra.ips = vec![local_ip];
    local_added.pods.push(extra);
    let mut node_plus = node.clone();
    node_plus.push(local_ip);

    let here = (&full, node.as_slice());
    let (mut enf, whole) = apply_whole(&n, &rs, 3);
    rows.push(("apply, whole table (one node), 3 runs".into(), whole));
    rows.push((
        "one pod added elsewhere (one node), 5 runs".into(),
        update(&mut enf, here, (&added, &node), &log, 5),
    ));
    rows.push((
        "one pod removed elsewhere (one node), 5 runs".into(),
        update(&mut enf, here, (&removed, &node), &log, 5),
    ));
    rows.push((
        "one pod added on this node (one node), 5 runs".into(),
        update(&mut enf, here, (&local_added, &node_plus), &log, 5),
    ));
    let (mut dense_enf, whole) = apply_whole(&n, &rs_dense, 3);
    rows.push(("apply, whole table (dense node), 3 runs".into(), whole));
    rows.push((
        "one pod added elsewhere (dense node), 5 runs".into(),
        update(
            &mut dense_enf,
            (&full, dense.as_slice()),
            (&added, &dense),
            &log,
            5,
        ),
    ));
    dense_enf.remove().unwrap();
    rows.push((
        "nft -f, whole dense table: text / JSON (size)".into(),
        table_text_vs_json(&n, &rs_dense),
    ));
    rows.extend(text_vs_json(&n, 50_000));

    // Per-connection cost: no table, 10 policies, 1,000 policies.
    let conns = 2000;
    let small = build(10);
    let cs = Compiled::new(&small);
    assert!(cs.allowed(IpAddr::V4(ipa), IpAddr::V4(ipb), Protocol::Udp, 5353));
    let rs10 = Ruleset::build(&cs, &node, &log);
    let path = |r: &Ruleset| {
        r.groups[&r.egress[&IpAddr::V4(ipa)]].lookups()
            + r.groups[&r.ingress[&IpAddr::V4(ipb)]].lookups()
    };
    assert_eq!(path(&rs10), path(&rs), "same rules apply to the probe pods");
    let mut enf = Enforcer::new(Nft::in_netns(format!("/run/netns/{n}")));
    // Warm up (neighbours, caches), then interleave the configurations; after each apply,
    // let the kernel finish freeing the replaced table before measuring.
    enf.apply(&rs10).unwrap();
    flow_rate(&a, &b, ipb, 5353, conns / 4);
    let mut rates: [Vec<f64>; 3] = Default::default();
    for _ in 0..4 {
        enf.apply(&rs10).unwrap();
        std::thread::sleep(Duration::from_secs(1));
        rates[1].push(flow_rate(&a, &b, ipb, 5353, conns));
        enf.apply(&rs).unwrap();
        std::thread::sleep(Duration::from_secs(1));
        rates[2].push(flow_rate(&a, &b, ipb, 5353, conns));
        enf.remove().unwrap();
        std::thread::sleep(Duration::from_secs(1));
        rates[0].push(flow_rate(&a, &b, ipb, 5353, conns));
    }
    let [base, r10, r1000] = rates.map(|mut v| {
        v.sort_by(|x, y| x.partial_cmp(y).unwrap());
        format!("{:.0} ({:.0}–{:.0})", (v[1] + v[2]) / 2.0, v[0], v[3])
    });
    // And the table really blocks what it should: TCP 9999 on b, which the policies do not
    // allow from a, connects without the table and is dropped (a timeout, not a refusal)
    // with it.
    assert!(!c.allowed(IpAddr::V4(ipa), IpAddr::V4(ipb), Protocol::Tcp, 9999));
    let stop9999 = Arc::new(AtomicBool::new(false));
    let (bound_tx, bound_rx) = std::sync::mpsc::channel();
    let st = stop9999.clone();
    let listener = in_netns(&b, move || {
        let l = std::net::TcpListener::bind(("0.0.0.0", 9999)).unwrap();
        l.set_nonblocking(true).unwrap();
        bound_tx.send(()).unwrap();
        while !st.load(Ordering::SeqCst) {
            if l.accept().is_err() {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    });
    bound_rx.recv().unwrap();
    let connect = |a: &str| {
        in_netns(a, move || {
            TcpStream::connect_timeout(&SocketAddr::from((ipb, 9999)), Duration::from_millis(500))
                .map(|_| ())
                .map_err(|e| e.kind())
        })
        .join()
        .unwrap()
    };
    assert_eq!(connect(&a), Ok(()), "reachable without the table");
    enf.apply(&rs).unwrap();
    assert_eq!(
        connect(&a),
        Err(std::io::ErrorKind::TimedOut),
        "dropped by the table"
    );
    stop9999.store(true, Ordering::SeqCst);
    listener.join().unwrap();
    enf.remove().unwrap();
    rows.push((
        "new UDP flows/s pod→pod, no table (median of 4, range)".into(),
        base,
    ));
    rows.push((
        format!(
            "new UDP flows/s pod→pod, 10 policies ({} lookups on the path)",
            path(&rs10)
        ),
        r10,
    ));
    rows.push((
        "new UDP flows/s pod→pod, 1,000 policies (same lookups)".into(),
        r1000,
    ));

    println!("\n| measure | result |\n|---|---|");
    for (k, v) in &rows {
        println!("| {k} | {v} |");
    }
    assert!(
        compile < Duration::from_secs(1) || cfg!(debug_assertions),
        "compile {compile:?}"
    );
}
