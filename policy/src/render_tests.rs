use super::*;
use crate::model::*;
use crate::selector::Selector;

fn pod(ns: &str, name: &str, app: &str, ip: &str) -> Pod {
    Pod {
        namespace: ns.into(),
        name: name.into(),
        labels: [("app".to_string(), app.to_string())].into(),
        ips: vec![ip.parse().unwrap()],
        named_ports: [(
            "http".to_string(),
            NamedPort {
                protocol: Protocol::Tcp,
                port: if name.ends_with('2') { 8081 } else { 8080 },
            },
        )]
        .into(),
    }
}

fn cluster() -> Cluster {
    Cluster {
        namespaces: vec![],
        pods: vec![
            pod("a", "web1", "web", "10.0.0.1"),
            pod("a", "web2", "web", "10.0.0.2"),
            pod("a", "db1", "db", "10.0.0.3"),
            pod("b", "cli1", "cli", "10.0.1.1"),
        ],
        policies: vec![Policy {
            namespace: "a".into(),
            name: "web".into(),
            pod_selector: Selector::labels([("app", "web")]),
            types: PolicyTypes {
                ingress: true,
                egress: true,
            },
            ingress: vec![Rule {
                peers: Peers::List(vec![Peer::Pods {
                    namespaces: NamespaceScope::Matching(Selector::everything()),
                    pods: Selector::labels([("app", "cli")]),
                }]),
                ports: Ports::List(vec![
                    PortRule {
                        protocol: Protocol::Tcp,
                        port: PortSpec::Range(80, 81),
                    },
                    PortRule {
                        protocol: Protocol::Tcp,
                        port: PortSpec::Named("http".into()),
                    },
                ]),
            }],
            egress: vec![Rule {
                peers: Peers::List(vec![Peer::Pods {
                    namespaces: NamespaceScope::Same,
                    pods: Selector::labels([("app", "web")]),
                }]),
                ports: Ports::List(vec![PortRule {
                    protocol: Protocol::Tcp,
                    port: PortSpec::Named("http".into()),
                }]),
            }],
        }],
    }
}

fn ips(v: &[&str]) -> Vec<IpAddr> {
    v.iter().map(|s| s.parse().unwrap()).collect()
}

