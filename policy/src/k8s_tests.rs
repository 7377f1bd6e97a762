use super::*;
use serde_json::json;

fn np(spec: serde_json::Value) -> net::NetworkPolicy {
    serde_json::from_value(json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "p", "namespace": "x"},
        "spec": spec
    }))
    .unwrap()
}

fn err(spec: serde_json::Value) -> String {
    network_policy(&np(spec)).unwrap_err().to_string()
}

#[test]
fn policy_types_default_like_the_api_server() {
    let p = network_policy(&np(json!({"podSelector": {}}))).unwrap();
    assert_eq!((p.types.ingress, p.types.egress), (true, false));
    let p = network_policy(&np(json!({"podSelector": {}, "egress": [{}]}))).unwrap();
    assert_eq!((p.types.ingress, p.types.egress), (true, true));
    // An empty egress list is not "egress rules present".
    let p = network_policy(&np(json!({"podSelector": {}, "egress": []}))).unwrap();
    assert_eq!((p.types.ingress, p.types.egress), (true, false));
    let p = network_policy(&np(
        json!({"podSelector": {}, "policyTypes": ["Egress"], "ingress": [{}]}),
    ))
    .unwrap();
    assert_eq!((p.types.ingress, p.types.egress), (false, true));
    let p = network_policy(&np(json!({"podSelector": {}, "policyTypes": []}))).unwrap();
    assert_eq!((p.types.ingress, p.types.egress), (true, false));
    assert!(err(json!({"policyTypes": ["Sideways"]})).contains("spec.policyTypes[0]"));
}

#[test]
fn absent_pod_selector_selects_all_and_empty_lists_mean_any() {
    let p = network_policy(&np(json!({"ingress": [{"from": [], "ports": []}]}))).unwrap();
    assert!(p.pod_selector.is_everything());
    assert_eq!(p.ingress, vec![Rule::allow_all()]);
}

