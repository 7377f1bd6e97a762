//! `weft lab` with several underlay segments: `--segments` parsing and validation, the
//! expected connections of a topology, and real routers on segments joined by a
//! dual-homed node or behind a NAT gateway. The namespace tests need root, iproute2 and
//! nftables; `#[ignore]`d unless asked for (see main.rs). Each uses its own lab id and
//! tears down through a guard.

use crate::common::prerequisites;
use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use weft::lab::{self, Lab, LabGuard, LabOptions, LabPassword, SegmentSpec, Topology};
use weft::status::{ConnState, Status};

const BIN: &str = env!("CARGO_BIN_EXE_weft");

fn test_id() -> String {
    format!("s{}", lab::random_alnum(5))
}

fn ip4(a: u8, b: u8, c: u8, d: u8) -> Ipv4Addr {
    Ipv4Addr::new(a, b, c, d)
}

fn spec_err(spec: &str, nodes: usize) -> String {
    format!(
        "{:#}",
        SegmentSpec::parse(spec, nodes).expect_err(&format!("{spec:?} with {nodes} nodes"))
    )
}

#[test]
fn segment_spec_parsing() {
    let s = SegmentSpec::parse("1,2,3|3,4,5", 5).unwrap();
    assert_eq!(s.segments.len(), 2);
    assert_eq!(s.segments[0].members, vec![1, 2, 3]);
    assert_eq!(s.segments[1].members, vec![3, 4, 5]);
    assert!(!s.segments[0].nat && !s.segments[1].nat);
    assert_eq!(s.to_string(), "1-3|3-5");

    let s = SegmentSpec::parse(" 1-3 | nat: 4 , 5 ", 5).unwrap();
    assert_eq!(s.segments[0].members, vec![1, 2, 3]);
    assert_eq!(s.segments[1].members, vec![4, 5]);
    assert!(s.segments[1].nat);
    assert_eq!(s.to_string(), "1-3|nat:4,5");
    assert_eq!(s.max_node(), 5);
    // a round trip through Display
    assert_eq!(s.to_string().parse::<SegmentSpec>().unwrap(), s);

    // several NAT segments, ranges mixed with numbers, one-node segments
    let s = SegmentSpec::parse("1,2-4,6|nat:5|nat:7-8", 8).unwrap();
    assert_eq!(s.segments[0].members, vec![1, 2, 3, 4, 6]);
    assert_eq!(s.to_string(), "1-4,6|nat:5|nat:7,8");
    assert!(SegmentSpec::parse("1", 1).is_ok());
    assert!(SegmentSpec::parse("1-2|2-3|3-4", 4).is_ok());

    // syntax
    for (spec, want) in [
        ("", "empty"),
        ("1,2|", "segment 2"),
        ("1,2||3", "segment 2"),
        ("nat:", "empty"),
        ("1,,2", "stray comma"),
        ("1,x", "\"x\" is not a node number"),
        ("1-", "is not a node number"),
        ("3-1", "runs backwards"),
        ("0,1", "numbered from 1"),
        ("1,2,1", "node 1 is listed twice"),
        ("1-3,2", "node 2 is listed twice"),
        ("-1", "is not a node number"),
    ] {
        let e = spec_err(spec, 3);
        assert!(e.contains(want), "{spec:?}: {e}");
    }
    // against the node count and the rules
    for (spec, nodes, want) in [
        (
            "1,2,3|3,4,6",
            5,
            "segment 2 (3,4,6): node 6 does not exist; the lab has 5 nodes",
        ),
        ("1,2|4,5", 5, "node 3 is on no segment"),
        ("1,2", 4, "nodes 3, 4 are on no segment"),
        (
            "nat:1,2|2,3",
            3,
            "first segment (nat:1,2) cannot be a nat: segment",
        ),
        (
            "nat:1-3",
            3,
            "first segment (nat:1-3) cannot be a nat: segment",
        ),
        (
            "1-3|nat:3,4",
            4,
            "node 3 is behind NAT in segment 2 (nat:3,4) and also on segment 1 (1-3)",
        ),
        ("1-3|nat:4,5|4,6", 6, "node 4 is behind NAT in segment 2"),
        ("1,2|3,4", 4, "segment 2 (3,4) is not joined"),
        ("1,2|3,4|4,5", 5, "segment 2 (3,4) is not joined"),
    ] {
        let e = spec_err(spec, nodes);
        assert!(e.contains(want), "{spec:?} with {nodes} nodes: {e}");
    }
    // a segment joined only through a later one still counts
    assert!(SegmentSpec::parse("1,2|3,4|2,3", 4).is_ok());
    assert!(Topology::segmented("x", 65, &SegmentSpec::single(65)).is_err());
    assert!(Topology::segmented("X", 2, &SegmentSpec::single(2)).is_err());
}

