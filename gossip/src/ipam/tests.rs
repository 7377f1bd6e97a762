//! Unit tests of IPAM through the `Mesh` API, with hand-driven inputs.

use super::blocks::rank_hash;
use super::*;
use crate::mesh::{Action, Config, ConnId, Input};
use crate::message::{IpamRecord, Message, Removal, Summary};
use crate::peer::{Identity, PeerName, PeerUid};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

const SETTLE: Duration = Duration::from_secs(2);

fn name(v: u64) -> PeerName {
    PeerName::new(v).unwrap()
}

fn ident(v: u64, uid: u64) -> Identity {
    Identity {
        name: name(v),
        nickname: format!("n{v}"),
        uid: PeerUid(uid),
    }
}

fn cfg(range: &str, block: u8) -> Config {
    Config {
        ipam: Some(IpamConfig {
            range: range.parse().unwrap(),
            block_prefix: Some(block),
            settle: SETTLE,
        }),
        ..Config::default()
    }
}

/// 10.0.0.0/24 in 16 blocks of 16 addresses.
fn space() -> IpamSpace {
    IpamSpace::new("10.0.0.0/24".parse().unwrap(), Some(28)).unwrap()
}

fn mesh_at(v: u64, uid: u64, t0: Instant) -> Mesh {
    Mesh::new(ident(v, uid), cfg("10.0.0.0/24", 28), v, t0)
}

fn key(i: usize) -> AllocKey {
    AllocKey::new(format!("c{i}"), "eth0")
}

fn own(m: &Mesh) -> Arc<IpamRecord> {
    m.ipam.store.get(&m.identity().name).cloned().unwrap()
}

fn block_of(a: &Allocation) -> u32 {
    space().block_of(u32::from(a.ip)).unwrap()
}

fn rec(origin: u64, uid: u64, version: u64, blocks: &[u32], pending: &[u32]) -> IpamRecord {
    IpamRecord {
        summary: Summary {
            origin: name(origin),
            uid: PeerUid(uid),
            version,
        },
        space: space(),
        blocks: blocks.to_vec(),
        pending: pending.to_vec(),
        lost: vec![],
        removed: vec![],
    }
}

fn est(conn: ConnId, peer: Identity, outbound: bool) -> Input {
    Input::ConnectionEstablished {
        conn,
        addr: SocketAddr::from(([10, 9, 0, peer.name.as_u64() as u8], 6783)),
        outbound,
        peer,
    }
}

fn deliver(m: &mut Mesh, conn: ConnId, recs: Vec<IpamRecord>, now: Instant) -> Vec<Action> {
    let msg = Message::Ipam(recs.into_iter().map(Arc::new).collect());
    m.handle(Input::Message { conn, msg }, now)
}

/// Allocates `key`, ticking through `Pending` answers; returns the allocation and the time.
fn alloc_wait(m: &mut Mesh, k: AllocKey, mut now: Instant) -> (Allocation, Instant) {
    for _ in 0..20 {
        match m.ipam_allocate(k.clone(), None, now) {
            Ok(a) => return (a, now),
            Err(IpamError::Pending { retry_at }) => {
                assert!(retry_at > now, "retry in the future");
                now = retry_at;
                m.handle(Input::Tick, now);
            }
            Err(e) => panic!("allocation failed: {e}"),
        }
    }
    panic!("allocation never succeeded");
}

/// Two meshes joined by one connection (a: conn 1, b: conn 2): delivers `to_b` (a's
/// actions) and `to_a` (b's), and everything they cause, with time advancing in 50 ms
/// steps for `dur`.
fn pump(
    a: &mut Mesh,
    b: &mut Mesh,
    mut now: Instant,
    dur: Duration,
    mut to_b: Vec<Action>,
    mut to_a: Vec<Action>,
) -> Instant {
    let end = now + dur;
    loop {
        while !(to_a.is_empty() && to_b.is_empty()) {
            for act in std::mem::take(&mut to_b) {
                if let Action::Send { conn: 1, msg } = act {
                    to_a.extend(b.handle(Input::Message { conn: 2, msg }, now));
                }
            }
            for act in std::mem::take(&mut to_a) {
                if let Action::Send { conn: 2, msg } = act {
                    to_b.extend(a.handle(Input::Message { conn: 1, msg }, now));
                }
            }
        }
        if now >= end {
            return now;
        }
        now += Duration::from_millis(50);
        to_b.extend(a.handle(Input::Tick, now));
        to_a.extend(b.handle(Input::Tick, now));
    }
}

