use super::*;
use crate::kube::peers::{AddressKind, NodePeer, ThisNode};
use std::sync::Arc;

fn pn(node: &str) -> PeerName {
    peer_name_for_node(node)
}

/// A view of Nodes `me` (if `with_me`) and `others`.
fn view(origin: Origin, with_me: bool, others: &[&str]) -> PeerView {
    let mut set = PeerSet::default();
    if with_me {
        set.this_node = Some(ThisNode {
            node: "me".into(),
            ..Default::default()
        });
    }
    for (i, n) in others.iter().enumerate() {
        set.peers.insert(
            n.to_string(),
            NodePeer {
                node: n.to_string(),
                peer_name: pn(n),
                address: format!("192.0.2.{}", i + 1).parse().unwrap(),
                kind: AddressKind::InternalIP,
                pod_cidrs: vec![],
            },
        );
    }
    PeerView {
        set: Arc::new(set),
        origin,
    }
}

fn api(others: &[&str]) -> PeerView {
    view(Origin::Api, true, others)
}

fn owner(node: &str, reachable: bool) -> Owner {
    Owner {
        name: pn(node),
        nickname: Some(node.to_string()),
        reachable,
    }
}

fn reclaimer() -> Reclaimer {
    Reclaimer::new(pn("me"), true)
}

#[test]
fn a_deleted_nodes_space_is_reclaimed_once_its_router_is_unreachable() {
    let t0 = Instant::now();
    let mut r = reclaimer();
    r.on_view(&api(&["a", "b"]), t0);
    r.on_view(&api(&["a"]), t0);
    // its router still runs (Node deleted under it): not yet
    let live = [owner("a", true), owner("b", true)];
    assert!(r.wants_owners(t0));
    assert!(r.due(&live, t0).is_empty());
    assert!(r.pending()[0].contains("waiting until it is unreachable"));
    // it stops: reclaimed (the only survivors are this router and a; one of us goes first)
    let gone = [owner("a", true), owner("b", false)];
    let t = t0 + Duration::from_secs(30);
    let mut got = r.due(&gone, t);
    if got.is_empty() {
        got = r.due(&gone, t + STAGGER);
    }
    assert_eq!(got, vec![(pn("b"), Why::Deleted("b".into()))]);
    r.outcome(pn("b"), Outcome::Done("freed 10.32.2.0/24".into()));
    assert!(r.pending().is_empty());
    assert!(
        r.history()[0].contains("Node b deleted"),
        "{:?}",
        r.history()
    );
    assert!(r.due(&gone, t + STAGGER * 2).is_empty(), "once");
}

#[test]
fn nodes_deleted_while_the_router_was_down_come_from_the_cache() {
    let t0 = Instant::now();
    let mut r = reclaimer();
    r.on_view(&view(Origin::Cache, true, &["b"]), t0);
    let dead = [owner("b", false)];
    assert!(r.due(&dead, t0).is_empty(), "never from the cache alone");
    r.on_view(&api(&[]), t0);
    assert_eq!(r.due(&dead, t0), vec![(pn("b"), Why::Deleted("b".into()))]);
}

#[test]
fn no_evidence_no_reclaim() {
    let t0 = Instant::now();
    let later = t0 + ORPHAN_GRACE * 3;
    // views without this router's Node are not evidence (another cluster, wrong NODE_NAME)
    let mut r = reclaimer();
    r.on_view(&view(Origin::Api, false, &["a", "b"]), t0);
    r.on_view(&view(Origin::Api, false, &["a"]), t0);
    assert!(r
        .due(&[owner("b", false), owner("x", false)], later)
        .is_empty());
    let mut r = reclaimer();
    r.on_view(&view(Origin::Cache, true, &["a", "b"]), t0);
    r.on_view(&view(Origin::Api, false, &["a"]), t0);
    r.on_view(&api(&["a"]), t0);
    assert!(
        r.due(&[owner("b", false)], t0).is_empty(),
        "b vanished in a view without us"
    );
    // an empty state: nothing to do, nothing asked
    let r = reclaimer();
    assert!(!r.wants_owners(later));
}

#[test]
fn a_node_that_comes_back_keeps_its_space() {
    let t0 = Instant::now();
    let mut r = reclaimer();
    r.on_view(&api(&["b"]), t0);
    r.on_view(&api(&[]), t0);
    r.on_view(&api(&["b"]), t0 + Duration::from_secs(1));
    assert!(r.pending().is_empty());
    assert!(r.due(&[owner("b", false)], t0 + STAGGER * 20).is_empty());
}

#[test]
fn survivors_take_turns() {
    let t0 = Instant::now();
    let nodes = ["me", "s1", "s2", "s3", "s4"];
    let mut turns = Vec::new();
    for me in nodes {
        let others: Vec<&str> = nodes.iter().copied().filter(|n| *n != me).collect();
        let mut r = Reclaimer::new(pn(me), false);
        let mut with_b = others.clone();
        with_b.push("b");
        let v = |o: &[&str]| {
            let mut v = view(Origin::Api, true, o);
            Arc::make_mut(&mut v.set).this_node.as_mut().unwrap().node = me.to_string();
            v
        };
        r.on_view(&v(&with_b), t0);
        r.on_view(&v(&others), t0);
        let dead = [owner("b", false)];
        let t = (0..10)
            .map(|k| t0 + STAGGER * k)
            .find(|t| !r.due(&dead, *t).is_empty())
            .expect("its turn comes");
        turns.push(t.duration_since(t0));
    }
    turns.sort();
    let want: Vec<Duration> = (0..5).map(|k| STAGGER * k).collect();
    assert_eq!(turns, want, "one router at a time");
}

