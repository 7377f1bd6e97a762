//! A generic replicated store: one record per origin, merged by `(version, uid)`.
//!
//! Merge keeps the larger record; on an equal key with different contents (only a buggy
//! or hostile peer produces that) the one with the larger encoding wins, so merge is a
//! join on a total order: commutative, associative and idempotent. Each slot caches the
//! record's encoded size so that traffic accounting never re-serialises big records.

use crate::message::{
    Channel, ConnRecord, DecodeError, EndpointRecord, IpamRecord, Message, PeerRecord, Summary,
};
use crate::peer::{PeerName, PeerUid};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::Arc;

/// The merge order key of a record: `(version, uid)`.
pub(crate) type Key = (u64, PeerUid);

/// A record type carried on one gossip channel.
pub(crate) trait Record: Debug + PartialEq + Serialize + Sized {
    const CHANNEL: Channel;
    fn summary(&self) -> &Summary;
    /// Wraps records into this channel's record message.
    fn message(recs: Vec<Arc<Self>>) -> Message;
    fn key(&self) -> Key {
        self.summary().key()
    }
    fn check(&self) -> Result<(), DecodeError>;
    /// The connections a topology record reports (none for other records).
    fn links(&self) -> &[ConnRecord] {
        &[]
    }
}

impl Record for PeerRecord {
    const CHANNEL: Channel = Channel::Topology;
    fn summary(&self) -> &Summary {
        &self.summary
    }
    fn message(recs: Vec<Arc<Self>>) -> Message {
        Message::Topology(recs)
    }
    fn check(&self) -> Result<(), DecodeError> {
        self.validate()
    }
    fn links(&self) -> &[ConnRecord] {
        &self.connections
    }
}

impl Record for EndpointRecord {
    const CHANNEL: Channel = Channel::Endpoints;
    fn summary(&self) -> &Summary {
        &self.summary
    }
    fn message(recs: Vec<Arc<Self>>) -> Message {
        Message::Endpoints(recs)
    }
    fn check(&self) -> Result<(), DecodeError> {
        self.validate()
    }
}

impl Record for IpamRecord {
    const CHANNEL: Channel = Channel::Ipam;
    fn summary(&self) -> &Summary {
        &self.summary
    }
    fn message(recs: Vec<Arc<Self>>) -> Message {
        Message::Ipam(recs)
    }
    fn check(&self) -> Result<(), DecodeError> {
        self.validate()
    }
}

/// Encoded size of one record (postcard, as inside a message).
pub(crate) fn record_size<R: Serialize>(rec: &R) -> usize {
    postcard::experimental::serialized_size(rec).unwrap_or(0)
}

/// Whether `new` beats `old` in the merge order.
pub(crate) fn wins<R: Record>(new: &Arc<R>, old: &Arc<R>) -> bool {
    match new.key().cmp(&old.key()) {
        std::cmp::Ordering::Greater => true,
        std::cmp::Ordering::Less => false,
        std::cmp::Ordering::Equal => {
            if Arc::ptr_eq(new, old) || **new == **old {
                return false;
            }
            // Same key, different contents: never produced by a correct peer. Decide by
            // the encodings so that every peer picks the same one.
            let a = postcard::to_allocvec(&**new).unwrap_or_default();
            let b = postcard::to_allocvec(&**old).unwrap_or_default();
            a > b
        }
    }
}

#[derive(Debug)]
pub(crate) struct Slot<R> {
    pub rec: Arc<R>,
    /// Cached `record_size(rec)`.
    pub size: usize,
}

/// One channel's records, keyed by origin.
#[derive(Debug)]
pub(crate) struct Store<R> {
    map: BTreeMap<PeerName, Slot<R>>,
}

impl<R> Default for Store<R> {
    fn default() -> Self {
        Store {
            map: BTreeMap::new(),
        }
    }
}

impl<R: Record> Store<R> {
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn get(&self, origin: &PeerName) -> Option<&Arc<R>> {
        self.map.get(origin).map(|s| &s.rec)
    }

    pub fn slot(&self, origin: &PeerName) -> Option<&Slot<R>> {
        self.map.get(origin)
    }

    pub fn key(&self, origin: &PeerName) -> Option<Key> {
        self.map.get(origin).map(|s| s.rec.key())
    }

    pub fn contains(&self, origin: &PeerName) -> bool {
        self.map.contains_key(origin)
    }

    /// Merges one record; returns whether the store changed.
    pub fn merge(&mut self, rec: Arc<R>) -> bool {
        let origin = rec.summary().origin;
        match self.map.get_mut(&origin) {
            Some(slot) => {
                if !wins(&rec, &slot.rec) {
                    return false;
                }
                slot.size = record_size(&*rec);
                slot.rec = rec;
                true
            }
            None => {
                let size = record_size(&*rec);
                self.map.insert(origin, Slot { rec, size });
                true
            }
        }
    }

    /// Merges every record of `other`; returns the origins that changed.
    #[cfg(test)]
    pub fn merge_store(&mut self, other: &Store<R>) -> Vec<PeerName> {
        let mut changed = Vec::new();
        for (o, s) in &other.map {
            if self.merge(s.rec.clone()) {
                changed.push(*o);
            }
        }
        changed
    }