fn links(v: &[(usize, usize)]) -> BTreeSet<(usize, usize)> {
    v.iter().copied().collect()
}

#[test]
fn dual_homed_topology_and_expected_connections() {
    let t = Topology::segmented("lab", 5, &SegmentSpec::parse("1,2,3|3,4,5", 5).unwrap()).unwrap();
    assert!(!t.is_single_segment());
    assert_eq!(
        t.namespaces(),
        [
            "weft-lab-sw",
            "weft-lab-sw1",
            "weft-lab-n1",
            "weft-lab-n2",
            "weft-lab-n3",
            "weft-lab-n4",
            "weft-lab-n5"
        ]
    );
    assert_eq!(t.segments[1].subnet, ip4(10, 201, 1, 0));
    assert_eq!(
        t.node_addrs(3),
        vec![(0, ip4(10, 201, 0, 13)), (1, ip4(10, 201, 1, 13))]
    );
    assert_eq!(t.primary_addr(5), ip4(10, 201, 1, 15));
    assert_eq!(
        t.peer_addrs(1),
        vec![ip4(10, 201, 0, 12), ip4(10, 201, 0, 13)]
    );
    assert_eq!(
        t.peer_addrs(3),
        vec![
            ip4(10, 201, 0, 11),
            ip4(10, 201, 0, 12),
            ip4(10, 201, 1, 14),
            ip4(10, 201, 1, 15)
        ]
    );
    assert_eq!(
        t.peer_addrs(4),
        vec![ip4(10, 201, 1, 13), ip4(10, 201, 1, 15)]
    );
    assert_eq!(t.dial_addr(1, 5), None);
    assert_eq!(t.dial_addr(5, 1), None);
    assert_eq!(
        t.expected_links(),
        links(&[(1, 2), (1, 3), (2, 3), (3, 4), (3, 5), (4, 5)])
    );
    assert_eq!(t.direct_neighbours(3), BTreeSet::from([1, 2, 4, 5]));
    assert_eq!(t.direct_neighbours(1), BTreeSet::from([2, 3]));
    assert_eq!(t.reachable_from(1), BTreeSet::from([1, 2, 3, 4, 5]));
    let d = t.describe();
    assert!(
        d.contains("10.201.1.0/24 on weft-lab-sw1 (eth1): n3 n4 n5"),
        "{d}"
    );
    assert!(d.contains("multi-homed: n3"), "{d}");

    // the one-segment lab is the full mesh, as before
    let one = Topology::single_segment("lab", 4).unwrap();
    assert!(one.is_single_segment());
    assert_eq!(one.expected_links().len(), 6);
    assert_eq!(
        Topology::segmented("lab", 4, &SegmentSpec::parse("1-4", 4).unwrap()).unwrap(),
        one
    );
}

