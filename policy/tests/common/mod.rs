//! Shared by the truth-table and namespace tests: a small cluster (namespaces x, y, z with
//! pods a, b, c each, like the upstream network-policy e2e tests), the probes, and a
//! deliberately naive interpreter of the NetworkPolicy spec that works on the raw
//! Kubernetes JSON, written independently of the crate's model and compiler.
#![allow(dead_code)]

pub mod generate;
pub mod scenarios;

use serde_json::{json, Value};
use std::net::{IpAddr, Ipv4Addr};
use weft_policy::model::{Cluster, Protocol};
use weft_policy::{k8s, Compiled};

pub const NAMESPACES: [&str; 3] = ["x", "y", "z"];
pub const PODS: [&str; 3] = ["a", "b", "c"];
/// (protocol, port) probes of every matrix.
pub const PROBES: [(&str, u16); 6] = [
    ("TCP", 80),
    ("TCP", 81),
    ("UDP", 80),
    ("UDP", 81),
    ("SCTP", 80),
    ("UDP", 53),
];

/// An endpoint of the matrix: a pod, or an address outside the cluster.
#[derive(Clone, Debug)]
pub struct Ep {
    pub ns: Option<String>,
    pub name: String,
    pub ip: Ipv4Addr,
    pub pod: Option<Value>,
}

impl Ep {
    pub fn label(&self) -> String {
        match &self.ns {
            Some(ns) => format!("{ns}/{}", self.name),
            None => self.name.clone(),
        }
    }
    pub fn is(&self, ns: &str, name: &str) -> bool {
        self.ns.as_deref() == Some(ns) && self.name == name
    }
    pub fn in_ns(&self, ns: &str) -> bool {
        self.ns.as_deref() == Some(ns)
    }
}

/// Pod address: 10.0.<ns index + 1>.<pod index + 1>.
pub fn pod_ip(ns: usize, pod: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, ns as u8 + 1, pod as u8 + 1)
}

/// Not a pod: an address outside the cluster's pods (only ever used in memory or inside
/// test namespaces).
pub const EXTERNAL: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 9);

pub fn namespaces_json() -> Vec<Value> {
    NAMESPACES
        .iter()
        .map(|n| {
            let mut labels = json!({"ns": n});
            if *n == "z" {
                labels["env"] = json!("prod");
            }
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n, "labels": labels}})
        })
        .collect()
}

/// The pods. Every pod has `pod: <name>`; x/a also `tier: web`, y/b `tier: db`. Named ports
/// `serve-<port>-<proto>` as upstream, plus `web`, which is 80/TCP on `a` pods, 81/TCP on `b`
/// pods and absent on `c` pods (named ports resolve per destination pod).
pub fn pods_json() -> Vec<Value> {
    let mut out = Vec::new();
    for (ni, ns) in NAMESPACES.iter().enumerate() {
        for (pi, p) in PODS.iter().enumerate() {
            let mut labels = json!({"pod": p});
            if (*ns, *p) == ("x", "a") {
                labels["tier"] = json!("web");
            }
            if (*ns, *p) == ("y", "b") {
                labels["tier"] = json!("db");
            }
            let mut ports = vec![
                json!({"name": "serve-80-tcp", "containerPort": 80}),
                json!({"name": "serve-81-tcp", "containerPort": 81, "protocol": "TCP"}),
                json!({"name": "serve-80-udp", "containerPort": 80, "protocol": "UDP"}),
                json!({"name": "serve-81-udp", "containerPort": 81, "protocol": "UDP"}),
                json!({"name": "serve-80-sctp", "containerPort": 80, "protocol": "SCTP"}),
            ];
            match *p {
                "a" => ports.push(json!({"name": "web", "containerPort": 80})),
                "b" => ports.push(json!({"name": "web", "containerPort": 81})),
                _ => {}
            }
            out.push(json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": p, "namespace": ns, "labels": labels},
                "spec": {"containers": [{"name": "c", "image": "agnhost", "ports": ports}]},
                "status": {"podIPs": [{"ip": pod_ip(ni, pi).to_string()}]}
            }));
        }
    }
    out
}

pub fn endpoints() -> Vec<Ep> {
    let mut v: Vec<Ep> = pods_json()
        .into_iter()
        .map(|p| Ep {
            ns: Some(p["metadata"]["namespace"].as_str().unwrap().to_string()),
            name: p["metadata"]["name"].as_str().unwrap().to_string(),
            ip: p["status"]["podIPs"][0]["ip"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap(),
            pod: Some(p),
        })
        .collect();
    v.push(Ep {
        ns: None,
        name: "ext".into(),
        ip: EXTERNAL,
        pod: None,
    });
    v
}

pub fn policy(ns: &str, name: &str, spec: Value) -> Value {
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
           "metadata": {"name": name, "namespace": ns}, "spec": spec})
}