#[test]
fn peers() {
    let p = network_policy(&np(json!({"ingress": [{"from": [
        {"podSelector": {"matchLabels": {"a": "b"}}},
        {"namespaceSelector": {}},
        {"namespaceSelector": {"matchLabels": {"n": "1"}}, "podSelector": {"matchExpressions": [{"key": "k", "operator": "Exists"}]}},
        {"ipBlock": {"cidr": "10.0.0.7/8", "except": ["10.1.0.0/16"]}}
    ]}]}))).unwrap();
    let Peers::List(peers) = &p.ingress[0].peers else {
        panic!()
    };
    assert_eq!(
        peers[0],
        Peer::Pods {
            namespaces: NamespaceScope::Same,
            pods: Selector::labels([("a", "b")])
        }
    );
    assert_eq!(
        peers[1],
        Peer::Pods {
            namespaces: NamespaceScope::Matching(Selector::everything()),
            pods: Selector::everything()
        }
    );
    let Peer::Block(b) = &peers[3] else { panic!() };
    assert_eq!(b.cidr.to_string(), "10.0.0.0/8", "host bits are dropped");
    assert!(err(json!({"ingress": [{"from": [{}]}]})).contains("needs podSelector"));
    assert!(err(
        json!({"ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}}]}]})
    )
    .contains("cannot be combined"));
}

#[test]
fn bad_input_is_rejected_with_a_reason() {
    let cases = [
        (
            json!({"ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/33"}}]}]}),
            "spec.ingress[0].from[0].ipBlock.cidr",
        ),
        (
            json!({"ingress": [{"from": [{"ipBlock": {"cidr": "banana"}}]}]}),
            "not a valid CIDR",
        ),
        (
            json!({"egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/16", "except": ["10.1.0.0/24"]}}]}]}),
            "not strictly inside",
        ),
        (
            json!({"egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/16", "except": ["10.0.0.0/16"]}}]}]}),
            "not strictly inside",
        ),
        (
            json!({"egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/16", "except": ["::/64"]}}]}]}),
            "not strictly inside",
        ),
        (
            json!({"ingress": [{"ports": [{"protocol": "ICMP", "port": 1}]}]}),
            "unknown protocol \"ICMP\"",
        ),
        (
            json!({"ingress": [{"ports": [{"protocol": "tcp", "port": 1}]}]}),
            "unknown protocol",
        ),
        (
            json!({"ingress": [{"ports": [{"port": 0}]}]}),
            "not a port number",
        ),
        (
            json!({"ingress": [{"ports": [{"port": 70000}]}]}),
            "not a port number",
        ),
        (
            json!({"ingress": [{"ports": [{"endPort": 90}]}]}),
            "endPort needs a port",
        ),
        (
            json!({"ingress": [{"ports": [{"port": "http", "endPort": 90}]}]}),
            "named port",
        ),
        (
            json!({"ingress": [{"ports": [{"port": 90, "endPort": 80}]}]}),
            "below port",
        ),
        (
            json!({"ingress": [{"ports": [{"port": "80"}]}]}),
            "not a valid port name",
        ),
        (
            json!({"ingress": [{"ports": [{"port": "Http"}]}]}),
            "not a valid port name",
        ),
        (
            json!({"podSelector": {"matchExpressions": [{"key": "a", "operator": "Near"}]}}),
            "unknown operator",
        ),
        (
            json!({"podSelector": {"matchExpressions": [{"key": "a", "operator": "In"}]}}),
            "needs at least one value",
        ),
        (
            json!({"podSelector": {"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]}}),
            "takes no values",
        ),
    ];
    for (spec, want) in cases {
        let e = err(spec.clone());
        assert!(e.contains(want), "{spec}: got {e:?}, want {want:?}");
    }
}

#[test]
fn ports() {
    let p = network_policy(&np(json!({"ingress": [{"ports": [
        {"port": 80}, {"protocol": "UDP"}, {"protocol": "SCTP", "port": 100, "endPort": 200}, {"port": "dns", "protocol": "UDP"}
    ]}]}))).unwrap();
    let Ports::List(ports) = &p.ingress[0].ports else {
        panic!()
    };
    assert_eq!(
        ports[0],
        PortRule {
            protocol: Protocol::Tcp,
            port: PortSpec::Range(80, 80)
        }
    );
    assert_eq!(
        ports[1],
        PortRule {
            protocol: Protocol::Udp,
            port: PortSpec::All
        }
    );
    assert_eq!(
        ports[2],
        PortRule {
            protocol: Protocol::Sctp,
            port: PortSpec::Range(100, 200)
        }
    );
    assert_eq!(
        ports[3],
        PortRule {
            protocol: Protocol::Udp,
            port: PortSpec::Named("dns".into())
        }
    );
}

#[test]
fn pods_and_namespaces() {
    let p: core::Pod = serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": "shop", "labels": {"app": "web"}},
        "spec": {"containers": [{"name": "c", "ports": [
            {"name": "http", "containerPort": 8080},
            {"name": "dns", "containerPort": 53, "protocol": "UDP"},
            {"containerPort": 9000}
        ]}]},
        "status": {"podIPs": [{"ip": "10.32.0.5"}, {"ip": "fd00::5"}]}
    }))
    .unwrap();
    let m = pod(&p).unwrap().unwrap();
    assert_eq!(m.ips.len(), 2);
    assert_eq!(
        m.named_ports["http"],
        NamedPort {
            protocol: Protocol::Tcp,
            port: 8080
        }
    );
    assert_eq!(
        m.named_ports["dns"],
        NamedPort {
            protocol: Protocol::Udp,
            port: 53
        }
    );
    assert_eq!(m.named_ports.len(), 2);

    let host: core::Pod = serde_json::from_value(json!({
        "metadata": {"name": "h", "namespace": "kube-system"},
        "spec": {"hostNetwork": true, "containers": []}
    }))
    .unwrap();
    assert_eq!(pod(&host).unwrap(), None);
    let done: core::Pod = serde_json::from_value(json!({
        "metadata": {"name": "d"}, "spec": {"containers": []}, "status": {"phase": "Succeeded", "podIP": "10.32.0.9"}
    }))
    .unwrap();
    assert_eq!(pod(&done).unwrap(), None);
    let bad: core::Pod = serde_json::from_value(json!({
        "metadata": {"name": "b"}, "spec": {"containers": []}, "status": {"podIP": "10.32.0.999"}
    }))
    .unwrap();
    assert!(pod(&bad)
        .unwrap_err()
        .to_string()
        .contains("not an IP address"));

    let ns: core::Namespace =
        serde_json::from_value(json!({"metadata": {"name": "shop", "labels": {"team": "a"}}}))
            .unwrap();
    let n = namespace(&ns).unwrap();
    assert_eq!(n.labels[NAMESPACE_NAME_LABEL], "shop");
    assert_eq!(n.labels["team"], "a");
    let bad: core::Namespace =
        serde_json::from_value(json!({"metadata": {"name": "Shop"}})).unwrap();
    assert!(namespace(&bad).is_err());
}