fn run_pair(a: &mut Mesh, b: &mut Mesh, now: Instant, dur: Duration) -> Instant {
    pump(a, b, now, dur, Vec::new(), Vec::new())
}

fn connect(a: &mut Mesh, b: &mut Mesh, now: Instant) -> Instant {
    let (ia, ib) = (a.identity().clone(), b.identity().clone());
    let to_b = a.handle(est(1, ib, true), now);
    let to_a = b.handle(est(2, ia, false), now);
    pump(a, b, now, Duration::from_secs(1), to_b, to_a)
}

#[path = "source_tests.rs"]
mod source_tests;

#[test]
fn disabled_and_misconfigured() {
    let t0 = Instant::now();
    let mut m = Mesh::new(ident(1, 1), Config::default(), 1, t0);
    assert_eq!(m.ipam_allocate(key(0), None, t0), Err(IpamError::Disabled));
    assert!(m.ipam_snapshot().is_empty());
    assert_eq!(m.ipam_status(t0), Err(IpamError::Disabled));
    let mut m = Mesh::new(ident(1, 1), cfg("10.0.0.0/24", 31), 1, t0);
    assert!(matches!(
        m.ipam_allocate(key(0), None, t0),
        Err(IpamError::Config(_))
    ));
}

#[test]
fn lone_router_claims_settles_then_allocates() {
    let t0 = Instant::now();
    let mut m = mesh_at(1, 1, t0);
    // no neighbour to synchronise with: wait `settle` before claiming
    let Err(IpamError::Pending { retry_at }) = m.ipam_allocate(key(0), None, t0) else {
        panic!("pending expected");
    };
    assert_eq!(retry_at, t0 + SETTLE);
    assert!(own(&m).pending.is_empty() && own(&m).blocks.is_empty());
    assert!(m.poll_timeout() <= t0 + SETTLE);
    let t1 = t0 + SETTLE;
    let a = m.handle(Input::Tick, t1);
    assert!(a.contains(&Action::IpamChanged), "a claim is persisted");
    assert_eq!(own(&m).pending.len(), 1, "claimed, settling");
    let Err(IpamError::Pending { retry_at }) = m.ipam_allocate(key(0), None, t1) else {
        panic!("still settling");
    };
    assert_eq!(retry_at, t1 + SETTLE);
    let t2 = t1 + SETTLE;
    m.handle(Input::Tick, t2);
    let r = own(&m);
    assert_eq!((r.blocks.len(), r.pending.len()), (1, 0), "settled");
    let a = m.ipam_allocate(key(0), Some("ns/p".into()), t2).unwrap();
    assert_eq!(block_of(&a), r.blocks[0]);
    assert_eq!(a.prefix_len, 24);
    assert_ne!(a.ip, std::net::Ipv4Addr::new(10, 0, 0, 0));
    // idempotent
    assert_eq!(m.ipam_allocate(key(0), None, t2).unwrap().ip, a.ip);
    assert_eq!(m.ipam_lookup(&key(0)).unwrap().pod.as_deref(), Some("ns/p"));
    let b = m.ipam_allocate(key(1), None, t2).unwrap();
    assert_ne!(a.ip, b.ip);
}

