//! Block claims and their conflicts: who owns each block, decided from the IPAM records
//! alone, so that every peer holding the same records decides the same way.
//!
//! Records of removed peers (up to their removal stamp) are ignored. Records in another
//! space (range or block size) do not take part: their blocks are translated to our
//! numbering only to keep us from claiming overlapping blocks.
//!
//! When several live records claim one block, the claimant with the smallest rank wins:
//! 1. not *dominated*: a claimant that another claimant of the block removed (`rmpeer`)
//!    loses to it — a removed peer that comes back with its old state cannot take back
//!    blocks the remover took over;
//! 2. *settled* before *pending*: a block someone already allocates from beats a fresh
//!    claim (a peer that starts or rejoins cannot take a block in use);
//! 3. the smaller [`rank_hash`] of (block, peer name);
//! 4. the smaller peer name (hash ties).

use super::space::IpamSpace;
use crate::message::IpamRecord;
use crate::peer::PeerName;
use crate::store::{Key, Store};
use std::collections::{BTreeMap, BTreeSet};

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A stable hash of (block, peer): each peer's order of preference among free blocks
/// (different peers prefer different blocks, so concurrent claims rarely collide), and
/// the tie-breaker of conflicts (so the peer that prefers a block most also wins it).
/// Part of the protocol: it must never change.
pub(crate) fn rank_hash(block: u32, peer: PeerName) -> u64 {
    splitmix(splitmix(peer.as_u64() ^ 0x7765_6674_6970_616d) ^ u64::from(block))
}

/// One claim of a block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Claim {
    pub peer: PeerName,
    pub settled: bool,
}

/// The ownership view derived from the records of our space.
#[derive(Debug, Default)]
pub(crate) struct Index {
    /// Every claimed block of our space: its claimants, the winner first.
    pub claims: BTreeMap<u32, Vec<Claim>>,
    /// Addresses peers still hold in blocks they lost (nobody may hand them out) -> holder.
    pub reserved: BTreeMap<u32, PeerName>,
    /// Our blocks overlapping blocks claimed in another space.
    pub foreign: BTreeSet<u32>,
    /// Peers publishing another space.
    pub mismatched: Vec<(PeerName, IpamSpace)>,
}

impl Index {
    /// Builds the view of `space` from `store`, ignoring records void by `removed`.
    pub fn build(
        space: &IpamSpace,
        store: &Store<IpamRecord>,
        removed: &BTreeMap<PeerName, Key>,
    ) -> Index {
        let mut idx = Index::default();
        let mut live: BTreeMap<PeerName, &IpamRecord> = BTreeMap::new();
        for (origin, slot) in store.iter() {
            let r = &*slot.rec;
            if removed.get(origin).is_some_and(|k| r.summary.key() <= *k) {
                continue;
            }
            if r.space != *space {
                idx.mismatched.push((*origin, r.space));
                for &b in r.blocks.iter().chain(&r.pending) {
                    if let Some((lo, hi)) = space.overlap(&r.space, b) {
                        idx.foreign.extend(lo..=hi);
                    }
                }
                continue;
            }
            live.insert(*origin, r);
            let settled = r.blocks.iter().map(|&b| (b, true));
            for (b, settled) in settled.chain(r.pending.iter().map(|&b| (b, false))) {
                idx.claims.entry(b).or_default().push(Claim {
                    peer: *origin,
                    settled,
                });
            }
            for a in &r.lost {
                idx.reserved.insert(u32::from(*a), *origin);
            }
        }
        for (&b, claims) in idx.claims.iter_mut() {
            if claims.len() > 1 {
                rank_claims(b, claims, &live);
            }
        }
        idx
    }

    /// The winning claim of block `b`.
    pub fn winner(&self, b: u32) -> Option<Claim> {
        self.claims.get(&b).map(|c| c[0])
    }

    /// Whether `peer` wins block `b`.
    pub fn owns(&self, b: u32, peer: PeerName) -> bool {
        self.winner(b).is_some_and(|c| c.peer == peer)
    }

    /// Nobody claims `b`, and no claim in another numbering overlaps it.
    pub fn is_free(&self, b: u32) -> bool {
        !self.claims.contains_key(&b) && !self.foreign.contains(&b)
    }

    /// Free blocks of the space.
    pub fn free_count(&self, space: &IpamSpace) -> u32 {
        let taken = self
            .foreign
            .iter()
            .filter(|b| !self.claims.contains_key(b))
            .count()
            + self.claims.len();
        space.block_count() - taken as u32
    }

    /// The free block `peer` prefers most, if any.
    pub fn preferred_free(&self, space: &IpamSpace, peer: PeerName) -> Option<u32> {
        (0..space.block_count())
            .filter(|&b| self.is_free(b))
            .min_by_key(|&b| (rank_hash(b, peer), b))
    }
}