#[test]
fn nat_topology_and_expected_connections() {
    let spec = SegmentSpec::parse("1-3|nat:4,5|nat:6", 6).unwrap();
    let t = Topology::segmented("lab", 6, &spec).unwrap();
    let gw1 = t.segments[1].nat.as_ref().unwrap();
    assert_eq!(gw1.namespace, "weft-lab-gw1");
    assert_eq!(gw1.public_addr, ip4(10, 201, 0, 254));
    assert_eq!(gw1.private_addr, ip4(10, 201, 1, 1));
    let gw2 = t.segments[2].nat.as_ref().unwrap();
    assert_eq!(gw2.public_addr, ip4(10, 201, 0, 253));
    assert_eq!(gw2.private_addr, ip4(10, 201, 2, 1));
    assert!(t.segments[0].nat.is_none());
    assert!(t.namespaces().contains(&"weft-lab-gw2".to_string()));
    assert_eq!(t.nat_segment(4), Some(1));
    assert_eq!(t.nat_segment(1), None);
    // NAT nodes dial the public nodes and each other; public nodes cannot dial in.
    assert_eq!(
        t.peer_addrs(4),
        vec![
            ip4(10, 201, 0, 11),
            ip4(10, 201, 0, 12),
            ip4(10, 201, 0, 13),
            ip4(10, 201, 1, 15)
        ]
    );
    assert_eq!(
        t.peer_addrs(1),
        vec![ip4(10, 201, 0, 12), ip4(10, 201, 0, 13)]
    );
    assert_eq!(t.dial_addr(1, 4), None);
    assert_eq!(t.dial_addr(4, 6), None, "two NATs do not meet");
    let mut want = vec![(1, 2), (1, 3), (2, 3), (4, 5)];
    for public in 1..=3 {
        want.extend([(public, 4), (public, 5), (public, 6)]);
    }
    assert_eq!(t.expected_links(), links(&want));
    assert_eq!(t.direct_neighbours(1), BTreeSet::from([2, 3, 4, 5, 6]));
    assert_eq!(t.direct_neighbours(6), BTreeSet::from([1, 2, 3]));
    assert_eq!(t.reachable_from(6).len(), 6);
    let d = t.describe();
    assert!(d.contains("segment 1 (private)"), "{d}");
    assert!(
        d.contains(
            "NAT gateway weft-lab-gw1: lan 10.201.1.1 (default route of n4 n5) masquerades out \
             of wan 10.201.0.254"
        ),
        "{d}"
    );
}

#[test]
fn lab_json_without_new_fields_still_loads() {
    // What an older weft wrote: segments without `nat`.
    let old = r#"{"id":"lab","nodes":2,"segments":[{"namespace":"weft-lab-sw","bridge":"br0",
        "subnet":"10.201.0.0","prefix_len":24,"members":[1,2]}]}"#;
    let t: Topology = serde_json::from_str(old).unwrap();
    assert_eq!(t, Topology::single_segment("lab", 2).unwrap());
    // and a one-segment lab writes no `nat` key
    let json = serde_json::to_string(&t).unwrap();
    assert!(!json.contains("nat"), "{json}");
    let t = Topology::segmented("lab", 3, &SegmentSpec::parse("1,2|nat:3", 3).unwrap()).unwrap();
    let back: Topology = serde_json::from_str(&serde_json::to_string(&t).unwrap()).unwrap();
    assert_eq!(back, t);
}

/// A status as node `i` would report it: `conns` established peers, `reach` reachable.
fn fake_status(names: &[String], i: usize, conns: &[usize], reach: &[usize]) -> Status {
    let conns: Vec<serde_json::Value> = conns
        .iter()
        .map(|&j| {
            serde_json::json!({
                "peer": names[j - 1], "nickname": format!("n{j}"), "address": "10.201.0.1:6783",
                "state": "established", "outbound": true, "path": null, "encrypted": true,
                "mtu": 1400, "reason": null, "attempts": 0, "retry_in_ms": null,
                "source": "configured"
            })
        })
        .collect();
    let mut s = Status {
        name: names[i - 1].clone(),
        nickname: format!("n{i}"),
        ..Status::default()
    };
    s.connections = serde_json::from_value(serde_json::Value::Array(conns)).unwrap();
    for &j in reach {
        s.peers.push(weft::status::PeerInfo {
            name: names[j - 1].clone(),
            nickname: format!("n{j}"),
            reachable: true,
            ..Default::default()
        });
    }
    s
}

