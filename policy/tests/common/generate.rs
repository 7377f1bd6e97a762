//! Generated policy sets over the small cluster (cyclonus-style): random selectors, peers,
//! ipBlocks with excepts, ports (numbers, names, ranges, every protocol) and policyTypes,
//! from a seeded generator, for the truth tables and the namespace test alike.

use super::*;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};

pub fn pick<'a, T>(r: &mut ChaCha8Rng, v: &'a [T]) -> &'a T {
    &v[r.random_range(0..v.len())]
}

pub fn gen_selector(r: &mut ChaCha8Rng, key: &str, values: &[&str]) -> Value {
    let v = *pick(r, values);
    let w = *pick(r, values);
    match r.random_range(0..7) {
        0 => json!({}),
        1 | 2 => json!({"matchLabels": {key: v}}),
        3 => json!({"matchExpressions": [{"key": key, "operator": "In", "values": [v, w]}]}),
        4 => {
            // NotIn on a key some objects lack ("tier" on pods, "env" on namespaces) too.
            let k = *pick(r, &[key, "tier", "env"]);
            let val = *pick(r, &[v, "web", "db", "prod"]);
            json!({"matchExpressions": [{"key": k, "operator": "NotIn", "values": [val]}]})
        }
        5 => {
            json!({"matchExpressions": [{"key": *pick(r, &["tier", "env", key]), "operator": *pick(r, &["Exists", "DoesNotExist"])}]})
        }
        _ => {
            json!({"matchLabels": {key: v}, "matchExpressions": [{"key": "tier", "operator": "DoesNotExist"}]})
        }
    }
}

pub fn gen_peer(r: &mut ChaCha8Rng) -> Value {
    match r.random_range(0..6) {
        0 => json!({"podSelector": gen_selector(r, "pod", &PODS)}),
        1 => json!({"namespaceSelector": gen_selector(r, "ns", &NAMESPACES)}),
        2 | 3 => {
            json!({"podSelector": gen_selector(r, "pod", &PODS), "namespaceSelector": gen_selector(r, "ns", &NAMESPACES)})
        }
        _ => {
            let cidr = *pick(
                r,
                &[
                    "10.0.0.0/16",
                    "10.0.1.0/24",
                    "10.0.2.0/23",
                    "0.0.0.0/0",
                    "10.0.3.2/32",
                    "10.9.0.0/16",
                ],
            );
            let except: Vec<&str> = match (cidr, r.random_range(0..3)) {
                ("10.0.0.0/16", 0) => vec!["10.0.2.0/24"],
                ("10.0.0.0/16", 1) => vec!["10.0.1.1/32", "10.0.3.0/25"],
                ("0.0.0.0/0", 0) => vec!["10.0.0.0/16"],
                ("0.0.0.0/0", 1) => vec!["10.0.1.0/24", "10.9.0.9/32"],
                ("10.0.2.0/23", 0) => vec!["10.0.3.0/24"],
                _ => vec![],
            };
            if except.is_empty() {
                json!({"ipBlock": {"cidr": cidr}})
            } else {
                json!({"ipBlock": {"cidr": cidr, "except": except}})
            }
        }
    }
}

pub fn gen_port(r: &mut ChaCha8Rng) -> Value {
    let proto = *pick(r, &["TCP", "UDP", "SCTP"]);
    match r.random_range(0..8) {
        0 => json!({"protocol": proto}),
        1 => json!({"port": 80}),
        2 => json!({"protocol": proto, "port": *pick(r, &[80, 81, 53])}),
        3 => json!({"protocol": proto, "port": 80, "endPort": *pick(r, &[80, 81, 100])}),
        4 => {
            json!({"protocol": proto, "port": *pick(r, &["serve-80-tcp", "serve-81-udp", "serve-80-sctp", "serve-81-tcp"])})
        }
        5 => json!({"port": "web"}),
        6 => json!({"protocol": proto, "port": "web"}),
        _ => json!({"protocol": proto, "port": 81}),
    }
}

pub fn gen_list(r: &mut ChaCha8Rng, f: fn(&mut ChaCha8Rng) -> Value) -> Option<Value> {
    match r.random_range(0..5) {
        0 => None,
        1 => Some(json!([])),
        n => Some(Value::Array((0..n - 1).map(|_| f(r)).collect())),
    }
}

pub fn gen_rule(r: &mut ChaCha8Rng, peers_key: &str) -> Value {
    let mut rule = json!({});
    if let Some(p) = gen_list(r, gen_peer) {
        rule[peers_key] = p;
    }
    if let Some(p) = gen_list(r, gen_port) {
        rule["ports"] = p;
    }
    rule
}

/// One generated NetworkPolicy, named `gen-{i}`.
pub fn gen_policy(r: &mut ChaCha8Rng, i: usize) -> Value {
    let ns = *pick(r, &NAMESPACES);
    let mut spec = json!({});
    if r.random_range(0..6) != 0 {
        spec["podSelector"] = gen_selector(r, "pod", &PODS);
    }
    match r.random_range(0..5) {
        0 => spec["policyTypes"] = json!(["Ingress"]),
        1 => spec["policyTypes"] = json!(["Egress"]),
        2 => spec["policyTypes"] = json!(["Ingress", "Egress"]),
        _ => {}
    }
    for (key, peers) in [("ingress", "from"), ("egress", "to")] {
        match r.random_range(0..4) {
            0 => {}
            1 => spec[key] = json!([]),
            n => spec[key] = Value::Array((0..n - 1).map(|_| gen_rule(r, peers)).collect()),
        }
    }
    policy(ns, &format!("gen-{i}"), spec)
}