#[test]
fn spare_block_claimed_ahead_and_release_and_gc() {
    let t0 = Instant::now();
    let mut m = mesh_at(1, 1, t0);
    let (_, mut now) = alloc_wait(&mut m, key(0), t0);
    // 16 addresses per block (15 in the first or last): past 3/4 a spare is claimed
    for i in 1..13 {
        m.ipam_allocate(key(i), None, now).unwrap();
    }
    assert_eq!(
        own(&m).pending.len(),
        1,
        "spare block claimed past 3/4 used"
    );
    now += SETTLE;
    m.handle(Input::Tick, now);
    assert_eq!(own(&m).blocks.len(), 2);
    let a5 = m.ipam_lookup(&key(5)).unwrap().ip;
    assert_eq!(m.ipam_release(&key(5), now), Some(a5));
    assert_eq!(m.ipam_release(&key(5), now), None, "idempotent");
    assert!(m.ipam_lookup(&key(5)).is_none());
    let valid = [key(0), key(1), key(2)];
    let mut released = m.ipam_gc(&valid, now);
    released.sort();
    assert_eq!(released.len(), 9);
    assert!(released.iter().all(|(k, _)| !valid.contains(k)));
    assert_eq!(m.ipam_allocations().len(), 3);
    let st = m.ipam_status(now).unwrap();
    assert_eq!(st.ours.used, 3);
    assert_eq!(st.peers.len(), 1);
    assert!(st.peers[0].is_self && st.peers[0].reachable);
    assert_eq!(st.peers[0].addresses, 32);
}

#[test]
fn exhaustion_is_a_clear_error() {
    let t0 = Instant::now();
    let mut m = Mesh::new(ident(1, 1), cfg("10.0.0.0/26", 28), 1, t0);
    let mut now = t0;
    let mut got = Vec::new();
    let err = loop {
        match m.ipam_allocate(key(got.len()), None, now) {
            Ok(a) => got.push(a.ip),
            Err(IpamError::Pending { retry_at }) => {
                now = retry_at;
                m.handle(Input::Tick, now);
            }
            Err(e) => break e,
        }
        assert!(got.len() <= 62 && now < t0 + Duration::from_secs(60));
    };
    assert_eq!(
        got.len(),
        62,
        "every usable address of 4 x 16 minus network and broadcast"
    );
    got.sort();
    got.dedup();
    assert_eq!(got.len(), 62);
    assert!(matches!(
        err,
        IpamError::Exhausted {
            blocks: 4,
            ours: 4,
            ..
        }
    ));
    let msg = err.to_string();
    assert!(
        msg.contains("10.0.0.0/26 is exhausted") && msg.contains("4 blocks of 16"),
        "{msg}"
    );
    assert!(m.ipam_status(now).unwrap().ours.exhausted);
}

#[test]
fn a_settled_claim_beats_our_pending_one() {
    let t0 = Instant::now();
    let mut m = mesh_at(1, 1, t0);
    m.handle(est(1, ident(2, 2), true), t0);
    let _ = m.ipam_allocate(key(0), None, t0 + SETTLE);
    let b = own(&m).pending[0];
    // peer 2 already owns it
    deliver(&mut m, 1, vec![rec(2, 2, 3, &[b], &[])], t0 + SETTLE);
    let r = own(&m);
    assert!(!r.pending.contains(&b), "dropped the lost claim");
    assert_eq!(r.pending.len(), 1, "and claimed another at once");
    let (a, _) = alloc_wait(&mut m, key(0), t0 + SETTLE);
    assert_ne!(block_of(&a), b);
}

#[test]
fn pending_conflicts_are_decided_by_hash() {
    let t0 = Instant::now();
    let t1 = t0 + SETTLE;
    let mut m = mesh_at(1, 1, t0);
    m.handle(est(1, ident(2, 2), true), t0);
    let _ = m.ipam_allocate(key(0), None, t1);
    let b = own(&m).pending[0];
    let ours = rank_hash(b, name(1));
    // a peer that loses the block to us, and one that wins it
    let loser = (3..5000).find(|&v| rank_hash(b, name(v)) > ours).unwrap();
    let winner = (3..5000).find(|&v| rank_hash(b, name(v)) < ours).unwrap();
    deliver(&mut m, 1, vec![rec(loser, 9, 1, &[], &[b])], t1);
    assert_eq!(own(&m).pending, vec![b], "we keep it");
    deliver(&mut m, 1, vec![rec(winner, 9, 1, &[], &[b])], t1);
    assert!(!own(&m).pending.contains(&b), "we yield it");
}

