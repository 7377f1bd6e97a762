//! Truth tables: for each case, the full endpoint × endpoint × probe matrix (9 pods in
//! namespaces x, y, z plus one outside address; TCP/UDP 80, 81, SCTP 80, UDP 53).
//!
//! Three answers are compared on every cell: the expectation written from the case's intent
//! (the upstream e2e scenarios), the naive spec interpreter in `common`, and the crate's
//! compiled policy — and the rendered nftables ruleset (evaluated as data) must agree too.
//! Then thousands of seeded random policy sets (cyclonus-style) compare compiled, rendered and
//! naive.

mod common;

use common::generate::gen_policy;
use common::scenarios::{scenarios, Expect};
use common::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};
use weft_policy::render::{LogSettings, Ruleset};

fn check(case: &str, policies: &[Value], expect: Option<Expect>, want_rejected: usize) {
    check_in(
        &pods_json(),
        &namespaces_json(),
        case,
        policies,
        expect,
        want_rejected,
    );
}

/// [`check`] with other Pod and Namespace objects (the endpoints stay those of `common`).
fn check_in(
    pods: &[Value],
    namespaces: &[Value],
    case: &str,
    policies: &[Value],
    expect: Option<Expect>,
    want_rejected: usize,
) {
    let (c, rejected) = compile_with(policies, pods, namespaces);
    assert_eq!(rejected, want_rejected, "{case}: rejected policies");
    let eps = endpoints();
    let valid: Vec<Value> = policies
        .iter()
        .filter(|p| {
            weft_policy::k8s::network_policy(&serde_json::from_value((*p).clone()).unwrap()).is_ok()
        })
        .cloned()
        .collect();
    let local: Vec<_> = eps.iter().filter(|e| e.pod.is_some()).map(ip).collect();
    let rs = Ruleset::build(&c, &local, &LogSettings::default());
    for s in &eps {
        for d in &eps {
            for (pr, port) in PROBES {
                let got = c.allowed(ip(s), ip(d), proto(pr), port);
                let naive = naive_allowed_in(&valid, namespaces, s, d, pr, port);
                let diag = s.pod.is_some() && s.label() == d.label();
                let mut fail = None;
                if got != naive {
                    fail = Some("compiled vs naive");
                }
                if let Some(e) = expect {
                    let want = diag || e(s, d, pr, port);
                    if got != want {
                        fail = Some("compiled vs expected");
                    }
                }
                if !diag && rs.admits(ip(s), ip(d), proto(pr), port) != got {
                    fail = Some("rendered vs compiled");
                }
                if let Some(what) = fail {
                    panic!(
                        "{case}: {what} at {} -> {} {pr}/{port}: compiled {got}, naive {naive}\npolicies: {}\ncompiled:\n{}\nnaive:\n{}",
                        s.label(),
                        d.label(),
                        serde_json::to_string_pretty(policies).unwrap(),
                        show(&eps, &|a, b, p, n| c.allowed(ip(a), ip(b), proto(p), n)),
                        show(&eps, &|a, b, p, n| naive_allowed_in(&valid, namespaces, a, b, p, n)),
                    );
                }
            }
        }
    }
}

#[test]
fn upstream_e2e_scenarios() {
    for (name, policies, expect) in scenarios() {
        check(name, &policies, Some(expect), 0);
    }
}

/// Pods policies must not see: a host-network pod (its address is the node's, here the
/// outside address), a finished pod whose released address now belongs to y/b (it sorts
/// before y/b, so it would claim the address if it counted), and a pod without an address
/// yet. Each carries labels the scenarios select. Every scenario's matrix must be unchanged.
#[test]
fn host_network_finished_and_addressless_pods_change_nothing() {
    let mut pods = pods_json();
    let obj = |name: &str, spec: Value, status: Value| {
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": name, "namespace": "x", "labels": {"pod": "a", "tier": "web"}},
               "spec": spec, "status": status})
    };
    let containers = json!([{"name": "c", "ports": [{"name": "web", "containerPort": 81}]}]);
    pods.push(obj(
        "h",
        json!({"hostNetwork": true, "containers": containers}),
        json!({"phase": "Running", "podIPs": [{"ip": EXTERNAL.to_string()}]}),
    ));
    pods.push(obj(
        "done",
        json!({"containers": containers}),
        json!({"phase": "Failed", "podIPs": [{"ip": "10.0.2.2"}]}),
    ));
    pods.push(obj(
        "new",
        json!({"containers": containers}),
        json!({"phase": "Pending"}),
    ));
    let (c, _) = compile_with(&[], &pods, &namespaces_json());
    assert_eq!(
        c.pods().len(),
        10,
        "the host-network and finished pods are left out"
    );
    for (name, policies, expect) in scenarios() {
        check_in(&pods, &namespaces_json(), name, &policies, Some(expect), 0);
    }
}

