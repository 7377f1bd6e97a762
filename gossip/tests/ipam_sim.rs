//! IPAM across whole meshes in the deterministic simulator: concurrent allocation,
//! partitions, restarts, removal of dead peers, exhaustion.

use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::time::Duration;
use weft_gossip::sim::{PeerOptions, Sim, SimConfig};
use weft_gossip::{AllocKey, Config, IpamConfig, IpamError};

const MS: Duration = Duration::from_millis(1);
const S: Duration = Duration::from_secs(1);

fn sim(seed: u64, range: &str, block: Option<u8>, wire: bool) -> Sim {
    Sim::new(SimConfig {
        seed,
        wire,
        mesh: Config {
            ipam: Some(IpamConfig {
                range: range.parse().unwrap(),
                block_prefix: block,
                settle: 2 * S,
            }),
            ..Config::default()
        },
        ..Default::default()
    })
}

/// Adds `n` peers, one every 20 ms, each configured with up to three earlier peers.
fn grow(s: &mut Sim, n: usize) {
    let start = s.len();
    for k in 0..n {
        let i = start + k;
        let t = s.elapsed().max(20 * MS * k as u32);
        s.run_until(t);
        let mut targets: Vec<usize> = if i == 0 {
            vec![]
        } else {
            [1, 7, 13].iter().map(|m| (i * m + i / 3) % i).collect()
        };
        targets.sort();
        targets.dedup();
        s.add_peer(PeerOptions {
            targets,
            ..Default::default()
        });
    }
}

fn key(tag: &str, i: usize, k: usize) -> AllocKey {
    AllocKey::new(format!("{tag}-{i}-{k}"), "eth0")
}

/// Every peer of `peers` allocates until it holds `per_peer` addresses (keys
/// `tag-i-k`) or its range is exhausted, all at once, retrying `Pending` answers when
/// told. Returns how many each got.
fn allocate_all(
    s: &mut Sim,
    peers: &[usize],
    per_peer: usize,
    tag: &str,
    max: Duration,
) -> BTreeMap<usize, usize> {
    let deadline = s.elapsed() + max;
    let mut got: BTreeMap<usize, usize> = peers.iter().map(|&i| (i, 0)).collect();
    let mut next: BTreeMap<usize, Duration> = BTreeMap::new();
    let mut exhausted = BTreeSet::new();
    loop {
        let mut busy = false;
        for &i in peers {
            let n = got[&i];
            if n >= per_peer || exhausted.contains(&i) {
                continue;
            }
            busy = true;
            if next.get(&i).is_some_and(|t| *t > s.elapsed()) {
                continue;
            }
            for _ in 0..8 {
                let n = got[&i];
                if n >= per_peer {
                    break;
                }
                match s.ipam_allocate(i, key(tag, i, n), None) {
                    Ok(_) => *got.get_mut(&i).unwrap() += 1,
                    Err(IpamError::Pending { retry_at }) => {
                        let wait = retry_at.saturating_duration_since(s.now());
                        next.insert(i, s.elapsed() + wait);
                        break;
                    }
                    Err(IpamError::Exhausted { .. }) => {
                        exhausted.insert(i);
                        break;
                    }
                    Err(e) => panic!("peer {i}: {e}"),
                }
            }
        }
        if !busy {
            return got;
        }
        assert!(s.elapsed() < deadline, "allocations still pending: {got:?}");
        s.run_for(20 * MS);
    }
}

fn assert_consistent(s: &Sim, strict: bool) {
    s.ipam_check(strict).unwrap();
    assert!(
        s.ipam_views_agree(s.now()),
        "all peers agree on block ownership"
    );
}

#[test]
fn thirty_routers_allocate_concurrently_without_duplicates() {
    // 256 blocks of 64 for 30 routers needing 4 each: preferences collide often
    let mut s = sim(11, "10.32.0.0/18", None, true);
    grow(&mut s, 30);
    let peers: Vec<usize> = (0..30).collect();
    let got = allocate_all(&mut s, &peers, 200, "pod", 120 * S);
    assert!(got.values().all(|&n| n == 200), "{got:?}");
    s.run_until_converged(60 * S, 3 * S).expect("converges");
    assert_consistent(&s, true);
    let all = s.ipam_all_allocations();
    assert_eq!(all.len(), 30 * 200);
    assert!(all.iter().all(|a| !a.3), "no conflicts in a connected mesh");
    let st = s.mesh(0).unwrap().ipam_status(s.now()).unwrap();
    assert!(st.conflicts.is_empty() && st.mismatched.is_empty());
    assert_eq!(st.peers.len(), 30);
    let owned: usize = st
        .peers
        .iter()
        .map(|p| p.addresses as usize / st.block_size as usize)
        .sum();
    assert!(owned <= 30 * 5, "at most one spare block each: {owned}");
}

