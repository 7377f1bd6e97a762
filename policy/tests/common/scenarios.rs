//! The upstream network-policy e2e scenarios (their intent, our wording), each with the
//! matrix it must produce, as a predicate over (source, destination, protocol, port).

use super::{policy, Ep};
use serde_json::{json, Value};

pub type Expect = fn(&Ep, &Ep, &str, u16) -> bool;

fn pod_sel(p: &str) -> Value {
    json!({"matchLabels": {"pod": p}})
}

fn ns_sel(n: &str) -> Value {
    json!({"matchLabels": {"ns": n}})
}

pub fn scenarios() -> Vec<(&'static str, Vec<Value>, Expect)> {
    vec![
        (
            "default-deny-ingress",
            vec![policy(
                "x",
                "deny",
                json!({"podSelector": {}, "policyTypes": ["Ingress"]}),
            )],
            |_, d, _, _| !d.in_ns("x"),
        ),
        (
            "default-deny-ingress, explicit empty ingress list",
            vec![policy(
                "x",
                "deny",
                json!({"podSelector": {}, "ingress": []}),
            )],
            |_, d, _, _| !d.in_ns("x"),
        ),
        (
            "default-deny-egress",
            vec![policy(
                "x",
                "deny",
                json!({"podSelector": {}, "policyTypes": ["Egress"]}),
            )],
            |s, _, _, _| !s.in_ns("x"),
        ),
        (
            "default-deny-all",
            vec![policy(
                "x",
                "deny",
                json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}),
            )],
            |s, d, _, _| !s.in_ns("x") && !d.in_ns("x"),
        ),
        (
            "allow-all ingress ([{}]) is additive over deny-all",
            vec![
                policy("x", "deny", json!({"podSelector": {}, "ingress": []})),
                policy("x", "allow", json!({"podSelector": {}, "ingress": [{}]})),
            ],
            |_, _, _, _| true,
        ),
        (
            "allow from namespace by label",
            vec![policy(
                "x",
                "p",
                json!({"podSelector": pod_sel("a"), "ingress": [{"from": [{"namespaceSelector": ns_sel("y")}]}]}),
            )],
            |s, d, _, _| !d.is("x", "a") || s.in_ns("y"),
        ),
        (
            "pod and namespace selector combined in one peer",
            vec![policy(
                "x",
                "p",
                json!({"podSelector": pod_sel("a"), "ingress": [{"from": [{"namespaceSelector": ns_sel("y"), "podSelector": pod_sel("b")}]}]}),
            )],
            |s, d, _, _| !d.is("x", "a") || s.is("y", "b"),
        ),
        (
            "pod and namespace selector as two peers",
            vec![policy(
                "x",
                "p",
                json!({"podSelector": pod_sel("a"), "ingress": [{"from": [{"namespaceSelector": ns_sel("y")}, {"podSelector": pod_sel("b")}]}]}),
            )],
            |s, d, _, _| !d.is("x", "a") || s.in_ns("y") || s.is("x", "b"),
        ),
        (
            "namespace selector with NotIn",
            vec![policy(
                "x",
                "p",
                json!({"podSelector": pod_sel("a"), "ingress": [{"from": [{"namespaceSelector": {"matchExpressions": [{"key": "ns", "operator": "NotIn", "values": ["y"]}]}}]}]}),
            )],
            |s, d, _, _| !d.is("x", "a") || s.in_ns("x") || s.in_ns("z"),
        ),
        (
            "namespace selector on kubernetes.io/metadata.name",
            vec![policy(
                "x",
                "p",
                json!({"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "z"}}}]}]}),
            )],
            |s, d, _, _| !d.in_ns("x") || s.in_ns("z"),
        ),
        (
            "all namespaces, pods by label",
            vec![policy(
                "x",
                "p",
                json!({"podSelector": pod_sel("b"), "ingress": [{"from": [{"namespaceSelector": {}, "podSelector": pod_sel("a")}]}]}),
            )],
            |s, d, _, _| !d.is("x", "b") || (s.pod.is_some() && s.name == "a"),
        ),
        (
            "ipBlock with except",
            vec![policy(
                "x",
                "p",
                json!({"podSelector": pod_sel("a"), "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/16", "except": ["10.0.2.0/24"]}}]}]}),
            )],
            |s, d, _, _| !d.is("x", "a") || (s.pod.is_some() && !s.in_ns("y")),
        ),
        (
            "ipBlock except holds a pod that another peer selects: the peers are ORed",
            vec![policy(
                "x",
                "p",
                json!({"podSelector": pod_sel("a"), "ingress": [{"from": [
                    {"ipBlock": {"cidr": "10.0.0.0/16", "except": ["10.0.2.0/24"]}},
                    {"namespaceSelector": ns_sel("y"), "podSelector": pod_sel("b")}
                ]}]}),
            )],
            |s, d, _, _| !d.is("x", "a") || (s.pod.is_some() && (!s.in_ns("y") || s.name == "b")),
        ),
        (
            "an address in one ipBlock's except and inside another ipBlock is admitted",
            vec![policy(
                "x",
                "p",
                json!({"podSelector": pod_sel("a"), "policyTypes": ["Egress"], "egress": [{"to": [
                    {"ipBlock": {"cidr": "10.0.0.0/16", "except": ["10.0.2.0/24"]}},
                    {"ipBlock": {"cidr": "10.0.2.2/32"}}
                ]}]}),
            )],
            |s, d, _, _| !s.is("x", "a") || (d.pod.is_some() && (!d.in_ns("y") || d.name == "b")),
        ),
        (
            "an IPv6 ipBlock alone admits no IPv4 address (and isolates)",
            vec![policy(
                "x",
                "p",
                json!({"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "::/0"}}]}]}),
            )],
            |_, d, _, _| !d.in_ns("x"),
        ),
        (
            "dual-stack ipBlocks 0.0.0.0/0 and ::/0 admit everything",
            vec![policy(
                "x",
                "p",
                json!({"podSelector": {}, "policyTypes": ["Egress"], "egress": [{"to": [
                    {"ipBlock": {"cidr": "0.0.0.0/0"}}, {"ipBlock": {"cidr": "::/0", "except": ["fd00::/8"]}}
                ]}]}),
            )],
            |_, _, _, _| true,
        ),
        (
            "port range up to 65535",
            vec![policy(
                "x",
                "p",
                json!({"podSelector": {}, "ingress": [{"ports": [{"protocol": "UDP", "port": 81, "endPort": 65535}]}]}),
            )],
            |_, d, pr, port| !d.in_ns("x") || (pr == "UDP" && port >= 81),
        ),
        (
            "egress to the outside only (ipBlock 0.0.0.0/0 except the pods)",
            vec![policy(
                "x",
                "p",
                json!({"podSelector": {}, "policyTypes": ["Egress"], "egress": [{"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/16"]}}]}]}),
            )],
            |s, d, _, _| !s.in_ns("x") || d.pod.is_none(),
        ),
        (
            "named port (serve-81-udp)",
            vec![policy(
                "x",
                "p",
                json!({"podSelector": {}, "ingress": [{"ports": [{"port": "serve-81-udp", "protocol": "UDP"}]}]}),
            )],
            |_, d, pr, port| !d.in_ns("x") || (pr == "UDP" && port == 81),
        ),
        (
            "named port resolves per destination pod",
            vec![policy(
                "x",
                "p",
                json!({"podSelector": {}, "ingress": [{"ports": [{"port": "web"}]}]}),
            )],
            |_, d, pr, port| {
                !d.in_ns("x")
                    || (pr == "TCP"
                        && ((d.name == "a" && port == 80) || (d.name == "b" && port == 81)))
            },
        ),
        (
            "named port with the wrong protocol matches nothing",
            vec![policy(
                "x",
                "p",
                json!({"podSelector": {}, "ingress": [{"ports": [{"port": "web", "protocol": "UDP"}]}]}),
            )],
            |_, d, _, _| !d.in_ns("x"),
        ),
        (
            "egress to a named port of other pods",
            vec![policy(
                "y",
                "p",
                json!({"podSelector": pod_sel("a"), "policyTypes": ["Egress"], "egress": [{"ports": [{"port": "web"}]}]}),
            )],
            |s, d, pr, port| {
                !s.is("y", "a")
                    || (d.pod.is_some()
                        && pr == "TCP"
                        && ((d.name == "a" && port == 80) || (d.name == "b" && port == 81)))
            },
        ),
        (
            "endPort range",
            vec![policy(
                "x",
                "p",
                json!({"podSelector": pod_sel("a"), "policyTypes": ["Egress"], "egress": [{"ports": [{"port": 80, "endPort": 81, "protocol": "UDP"}]}]}),
            )],
            |s, _, pr, port| !s.is("x", "a") || (pr == "UDP" && (80..=81).contains(&port)),
        ),
        (
            "endPort range that excludes a port",
            vec![policy(
                "x",
                "p",
                json!({"podSelector": {}, "ingress": [{"ports": [{"port": 81, "endPort": 90}]}]}),
            )],
            |_, d, pr, port| !d.in_ns("x") || (pr == "TCP" && port == 81),
        ),
        (
            "egress to DNS only",
            vec![policy(
                "x",
                "dns",
                json!({"podSelector": {}, "policyTypes": ["Egress"], "egress": [{"ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]}]}),
            )],
            |s, _, pr, port| !s.in_ns("x") || (pr == "UDP" && port == 53),
        ),
        (
            "multiple policies are additive",
            vec![
                policy(
                    "x",
                    "p1",
                    json!({"podSelector": pod_sel("a"), "ingress": [{"from": [{"namespaceSelector": ns_sel("y")}], "ports": [{"port": 80}]}]}),
                ),
                policy(
                    "x",
                    "p2",
                    json!({"podSelector": pod_sel("a"), "ingress": [{"from": [{"namespaceSelector": ns_sel("z")}], "ports": [{"port": 81}]}]}),
                ),
            ],
            |s, d, pr, port| {
                !d.is("x", "a")
                    || (pr == "TCP"
                        && ((s.in_ns("y") && port == 80) || (s.in_ns("z") && port == 81)))
            },
        ),
        (
            "policyTypes Egress only: ingress rules are ignored",
            vec![policy(
                "x",
                "p",
                json!({"podSelector": pod_sel("a"), "policyTypes": ["Egress"], "ingress": [{"from": [{"podSelector": pod_sel("b")}]}], "egress": [{}]}),
            )],
            |_, _, _, _| true,
        ),
        (
            "egress rules without policyTypes isolate both directions",
            vec![policy(
                "x",
                "p",
                json!({"podSelector": pod_sel("a"), "egress": [{"to": [{"namespaceSelector": {}}]}]}),
            )],
            |s, d, _, _| !d.is("x", "a") && (!s.is("x", "a") || d.pod.is_some()),
        ),
        (
            "SCTP",
            vec![policy(
                "x",
                "p",
                json!({"podSelector": pod_sel("a"), "ingress": [{"ports": [{"protocol": "SCTP", "port": 80}]}]}),
            )],
            |_, d, pr, _| !d.is("x", "a") || pr == "SCTP",
        ),
        (
            "protocol without port",
            vec![policy(
                "x",
                "p",
                json!({"podSelector": {}, "ingress": [{"ports": [{"protocol": "UDP"}]}]}),
            )],
            |_, d, pr, _| !d.in_ns("x") || pr == "UDP",
        ),
        (
            "both egress of the source and ingress of the destination must allow",
            vec![
                policy(
                    "x",
                    "out",
                    json!({"podSelector": pod_sel("a"), "policyTypes": ["Egress"], "egress": [{"to": [{"namespaceSelector": ns_sel("y"), "podSelector": pod_sel("b")}]}]}),
                ),
                policy(
                    "y",
                    "in",
                    json!({"podSelector": pod_sel("b"), "ingress": [{"from": [{"namespaceSelector": ns_sel("x"), "podSelector": pod_sel("c")}]}]}),
                ),
            ],
            |s, d, _, _| (!s.is("x", "a") || d.is("y", "b")) && (!d.is("y", "b") || s.is("x", "c")),
        ),
        (
            "policy podSelector with Exists",
            vec![policy(
                "y",
                "p",
                json!({"podSelector": {"matchExpressions": [{"key": "tier", "operator": "Exists"}]}, "ingress": []}),
            )],
            |_, d, _, _| !d.is("y", "b"),
        ),
        (
            "policies select only in their own namespace",
            vec![policy(
                "z",
                "p",
                json!({"podSelector": {"matchLabels": {"tier": "web"}}, "ingress": []}),
            )],
            |_, _, _, _| true,
        ),
    ]
}