#[test]
fn groups_split_on_named_port_resolution_and_share_otherwise() {
    let c = Compiled::new(&cluster());
    let rs = Ruleset::build(
        &c,
        &ips(&["10.0.0.1", "10.0.0.2", "10.0.0.3"]),
        &LogSettings::default(),
    );
    // web1 and web2 resolve "http" differently: two ingress groups; egress is shared.
    assert_eq!(rs.ingress.len(), 2);
    assert_ne!(
        rs.ingress[&ips(&["10.0.0.1"])[0]],
        rs.ingress[&ips(&["10.0.0.2"])[0]]
    );
    assert_eq!(rs.egress.len(), 2);
    assert_eq!(
        rs.egress[&ips(&["10.0.0.1"])[0]],
        rs.egress[&ips(&["10.0.0.2"])[0]]
    );
    assert_eq!(rs.groups.len(), 3);
    assert!(!rs.ipv6);
    let g = &rs.groups[&rs.ingress[&ips(&["10.0.0.1"])[0]]];
    // The peer (app=cli anywhere) is a shared set; 80-81 and web1's "http" (8080) are in the rule.
    assert!(g.any.is_none() && g.ported.is_none(), "{g:?}");
    let [Via::Peers {
        set,
        ports: Some(q),
    }] = g.vias.as_slice()
    else {
        panic!("{g:?}")
    };
    assert_eq!(
        rs.services[q],
        vec![(Protocol::Tcp, 80, 81), (Protocol::Tcp, 8080, 8080)]
    );
    assert_eq!(rs.peer_sets[set].v4, vec![0x0a000101]);
    let g2 = &rs.groups[&rs.ingress[&ips(&["10.0.0.2"])[0]]];
    assert!(
        matches!(g2.vias.as_slice(), [Via::Peers { set: s2, ports: Some(p) }] if s2 == set && rs.services[p][1] == (Protocol::Tcp, 8081, 8081)),
        "web2 shares the peer set, with its own http: {g2:?}"
    );
    // Egress to "http" of app=web pods: the shared peer set and the shared named-port set.
    let eg = &rs.groups[&rs.egress[&ips(&["10.0.0.1"])[0]]];
    let [Via::NamedPort {
        peers: Some(peers),
        ports,
    }] = eg.vias.as_slice()
    else {
        panic!("{eg:?}")
    };
    assert_eq!(rs.peer_sets[peers].v4, vec![0x0a000001, 0x0a000002]);
    let np = &rs.port_sets[ports];
    assert_eq!((np.name.as_str(), np.protocol), ("http", Protocol::Tcp));
    assert_eq!(
        np.v4,
        vec![
            (0x0a000001, 8080),
            (0x0a000002, 8081),
            (0x0a000003, 8080),
            (0x0a000101, 8080)
        ],
        "every pod with a port named http, cluster-wide"
    );
    let eg_name = &rs.egress[&ips(&["10.0.0.1"])[0]];
    let web2 = ips(&["10.0.0.2"])[0];
    assert!(rs.group_admits(eg_name, web2, Protocol::Tcp, 8081));
    assert!(!rs.group_admits(eg_name, web2, Protocol::Tcp, 8080));
    assert!(!rs.group_admits(eg_name, web2, Protocol::Udp, 8081));
    assert!(
        !rs.group_admits(eg_name, ips(&["10.0.0.3"])[0], Protocol::Tcp, 8080),
        "db1 has http but is not app=web"
    );
    let text = rs.to_nft();
    assert!(
        text.starts_with("table inet weft-policy\ndelete table inet weft-policy\n"),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "ip saddr @{set}-4 meta l4proto . th dport @{q} accept"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "\tset {q} {{ type inet_proto . inet_service; flags interval; }}"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "add element inet weft-policy {q} {{ tcp . 80-81, tcp . 8080 }}"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "meta l4proto tcp ip daddr @{peers}-4 ip daddr . th dport @{ports}-4 return"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "add element inet weft-policy {set}-4 {{ 10.0.1.1 }}"
        )),
        "{text}"
    );
    assert!(!text.contains("ip6"), "no IPv6 pods, no IPv6 rules: {text}");
    assert!(text.contains("counter name \"drop-in-a\" drop"), "{text}");
    assert!(
        text.contains("log prefix \"weft-policy drop egress a: \" group 6786"),
        "{text}"
    );
}

#[test]
fn a_new_peer_pod_is_an_element_diff() {
    let mut cl = cluster();
    let c = Compiled::new(&cl);
    let local = ips(&["10.0.0.1", "10.0.0.2"]);
    let old = Ruleset::build(&c, &local, &LogSettings::default());
    cl.pods.push(pod("c", "cli2", "cli", "10.0.2.1"));
    let new = Ruleset::build(&Compiled::new(&cl), &local, &LogSettings::default());
    let d = new.diff(&old).expect("same structure");
    // One address in the one shared peer set both ingress groups use, and its "http" in
    // the shared named-port set.
    assert_eq!((d.added, d.deleted), (2, 0), "{}", d.script);
    let lines: Vec<&str> = d.script.lines().collect();
    assert!(
        lines[0].starts_with("add element inet weft-policy n-")
            && lines[0].ends_with("-4 { 10.0.2.1 . 8081 }"),
        "{}",
        d.script
    );
    assert!(
        lines[1].starts_with("add element inet weft-policy s-")
            && lines[1].ends_with("-4 { 10.0.2.1 }"),
        "{}",
        d.script
    );
    assert_eq!(old.diff(&old).unwrap().script, "");
    // A policy that changes which rules apply changes the structure.
    cl.policies[0].types.egress = false;
    let third = Ruleset::build(&Compiled::new(&cl), &local, &LogSettings::default());
    assert!(third.diff(&new).is_none());
}