#[test]
fn partition_conflicts_are_resolved_and_reported_the_same_everywhere() {
    // 16 blocks of 16: both sides of the partition claim from the same few free blocks
    let mut s = sim(3, "10.40.0.0/24", Some(28), false);
    grow(&mut s, 8);
    s.run_until_converged(30 * S, 2 * S).expect("converges");
    let all: Vec<usize> = (0..8).collect();
    allocate_all(&mut s, &all, 4, "before", 30 * S);
    s.run_for(3 * S);
    assert_consistent(&s, true);
    let (a, b): (Vec<usize>, Vec<usize>) = (0..8).partition(|i| i % 2 == 0);
    s.partition(&[a.clone(), b.clone()]);
    s.run_for(8 * S); // connections across die
                      // each router needs a second block (and then a spare): both sides claim them all
    allocate_all(&mut s, &a, 20, "apart", 60 * S);
    allocate_all(&mut s, &b, 20, "apart", 60 * S);
    s.heal();
    s.run_until_converged(180 * S, 3 * S).expect("heals");
    // no block owned twice; every non-conflicting address once
    assert_consistent(&s, false);
    let st = s.mesh(0).unwrap().ipam_status(s.now()).unwrap();
    assert!(!st.conflicts.is_empty(), "the partition produced conflicts");
    for i in 1..8 {
        let other = s.mesh(i).unwrap().ipam_status(s.now()).unwrap();
        assert_eq!(other.conflicts, st.conflicts, "peer {i} reports the same");
    }
    // every address a loser still holds is reported
    let reported: BTreeSet<Ipv4Addr> = st
        .conflicts
        .iter()
        .flat_map(|c| c.addresses.iter().copied())
        .collect();
    let lost: Vec<_> = s
        .ipam_all_allocations()
        .into_iter()
        .filter(|a| a.3)
        .collect();
    assert!(!lost.is_empty());
    assert!(lost.iter().all(|a| reported.contains(&a.0)));
    // new allocations never collide with anything, lost addresses included
    let before: BTreeSet<Ipv4Addr> = s.ipam_all_allocations().iter().map(|a| a.0).collect();
    let got = allocate_all(&mut s, &all, 3, "after", 60 * S);
    s.run_until_converged(60 * S, 3 * S).expect("converges");
    assert_consistent(&s, false);
    let added: Vec<Ipv4Addr> = s
        .ipam_all_allocations()
        .iter()
        .filter(|a| a.2.container_id.starts_with("after"))
        .map(|a| a.0)
        .collect();
    assert_eq!(added.len(), got.values().sum::<usize>());
    assert!(added.iter().all(|ip| !before.contains(ip)));
    // when the losers release their stranded addresses, the conflicts clear
    for (_, i, k, conflicting) in s.ipam_all_allocations() {
        if conflicting {
            s.ipam_release(i, &k);
        }
    }
    s.run_until_converged(60 * S, 3 * S).expect("converges");
    let st = s.mesh(3).unwrap().ipam_status(s.now()).unwrap();
    assert!(st.conflicts.is_empty());
    assert_consistent(&s, true);
}

#[test]
fn restart_keeps_blocks_and_allocations() {
    let mut s = sim(5, "10.32.0.0/16", None, false);
    grow(&mut s, 6);
    let all: Vec<usize> = (0..6).collect();
    allocate_all(&mut s, &all, 70, "pod", 60 * S);
    s.run_until_converged(30 * S, 2 * S).expect("converges");
    let mine = |s: &Sim| {
        let m = s.mesh(2).unwrap();
        (m.ipam_allocations(), m.ipam_status(s.now()).unwrap().peers)
    };
    let (allocs, peers) = mine(&s);
    let name = s.name_of(2);
    let blocks = peers
        .iter()
        .find(|p| p.name == name)
        .unwrap()
        .blocks
        .clone();
    s.restart(2);
    // owned at once, without waiting to settle
    let a = s.ipam_allocate(2, key("new", 2, 0), None).unwrap();
    assert!(allocs.iter().all(|(_, x)| x.ip != a.ip));
    s.run_until_converged(60 * S, 3 * S).expect("converges");
    let (after, peers) = mine(&s);
    assert_eq!(after.len(), allocs.len() + 1);
    assert!(
        allocs.iter().all(|x| after.contains(x)),
        "allocations survive"
    );
    let now = peers.iter().find(|p| p.name == name).unwrap();
    assert_eq!(now.blocks, blocks, "same blocks, new incarnation");
    assert_consistent(&s, true);
    assert!(s
        .mesh(0)
        .unwrap()
        .ipam_status(s.now())
        .unwrap()
        .conflicts
        .is_empty());
    // a router whose state directory was lost starts over without blocks
    s.forget_ipam_state(4);
    s.restart(4);
    allocate_all(&mut s, &[4], 10, "fresh", 30 * S);
    s.run_until_converged(60 * S, 3 * S).expect("converges");
    assert_consistent(&s, true);
}

