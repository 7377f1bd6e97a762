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
    // 80-81 and 8080 from 10.0.1.1.
    assert_eq!(g.ported4.len(), 2);
    let eg = &rs.groups[&rs.egress[&ips(&["10.0.0.1"])[0]]];
    // "http" of each web pod: 10.0.0.1:8080, 10.0.0.2:8081.
    let got: Vec<_> = eg.ported4.iter().map(|e| (e.addr, e.ports)).collect();
    assert_eq!(
        got,
        vec![
            ((0x0a000001, 0x0a000001), (8080, 8080)),
            ((0x0a000002, 0x0a000002), (8081, 8081))
        ]
    );
    let text = rs.to_nft();
    assert!(
        text.starts_with("table inet weft-policy\ndelete table inet weft-policy\n"),
        "{text}"
    );
    assert!(
        text.contains("ip saddr . meta l4proto . th dport @i-"),
        "{text}"
    );
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
    assert_eq!((d.added, d.deleted), (4, 0), "{}", d.script);
    assert!(
        d.script.contains("add element inet weft-policy i-"),
        "{}",
        d.script
    );
    assert!(d.script.contains("10.0.2.1 . tcp . 80-81"), "{}", d.script);
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

#[test]
fn disjoint_covers_exactly_the_union() {
    let mut seed = 99u64;
    let mut next = |m: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % m
    };
    for _ in 0..300 {
        let n = 1 + next(6) as usize;
        let rects: Vec<Rect<u32>> = (0..n)
            .map(|_| {
                let a = next(40) as u32;
                let p = next(20) as u16;
                let proto = if next(3) == 0 {
                    Protocol::Udp
                } else {
                    Protocol::Tcp
                };
                ((a, a + next(10) as u32), proto, (p, p + next(5) as u16))
            })
            .collect();
        let out = disjoint(rects.clone());
        for proto in [Protocol::Tcp, Protocol::Udp] {
            for a in 0..55u32 {
                for p in 0..30u16 {
                    let want = rects.iter().any(|r| {
                        r.1 == proto
                            && (r.0 .0..=r.0 .1).contains(&a)
                            && (r.2 .0..=r.2 .1).contains(&p)
                    });
                    let hits = out
                        .iter()
                        .filter(|e| {
                            e.proto == proto
                                && (e.addr.0..=e.addr.1).contains(&a)
                                && (e.ports.0..=e.ports.1).contains(&p)
                        })
                        .count();
                    assert_eq!(
                        hits,
                        usize::from(want),
                        "{rects:?} -> {out:?} at {a} {proto} {p}"
                    );
                }
            }
        }
    }
}