#[test]
fn port_bounds() {
    for (spec, want) in [
        (
            json!({"ingress": [{"ports": [{"port": 80, "endPort": 70000}]}]}),
            "spec.ingress[0].ports[0].endPort: 70000 is not a port number (1-65535)",
        ),
        (
            json!({"ingress": [{"ports": [{"port": -1}]}]}),
            "spec.ingress[0].ports[0].port: -1 is not a port number (1-65535)",
        ),
        (
            json!({"egress": [{"ports": [{"port": 65535, "endPort": 0}]}]}),
            "spec.egress[0].ports[0].endPort: 0 is not a port number (1-65535)",
        ),
        (
            json!({"egress": [{"ports": [{"port": 443, "endPort": 442}]}]}),
            "spec.egress[0].ports[0].endPort: endPort 442 is below port 443",
        ),
    ] {
        assert_eq!(err(spec.clone()), want, "{spec}");
    }
    let p = network_policy(&np(json!({"ingress": [{"ports": [
        {"port": 443, "endPort": 443}, {"port": 1, "endPort": 65535, "protocol": "UDP"}
    ]}]})))
    .unwrap();
    let Ports::List(ports) = &p.ingress[0].ports else {
        panic!()
    };
    assert_eq!(ports[0].port, PortSpec::Range(443, 443));
    assert_eq!(ports[1].port, PortSpec::Range(1, 65535));
}

#[test]
fn namespace_name_label_is_always_the_name() {
    for meta in [
        json!({"name": "shop"}),
        json!({"name": "shop", "labels": {}}),
        json!({"name": "shop", "labels": {"kubernetes.io/metadata.name": "bank", "t": "1"}}),
    ] {
        let ns: core::Namespace = serde_json::from_value(json!({ "metadata": meta })).unwrap();
        let n = namespace(&ns).unwrap();
        assert_eq!(n.labels[NAMESPACE_NAME_LABEL], "shop", "{meta}");
    }
}

#[test]
fn sidecar_ports_count_and_the_first_name_wins() {
    let p: core::Pod = serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {
            "containers": [
                {"name": "app", "ports": [{"name": "http", "containerPort": 8080}]},
                {"name": "other", "ports": [{"name": "http", "containerPort": 9090}, {"name": "admin", "containerPort": 9000}]}
            ],
            "initContainers": [
                {"name": "proxy", "restartPolicy": "Always", "ports": [{"name": "mesh", "containerPort": 15001}, {"name": "http", "containerPort": 1}]},
                {"name": "setup", "ports": [{"name": "setup", "containerPort": 7000}]}
            ]
        },
        "status": {"podIP": "10.32.0.5"}
    }))
    .unwrap();
    let m = pod(&p).unwrap().unwrap();
    let ports: Vec<(&str, u16)> = m
        .named_ports
        .iter()
        .map(|(n, p)| (n.as_str(), p.port))
        .collect();
    assert_eq!(
        ports,
        vec![("admin", 9000), ("http", 8080), ("mesh", 15001)],
        "a plain init container has finished before the pod serves anything"
    );
    let bad: core::Pod = serde_json::from_value(json!({
        "metadata": {"name": "b"},
        "spec": {"containers": [], "initContainers": [{"name": "s", "restartPolicy": "Always", "ports": [{"name": "x", "containerPort": 0}]}]}
    }))
    .unwrap();
    assert!(pod(&bad)
        .unwrap_err()
        .to_string()
        .starts_with("spec.initContainers[0].ports[0].containerPort"));
}

#[test]
fn pod_lifecycle() {
    let with = |status: serde_json::Value, meta: serde_json::Value| -> Option<crate::model::Pod> {
        let mut m = json!({"name": "p", "namespace": "shop"});
        m.as_object_mut()
            .unwrap()
            .extend(meta.as_object().unwrap().clone());
        pod(&serde_json::from_value(
            json!({"metadata": m, "spec": {"containers": []}, "status": status}),
        )
        .unwrap())
        .unwrap()
    };
    // Not scheduled yet / no address yet: a pod (policies select it), without addresses.
    assert!(with(json!({"phase": "Pending"}), json!({}))
        .unwrap()
        .ips
        .is_empty());
    // Finished: its address is released (and may be another pod's).
    for phase in ["Succeeded", "Failed"] {
        assert_eq!(
            with(json!({"phase": phase, "podIP": "10.32.0.9"}), json!({})),
            None
        );
    }
    // Being deleted (graceful termination): still running, still enforced and a peer.
    let p = with(
        json!({"phase": "Running", "podIP": "10.32.0.9"}),
        json!({"deletionTimestamp": "2025-01-01T00:00:00Z"}),
    )
    .unwrap();
    assert_eq!(p.ips, vec!["10.32.0.9".parse::<IpAddr>().unwrap()]);
}