#[test]
fn removed_peer_space_is_taken_over() {
    let mut s = sim(7, "10.32.0.0/20", None, false);
    grow(&mut s, 6);
    let all: Vec<usize> = (0..6).collect();
    allocate_all(&mut s, &all, 100, "pod", 60 * S);
    s.run_until_converged(30 * S, 2 * S).expect("converges");
    let dead = s.name_of(5);
    let owned_by = |s: &Sim, i: usize, who| {
        let st = s.mesh(i).unwrap().ipam_status(s.now()).unwrap();
        st.peers
            .iter()
            .find(|p| p.name == who)
            .map(|p| p.blocks.clone())
            .unwrap_or_default()
    };
    let blocks = owned_by(&s, 0, dead);
    assert!(!blocks.is_empty());
    s.stop(5, false);
    s.run_for(30 * S); // idle timeout, then topology GC
    assert!(s.mesh(0).unwrap().peers().iter().all(|p| p.name != dead));
    // the blocks stay its own, also for a router that joins now
    grow(&mut s, 1);
    s.run_until_converged(30 * S, 2 * S).expect("converges");
    for i in [0, 3, 6] {
        assert_eq!(owned_by(&s, i, dead), blocks, "peer {i}");
        let st = s.mesh(i).unwrap().ipam_status(s.now()).unwrap();
        assert!(st.unreachable_owners.contains(&dead));
    }
    assert!(matches!(
        s.remove_peer(1, s.name_of(2), false),
        Err(IpamError::PeerReachable(_))
    ));
    let out = s.remove_peer(1, dead, false).unwrap();
    assert_eq!(out.blocks, blocks);
    s.run_until_converged(30 * S, 3 * S).expect("converges");
    assert_consistent(&s, true);
    let taker = s.name_of(1);
    for i in [0, 1, 6] {
        let st = s.mesh(i).unwrap().ipam_status(s.now()).unwrap();
        assert!(st.peers.iter().all(|p| p.name != dead), "peer {i}");
        assert_eq!(st.removed, vec![dead]);
        let mine = owned_by(&s, i, taker);
        let covered = |n: &ipnet::Ipv4Net| mine.iter().any(|m| m.contains(n));
        assert!(blocks.iter().all(covered), "peer {i}: taken over by peer 1");
    }
    // and allocatable: peer 1 fills them
    allocate_all(&mut s, &[1], 200 + out.addresses as usize, "more", 60 * S);
    let in_taken = s
        .ipam_all_allocations()
        .iter()
        .filter(|a| a.1 == 1 && blocks.iter().any(|b| b.contains(&a.0)))
        .count();
    assert!(in_taken > 0, "allocations land in the taken-over blocks");
    // the dead router comes back with its old state: it gets nothing back
    s.start_again(5);
    s.run_until_converged(60 * S, 3 * S).expect("converges");
    assert_consistent(&s, false);
    let back = owned_by(&s, 0, dead);
    assert!(back.iter().all(|b| !blocks.contains(b)));
    let m5 = s.mesh(5).unwrap();
    assert!(m5.ipam_allocations().iter().all(|(_, a)| a.conflicting));
}

#[test]
fn exhaustion_in_a_tiny_range_is_an_error() {
    // 4 blocks of 16: 62 usable addresses for three routers
    let mut s = sim(9, "10.1.2.0/26", Some(28), false);
    grow(&mut s, 3);
    s.run_until_converged(30 * S, 2 * S).expect("converges");
    let got = allocate_all(&mut s, &[0, 1, 2], 100, "pod", 120 * S);
    let total: usize = got.values().sum();
    s.run_until_converged(30 * S, 2 * S).expect("converges");
    assert_consistent(&s, true);
    assert_eq!(total, 62, "every usable address, once: {got:?}");
    for i in 0..3 {
        let e = s.ipam_allocate(i, key("late", i, 0), None).unwrap_err();
        assert!(matches!(e, IpamError::Exhausted { .. }), "{e}");
        assert!(e.to_string().contains("10.1.2.0/26 is exhausted"), "{e}");
    }
}

