//! The benchmark (run by `bench/policy.sh`, ignored in normal test runs): 10,000
//! pods in 100 namespaces on 100 nodes, 1,000 policies (ten kinds, ten per namespace).
//! Measures compile, render and apply (real `nft` in a throwaway namespace, whole table and
//! element update), and the per-connection cost through the rules with 10 and with 1,000
//! policies (TCP connections per second between two isolated pods on one bridge).
//! Prints a markdown table. Needs root and a release build for meaningful figures.

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
    let server = in_netns(b, move || {
        let s = UdpSocket::bind(("0.0.0.0", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let mut buf = [0u8; 16];
        while !st.load(Ordering::SeqCst) {
            if let Ok((len, from)) = s.recv_from(&mut buf) {
                let _ = s.send_to(&buf[..len], from);
            }
        }
    });
    std::thread::sleep(Duration::from_millis(100));
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
        "  groups / elements / script".into(),
        format!(
            "{} / {} / {} KiB",
            rs.groups.len(),
            rs.elements(),
            script.len() / 1024
        ),
    ));
    let t = Instant::now();
    let rs_dense = Ruleset::build(&c, &dense, &log);
    let script_dense = rs_dense.to_nft();
    let render_dense = t.elapsed();
    rows.push((
        format!("render, dense node ({} local pods)", dense.len()),
        ms(render_dense),
    ));
    rows.push((
        "  groups / elements / script".into(),
        format!(
            "{} / {} / {} KiB",
            rs_dense.groups.len(),
            rs_dense.elements(),
            script_dense.len() / 1024
        ),
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
    let mut enf = Enforcer::new(Nft::in_netns(format!("/run/netns/{n}")));
    let t = Instant::now();
    enf.apply(&rs).expect("apply");
    rows.push(("apply, whole table (one node)".into(), ms(t.elapsed())));
    // One more pod of ns-0 with app a0 (a peer of pol-1 everywhere in ns-0): an element update.
    let mut more = full.clone();
    let mut extra = more.pods[0].clone();
    extra.name = "p-extra".into();
    extra.ips = vec![IpAddr::V4(Ipv4Addr::new(10, 33, 0, 1))];
    more.pods.push(extra);
    let t = Instant::now();
    let c2 = Compiled::new(&more);
    let rs2 = Ruleset::build(&c2, &node, &log);
    let r = enf.apply(&rs2).expect("diff apply");
    rows.push((
        format!(
            "one pod added: compile + render + apply ({:?}, +{} -{})",
            r.mode, r.added, r.deleted
        ),
        ms(t.elapsed()),
    ));
    let t = Instant::now();
    let mut dense_enf = Enforcer::new(Nft::in_netns(format!("/run/netns/{n}")));
    dense_enf.apply(&rs_dense).expect("apply dense");
    rows.push(("apply, whole table (dense node)".into(), ms(t.elapsed())));
    dense_enf.apply(&rs).expect("back");

    // Per-connection cost: no table, 10 policies, 1,000 policies.
    let conns = 2000;
    // Many short connections from one address: let TIME_WAIT ports be reused.
    sh(&[
        "ip",
        "netns",
        "exec",
        &a,
        "sysctl",
        "-qw",
        "net.ipv4.tcp_tw_reuse=1",
    ]);
    let small = build(10);
    let cs = Compiled::new(&small);
    assert!(cs.allowed(IpAddr::V4(ipa), IpAddr::V4(ipb), Protocol::Udp, 5353));
    let rs10 = Ruleset::build(&cs, &node, &log);
    let mut enf = Enforcer::new(Nft::in_netns(format!("/run/netns/{n}")));
    // Warm up (neighbours, caches), then alternate the configurations.
    enf.apply(&rs10).unwrap();
    flow_rate(&a, &b, ipb, 5353, conns / 4);
    let mut rates: [Vec<f64>; 3] = Default::default();
    for _ in 0..2 {
        enf.apply(&rs10).unwrap();
        rates[1].push(flow_rate(&a, &b, ipb, 5353, conns));
        enf.apply(&rs).unwrap();
        rates[2].push(flow_rate(&a, &b, ipb, 5353, conns));
        enf.remove().unwrap();
        rates[0].push(flow_rate(&a, &b, ipb, 5353, conns));
    }
    let [base, r10, r1000] = rates.map(|v| v.iter().sum::<f64>() / v.len() as f64);
    enf.apply(&rs).unwrap();
    // And the table really blocks what it should.
    let blocked = in_netns(&a, move || {
        TcpStream::connect_timeout(&SocketAddr::from((ipb, 9999)), Duration::from_millis(300))
            .is_err()
    })
    .join()
    .unwrap();
    assert!(blocked);
    enf.remove().unwrap();
    rows.push((
        "new UDP flows/s pod→pod, no table".into(),
        format!("{base:.0}"),
    ));
    rows.push((
        "new UDP flows/s pod→pod, 10 policies".into(),
        format!("{r10:.0}"),
    ));
    rows.push((
        "new UDP flows/s pod→pod, 1,000 policies".into(),
        format!("{r1000:.0}"),
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