/// The crate's side: JSON → model (through the crate's k8s conversion) → compiled.
/// Returns the compiled policy and how many policies were rejected.
pub fn compile(policies: &[Value]) -> (Compiled, usize) {
    compile_with(policies, &pods_json(), &namespaces_json())
}

/// [`compile`] with other pods and namespaces (Pods the crate ignores, such as host-network
/// or finished ones, are left out as the crate says).
pub fn compile_with(policies: &[Value], pods: &[Value], namespaces: &[Value]) -> (Compiled, usize) {
    let mut cl = Cluster::default();
    for n in namespaces {
        cl.namespaces
            .push(k8s::namespace(&serde_json::from_value(n.clone()).unwrap()).unwrap());
    }
    for p in pods {
        if let Some(p) = k8s::pod(&serde_json::from_value(p.clone()).unwrap()).unwrap() {
            cl.pods.push(p);
        }
    }
    let mut rejected = 0;
    for p in policies {
        match k8s::network_policy(&serde_json::from_value(p.clone()).unwrap()) {
            Ok(p) => cl.policies.push(p),
            Err(_) => rejected += 1,
        }
    }
    (Compiled::new(&cl), rejected)
}

pub fn proto(s: &str) -> Protocol {
    Protocol::parse(s).unwrap()
}

// ---------------------------------------------------------------------------------------
// The naive interpreter. Straight from the API documentation, on raw JSON, no caching.

/// A namespace's labels: its object's (none if there is no object), and the API server
/// always sets `kubernetes.io/metadata.name` to the name.
fn ns_labels(namespaces: &[Value], ns: &str) -> Value {
    let mut l = namespaces
        .iter()
        .find(|n| n["metadata"]["name"] == ns)
        .and_then(|n| n["metadata"].get("labels").cloned())
        .filter(Value::is_object)
        .unwrap_or(json!({}));
    l["kubernetes.io/metadata.name"] = json!(ns);
    l
}

fn selector_matches(sel: &Value, labels: &Value) -> bool {
    if let Some(ml) = sel["matchLabels"].as_object() {
        for (k, v) in ml {
            if labels.get(k) != Some(v) {
                return false;
            }
        }
    }
    if let Some(exprs) = sel["matchExpressions"].as_array() {
        for e in exprs {
            let key = e["key"].as_str().unwrap();
            let have = labels.get(key).and_then(|v| v.as_str());
            let values: Vec<&str> = e["values"]
                .as_array()
                .map(|a| a.iter().map(|v| v.as_str().unwrap()).collect())
                .unwrap_or_default();
            let ok = match e["operator"].as_str().unwrap() {
                "In" => have.is_some_and(|h| values.contains(&h)),
                "NotIn" => !have.is_some_and(|h| values.contains(&h)),
                "Exists" => have.is_some(),
                "DoesNotExist" => have.is_none(),
                o => panic!("operator {o}"),
            };
            if !ok {
                return false;
            }
        }
    }
    true
}

fn parse_v4_cidr(s: &str) -> (u32, u32) {
    let (a, l) = s.split_once('/').unwrap();
    let a: Ipv4Addr = a.parse().unwrap();
    let l: u32 = l.parse().unwrap();
    let mask = if l == 0 { 0 } else { u32::MAX << (32 - l) };
    (u32::from(a) & mask, mask)
}

fn in_cidr(ip: Ipv4Addr, cidr: &str) -> bool {
    if cidr.contains(':') {
        return false; // an IPv6 block holds no IPv4 address
    }
    let (net, mask) = parse_v4_cidr(cidr);
    u32::from(ip) & mask == net
}

fn peer_matches(peer: &Value, ep: &Ep, policy_ns: &str, namespaces: &[Value]) -> bool {
    if let Some(b) = peer.get("ipBlock") {
        let c = b["cidr"].as_str().unwrap();
        let except: Vec<&str> = b["except"]
            .as_array()
            .map(|a| a.iter().map(|v| v.as_str().unwrap()).collect())
            .unwrap_or_default();
        return in_cidr(ep.ip, c) && !except.iter().any(|e| in_cidr(ep.ip, e));
    }
    let Some(pod) = &ep.pod else { return false };
    let ns = ep.ns.as_deref().unwrap();
    let ns_ok = match peer.get("namespaceSelector") {
        Some(sel) => selector_matches(sel, &ns_labels(namespaces, ns)),
        None => ns == policy_ns,
    };
    let pod_ok = match peer.get("podSelector") {
        Some(sel) => selector_matches(sel, &pod["metadata"]["labels"]),
        None => true,
    };
    ns_ok && pod_ok
}