#[test]
fn partition_conflict_keeps_lost_addresses_reserved() {
    let t0 = Instant::now();
    let mut a = mesh_at(1, 1, t0);
    let (a0, t1) = alloc_wait(&mut a, key(0), t0);
    let b = block_of(&a0);
    let hash_a = rank_hash(b, name(1));
    // a peer that prefers the same block first, and wins it
    let xv = (2..100_000)
        .find(|&v| {
            let h = rank_hash(b, name(v));
            h < hash_a && (0..16).all(|k| k == b || rank_hash(k, name(v)) > h)
        })
        .unwrap();
    let mut x = mesh_at(xv, 7, t0);
    let (x0, _) = alloc_wait(&mut x, key(100), t0);
    assert_eq!(block_of(&x0), b, "both settled the same block apart");
    assert_eq!(x0.ip, a0.ip);
    let a1 = a.ipam_allocate(key(1), None, t1).unwrap();
    let a2 = a.ipam_allocate(key(2), None, t1).unwrap();
    // heal: they meet
    let now = connect(&mut a, &mut x, t1);
    assert!(a.ipam.local.as_ref().unwrap().settled.is_empty(), "a lost");
    assert!(a.ipam_lookup(&key(1)).unwrap().conflicting);
    assert_eq!(own(&a).lost.len(), 3);
    let sa = a.ipam_status(now).unwrap();
    let sx = x.ipam_status(now).unwrap();
    assert_eq!(
        sa.conflicts, sx.conflicts,
        "reported the same on both sides"
    );
    assert_eq!(sa.conflicts.len(), 1);
    assert_eq!(sa.conflicts[0].owner, Some(name(xv)));
    assert_eq!(sa.ours.lost, vec![a0.ip, a1.ip, a2.ip]);
    assert_eq!(
        sx.ours.duplicates,
        vec![x0.ip],
        "the address both handed out"
    );
    // x never hands out what a still holds
    for i in 101..111 {
        let n = x.ipam_allocate(key(i), None, now).unwrap();
        assert!(![a1.ip, a2.ip].contains(&n.ip));
    }
    // once a releases them, the conflict is gone
    for k in 0..3 {
        a.ipam_release(&key(k), now);
    }
    let now = run_pair(&mut a, &mut x, now, Duration::from_secs(1));
    assert!(x.ipam_status(now).unwrap().conflicts.is_empty());
}

#[test]
fn snapshot_roundtrip_and_restart_with_a_new_uid() {
    let t0 = Instant::now();
    let mut a = mesh_at(1, 1, t0);
    let mut now = t0;
    let mut ips = Vec::new();
    for i in 0..20 {
        let (x, t) = alloc_wait(&mut a, key(i), now);
        ips.push(x.ip);
        now = t;
    }
    let blocks = own(&a).blocks.clone();
    let snap = a.ipam_snapshot();
    // a peer that knows the old incarnation
    let mut b = mesh_at(2, 2, t0);
    let now = connect(&mut a, &mut b, now);
    let old_version = own(&a).summary.version;
    drop(a);

    let mut a2 = mesh_at(1, 99, now);
    a2.restore_ipam(&snap, now).unwrap();
    assert_eq!(a2.ipam_lookup(&key(7)).unwrap().ip, ips[7]);
    assert_eq!(own(&a2).blocks, blocks, "owned at once");
    let fresh = a2.ipam_allocate(key(50), None, now).unwrap();
    assert!(!ips.contains(&fresh.ip), "no waiting, no reuse");
    assert_eq!(a2.restore_ipam(&snap, now), Err(IpamError::AlreadyStarted));
    // b saw the old incarnation's connection die
    b.handle(
        Input::ConnectionClosed {
            conn: 2,
            reason: None,
        },
        now,
    );
    let now = connect(&mut a2, &mut b, now);
    let st = b.ipam_status(now).unwrap();
    assert!(st.conflicts.is_empty());
    let pa = st.peers.iter().find(|p| p.name == name(1)).unwrap();
    assert_eq!(
        pa.blocks,
        super::space::aggregate(&space(), blocks.iter().copied())
    );
    assert!(
        own(&a2).summary.key() > (old_version, PeerUid(1)),
        "the new record wins"
    );
    assert_eq!(b.ipam.store.get(&name(1)).unwrap().summary.uid, PeerUid(99));

    // bad snapshots change nothing
    let mut c = mesh_at(1, 5, now);
    let mut bytes = snap.clone();
    bytes.truncate(bytes.len() - 3);
    assert!(matches!(
        c.restore_ipam(&bytes, now),
        Err(IpamError::Snapshot(_))
    ));
    assert!(matches!(
        c.restore_ipam(b"nonsense", now),
        Err(IpamError::Snapshot(_))
    ));
    let mut other = mesh_at(3, 5, now);
    assert!(matches!(
        other.restore_ipam(&snap, now),
        Err(IpamError::Snapshot(_))
    ));
    let mut wide = Mesh::new(ident(1, 6), cfg("10.0.0.0/23", 28), 1, now);
    assert!(matches!(
        wide.restore_ipam(&snap, now),
        Err(IpamError::RangeMismatch { .. })
    ));
    c.restore_ipam(&snap, now).unwrap();
}

