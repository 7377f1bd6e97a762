//! Whole-mesh behaviour in the deterministic simulator.

use std::time::Duration;
use weft_gossip::sim::{PeerOptions, Sim, SimConfig};
use weft_gossip::{Channel, Config, TargetState};

const MS: Duration = Duration::from_millis(1);
const S: Duration = Duration::from_secs(1);

/// Adds `n` peers, one every `every`, each configured with up to three earlier peers.
fn grow(sim: &mut Sim, n: usize, every: Duration) {
    let start = sim.len();
    for k in 0..n {
        let i = start + k;
        let t = sim.elapsed().max(every * k as u32);
        sim.run_until(t);
        let targets = if i == 0 {
            vec![]
        } else {
            let mut t: Vec<usize> = [7, 13, 31].iter().map(|m| (i * m + i / 3) % i).collect();
            t.sort();
            t.dedup();
            t
        };
        let endpoints = vec![weft_gossip::Endpoint {
            mac: [2, 0x42, 0, 0, (i >> 8) as u8, i as u8],
            ips: vec![std::net::IpAddr::from([10, 32, (i >> 8) as u8, i as u8])],
            pod: Some(format!("default/pod-{i}")),
        }];
        sim.add_peer(PeerOptions {
            targets,
            endpoints,
            ..Default::default()
        });
    }
}

fn sim(seed: u64) -> Sim {
    Sim::new(SimConfig {
        seed,
        ..Default::default()
    })
}

/// Runs until converged; returns ms from the last join to the last view change.
fn converge(sim: &mut Sim, max: Duration) -> u128 {
    let at = sim.run_until_converged(max, 2 * S).expect("views converge");
    at.saturating_sub(sim.last_join()).as_millis()
}

fn views_have(sim: &Sim, n: usize) -> bool {
    sim.live()
        .iter()
        .all(|&i| sim.mesh(i).unwrap().view(Channel::Topology).len() == n)
}

#[test]
fn hundred_fifty_peers_converge_quickly_with_consistent_routes() {
    let mut s = sim(1);
    grow(&mut s, 150, 20 * MS);
    let ms = converge(&mut s, 60 * S);
    assert!(ms <= 5_000, "converged {ms} ms after the last join");
    assert!(views_have(&s, 150));
    for i in s.live() {
        assert_eq!(
            s.mesh(i).unwrap().endpoints().len(),
            150,
            "peer {i} knows every endpoint"
        );
    }
    s.check_routes().expect("routes consistent");
    // every peer routes to every other
    for (name, r) in s.all_routes() {
        assert_eq!(r.unicast.len(), 149, "{name} has routes to everyone");
    }
    // steady state: bounded gossip, and nothing changes
    let before = s.last_view_change();
    let bps = s.measure_bytes_per_peer_per_s(60 * S);
    assert!(bps < 2_000.0, "steady-state gossip {bps} B/s per peer");
    assert_eq!(s.last_view_change(), before, "views stay put");
}

#[test]
fn three_hundred_peers_beyond_the_discovery_limit() {
    // 300 peers, conn_limit 60: discovery stops at 45, nobody is locked out
    let mut s = Sim::new(SimConfig {
        seed: 9,
        mesh: Config {
            conn_limit: 60,
            ..Config::default()
        },
        ..Default::default()
    });
    grow(&mut s, 300, 10 * MS);
    let ms = converge(&mut s, 60 * S);
    assert!(ms <= 5_000, "converged {ms} ms after the last join");
    assert!(views_have(&s, 300));
    s.check_routes().expect("routes consistent");
    for (name, r) in s.all_routes() {
        assert_eq!(r.unicast.len(), 299, "{name} reaches everyone");
    }
    let bps = s.measure_bytes_per_peer_per_s(60 * S);
    assert!(bps < 2_000.0, "steady-state gossip {bps} B/s per peer");
    assert!(s.converged());
}