/// Sorts the claimants of block `b`, the winner first (see the module docs).
fn rank_claims(b: u32, claims: &mut [Claim], live: &BTreeMap<PeerName, &IpamRecord>) {
    let removed_by = |d: &PeerName, c: &PeerName| {
        live.get(d)
            .is_some_and(|r| r.removed.binary_search_by(|x| x.peer.cmp(c)).is_ok())
    };
    let peers: Vec<PeerName> = claims.iter().map(|c| c.peer).collect();
    let rank = |c: &Claim| {
        let dominated = peers.iter().any(|d| *d != c.peer && removed_by(d, &c.peer));
        (dominated, !c.settled, rank_hash(b, c.peer), c.peer)
    };
    claims.sort_by_cached_key(rank);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{Removal, Summary};
    use crate::peer::PeerUid;
    use std::sync::Arc;

    fn name(v: u64) -> PeerName {
        PeerName::new(v).unwrap()
    }

    fn space() -> IpamSpace {
        IpamSpace::new("10.0.0.0/24".parse().unwrap(), Some(28)).unwrap()
    }

    fn rec(o: u64, version: u64, blocks: &[u32], pending: &[u32], removed: &[u64]) -> IpamRecord {
        IpamRecord {
            summary: Summary {
                origin: name(o),
                uid: PeerUid(o),
                version,
            },
            space: space(),
            blocks: blocks.to_vec(),
            pending: pending.to_vec(),
            lost: vec![],
            removed: removed
                .iter()
                .map(|&p| Removal {
                    peer: name(p),
                    uid: PeerUid(p),
                    version: 1,
                })
                .collect(),
        }
    }

    fn build(recs: &[IpamRecord]) -> Index {
        let mut st = Store::default();
        for r in recs {
            st.merge(Arc::new(r.clone()));
        }
        Index::build(&space(), &st, &BTreeMap::new())
    }

    /// A block on which peer `a` beats peer `b` by hash.
    fn block_won_by(a: u64, b: u64) -> u32 {
        (0..16)
            .find(|&k| rank_hash(k, name(a)) < rank_hash(k, name(b)))
            .unwrap()
    }

    #[test]
    fn preference_is_deterministic_and_differs_between_peers() {
        let idx = build(&[]);
        let s = space();
        assert_eq!(
            idx.preferred_free(&s, name(1)),
            idx.preferred_free(&s, name(1))
        );
        let firsts: BTreeSet<u32> = (1..=8)
            .filter_map(|p| idx.preferred_free(&s, name(p)))
            .collect();
        assert!(
            firsts.len() >= 4,
            "peers spread their first choices: {firsts:?}"
        );
        // a claimed block is not free; the next preference is taken
        let first = idx.preferred_free(&s, name(1)).unwrap();
        let idx = build(&[rec(2, 1, &[first], &[], &[])]);
        let second = idx.preferred_free(&s, name(1)).unwrap();
        assert_ne!(second, first);
        assert!(!idx.is_free(first));
        assert_eq!(idx.free_count(&s), 15);
    }

    #[test]
    fn conflict_winner_is_symmetric() {
        let b = block_won_by(1, 2);
        for order in [[0, 1], [1, 0]] {
            let recs = [rec(1, 1, &[], &[b], &[]), rec(2, 1, &[], &[b], &[])];
            let idx = build(&[recs[order[0]].clone(), recs[order[1]].clone()]);
            assert!(idx.owns(b, name(1)));
            assert_eq!(idx.claims[&b].len(), 2);
        }
        // the same with both settled (a healed partition)
        let idx = build(&[rec(2, 1, &[b], &[], &[]), rec(1, 1, &[b], &[], &[])]);
        assert!(idx.owns(b, name(1)));
    }

    #[test]
    fn settled_beats_pending_and_remover_beats_removed() {
        let b = block_won_by(1, 2);
        let idx = build(&[rec(1, 1, &[], &[b], &[]), rec(2, 1, &[b], &[], &[])]);
        assert!(idx.owns(b, name(2)), "settled wins over a fresh claim");
        // peer 2 removed peer 1 (which came back claiming b settled)
        let idx = build(&[rec(1, 5, &[b], &[], &[]), rec(2, 1, &[], &[b], &[1])]);
        assert!(idx.owns(b, name(2)), "the remover keeps what it took over");
    }

    #[test]
    fn removed_and_foreign_records() {
        let mut st = Store::default();
        st.merge(Arc::new(rec(1, 3, &[4], &[], &[])));
        let mut other = rec(2, 1, &[0], &[], &[]);
        other.space = IpamSpace::new("10.0.0.0/25".parse().unwrap(), Some(27)).unwrap();
        st.merge(Arc::new(other));
        let mut removed = BTreeMap::new();
        removed.insert(name(1), (3, PeerUid(1)));
        let idx = Index::build(&space(), &st, &removed);
        assert!(idx.is_free(4), "records up to the removal stamp are void");
        assert_eq!(idx.mismatched.len(), 1);
        // their /27 block 0 is our /28 blocks 0 and 1
        assert!(!idx.is_free(0) && !idx.is_free(1) && idx.is_free(2));
        removed.insert(name(1), (2, PeerUid(1)));
        let idx = Index::build(&space(), &st, &removed);
        assert!(!idx.is_free(4), "a newer record counts");
    }
}