#[test]
fn failed_reclaims_are_retried_and_unknown_ones_dropped() {
    let t0 = Instant::now();
    let mut r = reclaimer();
    r.on_view(&api(&["b", "c"]), t0);
    r.on_view(&api(&[]), t0);
    let dead = [owner("b", false), owner("c", false)];
    let got = r.due(&dead, t0);
    assert_eq!(got.len(), 2);
    r.outcome(pn("b"), Outcome::Retry("peer is reachable".into()));
    r.outcome(pn("c"), Outcome::Nothing);
    assert!(r.due(&dead, t0 + RETRY / 2).is_empty(), "not at once");
    assert_eq!(r.due(&dead, t0 + RETRY).len(), 1);
    assert!(r.pending()[0].contains("last try: peer is reachable"));
    // a deleted Node whose router has no record here is waited for, then forgotten
    let mut r = reclaimer();
    r.on_view(&api(&["d"]), t0);
    r.on_view(&api(&[]), t0);
    assert!(r.due(&[], t0).is_empty());
    assert_eq!(r.pending().len(), 1);
    let late = [owner("d", false)];
    assert_eq!(r.due(&late, t0 + Duration::from_secs(60)).len(), 1);
    r.outcome(pn("d"), Outcome::Retry("x".into()));
    r.due(&[], t0 + DELETED_TTL);
    assert!(r.pending().is_empty());
}

#[test]
fn a_space_reclaimed_by_another_survivor_is_no_longer_pending() {
    let t0 = Instant::now();
    let mut r = reclaimer();
    r.on_view(&api(&["b"]), t0);
    r.on_view(&api(&[]), t0);
    assert!(
        r.pending()[0].ends_with("waiting for its IPAM record to reach this router"),
        "{:?}",
        r.pending()
    );
    // its record is here, its router unreachable: a removal is tried
    let dead = [owner("b", false)];
    r.due(&dead, t0);
    assert!(
        r.pending()[0].ends_with("waiting for its turn"),
        "{:?}",
        r.pending()
    );
    // the other survivor removed it: the record is gone
    assert!(r.due(&[], t0 + Duration::from_secs(1)).is_empty());
    assert!(r.pending().is_empty(), "{:?}", r.pending());
    assert_eq!(
        r.history(),
        vec![format!(
            "{} (Node b deleted): reclaimed by another router",
            pn("b")
        )]
    );
}

#[test]
fn orphans_after_a_grace_period_without_interruption() {
    let t0 = Instant::now();
    let mut r = reclaimer();
    r.on_view(&api(&["a"]), t0);
    // x: space, no Node, unreachable. y: explicit --name on live Node a (nickname a).
    let y = Owner {
        name: PeerName::new(0x02_00_00_00_00_99).unwrap(),
        nickname: Some("a".into()),
        reachable: false,
    };
    let owners = |x_reachable: bool| {
        vec![
            owner("me", true),
            owner("a", false),
            owner("x", x_reachable),
            y.clone(),
        ]
    };
    let tick = |r: &mut Reclaimer, from: Instant, to: Instant, o: &[Owner]| {
        let mut t = from;
        let mut got = Vec::new();
        while t <= to {
            for (p, why) in r.due(o, t) {
                r.outcome(p, Outcome::Done("freed".into()));
                got.push((p, why));
            }
            t += ORPHAN_CHECK;
        }
        got
    };
    let o = owners(false);
    assert!(tick(&mut r, t0, t0 + ORPHAN_GRACE - ORPHAN_CHECK, &o).is_empty());
    // x is seen once: the grace period starts over
    r.due(&owners(true), t0 + ORPHAN_GRACE);
    let t1 = t0 + ORPHAN_GRACE + ORPHAN_CHECK;
    assert!(tick(&mut r, t1, t1 + ORPHAN_GRACE - ORPHAN_CHECK * 2, &o).is_empty());
    let got = tick(
        &mut r,
        t1 + ORPHAN_GRACE - ORPHAN_CHECK,
        t1 + ORPHAN_GRACE * 2,
        &o,
    );
    assert_eq!(got, vec![(pn("x"), Why::Orphan)], "never a or y or us");
    // an API outage starts it over, and no orphan is looked for meanwhile
    let mut r = reclaimer();
    r.on_view(&api(&["a"]), t0);
    tick(&mut r, t0, t0 + ORPHAN_GRACE / 2, &o);
    r.set_connected(false);
    assert!(tick(&mut r, t0 + ORPHAN_GRACE / 2, t0 + ORPHAN_GRACE * 3, &o).is_empty());
    r.set_connected(true);
    let t2 = t0 + ORPHAN_GRACE * 3 + ORPHAN_CHECK;
    assert!(tick(&mut r, t2, t2 + ORPHAN_GRACE - ORPHAN_CHECK, &o).is_empty());
    let got = tick(&mut r, t2 + ORPHAN_GRACE, t2 + ORPHAN_GRACE + STAGGER, &o);
    assert_eq!(got.len(), 1);
    // with --peer targets (plain hosts in the mesh): never
    let mut r = Reclaimer::new(pn("me"), false);
    r.on_view(&api(&["a"]), t0);
    assert!(tick(&mut r, t0, t0 + ORPHAN_GRACE * 3, &o).is_empty());
    // from the cache alone: never
    let mut r = reclaimer();
    r.on_view(&view(Origin::Cache, true, &["a"]), t0);
    assert!(tick(&mut r, t0, t0 + ORPHAN_GRACE * 3, &o).is_empty());
}