#[derive(Debug, Clone)]
enum Op {
    Allocate { peer: usize, count: usize },
    Release { peer: usize, pick: usize },
    Wait { ms: u64 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0usize..4, 1usize..12).prop_map(|(peer, count)| Op::Allocate { peer, count }),
        1 => (0usize..4, any::<usize>()).prop_map(|(peer, pick)| Op::Release { peer, pick }),
        2 => (0u64..2500).prop_map(|ms| Op::Wait { ms }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Random interleavings of allocations, releases and delivery among a few connected
    /// routers sharing 8 blocks: no address is ever held twice.
    #[test]
    fn no_address_is_allocated_twice_in_a_connected_mesh(
        seed in any::<u64>(),
        n in 2usize..=4,
        ops in prop::collection::vec(op(), 1..40),
    ) {
        let mut s = sim(seed, "10.9.0.0/25", Some(28), false);
        grow(&mut s, n);
        s.run_for(S);
        let mut k = 0;
        for o in ops {
            match o {
                Op::Allocate { peer, count } => {
                    for _ in 0..count {
                        k += 1;
                        match s.ipam_allocate(peer % n, key("p", peer % n, k), None) {
                            Ok(_) => {}
                            Err(IpamError::Pending { .. }) | Err(IpamError::Exhausted { .. }) => break,
                            Err(e) => panic!("{e}"),
                        }
                    }
                }
                Op::Release { peer, pick } => {
                    let mine: Vec<AllocKey> = s
                        .ipam_all_allocations()
                        .into_iter()
                        .filter(|a| a.1 == peer % n)
                        .map(|a| a.2)
                        .collect();
                    if !mine.is_empty() {
                        s.ipam_release(peer % n, &mine[pick % mine.len()]);
                    }
                }
                Op::Wait { ms } => s.run_for(Duration::from_millis(ms)),
            }
            prop_assert!(s.ipam_check(true).is_ok(), "{:?}", s.ipam_check(true));
        }
        s.run_for(6 * S);
        prop_assert!(s.ipam_check(true).is_ok(), "{:?}", s.ipam_check(true));
        prop_assert!(s.ipam_views_agree(s.now()));
    }
}

#[test]
fn a_clone_with_the_same_name_takes_no_blocks_and_no_addresses() {
    let mut s = sim(21, "10.32.0.0/20", Some(26), false);
    grow(&mut s, 8);
    let peers: Vec<usize> = (0..8).collect();
    allocate_all(&mut s, &peers, 10, "pod", 60 * S);
    s.run_until_converged(60 * S, 3 * S).expect("converges");
    let blocks_of = |s: &Sim, at: usize, name| {
        let st = s.mesh(at).unwrap().ipam_status(s.now()).unwrap();
        st.peers
            .iter()
            .find(|p| p.name == name)
            .map(|p| p.blocks.clone())
    };
    let name = s.name_of(3);
    let original = blocks_of(&s, 0, name).expect("peer 3 owns blocks");
    let before: Vec<_> = s
        .ipam_all_allocations()
        .into_iter()
        .filter(|a| a.1 == 3)
        .collect();
    // A cloned machine with peer 3's name joins and keeps asking for addresses.
    let dup = s.add_peer(PeerOptions {
        targets: vec![0, 1, 3],
        name: Some(name),
        ..Default::default()
    });
    let mut handed = Vec::new();
    for k in 0..60 {
        if let Ok(a) = s.ipam_allocate(dup, key("clone", dup, k), None) {
            handed.push(a.ip);
        }
        s.run_for(S);
    }
    // The original keeps its blocks in every view and its addresses; the clone got none
    // of them (nor any block settled twice).
    for i in s.live().into_iter().filter(|&i| i != dup) {
        assert_eq!(
            blocks_of(&s, i, name).as_ref(),
            Some(&original),
            "peer {i}'s view"
        );
    }
    let after: Vec<_> = s
        .ipam_all_allocations()
        .into_iter()
        .filter(|a| a.1 == 3)
        .collect();
    assert_eq!(after, before, "the original's allocations are untouched");
    let theirs: BTreeSet<Ipv4Addr> = s
        .ipam_all_allocations()
        .into_iter()
        .filter(|a| a.1 != dup)
        .map(|a| a.0)
        .collect();
    assert!(
        handed.iter().all(|ip| !theirs.contains(ip)),
        "the clone handed out {handed:?}"
    );
    s.ipam_check(true).unwrap();
}