#[test]
fn removal_is_refused_for_ourselves_and_reachable_peers() {
    let t0 = Instant::now();
    let mut m = mesh_at(1, 1, t0);
    m.handle(est(1, ident(2, 2), true), t0);
    deliver(&mut m, 1, vec![rec(2, 2, 1, &[3], &[])], t0);
    assert_eq!(m.remove_peer(name(1), true, t0), Err(IpamError::RemoveSelf));
    assert_eq!(
        m.remove_peer(name(2), false, t0),
        Err(IpamError::PeerReachable(name(2)))
    );
    assert_eq!(
        m.remove_peer(name(9), false, t0),
        Err(IpamError::UnknownPeer(name(9)))
    );
    let out = m.remove_peer(name(2), true, t0).unwrap();
    assert_eq!(out.blocks, vec!["10.0.0.48/28".parse().unwrap()]);
    assert_eq!(
        m.remove_peer(name(2), true, t0),
        Err(IpamError::AlreadyRemoved(name(2)))
    );
}

#[test]
fn removal_transfers_blocks_and_voids_the_old_records() {
    let t0 = Instant::now();
    let mut m = mesh_at(1, 1, t0);
    m.handle(est(1, ident(3, 3), true), t0);
    // peer 2 (gone, only its IPAM record is around) owns blocks 4 and 5, claims 6
    deliver(&mut m, 1, vec![rec(2, 7, 3, &[4, 5], &[6])], t0);
    let out = m.remove_peer(name(2), false, t0).unwrap();
    assert_eq!(out.blocks, vec!["10.0.0.64/27".parse().unwrap()]);
    assert_eq!(out.addresses, 32);
    let r = own(&m);
    assert_eq!(
        r.pending,
        vec![4, 5],
        "taken over, settling; 6 was never settled"
    );
    assert_eq!(
        r.removed,
        vec![Removal {
            peer: name(2),
            uid: PeerUid(7),
            version: 3
        }]
    );
    assert!(m.ipam.store.get(&name(2)).is_none());
    // the old record does not come back, and is not even fetched when offered
    deliver(&mut m, 1, vec![rec(2, 7, 3, &[4, 5], &[])], t0);
    assert!(m.ipam.store.get(&name(2)).is_none());
    let entries = vec![rec(2, 7, 3, &[], &[]).summary];
    for msg in [
        Message::Digest {
            channel: crate::message::Channel::Ipam,
            entries: entries.clone(),
        },
        Message::Announce {
            channel: crate::message::Channel::Ipam,
            entries,
        },
    ] {
        let acts = m.handle(Input::Message { conn: 1, msg }, t0);
        assert!(!acts.iter().any(|a| matches!(
            a,
            Action::Send {
                msg: Message::Request { .. },
                ..
            }
        )));
    }
    // a later incarnation counts, but cannot take back what we took over
    deliver(&mut m, 1, vec![rec(2, 8, 4, &[4, 9], &[])], t0);
    assert!(m.ipam.store.get(&name(2)).is_some());
    let now = t0 + SETTLE;
    m.handle(Input::Tick, now);
    assert_eq!(own(&m).blocks, vec![4, 5]);
    let st = m.ipam_status(now).unwrap();
    let p2 = st.peers.iter().find(|p| p.name == name(2)).unwrap();
    assert_eq!(p2.blocks, vec!["10.0.0.144/28".parse().unwrap()]);
    let a = m.ipam_allocate(key(0), None, now).unwrap();
    assert!([4, 5].contains(&block_of(&a)), "allocatable");
    // a snapshot remembers the removal
    let mut again = mesh_at(1, 2, now);
    again.restore_ipam(&m.ipam_snapshot(), now).unwrap();
    assert_eq!(own(&again).removed.len(), 1);
}