    /// Replaces the record of `origin` unconditionally (our own records).
    pub fn put(&mut self, rec: Arc<R>) {
        let size = record_size(&*rec);
        self.map.insert(rec.summary().origin, Slot { rec, size });
    }

    pub fn remove(&mut self, origin: &PeerName) -> Option<Arc<R>> {
        self.map.remove(origin).map(|s| s.rec)
    }

    pub fn summaries(&self) -> Vec<Summary> {
        self.map.values().map(|s| *s.rec.summary()).collect()
    }

    pub fn origins(&self) -> impl Iterator<Item = &PeerName> + '_ {
        self.map.keys()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&PeerName, &Slot<R>)> + '_ {
        self.map.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::ConnRecord;
    use proptest::prelude::*;

    fn name(v: u64) -> PeerName {
        PeerName::new(v).unwrap()
    }

    fn rec(origin: u64, version: u64, uid: u64, conns: &[u64]) -> Arc<PeerRecord> {
        Arc::new(PeerRecord {
            summary: Summary {
                origin: name(origin),
                uid: PeerUid(uid),
                version,
            },
            nickname: format!("n{origin}"),
            connections: conns
                .iter()
                .map(|&p| ConnRecord {
                    peer: name(p),
                    addr: format!("10.0.0.{}:6783", p % 250).parse().unwrap(),
                    outbound: p % 2 == 0,
                })
                .collect(),
        })
    }

    fn snapshot(s: &Store<PeerRecord>) -> Vec<PeerRecord> {
        s.iter().map(|(_, sl)| (*sl.rec).clone()).collect()
    }

    #[test]
    fn merge_keeps_larger_key() {
        let mut s = Store::default();
        assert!(s.merge(rec(1, 1, 5, &[])));
        assert!(s.merge(rec(1, 2, 1, &[2])));
        assert!(!s.merge(rec(1, 1, 9, &[3])), "older version loses");
        assert!(s.merge(rec(1, 2, 7, &[])), "same version, larger uid wins");
        assert_eq!(s.key(&name(1)), Some((2, PeerUid(7))));
        assert!(!s.merge(rec(1, 2, 7, &[])), "idempotent");
        assert_eq!(s.len(), 1);
        assert_eq!(
            s.slot(&name(1)).unwrap().size,
            record_size(&*rec(1, 2, 7, &[]))
        );
    }

    #[test]
    fn equal_key_conflict_is_decided_the_same_way_both_orders() {
        let a = rec(1, 3, 3, &[2]);
        let b = rec(1, 3, 3, &[4]);
        let mut s1 = Store::default();
        s1.merge(a.clone());
        s1.merge(b.clone());
        let mut s2 = Store::default();
        s2.merge(b);
        s2.merge(a);
        assert_eq!(snapshot(&s1), snapshot(&s2));
    }

    fn arb_records() -> impl Strategy<Value = Vec<Arc<PeerRecord>>> {
        // Contents are a function of nothing but chance, including conflicting contents
        // under one key: merge must still be a join.
        prop::collection::vec(
            (
                0u64..6,
                0u64..5,
                0u64..3,
                prop::collection::vec(0u64..8, 0..4),
            ),
            0..30,
        )
        .prop_map(|v| {
            v.into_iter()
                .map(|(o, ver, uid, mut c)| {
                    c.sort();
                    c.dedup();
                    c.retain(|&p| p != o);
                    rec(o, ver, uid, &c)
                })
                .collect()
        })
    }

    fn build(recs: &[Arc<PeerRecord>]) -> Store<PeerRecord> {
        let mut s = Store::default();
        for r in recs {
            s.merge(r.clone());
        }
        s
    }

    proptest! {
        #[test]
        fn merge_is_commutative(a in arb_records(), b in arb_records()) {
            let (sa, sb) = (build(&a), build(&b));
            let mut ab = build(&a);
            ab.merge_store(&sb);
            let mut ba = build(&b);
            ba.merge_store(&sa);
            prop_assert_eq!(snapshot(&ab), snapshot(&ba));
        }

        #[test]
        fn merge_is_associative(a in arb_records(), b in arb_records(), c in arb_records()) {
            let (sa, sb, sc) = (build(&a), build(&b), build(&c));
            let mut left = build(&a);
            left.merge_store(&sb);
            left.merge_store(&sc);
            let mut bc = build(&b);
            bc.merge_store(&sc);
            let mut right = build(&a);
            right.merge_store(&bc);
            prop_assert_eq!(snapshot(&left), snapshot(&right));
            let _ = sa;
        }

        #[test]
        fn merge_is_idempotent_and_order_free(a in arb_records(), seed in any::<u64>()) {
            let s = build(&a);
            let mut twice = build(&a);
            prop_assert!(twice.merge_store(&s).is_empty());
            prop_assert_eq!(snapshot(&twice), snapshot(&s));
            // any permutation of the inputs gives the same store
            let mut shuffled = a.clone();
            let n = shuffled.len();
            let mut x = seed | 1;
            for i in (1..n).rev() {
                x ^= x << 13; x ^= x >> 7; x ^= x << 17;
                shuffled.swap(i, (x % (i as u64 + 1)) as usize);
            }
            prop_assert_eq!(snapshot(&build(&shuffled)), snapshot(&s));
        }
    }
}