#[test]
fn small_connection_limit_still_connects_everyone() {
    let mut s = Sim::new(SimConfig {
        seed: 3,
        mesh: Config {
            conn_limit: 8,
            ..Config::default()
        },
        ..Default::default()
    });
    grow(&mut s, 80, 30 * MS);
    converge(&mut s, 120 * S);
    assert!(views_have(&s, 80));
    for i in s.live() {
        let est = s
            .mesh(i)
            .unwrap()
            .connections(s.now())
            .iter()
            .filter(|c| c.state == TargetState::Established)
            .count();
        assert!(est <= 8, "peer {i} has {est} connections");
    }
    s.check_routes().unwrap();
    for (name, r) in s.all_routes() {
        assert_eq!(r.unicast.len(), 79, "{name} reaches everyone");
    }
}

#[test]
fn partition_and_heal() {
    let mut s = sim(2);
    grow(&mut s, 60, 20 * MS);
    converge(&mut s, 60 * S);
    let (a, b): (Vec<usize>, Vec<usize>) = (0..60).partition(|i| i % 2 == 0);
    s.partition(&[a.clone(), b.clone()]);
    // connections across die after the idle timeout, then the other side is collected
    s.run_for(40 * S);
    for group in [&a, &b] {
        for &i in group {
            let v = s.mesh(i).unwrap().view(Channel::Topology);
            assert_eq!(v.len(), 30, "peer {i} sees only its side");
        }
    }
    s.check_routes().unwrap();
    s.heal();
    let t0 = s.elapsed();
    let at = s.run_until_converged(180 * S, 2 * S).expect("heals");
    assert!(views_have(&s, 60));
    assert!(at - t0 < 120 * S, "healed after {:?}", at - t0);
    s.check_routes().unwrap();
}

#[test]
fn restarted_peer_replaces_its_old_incarnation() {
    let mut s = sim(4);
    grow(&mut s, 40, 20 * MS);
    converge(&mut s, 60 * S);
    let name = s.name_of(7);
    let old = s.mesh(7).unwrap().identity().uid;
    s.restart(7);
    let new = s.mesh(7).unwrap().identity().uid;
    assert_ne!(old, new);
    converge(&mut s, 120 * S);
    for i in s.live() {
        let v = s.mesh(i).unwrap().view(Channel::Topology);
        let e = v
            .iter()
            .find(|e| e.origin == name)
            .expect("restarted peer known");
        assert_eq!(e.uid, new, "peer {i} has the new incarnation");
    }
    assert!(views_have(&s, 40));
    s.check_routes().unwrap();
}

#[test]
fn stopped_peers_are_collected() {
    let mut s = sim(5);
    grow(&mut s, 40, 20 * MS);
    converge(&mut s, 60 * S);
    let (crashed, stopped) = (s.name_of(5), s.name_of(9));
    s.stop(5, false);
    s.stop(9, true);
    // idle timeout (5 s) + grace (10 s) + a GC check
    s.run_for(20 * S);
    converge(&mut s, 120 * S);
    for i in s.live() {
        let v = s.mesh(i).unwrap().view(Channel::Topology);
        assert!(
            v.iter().all(|e| e.origin != crashed && e.origin != stopped),
            "peer {i}"
        );
        assert_eq!(v.len(), 38);
    }
    s.check_routes().unwrap();
}

#[test]
fn wrong_password_peer_never_enters_the_views() {
    let mut s = sim(6);
    grow(&mut s, 30, 20 * MS);
    let intruder = s.add_peer(PeerOptions {
        targets: vec![0, 3, 17],
        password: 1,
        ..Default::default()
    });
    let name = s.name_of(intruder);
    s.run_for(60 * S);
    for i in s.live() {
        let v = s.mesh(i).unwrap().view(Channel::Topology);
        if i == intruder {
            assert_eq!(v.len(), 1, "it only knows itself");
            let st = s.mesh(i).unwrap().connections(s.now());
            assert!(st.iter().all(|c| c.state != TargetState::Established));
            assert!(st
                .iter()
                .any(|c| c.reason.as_deref().is_some_and(|r| r.contains("password"))));
            assert!(
                st.iter().all(|c| c.attempts >= 3),
                "it keeps retrying, backing off"
            );
        } else {
            assert!(
                v.iter().all(|e| e.origin != name),
                "peer {i} never hears of it"
            );
            assert_eq!(v.len(), 30);
        }
    }
}