#[test]
fn being_removed_publishes_above_it_and_yields_the_blocks() {
    let t0 = Instant::now();
    let mut m = mesh_at(1, 1, t0);
    let (a, now) = alloc_wait(&mut m, key(0), t0);
    let b = block_of(&a);
    let mine = own(&m).summary;
    m.handle(est(1, ident(2, 2), true), now);
    let mut q = rec(2, 2, 5, &[], &[b]);
    q.removed = vec![Removal {
        peer: name(1),
        uid: mine.uid,
        version: mine.version,
    }];
    deliver(&mut m, 1, vec![q], now);
    let r = own(&m);
    assert!(
        r.summary.version > mine.version,
        "published above the removal"
    );
    assert!(r.blocks.is_empty(), "the remover keeps what it took over");
    assert_eq!(r.lost, vec![a.ip], "our pod's address stays reserved");
    assert!(m.ipam_lookup(&key(0)).unwrap().conflicting);
}

#[test]
fn records_of_collected_peers_keep_their_blocks() {
    let t0 = Instant::now();
    let mut m = mesh_at(1, 1, t0);
    m.handle(est(1, ident(2, 2), true), t0);
    let topo = |o: u64, v: u64, conns: &[(u64, bool)]| {
        Arc::new(crate::message::PeerRecord {
            summary: Summary {
                origin: name(o),
                uid: PeerUid(o),
                version: v,
            },
            nickname: format!("n{o}"),
            connections: conns
                .iter()
                .map(|&(p, outbound)| crate::message::ConnRecord {
                    peer: name(p),
                    addr: SocketAddr::from(([10, 9, 0, p as u8], 6783)),
                    outbound,
                })
                .collect(),
        })
    };
    let msg = Message::Topology(vec![
        topo(2, 5, &[(1, false), (3, true)]),
        topo(3, 5, &[(2, false)]),
    ]);
    m.handle(Input::Message { conn: 1, msg }, t0);
    deliver(&mut m, 1, vec![rec(3, 3, 2, &[0, 1, 2], &[])], t0);
    let msg = Message::Topology(vec![topo(2, 6, &[(1, false)])]);
    m.handle(Input::Message { conn: 1, msg }, t0);
    let mut now = t0;
    for _ in 0..30 {
        now += Duration::from_secs(1);
        m.handle(Input::Tick, now);
    }
    assert!(m.peers().iter().all(|p| p.name != name(3)), "collected");
    let st = m.ipam_status(now).unwrap();
    let p3 = st.peers.iter().find(|p| p.name == name(3)).unwrap();
    assert!(!p3.reachable && p3.nickname.is_none());
    assert_eq!(st.unreachable_owners, vec![name(3)]);
    assert_eq!(st.blocks_free, 13);
    // and they are not claimed by us
    let (a, _) = alloc_wait(&mut m, key(0), now);
    assert!(block_of(&a) > 2);
}

#[test]
fn another_range_is_reported_and_avoided() {
    let t0 = Instant::now();
    let mut m = mesh_at(1, 1, t0);
    m.handle(est(1, ident(2, 2), true), t0);
    let mut other = rec(2, 2, 1, &[0, 3], &[]);
    other.space = IpamSpace::new("10.0.0.0/25".parse().unwrap(), Some(27)).unwrap();
    deliver(&mut m, 1, vec![other], t0);
    let st = m.ipam_status(t0).unwrap();
    assert_eq!(st.mismatched.len(), 1);
    assert_eq!(st.mismatched[0].range, "10.0.0.0/25".parse().unwrap());
    assert_eq!(st.blocks_free, 12, "their two /27s cover four of our /28s");
    assert!(st.peers.iter().all(|p| p.name != name(2)));
}