#[test]
fn wait_condition_follows_the_topology() {
    let t = Topology::segmented("lab", 5, &SegmentSpec::parse("1,2,3|3,4,5", 5).unwrap()).unwrap();
    let names: Vec<String> = (1..=5).map(|i| lab::node_peer_name("lab", i)).collect();
    let all = [1, 2, 3, 4, 5];
    let mut st: Vec<Option<Status>> = vec![
        Some(fake_status(&names, 1, &[2, 3], &all)),
        Some(fake_status(&names, 2, &[1, 3], &all)),
        Some(fake_status(&names, 3, &[1, 2, 4, 5], &all)),
        Some(fake_status(&names, 4, &[3, 5], &all)),
        Some(fake_status(&names, 5, &[3, 4], &all)),
    ];
    assert!(
        lab::topology_ready(&t, &names, &st),
        "{:?}",
        lab::mesh_gaps(&t, &names, &st)
    );
    // the old full-mesh condition would wait forever here
    assert!(!lab::mesh_ready(&st, 5));
    // n3 missing its link to n5
    st[2] = Some(fake_status(&names, 3, &[1, 2, 4], &all));
    assert_eq!(
        lab::mesh_gaps(&t, &names, &st),
        vec!["n3: not connected to n5".to_string()]
    );
    st[2] = Some(fake_status(&names, 3, &[1, 2, 4, 5], &all));
    // n1 not seeing n5 yet
    st[0] = Some(fake_status(&names, 1, &[2, 3], &[1, 2, 3, 4]));
    assert_eq!(
        lab::mesh_gaps(&t, &names, &st),
        vec!["n1: does not reach n5".to_string()]
    );
    st[0] = None;
    assert_eq!(
        lab::mesh_gaps(&t, &names, &st),
        vec!["n1: no status".to_string()]
    );

    // NAT: public nodes must be connected to the private ones (the private side dials)
    let t = Topology::segmented("lab", 4, &SegmentSpec::parse("1,2|nat:3,4", 4).unwrap()).unwrap();
    let all = [1, 2, 3, 4];
    let mut st: Vec<Option<Status>> = vec![
        Some(fake_status(&names, 1, &[2, 3, 4], &all)),
        Some(fake_status(&names, 2, &[1, 3, 4], &all)),
        Some(fake_status(&names, 3, &[1, 2, 4], &all)),
        Some(fake_status(&names, 4, &[1, 2, 3], &all)),
    ];
    assert!(lab::topology_ready(&t, &names[..4], &st));
    st[1] = Some(fake_status(&names, 2, &[1, 3], &all));
    assert_eq!(
        lab::mesh_gaps(&t, &names[..4], &st),
        vec!["n2: not connected to n4".to_string()]
    );

    // a single segment: the full mesh, like mesh_ready
    let t = Topology::single_segment("lab", 3).unwrap();
    let st: Vec<Option<Status>> = (1..=3)
        .map(|i| {
            let others: Vec<usize> = (1..=3).filter(|&j| j != i).collect();
            Some(fake_status(&names, i, &others, &[1, 2, 3]))
        })
        .collect();
    assert!(lab::topology_ready(&t, &names[..3], &st));
    assert!(lab::mesh_ready(&st, 3));
}

fn established(s: &Status) -> BTreeSet<String> {
    s.connections
        .iter()
        .filter(|c| c.state == ConnState::Established)
        .filter_map(|c| c.nickname.clone())
        .collect()
}

fn reachable(s: &Status) -> BTreeSet<String> {
    s.peers
        .iter()
        .filter(|p| p.reachable)
        .map(|p| p.nickname.clone())
        .collect()
}

fn nicks(v: &[usize]) -> BTreeSet<String> {
    v.iter().map(|i| format!("n{i}")).collect()
}

async fn segmented_lab(spec: &str, nodes: usize) -> (Lab, LabGuard, Duration) {
    let id = test_id();
    let guard = LabGuard::new(&id);
    let mut opts = LabOptions::new(&id, nodes, BIN);
    opts.password = LabPassword::Random;
    opts.timeout = Duration::from_secs(40);
    opts.segments = Some(SegmentSpec::parse(spec, nodes).unwrap());
    let t0 = Instant::now();
    let lab = Lab::up(opts).await.expect("lab up");
    (lab, guard, t0.elapsed())
}