#[test]
fn same_seed_same_run() {
    let run = |seed| {
        let mut s = Sim::new(SimConfig {
            seed,
            loss: 0.05,
            ..Default::default()
        });
        grow(&mut s, 50, 10 * MS);
        s.run_for(5 * S);
        s.restart(3);
        s.run_for(20 * S);
        let views: Vec<_> = s
            .live()
            .iter()
            .map(|&i| s.mesh(i).unwrap().view(Channel::Topology))
            .collect();
        (views, s.total_stats(), s.events(), s.last_view_change())
    };
    let a = run(11);
    assert_eq!(a, run(11));
    assert_ne!(a.1, run(12).1, "a different seed gives a different run");
}

#[test]
fn wire_mode_encodes_every_message() {
    let mut s = Sim::new(SimConfig {
        seed: 7,
        wire: true,
        loss: 0.1,
        ..Default::default()
    });
    grow(&mut s, 30, 20 * MS);
    converge(&mut s, 60 * S);
    assert!(views_have(&s, 30));
    let stats = s.total_stats();
    assert!(s.wire_bytes() > 0);
    assert_eq!(
        s.wire_bytes(),
        stats.bytes_sent,
        "mesh accounting matches the bytes on the wire"
    );
    s.check_routes().unwrap();
}

#[test]
fn lossy_links_still_converge() {
    let mut s = Sim::new(SimConfig {
        seed: 8,
        loss: 0.2,
        ..Default::default()
    });
    grow(&mut s, 60, 20 * MS);
    let ms = converge(&mut s, 60 * S);
    assert!(ms <= 10_000, "{ms} ms");
    assert!(views_have(&s, 60));
}

#[test]
fn two_routers_with_one_name_are_refused_not_flapping() {
    let mut s = sim(11);
    grow(&mut s, 12, 20 * MS);
    converge(&mut s, 60 * S);
    let name = s.name_of(3);
    let original = s.mesh(3).unwrap().identity().uid;
    // A cloned machine: same name, its own uid, dialing two peers and the original.
    let dup = s.add_peer(PeerOptions {
        targets: vec![0, 1, 3],
        name: Some(name),
        ..Default::default()
    });
    let clone = s.mesh(dup).unwrap().identity().uid;
    assert_ne!(original, clone);
    s.run_for(60 * S);
    // It settles: the others agree and their views stay put while the clone keeps retrying.
    let others: Vec<usize> = s.live().into_iter().filter(|&i| i != dup).collect();
    let views = |s: &Sim| -> Vec<_> {
        others
            .iter()
            .map(|&i| s.mesh(i).unwrap().view(Channel::Topology))
            .collect()
    };
    let settled = views(&s);
    assert!(settled.windows(2).all(|w| w[0] == w[1]), "the others agree");
    s.run_for(60 * S);
    assert_eq!(views(&s), settled, "no flapping");
    for i in s.live() {
        if i == dup {
            continue;
        }
        let v = s.mesh(i).unwrap().view(Channel::Topology);
        let e = v
            .iter()
            .find(|e| e.origin == name)
            .expect("the name is known");
        assert_eq!(e.uid, original, "peer {i} keeps the original router");
    }
    // The peers it dialed report the conflict, and so does the clone (it met the original).
    let cs = s.mesh(dup).unwrap().name_conflicts(s.now());
    assert_eq!(cs.len(), 1, "the clone: {cs:?}");
    assert_eq!((cs[0].kept, cs[0].refused), (clone, original));
    for i in [0, 1] {
        let cs = s.mesh(i).unwrap().name_conflicts(s.now());
        assert_eq!(cs.len(), 1, "peer {i}: {cs:?}");
        assert_eq!(
            (cs[0].name, cs[0].kept, cs[0].refused),
            (name, original, clone),
            "peer {i}"
        );
        assert!(cs[0].refusals >= 2, "peer {i} keeps refusing: {cs:?}");
    }
    // Once the clone is gone, the name is the original's alone again.
    s.stop(dup, false);
    s.run_for(weft_gossip::names::FORGET_CONFLICT + 60 * S);
    for i in s.live() {
        assert!(
            s.mesh(i).unwrap().name_conflicts(s.now()).is_empty(),
            "peer {i}"
        );
    }
    assert!(views_have(&s, 12));
}