fn port_matches(p: &Value, dst: &Ep, proto: &str, port: u16) -> bool {
    let pproto = p["protocol"].as_str().unwrap_or("TCP");
    if pproto != proto {
        return false;
    }
    match &p["port"] {
        Value::Null => true,
        Value::Number(n) => {
            let lo = n.as_u64().unwrap() as u16;
            let hi = p["endPort"].as_u64().map(|e| e as u16).unwrap_or(lo);
            lo <= port && port <= hi
        }
        Value::String(name) => dst.pod.as_ref().is_some_and(|pod| {
            pod["spec"]["containers"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| {
                    c["ports"]
                        .as_array()
                        .map(|ps| {
                            ps.iter().any(|cp| {
                                cp["name"].as_str() == Some(name.as_str())
                                    && cp["protocol"].as_str().unwrap_or("TCP") == proto
                                    && cp["containerPort"].as_u64() == Some(u64::from(port))
                            })
                        })
                        .unwrap_or(false)
                })
        }),
        _ => panic!("port {p}"),
    }
}

fn applies(pol: &Value, ep: &Ep, dir: &str) -> bool {
    let Some(pod) = &ep.pod else { return false };
    if pol["metadata"]["namespace"].as_str() != ep.ns.as_deref() {
        return false;
    }
    let spec = &pol["spec"];
    let sel = spec.get("podSelector").cloned().unwrap_or(json!({}));
    if !selector_matches(&sel, &pod["metadata"]["labels"]) {
        return false;
    }
    match spec["policyTypes"].as_array() {
        Some(t) if !t.is_empty() => t.iter().any(|x| x == dir),
        _ => dir == "Ingress" || spec["egress"].as_array().is_some_and(|e| !e.is_empty()),
    }
}

struct Probe<'a> {
    namespaces: &'a [Value],
    dst: &'a Ep,
    proto: &'a str,
    port: u16,
}

fn rule_admits(rule: &Value, peers_key: &str, peer: &Ep, policy_ns: &str, q: &Probe) -> bool {
    let (dst, proto, port) = (q.dst, q.proto, q.port);
    let peers_ok = match rule[peers_key].as_array() {
        None => true,
        Some(list) if list.is_empty() => true,
        Some(list) => list
            .iter()
            .any(|p| peer_matches(p, peer, policy_ns, q.namespaces)),
    };
    let ports_ok = match rule["ports"].as_array() {
        None => true,
        Some(list) if list.is_empty() => true,
        Some(list) => list.iter().any(|p| port_matches(p, dst, proto, port)),
    };
    peers_ok && ports_ok
}

fn side_allows(policies: &[Value], me: &Ep, other: &Ep, dir: &str, q: &Probe) -> bool {
    let mine: Vec<&Value> = policies.iter().filter(|p| applies(p, me, dir)).collect();
    if mine.is_empty() {
        return true;
    }
    let (rules_key, peers_key) = if dir == "Ingress" {
        ("ingress", "from")
    } else {
        ("egress", "to")
    };
    mine.iter().any(|p| {
        let ns = p["metadata"]["namespace"].as_str().unwrap();
        p["spec"][rules_key].as_array().is_some_and(|rules| {
            rules
                .iter()
                .any(|r| rule_admits(r, peers_key, other, ns, q))
        })
    })
}

/// The naive answer, for valid policies only.
pub fn naive_allowed(policies: &[Value], src: &Ep, dst: &Ep, proto: &str, port: u16) -> bool {
    naive_allowed_in(policies, &namespaces_json(), src, dst, proto, port)
}

/// [`naive_allowed`] with other Namespace objects.
pub fn naive_allowed_in(
    policies: &[Value],
    namespaces: &[Value],
    src: &Ep,
    dst: &Ep,
    proto: &str,
    port: u16,
) -> bool {
    if src.pod.is_some() && src.label() == dst.label() {
        return true;
    }
    let q = Probe {
        namespaces,
        dst,
        proto,
        port,
    };
    side_allows(policies, src, dst, "Egress", &q) && side_allows(policies, dst, src, "Ingress", &q)
}

/// Renders a matrix for messages: one block per probe, rows = sources, columns = destinations,
/// `.` allowed, `X` blocked.
pub fn show(eps: &[Ep], f: &dyn Fn(&Ep, &Ep, &str, u16) -> bool) -> String {
    let mut s = String::new();
    for (pr, port) in PROBES {
        s.push_str(&format!("{pr}/{port}\n      "));
        for d in eps {
            s.push_str(&format!("{:>5}", d.label()));
        }
        s.push('\n');
        for a in eps {
            s.push_str(&format!("{:>5} ", a.label()));
            for b in eps {
                s.push_str(&format!("{:>5}", if f(a, b, pr, port) { "." } else { "X" }));
            }
            s.push('\n');
        }
    }
    s
}

pub fn ip(e: &Ep) -> IpAddr {
    IpAddr::V4(e.ip)
}