/// Output of `cmd` in node `i`'s namespace: (success, stdout + stderr).
async fn run(lab: &Lab, i: usize, cmd: &[&str]) -> (bool, String) {
    let out = lab.exec(i, cmd).await.unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root (network namespaces): run as root with --include-ignored, as scripts/test.sh does"]
async fn two_segments_joined_by_a_dual_homed_node() {
    prerequisites();
    let t0 = Instant::now();
    let (lab, _g, up) = segmented_lab("1,2,3|3,4,5", 5).await;
    let id = lab.id();
    eprintln!(
        "mesh of 5 nodes on 2 segments up in {:.2} s",
        up.as_secs_f64()
    );
    let mut found = lab::list_namespaces(&format!("weft-{id}-")).unwrap();
    found.sort();
    let mut want = lab.topology().namespaces();
    want.sort();
    assert_eq!(found, want);
    assert!(found.contains(&format!("weft-{id}-sw1")));

    // n3 has one underlay veth per segment
    let (_, addrs) = run(&lab, 3, &["ip", "-4", "-o", "addr", "show"]).await;
    assert!(
        addrs.contains("eth0") && addrs.contains("10.201.0.13/24"),
        "{addrs}"
    );
    assert!(
        addrs.contains("eth1") && addrs.contains("10.201.1.13/24"),
        "{addrs}"
    );
    assert_eq!(
        lab.underlay_addrs(3),
        vec![(0, ip4(10, 201, 0, 13)), (1, ip4(10, 201, 1, 13))]
    );
    // --peer lists hold only what a node reaches directly
    let peers = |i: usize| -> Vec<String> {
        let argv = lab.info().nodes[i - 1].argv.clone();
        argv.windows(2)
            .filter(|w| w[0] == "--peer")
            .map(|w| w[1].clone())
            .collect()
    };
    assert_eq!(peers(1), ["10.201.0.12:6783", "10.201.0.13:6783"]);
    assert_eq!(peers(5), ["10.201.1.13:6783", "10.201.1.14:6783"]);

    let all = nicks(&[1, 2, 3, 4, 5]);
    let st: Vec<Status> = {
        let mut v = Vec::new();
        for i in 1..=5 {
            v.push(lab.status(i).await.unwrap());
        }
        v
    };
    let statuses: Vec<Option<Status>> = st.iter().cloned().map(Some).collect();
    assert!(lab.ready(&statuses));
    for (i, s) in st.iter().enumerate() {
        assert_eq!(
            reachable(s),
            all,
            "n{}: every node is a reachable peer",
            i + 1
        );
    }
    assert_eq!(
        established(&st[2]),
        nicks(&[1, 2, 4, 5]),
        "n3 connects to all"
    );
    // n1 and n5 see each other only through n3
    assert!(
        !established(&st[0]).contains("n5"),
        "{:?}",
        st[0].connections
    );
    assert!(
        !established(&st[4]).contains("n1"),
        "{:?}",
        st[4].connections
    );
    assert!(!established(&st[0]).contains("n4") && !established(&st[1]).contains("n5"));
    let n5 = st[0].peers.iter().find(|p| p.nickname == "n5").unwrap();
    assert_eq!(
        n5.next_hop.as_deref(),
        Some(lab.peer_name(3).as_str()),
        "{n5:?}"
    );

    // the underlay is really split: n1 has no route to n5's segment
    let (ok, out) = run(&lab, 1, &["ping", "-c1", "-W1", "10.201.1.15"]).await;
    assert!(!ok, "n1 pinged n5: {out}");
    assert!(out.contains("unreachable"), "{out}");
    let (ok, out) = run(&lab, 1, &["ip", "route", "get", "10.201.1.15"]).await;
    assert!(!ok && out.contains("unreachable"), "{out}");
    // while n3 reaches both sides
    for addr in ["10.201.0.11", "10.201.1.15"] {
        let (ok, out) = run(&lab, 3, &["ping", "-c1", "-W2", addr]).await;
        assert!(ok, "n3 -> {addr}: {out}");
    }

    // `weft lab status`-style description
    let d = lab.topology().describe();
    assert!(
        d.contains("n3 n4 n5") && d.contains("multi-homed: n3"),
        "{d}"
    );

    let r = Lab::down(&id).await.unwrap();
    assert_eq!(r.namespaces.len(), 7, "{r:?}");
    assert!(lab::list_namespaces(&format!("weft-{id}-"))
        .unwrap()
        .is_empty());
    eprintln!("dual-homed test took {:.2} s", t0.elapsed().as_secs_f64());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root (network namespaces): run as root with --include-ignored, as scripts/test.sh does"]
async fn nodes_behind_nat_reach_the_public_segment() {
    prerequisites();
    let t0 = Instant::now();
    let (lab, _g, up) = segmented_lab("1-3|nat:4,5", 5).await;
    let id = lab.id();
    eprintln!(
        "mesh of 3 public + 2 NAT nodes up in {:.2} s",
        up.as_secs_f64()
    );
    let gw = format!("weft-{id}-gw1");
    assert!(lab::list_namespaces(&format!("weft-{id}-"))
        .unwrap()
        .contains(&gw));

    // the gateway: two legs, forwarding, its own masquerade table
    let (_, addrs) = run_ns(&gw, &["ip", "-4", "-o", "addr", "show"]);
    assert!(
        addrs.contains("wan") && addrs.contains("10.201.0.254/24"),
        "{addrs}"
    );
    assert!(
        addrs.contains("lan") && addrs.contains("10.201.1.1/24"),
        "{addrs}"
    );
    let (_, fwd) = run_ns(&gw, &["cat", "/proc/sys/net/ipv4/ip_forward"]);
    assert_eq!(fwd.trim(), "1");
    let (ok, rules) = run_ns(&gw, &["nft", "list", "table", "ip", "weft_lab_nat"]);
    assert!(
        ok && rules.contains("masquerade") && rules.contains("10.201.1.0/24"),
        "{rules}"
    );
    let (_, n1_tables) = run(&lab, 1, &["nft", "list", "tables"]).await;
    assert!(!n1_tables.contains("weft_lab_nat"), "{n1_tables}");
    // private nodes route through the gateway
    let (_, route) = run(&lab, 4, &["ip", "route", "show", "default"]).await;
    assert!(route.contains("via 10.201.1.1"), "{route}");

    let st: Vec<Status> = {
        let mut v = Vec::new();
        for i in 1..=5 {
            v.push(lab.status(i).await.unwrap());
        }
        v
    };
    let all = nicks(&[1, 2, 3, 4, 5]);
    for (i, s) in st.iter().enumerate() {
        assert_eq!(reachable(s), all, "n{}", i + 1);
    }
    // every public node is connected to both NAT nodes, and sees them coming from the
    // gateway's public address
    for (i, s) in st.iter().enumerate().take(3) {
        for nat in ["n4", "n5"] {
            let c = s
                .connections
                .iter()
                .find(|c| c.state == ConnState::Established && c.nickname.as_deref() == Some(nat))
                .unwrap_or_else(|| panic!("n{} has no connection to {nat}: {s:?}", i + 1));
            assert!(
                c.address.starts_with("10.201.0.254:"),
                "n{} sees {nat} at {}",
                i + 1,
                c.address
            );
        }
    }
    for (i, s) in st.iter().enumerate().skip(3) {
        assert!(
            established(s).is_superset(&nicks(&[1, 2, 3])),
            "n{}: {:?}",
            i + 1,
            s.connections
        );
    }
    assert!(established(&st[3]).contains("n5"));

    // public nodes cannot dial in: no route to the private subnet
    for i in 1..=3 {
        let (ok, out) = run(&lab, i, &["ip", "route", "get", "10.201.1.14"]).await;
        assert!(!ok && out.contains("unreachable"), "n{i}: {out}");
    }
    let (ok, out) = run(&lab, 1, &["ping", "-c1", "-W1", "10.201.1.14"]).await;
    assert!(!ok, "n1 pinged a private node: {out}");
    // the way out works
    let (ok, out) = run(&lab, 4, &["ping", "-c1", "-W2", "10.201.0.11"]).await;
    assert!(ok, "n4 -> n1 through NAT: {out}");

    let r = Lab::down(&id).await.unwrap();
    assert_eq!(r.namespaces.len(), 8, "{r:?}"); // 2 switches, 1 gateway, 5 nodes
    assert!(lab::list_namespaces(&format!("weft-{id}-"))
        .unwrap()
        .is_empty());
    eprintln!("NAT test took {:.2} s", t0.elapsed().as_secs_f64());
}

fn run_ns(ns: &str, cmd: &[&str]) -> (bool, String) {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", ns])
        .args(cmd)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test]
#[ignore = "needs root (network namespaces): run as root with --include-ignored, as scripts/test.sh does"]
async fn teardown_after_a_failed_segmented_creation() {
    prerequisites();
    let id = test_id();
    let _guard = LabGuard::new(&id);
    // A leftover node namespace makes creation fail after switches and gateway exist.
    lab::topology::ip(&["netns", "add", &format!("weft-{id}-n4")]).unwrap();
    let spec = SegmentSpec::parse("1-2|3,2|nat:4,5", 5).unwrap();
    let err = format!(
        "{:#}",
        lab::create_segmented(&id, 5, &spec).await.unwrap_err()
    );
    assert!(err.contains(&format!("weft-{id}-n4")), "{err}");
    let left = lab::list_namespaces(&format!("weft-{id}-")).unwrap();
    assert!(left.contains(&format!("weft-{id}-gw2")), "{left:?}");
    assert!(left.contains(&format!("weft-{id}-sw1")), "{left:?}");
    let r = Lab::down(&id).await.unwrap();
    assert_eq!(r.namespaces.len(), left.len());
    assert!(lab::list_namespaces(&format!("weft-{id}-"))
        .unwrap()
        .is_empty());
}