/// Namespaces without labels, with a wrong `kubernetes.io/metadata.name` (the API server
/// overwrites it), and without a Namespace object at all.
#[test]
fn namespace_labels_default_to_the_name() {
    let namespaces = vec![
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}}),
        json!({"apiVersion": "v1", "kind": "Namespace",
               "metadata": {"name": "y", "labels": {"kubernetes.io/metadata.name": "z", "ns": "y"}}}),
    ];
    let pods = pods_json();
    let by_name = |v: &[&str]| json!({"matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "In", "values": v}]});
    let cases: Vec<(&str, Vec<Value>, Expect)> = vec![
        (
            "by name: a manifest cannot claim another namespace's name",
            vec![policy(
                "x",
                "p",
                json!({"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": by_name(&["z"])}]}]}),
            )],
            |s, d, _, _| !d.in_ns("x") || s.in_ns("z"),
        ),
        (
            "by name, namespace without an object",
            vec![policy(
                "z",
                "p",
                json!({"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": by_name(&["z", "x"])}]}]}),
            )],
            |s, d, _, _| !d.in_ns("z") || s.in_ns("z") || s.in_ns("x"),
        ),
        (
            "DoesNotExist on a label only y has",
            vec![policy(
                "y",
                "p",
                json!({"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {"matchExpressions": [{"key": "ns", "operator": "DoesNotExist"}]}}]}]}),
            )],
            |s, d, _, _| !d.in_ns("y") || s.in_ns("x") || s.in_ns("z"),
        ),
    ];
    for (name, policies, expect) in cases {
        check_in(&pods, &namespaces, name, &policies, Some(expect), 0);
    }
}

#[test]
fn an_invalid_policy_does_not_disturb_the_others() {
    let policies = vec![
        policy("x", "deny", json!({"podSelector": {}, "ingress": []})),
        policy(
            "y",
            "broken",
            json!({"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/40"}}]}]}),
        ),
        policy(
            "z",
            "broken2",
            json!({"podSelector": {}, "ingress": [{"ports": [{"protocol": "ICMP"}]}]}),
        ),
        policy(
            "z",
            "port0",
            json!({"podSelector": {}, "ingress": [{"ports": [{"port": 0}]}]}),
        ),
        policy(
            "y",
            "backwards",
            json!({"podSelector": {}, "policyTypes": ["Egress"], "egress": [{"ports": [{"port": 81, "endPort": 80}]}]}),
        ),
        policy(
            "y",
            "too-high",
            json!({"podSelector": {}, "ingress": [{"ports": [{"port": 80, "endPort": 65536}]}]}),
        ),
    ];
    check("invalid", &policies, Some(|_, d, _, _| !d.in_ns("x")), 5);
}

// ---------------------------------------------------------------------------------------
// Generated combinations.

/// Cyclonus-style: many random policy sets over the small cluster, compiled and rendered
/// answers against the naive interpreter on every cell. Seeded and deterministic.
#[test]
fn generated_policy_sets_agree_with_the_naive_interpreter() {
    let mut r = ChaCha8Rng::seed_from_u64(0x5eed6);
    let cases = 3000;
    for case in 0..cases {
        let n = r.random_range(1..=4);
        let policies: Vec<Value> = (0..n).map(|i| gen_policy(&mut r, i)).collect();
        check(&format!("generated case {case}"), &policies, None, 0);
    }
}

/// The generated sets are not trivial: a good share isolates something and blocks cells.
#[test]
fn generated_policy_sets_are_diverse() {
    let mut r = ChaCha8Rng::seed_from_u64(0x5eed6);
    let eps = endpoints();
    let (mut some_blocked, mut some_partial) = (0, 0);
    for _ in 0..300 {
        let n = r.random_range(1..=4);
        let policies: Vec<Value> = (0..n).map(|i| gen_policy(&mut r, i)).collect();
        let (c, _) = compile(&policies);
        let mut blocked = 0;
        let mut total = 0;
        for s in &eps {
            for d in &eps {
                for (pr, port) in PROBES {
                    total += 1;
                    if !c.allowed(ip(s), ip(d), proto(pr), port) {
                        blocked += 1;
                    }
                }
            }
        }
        some_blocked += usize::from(blocked > 0);
        some_partial += usize::from(blocked > 0 && blocked < total / 4);
    }
    assert!(
        some_blocked > 200,
        "{some_blocked}/300 sets block something"
    );
    assert!(some_partial > 50, "{some_partial}/300 sets block a little");
}
