//! The fixed block source (Kubernetes `spec.podCIDR`) and the undecided one, through the
//! `Mesh` API, with hand-driven inputs (helpers from the parent test module).

use super::*;

fn net(s: &str) -> Ipv4Net {
    s.parse().unwrap()
}

fn fixed(s: &str) -> BlockSource {
    BlockSource::Fixed(net(s))
}

#[test]
fn a_fixed_cidr_is_settled_at_once_and_allocated_inside_only() {
    let t0 = Instant::now();
    let mut m = mesh_at(1, 1, t0);
    assert_eq!(m.ipam_source(), Some(&BlockSource::Shared));
    // 10.0.0.32/27 is blocks 2 and 3 of 10.0.0.0/24 in /28s
    assert_eq!(m.ipam_set_source(fixed("10.0.0.33/27"), t0), Ok(true));
    assert_eq!(m.ipam_set_source(fixed("10.0.0.32/27"), t0), Ok(false));
    let acts = m.handle(Input::Tick, t0);
    assert!(acts.contains(&Action::IpamChanged), "persisted");
    let r = own(&m);
    assert_eq!((r.blocks.clone(), r.pending.clone()), (vec![2, 3], vec![]));
    // no waiting for settle, no neighbour needed: the first answer is an address
    let gw = m.ipam_allocate(key(0), None, t0).unwrap();
    assert_eq!(
        gw.ip.to_string(),
        "10.0.0.33",
        "never the CIDR's network address"
    );
    assert_eq!(gw.prefix_len, 24, "pods see the whole range");
    let mut got = vec![gw.ip];
    for i in 1..40 {
        match m.ipam_allocate(key(i), None, t0) {
            Ok(a) => got.push(a.ip),
            Err(IpamError::CidrExhausted { cidr, usable }) => {
                assert_eq!((cidr, usable), (net("10.0.0.32/27"), 30));
                break;
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(got.len(), 30);
    assert!(got
        .iter()
        .all(|a| net("10.0.0.32/27").contains(a) && a.octets()[3] != 63));
    // exhausted, it still claims nothing from the shared range
    let mut now = t0;
    for _ in 0..100 {
        now += Duration::from_millis(100);
        m.handle(Input::Tick, now);
    }
    let r = own(&m);
    assert_eq!((r.blocks.clone(), r.pending.clone()), (vec![2, 3], vec![]));
    let st = m.ipam_status(now).unwrap();
    assert_eq!(st.source, fixed("10.0.0.32/27"));
    assert_eq!((st.ours.used, st.ours.free), (30, 0));
    assert!(st.ours.exhausted && st.ours.contested.is_empty());
}

#[test]
fn a_cidr_outside_the_range_is_refused() {
    let t0 = Instant::now();
    let mut m = mesh_at(1, 1, t0);
    assert_eq!(
        m.ipam_set_source(fixed("10.0.1.0/24"), t0),
        Err(IpamError::CidrOutsideRange {
            cidr: net("10.0.1.0/24"),
            range: net("10.0.0.0/24")
        })
    );
    assert_eq!(m.ipam_source(), Some(&BlockSource::Shared), "unchanged");
    let mut off = Mesh::new(ident(2, 2), Config::default(), 2, t0);
    assert_eq!(
        off.ipam_set_source(fixed("10.0.0.0/26"), t0),
        Err(IpamError::Disabled)
    );
}

#[test]
fn undecided_hands_out_nothing_and_claims_nothing_until_decided() {
    let t0 = Instant::now();
    let mut m = mesh_at(1, 1, t0);
    m.ipam_set_source(BlockSource::Undecided, t0).unwrap();
    let Err(IpamError::Pending { retry_at }) = m.ipam_allocate(key(0), None, t0) else {
        panic!("pending expected");
    };
    assert_eq!(retry_at, t0 + UNDECIDED_RETRY);
    // long past the startup wait: still nothing claimed
    let mut now = t0;
    for _ in 0..50 {
        now += Duration::from_millis(200);
        m.handle(Input::Tick, now);
        assert!(m.ipam_allocate(key(0), None, now).is_err());
    }
    let r = own(&m);
    assert!(r.blocks.is_empty() && r.pending.is_empty());
    let st = m.ipam_status(now).unwrap();
    assert!(!st.ours.exhausted, "waiting is not exhaustion");
    // decided for the shared range: claiming starts (and settles) as usual
    m.ipam_set_source(BlockSource::Shared, now).unwrap();
    let (a, _) = alloc_wait(&mut m, key(0), now);
    assert!(own(&m).blocks.contains(&block_of(&a)));
}

#[test]
fn shared_routers_keep_out_of_a_fixed_cidr() {
    let t0 = Instant::now();
    let mut a = mesh_at(1, 1, t0);
    let mut b = mesh_at(2, 2, t0);
    // a owns 10.0.0.0/25 (blocks 0..=7) by decree; b claims from the shared range
    a.ipam_set_source(fixed("10.0.0.0/25"), t0).unwrap();
    let mut now = connect(&mut a, &mut b, t0);
    let mut blocks_b = std::collections::BTreeSet::new();
    for i in 0..(8 * 16 - 8) {
        let k = key(i);
        loop {
            match b.ipam_allocate(k.clone(), None, now) {
                Ok(al) => {
                    blocks_b.insert(block_of(&al));
                    break;
                }
                Err(IpamError::Pending { .. }) => {
                    now = run_pair(&mut a, &mut b, now, Duration::from_millis(500))
                }
                Err(e) => panic!("{e}"),
            }
        }
    }
    assert!(
        blocks_b.iter().all(|&x| x >= 8),
        "b allocates only outside a's CIDR: {blocks_b:?}"
    );
    now = run_pair(&mut a, &mut b, now, Duration::from_secs(3));
    let st = b.ipam_status(now).unwrap();
    let pa = st.peers.iter().find(|p| p.name == name(1)).unwrap();
    assert_eq!(pa.blocks, vec![net("10.0.0.0/25")]);
    assert!(a.ipam_status(now).unwrap().ours.contested.is_empty());
}

#[test]
fn a_contested_fixed_block_is_kept_and_reported() {
    let t0 = Instant::now();
    let mut m = mesh_at(1, 1, t0);
    m.handle(est(1, ident(2, 2), true), t0);
    // peer 2 already allocates from block 4 (a range that was shared before)
    let b = (0..16).find(|&k| rank_hash(k, name(2)) < rank_hash(k, name(1)));
    let b = b.unwrap();
    deliver(&mut m, 1, vec![rec(2, 2, 1, &[b], &[])], t0);
    let cidr = space().block_net(b);
    m.ipam_set_source(BlockSource::Fixed(cidr), t0).unwrap();
    m.handle(Input::Tick, t0 + SETTLE * 4);
    assert_eq!(
        own(&m).blocks,
        vec![b],
        "ours by decree, whoever else claims it"
    );
    assert!(m.ipam_allocate(key(0), None, t0 + SETTLE * 4).is_ok());
    let st = m.ipam_status(t0).unwrap();
    assert_eq!(st.ours.contested, vec![(cidr, name(2))]);
}

#[test]
fn removing_a_dead_peer_frees_its_blocks_without_taking_them_over() {
    let t0 = Instant::now();
    let mut m = mesh_at(1, 1, t0);
    m.ipam_set_source(fixed("10.0.0.0/26"), t0).unwrap();
    m.handle(est(1, ident(3, 3), true), t0);
    // peer 2 (its Node deleted; only its record is around) had 10.0.0.64/26
    deliver(&mut m, 1, vec![rec(2, 7, 3, &[4, 5, 6, 7], &[])], t0);
    let before = m.ipam_status(t0).unwrap().blocks_free;
    let out = m.remove_peer(name(2), false, t0).unwrap();
    assert!(
        out.blocks.is_empty() && out.addresses == 0,
        "nothing taken over"
    );
    assert_eq!(out.freed, vec![net("10.0.0.64/26")]);
    let r = own(&m);
    assert_eq!(
        (r.blocks.clone(), r.pending.clone()),
        (vec![0, 1, 2, 3], vec![])
    );
    assert_eq!(r.removed.len(), 1, "the removal is published");
    let st = m.ipam_status(t0).unwrap();
    assert_eq!(st.blocks_free, before + 4);
    // the CIDR given to a new node later is free of conflicts
    deliver(&mut m, 1, vec![rec(4, 4, 1, &[4, 5, 6, 7], &[])], t0);
    let st = m.ipam_status(t0).unwrap();
    let p4 = st.peers.iter().find(|p| p.name == name(4)).unwrap();
    assert_eq!(p4.blocks, vec![net("10.0.0.64/26")]);
    assert!(st.conflicts.is_empty());
    // a router claiming from the shared range does take the blocks over
    let mut s = mesh_at(5, 5, t0);
    s.handle(est(1, ident(3, 3), true), t0);
    deliver(&mut s, 1, vec![rec(2, 7, 3, &[4, 5], &[])], t0);
    let out = s.remove_peer(name(2), false, t0).unwrap();
    assert_eq!(out.blocks, out.freed);
    assert_eq!(own(&s).pending, vec![4, 5]);
}

#[test]
fn restore_follows_the_source_set_before_or_after_it() {
    let t0 = Instant::now();
    // an earlier run claimed from the shared range and allocated there
    let mut old = mesh_at(1, 1, t0);
    let (a, now) = alloc_wait(&mut old, key(0), t0);
    let snap = old.ipam_snapshot();
    let old_block = block_of(&a);
    let cidr = space().block_net((old_block + 1) % 16);
    for before in [true, false] {
        let mut m = mesh_at(1, 2, now);
        if before {
            m.ipam_set_source(BlockSource::Fixed(cidr), now).unwrap();
        }
        m.restore_ipam(&snap, now).unwrap();
        if !before {
            m.ipam_set_source(BlockSource::Fixed(cidr), now).unwrap();
        }
        m.handle(Input::Tick, now);
        let r = own(&m);
        assert_eq!(
            r.blocks,
            vec![space().block_of(u32::from(cidr.network())).unwrap()]
        );
        assert_eq!(r.lost, vec![a.ip], "the old pod's address stays reserved");
        let kept = m.ipam_lookup(&key(0)).unwrap();
        assert!(kept.conflicting && kept.ip == a.ip, "before={before}");
        let fresh = m.ipam_allocate(key(1), None, now).unwrap();
        assert!(cidr.contains(&fresh.ip));
        // released, the old address is no longer published
        m.ipam_release(&key(0), now);
        m.handle(Input::Tick, now);
        assert!(own(&m).lost.is_empty());
    }
}
