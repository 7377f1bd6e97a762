//! Local allocations: `(container id, interface) -> address` within the blocks we own.
//! Not gossiped (only addresses stranded in lost blocks are, see `IpamRecord::lost`).
//!
//! Addresses are handed out round-robin from a cursor over our settled blocks, so that a
//! released address is not reused at once (stale ARP entries and conntrack state of the
//! previous pod age out first).

use super::space::IpamSpace;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// What an allocation is keyed by: the CNI attachment (container id and interface name).
/// The router also allocates for itself (e.g. its bridge gateway) under a key of its own.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AllocKey {
    pub container_id: String,
    pub ifname: String,
}

impl AllocKey {
    pub fn new(container_id: impl Into<String>, ifname: impl Into<String>) -> Self {
        AllocKey {
            container_id: container_id.into(),
            ifname: ifname.into(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Entry {
    pub ip: u32,
    pub pod: Option<String>,
}

#[derive(Debug, Default)]
pub(crate) struct Allocs {
    by_key: BTreeMap<AllocKey, Entry>,
    by_ip: BTreeMap<u32, AllocKey>,
    /// Next address to try.
    pub cursor: u32,
}

impl Allocs {
    pub fn get(&self, key: &AllocKey) -> Option<&Entry> {
        self.by_key.get(key)
    }

    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&AllocKey, &Entry)> + '_ {
        self.by_key.iter()
    }

    pub fn holder(&self, ip: u32) -> Option<&AllocKey> {
        self.by_ip.get(&ip)
    }

    /// Records `key -> ip` (restoring a snapshot). Returns false if the key or the address
    /// is already taken.
    pub fn insert(&mut self, key: AllocKey, ip: u32, pod: Option<String>) -> bool {
        if self.by_key.contains_key(&key) || self.by_ip.contains_key(&ip) {
            return false;
        }
        self.by_ip.insert(ip, key.clone());
        self.by_key.insert(key, Entry { ip, pod });
        true
    }

    /// Replaces the pod label of an allocation; returns whether it changed.
    pub fn set_pod(&mut self, key: &AllocKey, pod: Option<String>) -> bool {
        match self.by_key.get_mut(key) {
            Some(e) if e.pod != pod => {
                e.pod = pod;
                true
            }
            _ => false,
        }
    }

    pub fn release(&mut self, key: &AllocKey) -> Option<u32> {
        let e = self.by_key.remove(key)?;
        self.by_ip.remove(&e.ip);
        Some(e.ip)
    }

    /// Allocations in block `b`.
    pub fn used_in(&self, space: &IpamSpace, b: u32) -> u32 {
        self.by_ip
            .range(space.block_start(b)..=space.block_end(b))
            .count() as u32
    }

    /// Addresses allocated outside `blocks` (in blocks we lost), sorted.
    pub fn outside(&self, space: &IpamSpace, blocks: &BTreeSet<u32>) -> Vec<u32> {
        self.by_ip
            .keys()
            .copied()
            .filter(|&a| space.block_of(a).is_none_or(|b| !blocks.contains(&b)))
            .collect()
    }

    /// (used, usable) addresses of `blocks`.
    pub fn usage(&self, space: &IpamSpace, blocks: &BTreeSet<u32>) -> (u64, u64) {
        blocks.iter().fold((0, 0), |(u, t), &b| {
            (
                u + u64::from(self.used_in(space, b)),
                t + u64::from(space.usable_in_block(b)),
            )
        })
    }

    /// Allocates a free usable address of `blocks` that `reserved` does not exclude,
    /// the first one at or after the cursor (wrapping around).
    pub fn allocate(
        &mut self,
        key: AllocKey,
        pod: Option<String>,
        space: &IpamSpace,
        blocks: &BTreeSet<u32>,
        reserved: impl Fn(u32) -> bool,
    ) -> Option<u32> {
        let cursor = self.cursor;
        let found = self
            .scan(space, blocks, cursor, u32::MAX, &reserved)
            .or_else(|| self.scan(space, blocks, 0, cursor.saturating_sub(1), &reserved))?;
        self.cursor = found.wrapping_add(1);
        self.insert(key, found, pod);
        Some(found)
    }

    /// The first free address in `[lo, hi]` of `blocks`.
    fn scan(
        &self,
        space: &IpamSpace,
        blocks: &BTreeSet<u32>,
        lo: u32,
        hi: u32,
        reserved: &impl Fn(u32) -> bool,
    ) -> Option<u32> {
        for &b in blocks {
            let (start, end) = (space.block_start(b), space.block_end(b));
            if end < lo || start > hi || self.used_in(space, b) >= space.usable_in_block(b) {
                continue;
            }
            for a in start.max(lo)..=end.min(hi) {
                if space.usable(a) && !self.by_ip.contains_key(&a) && !reserved(a) {
                    return Some(a);
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn space() -> IpamSpace {
        IpamSpace::new("10.0.0.0/24".parse().unwrap(), Some(28)).unwrap()
    }

    fn ip(a: u32) -> Ipv4Addr {
        Ipv4Addr::from(a)
    }

    fn key(i: usize) -> AllocKey {
        AllocKey::new(format!("c{i}"), "eth0")
    }

    #[test]
    fn round_robin_skips_network_broadcast_and_reserved() {
        let s = space();
        let mut a = Allocs::default();
        let blocks: BTreeSet<u32> = [0, 15].into();
        let none = |_: u32| false;
        let first = a.allocate(key(0), None, &s, &blocks, none).unwrap();
        assert_eq!(
            ip(first),
            Ipv4Addr::new(10, 0, 0, 1),
            "never the network address"
        );
        let reserved = |x: u32| ip(x) == Ipv4Addr::new(10, 0, 0, 2);
        let second = a.allocate(key(1), None, &s, &blocks, reserved).unwrap();
        assert_eq!(ip(second), Ipv4Addr::new(10, 0, 0, 3));
        // release then allocate: the released address is not reused at once
        assert_eq!(a.release(&key(0)), Some(first));
        assert_eq!(a.release(&key(0)), None, "idempotent");
        let third = a.allocate(key(2), None, &s, &blocks, none).unwrap();
        assert_eq!(ip(third), Ipv4Addr::new(10, 0, 0, 4));
        // fill both blocks: 15 + 15 usable addresses
        let mut got = vec![second, third];
        for i in 3..40 {
            match a.allocate(key(i), None, &s, &blocks, none) {
                Some(x) => got.push(x),
                None => break,
            }
        }
        assert_eq!(got.len(), 30);
        got.sort();
        got.dedup();
        assert_eq!(got.len(), 30, "all distinct");
        assert!(!got.contains(&u32::from(Ipv4Addr::new(10, 0, 0, 255))));
        assert!(
            got.contains(&first),
            "wrapped around to the released address"
        );
        assert_eq!(a.usage(&s, &blocks), (30, 30));
    }

    #[test]
    fn outside_lists_addresses_of_lost_blocks() {
        let s = space();
        let mut a = Allocs::default();
        let blocks: BTreeSet<u32> = [1, 2].into();
        for i in 0..20 {
            a.allocate(key(i), None, &s, &blocks, |_| false).unwrap();
        }
        let kept: BTreeSet<u32> = [2].into();
        let out = a.outside(&s, &kept);
        assert_eq!(out.len(), 16);
        assert!(out.iter().all(|&x| s.block_of(x) == Some(1)));
        assert!(!a.insert(key(0), 99, None), "key taken");
        assert!(a.set_pod(&key(1), Some("ns/p".into())));
        assert!(!a.set_pod(&key(1), Some("ns/p".into())));
    }
}