#[test]
fn allow_everything_groups_are_left_out() {
    let mut cl = cluster();
    cl.policies[0].ingress = vec![Rule::allow_all()];
    let rs = Ruleset::build(
        &Compiled::new(&cl),
        &ips(&["10.0.0.1"]),
        &LogSettings::default(),
    );
    assert!(rs.ingress.is_empty());
    assert_eq!(rs.egress.len(), 1);
}

/// A policy in each of namespaces a and b admitting app=cli from every namespace.
fn two_namespaces() -> Cluster {
    let mut cl = cluster();
    cl.pods.push(pod("b", "web3", "web", "10.0.1.7"));
    let from_cli = |ns: &str| Policy {
        namespace: ns.into(),
        name: "from-cli".into(),
        pod_selector: Selector::labels([("app", "web")]),
        types: PolicyTypes {
            ingress: true,
            egress: false,
        },
        ingress: vec![Rule {
            peers: Peers::List(vec![
                Peer::Pods {
                    namespaces: NamespaceScope::Matching(Selector::everything()),
                    pods: Selector::labels([("app", "cli")]),
                },
                Peer::Block(IpBlock {
                    cidr: "192.0.2.0/24".parse().unwrap(),
                    except: vec!["192.0.2.128/25".parse().unwrap()],
                }),
            ]),
            ports: Ports::List(vec![PortRule {
                protocol: Protocol::Udp,
                port: PortSpec::Range(53, 53),
            }]),
        }],
        egress: vec![],
    };
    cl.policies = vec![from_cli("a"), from_cli("b")];
    cl
}

#[test]
fn peer_sets_are_shared_across_groups_and_namespaces() {
    let cl = two_namespaces();
    let local = ips(&["10.0.0.1", "10.0.1.7"]);
    let rs = Ruleset::build(&Compiled::new(&cl), &local, &LogSettings::default());
    assert_eq!(rs.groups.len(), 2, "one group per namespace");
    assert_eq!(rs.peer_sets.len(), 1, "one shared set: {:?}", rs.peer_sets);
    // The ipBlock's rectangles are a static set, shared by content too, as is the port list.
    assert_eq!((rs.rects.len(), rs.services.len()), (1, 1));
    let rects = rs.rects.values().next().unwrap();
    assert_eq!(rects.v4.len(), 1);
    assert_eq!(rects.v4[0].addr, (0xc0000200, 0xc000027f));
    for g in rs.groups.values() {
        assert!(g.ported.is_some() && g.any.is_none());
        assert_eq!(g.vias.len(), 1);
        assert_eq!(g.lookups(), 3);
    }
    let cli = ips(&["10.0.1.1"])[0];
    let web3 = ips(&["10.0.1.7"])[0];
    assert!(rs.admits(cli, web3, Protocol::Udp, 53));
    assert!(!rs.admits(cli, web3, Protocol::Tcp, 53));
    assert!(rs.admits(ips(&["192.0.2.9"])[0], web3, Protocol::Udp, 53));
    assert!(!rs.admits(ips(&["192.0.2.200"])[0], web3, Protocol::Udp, 53));
}

#[test]
fn pods_coming_and_going_change_elements_only() {
    let mut cl = two_namespaces();
    let local = ips(&["10.0.0.1", "10.0.1.7"]);
    let log = LogSettings::default();
    let old = Ruleset::build(&Compiled::new(&cl), &local, &log);
    // A new client anywhere, a client leaving, and a new local web pod.
    cl.pods.push(pod("c", "cli9", "cli", "10.0.2.9"));
    cl.pods.retain(|p| p.name != "cli1");
    cl.pods.push(pod("a", "web4", "web", "10.0.0.4"));
    let local2 = ips(&["10.0.0.1", "10.0.1.7", "10.0.0.4"]);
    let new = Ruleset::build(&Compiled::new(&cl), &local2, &log);
    let d = new.diff(&old).expect("same structure");
    assert_eq!((d.added, d.deleted), (2, 1), "{}", d.script);
    let lines: Vec<&str> = d.script.lines().collect();
    assert_eq!(lines.len(), 3, "{}", d.script);
    assert!(
        lines[0].starts_with("delete element inet weft-policy s-"),
        "{}",
        d.script
    );
    assert!(lines[0].ends_with("-4 { 10.0.1.1 }"), "{}", d.script);
    assert!(lines[1].starts_with("add element inet weft-policy ingress4 { 10.0.0.4 : jump i-"));
    assert!(lines[2].ends_with("-4 { 10.0.2.9 }"), "{}", d.script);
    // Deleting map entries names the key only.
    let back = old.diff(&new).unwrap();
    assert!(
        back.script
            .contains("delete element inet weft-policy ingress4 { 10.0.0.4 }\n"),
        "{}",
        back.script
    );
}

