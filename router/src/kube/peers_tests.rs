use super::*;
use k8s_openapi::api::core::v1::{ContainerImage, NodeAddress};

fn node(name: &str, addrs: &[(&str, &str)], pod_cidrs: &[&str]) -> Node {
    Node {
        metadata: ObjectMeta {
            name: Some(name.into()),
            resource_version: Some("7".into()),
            annotations: Some([("a".to_string(), "b".to_string())].into()),
            ..Default::default()
        },
        spec: Some(NodeSpec {
            pod_cidr: pod_cidrs.first().map(|s| s.to_string()),
            pod_cidrs: (!pod_cidrs.is_empty())
                .then(|| pod_cidrs.iter().map(|s| s.to_string()).collect()),
            unschedulable: Some(true),
            ..Default::default()
        }),
        status: Some(NodeStatus {
            addresses: Some(
                addrs
                    .iter()
                    .map(|(t, a)| NodeAddress {
                        type_: t.to_string(),
                        address: a.to_string(),
                    })
                    .collect(),
            ),
            images: Some(vec![ContainerImage {
                names: Some(vec!["registry/big:1".into()]),
                size_bytes: Some(1 << 30),
            }]),
            conditions: Some(vec![
                NodeCondition {
                    type_: "Ready".into(),
                    status: "True".into(),
                    ..Default::default()
                },
                NodeCondition {
                    type_: NETWORK_UNAVAILABLE.into(),
                    status: "True".into(),
                    reason: Some("NoRouteCreated".into()),
                    ..Default::default()
                },
            ]),
            ..Default::default()
        }),
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn internal_before_external_and_family_preference() {
    let n = node(
        "a",
        &[
            ("Hostname", "a"),
            ("ExternalIP", "203.0.113.1"),
            ("InternalIP", "fd00::1"),
            ("InternalIP", "10.0.0.1"),
        ],
        &[],
    );
    assert_eq!(
        node_address(&n, false),
        Some((ip("10.0.0.1"), AddressKind::InternalIP))
    );
    assert_eq!(
        node_address(&n, true),
        Some((ip("fd00::1"), AddressKind::InternalIP))
    );
    let ext = node("b", &[("ExternalIP", "203.0.113.2")], &[]);
    assert_eq!(
        node_address(&ext, false),
        Some((ip("203.0.113.2"), AddressKind::ExternalIP))
    );
    // the preferred family's ExternalIP beats the other family's InternalIP
    let mixed = node(
        "c",
        &[("InternalIP", "fd00::3"), ("ExternalIP", "203.0.113.3")],
        &[],
    );
    assert_eq!(node_address(&mixed, false).unwrap().0, ip("203.0.113.3"));
    // only the other family: used
    let v6 = node("d", &[("InternalIP", "fd00::4")], &[]);
    assert_eq!(node_address(&v6, false).unwrap().0, ip("fd00::4"));
    // garbage values are ignored, not fatal
    let junk = node(
        "e",
        &[("InternalIP", "not-an-ip"), ("InternalIP", " 10.0.0.5 ")],
        &[],
    );
    assert_eq!(node_address(&junk, false).unwrap().0, ip("10.0.0.5"));
}

#[test]
fn builds_peers_this_node_and_skipped() {
    let nodes = vec![
        node(
            "me",
            &[("InternalIP", "10.0.0.1")],
            &["10.32.1.0/24", "fd10::/64"],
        ),
        node("n2", &[("InternalIP", "10.0.0.2")], &["10.32.2.0/24"]),
        node("n3", &[], &[]),
        node("n4", &[("Hostname", "n4")], &[]),
        Node::default(), // no name: ignored
    ];
    let set = PeerSet::from_nodes(&nodes, "me", false);
    let me = set.this_node.as_ref().unwrap();
    assert_eq!(me.address, Some(ip("10.0.0.1")));
    assert_eq!(me.pod_cidr_v4(), Some("10.32.1.0/24".parse().unwrap()));
    assert_eq!(me.pod_cidrs.len(), 2);
    assert_eq!(me.network_unavailable, Some(true));
    assert_eq!(set.peers.len(), 1);
    let n2 = &set.peers["n2"];
    assert_eq!(n2.address, ip("10.0.0.2"));
    assert_eq!(n2.peer_name, peer_name_for_node("n2"));
    assert_eq!(n2.pod_cidrs, vec!["10.32.2.0/24".parse::<IpNet>().unwrap()]);
    assert!(set.skipped["n3"].contains("no addresses"), "{set:?}");
    assert!(set.skipped["n4"].contains("Hostname=n4"), "{set:?}");
    assert_eq!(
        set.targets(6783),
        vec!["10.0.0.2:6783".parse::<std::net::SocketAddr>().unwrap()]
    );
    assert_eq!(
        set.node_names().into_iter().collect::<Vec<_>>(),
        vec!["me", "n2", "n3", "n4"]
    );
    assert!(set.peer_names().contains(&peer_name_for_node("me")));
    assert!(set.peer_names().contains(&peer_name_for_node("n3")));
}

#[test]
fn missing_this_node_and_bad_cidr() {
    let nodes = vec![node("n2", &[("InternalIP", "10.0.0.2")], &["10.32.2.7/24"])];
    let set = PeerSet::from_nodes(&nodes, "me", false);
    assert!(set.this_node.is_none());
    // host bits are cleared
    assert_eq!(set.peers["n2"].pod_cidrs[0].to_string(), "10.32.2.0/24");
    let bad = vec![node("n2", &[("InternalIP", "10.0.0.2")], &["ten/8"])];
    let set = PeerSet::from_nodes(&bad, "me", false);
    assert!(set.peers["n2"].pod_cidrs.is_empty());
    assert_eq!(set.warnings.len(), 1);
    assert!(set.warnings[0].contains("ten/8"));
}

#[test]
fn diff_reports_added_changed_unaddressed_removed() {
    let before = PeerSet::from_nodes(
        &[
            node("me", &[("InternalIP", "10.0.0.1")], &[]),
            node("a", &[("InternalIP", "10.0.0.2")], &[]),
            node("b", &[("InternalIP", "10.0.0.3")], &[]),
            node("c", &[("InternalIP", "10.0.0.4")], &[]),
            node("d", &[], &[]),
        ],
        "me",
        false,
    );
    let after = PeerSet::from_nodes(
        &[
            node("me", &[("InternalIP", "10.0.0.1")], &[]),
            node("a", &[("InternalIP", "10.0.0.2")], &[]),
            node("b", &[("InternalIP", "10.0.0.33")], &[]),
            node("c", &[], &[]),
            node("e", &[("ExternalIP", "203.0.113.5")], &[]),
        ],
        "me",
        false,
    );
    let d = after.diff(&before);
    assert_eq!(d.added.len(), 1);
    assert_eq!(d.added[0].node, "e");
    assert_eq!(d.changed.len(), 1);
    assert_eq!(d.changed[0].0.address, ip("10.0.0.3"));
    assert_eq!(d.changed[0].1.address, ip("10.0.0.33"));
    assert_eq!(d.unaddressed.len(), 1);
    assert_eq!(d.unaddressed[0].node, "c");
    assert_eq!(d.removed, vec!["d".to_string()]);
    assert!(!d.this_node_changed);
    assert!(after.diff(&after).is_empty());
    // from nothing (first sync): everything is added, nothing removed
    let first = after.diff(&PeerSet::default());
    assert_eq!(first.added.len(), 3);
    assert!(first.removed.is_empty());
    assert!(first.this_node_changed);
}

#[test]
fn this_node_leaving_is_not_a_removal() {
    let before = PeerSet::from_nodes(&[node("me", &[], &[])], "me", false);
    let d = PeerSet::default().diff(&before);
    assert!(d.removed.is_empty());
    assert!(d.this_node_changed);
}

#[test]
fn pruning_keeps_what_the_peer_set_reads() {
    let nodes = vec![
        node("me", &[("InternalIP", "10.0.0.1")], &["10.32.1.0/24"]),
        node("n2", &[("InternalIP", "10.0.0.2")], &["10.32.2.0/24"]),
    ];
    let full = PeerSet::from_nodes(&nodes, "me", false);
    let mut pruned = nodes.clone();
    pruned.iter_mut().for_each(prune_node);
    assert_eq!(PeerSet::from_nodes(&pruned, "me", false), full);
    let p = &pruned[0];
    let st = p.status.as_ref().unwrap();
    assert!(st.images.is_none());
    assert_eq!(st.conditions.as_ref().unwrap().len(), 1);
    assert!(p.metadata.annotations.is_none());
    assert_eq!(p.metadata.resource_version.as_deref(), Some("7"));
    assert!(p.spec.as_ref().unwrap().unschedulable.is_none());
}

#[test]
fn peer_set_round_trips_through_json() {
    let set = PeerSet::from_nodes(
        &[
            node("me", &[("InternalIP", "10.0.0.1")], &["10.32.1.0/24"]),
            node("n2", &[("InternalIP", "10.0.0.2")], &[]),
            node("n3", &[], &[]),
        ],
        "me",
        false,
    );
    let json = serde_json::to_string(&set).unwrap();
    let back: PeerSet = serde_json::from_str(&json).unwrap();
    assert_eq!(back, set);
}