#[test]
fn ipv6_rules_exist_only_with_ipv6_pods() {
    let mut cl = two_namespaces();
    let rs = Ruleset::build(
        &Compiled::new(&cl),
        &ips(&["10.0.0.1"]),
        &LogSettings::default(),
    );
    assert!(!rs.ipv6);
    let text = rs.to_nft();
    assert!(!text.contains("ip6"), "{text}");
    // The guard: an isolated pod has IPv6 link-local addresses no rule names.
    assert!(
        text.contains("\t\tmeta nfproto ipv6 iifname \"weft\" drop\n\t\tmeta nfproto ipv6 oifname \"weft\" drop\n"),
        "{text}"
    );
    let (ll, v4) = (ips(&["fe80::1"])[0], ips(&["10.0.0.1"])[0]);
    assert!(!rs.admits(ll, ips(&["fe80::2"])[0], Protocol::Tcp, 80));
    let other = rs.clone().with_bridge(Some("br0"));
    assert!(other
        .to_nft()
        .contains("meta nfproto ipv6 iifname \"br0\" drop"));
    let none = rs.clone().with_bridge(None);
    assert!(!none.to_nft().contains("nfproto") && none.admits(ll, ll, Protocol::Tcp, 80));
    assert!(rs.diff(&none).is_none(), "the guard is structure");
    // Nothing isolated here: no guard.
    let idle = Ruleset::build(
        &Compiled::new(&cl),
        &ips(&["10.0.0.3"]),
        &LogSettings::default(),
    );
    assert!(idle.ingress.is_empty() && !idle.ipv6_guard());
    assert!(!idle.to_nft().contains("nfproto"));
    assert!(
        rs.admits(v4, ips(&["10.0.1.1"])[0], Protocol::Tcp, 80),
        "egress not isolated"
    );
    cl.pods.push(Pod {
        ips: ips(&["10.0.0.8", "fd00::8"]),
        ..pod("a", "web8", "web", "10.0.0.8")
    });
    cl.pods.push(Pod {
        ips: ips(&["10.0.1.9", "fd00::1:9"]),
        ..pod("b", "cli9", "cli", "10.0.1.9")
    });
    let rs = Ruleset::build(
        &Compiled::new(&cl),
        &ips(&["10.0.0.8", "fd00::8"]),
        &LogSettings::default(),
    );
    assert!(rs.ipv6);
    let text = rs.to_nft();
    assert!(text.contains("ip6 daddr vmap @ingress6"), "{text}");
    assert!(text.contains("ip6 saddr @s-"), "{text}");
    assert!(
        text.contains("iifname \"weft\" icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } accept\n\t\tiifname \"weft\" ip6 saddr fe80::/10 drop"),
        "{text}"
    );
    assert!(!rs.admits(
        ips(&["fe80::9"])[0],
        ips(&["fd00::8"])[0],
        Protocol::Udp,
        53
    ));
    let set = rs.peer_sets.values().next().unwrap();
    assert_eq!(set.v6, vec![0xfd00_0000_0000_0000_0000_0000_0001_0009]);
    assert!(rs.admits(
        ips(&["fd00::1:9"])[0],
        ips(&["fd00::8"])[0],
        Protocol::Udp,
        53
    ));
    assert!(!rs.admits(
        ips(&["fd00::1:7"])[0],
        ips(&["fd00::8"])[0],
        Protocol::Udp,
        53
    ));
}
