//! IP address management: addresses for pods (and the router's own bridge gateway) from
//! one cluster range, without a quorum and without a central allocator.
//!
//! Design note (details in `docs/control-protocol.md`, section "IPAM"). The range
//! (IPv4 only for now) is cut into fixed-size blocks ([`IpamSpace`]). Each peer publishes
//! one [`IpamRecord`] on the `Ipam` gossip channel: the blocks it owns (*settled*), the
//! blocks it is claiming (*pending*), addresses stranded in blocks it lost, and the peers
//! it removed. Who owns a block is a pure function of the records (`blocks`), so every
//! peer with the same records agrees. A peer claims the free block it prefers (a hash of
//! its name and the block, so peers rarely collide), waits for the claim to settle, and
//! then hands out addresses from it locally (`alloc`); addresses are not gossiped.
//!
//! IPAM records are not garbage-collected with the topology: a peer that is merely gone
//! keeps its blocks (it may come back). Space returns only through [`Mesh::remove_peer`]
//! (`weft rmpeer`), which records a removal in our record and takes the removed peer's
//! blocks over in the same version, so they are never free in between. State survives
//! restarts through [`Mesh::ipam_snapshot`] / [`Mesh::restore_ipam`].
//!
//! A fixed per-node CIDR (Kubernetes `spec.podCIDR`) is the node's only block source when
//! the driver sets it ([`Mesh::ipam_set_source`], [`BlockSource`]): its blocks are settled
//! at once and nothing is claimed from the shared range (`source.rs`). While the source is
//! [`BlockSource::Undecided`] nothing new is claimed or handed out.

mod alloc;
mod blocks;
mod claims;
mod snapshot;
mod source;
mod space;
mod status;
#[cfg(test)]
mod tests;

pub use alloc::AllocKey;
pub use source::BlockSource;
pub use space::{IpamSpace, DEFAULT_BLOCK_PREFIX, MAX_BLOCK_BITS, MAX_BLOCK_PREFIX};
pub use status::{IpamConflict, IpamMismatch, IpamOwnStatus, IpamPeerStatus, IpamStatus};

use crate::mesh::{chan_index, Mesh};
use crate::message::{Channel, IpamRecord, Removal, Summary};
use crate::peer::PeerName;
use crate::store::{Key, Store};
use blocks::Index;
use claims::{Env, Local};
use ipnet::Ipv4Net;
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// The default cluster range (`--ipalloc-range`).
pub const DEFAULT_RANGE: &str = "10.32.0.0/12";
/// Default time a claim waits for conflicting claims before it is allocated from.
pub const DEFAULT_SETTLE: Duration = Duration::from_secs(2);
/// Removed peers remembered from others' records (beyond this, new ones are not).
const MAX_REMOVED_KNOWN: usize = 1 << 16;
/// How soon to ask again for an address while the block source is undecided.
pub const UNDECIDED_RETRY: Duration = Duration::from_millis(250);

/// IPAM configuration of one router. Every router of a mesh must use the same range and
/// block size; a peer with another is reported in status and its blocks are avoided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpamConfig {
    /// The cluster range (`--ipalloc-range`); host bits are ignored.
    pub range: Ipv4Net,
    /// Block prefix length; default [`IpamSpace::default_block_prefix`] (/26 for /8–/22).
    pub block_prefix: Option<u8>,
    /// How long a claim waits for conflicting claims before it is allocated from.
    pub settle: Duration,
}

impl IpamConfig {
    pub fn new(range: Ipv4Net) -> Self {
        IpamConfig {
            range,
            block_prefix: None,
            settle: DEFAULT_SETTLE,
        }
    }

    /// The space this configuration describes, or why it is invalid.
    pub fn space(&self) -> Result<IpamSpace, IpamError> {
        IpamSpace::new(self.range, self.block_prefix).map_err(IpamError::Config)
    }
}

impl Default for IpamConfig {
    fn default() -> Self {
        IpamConfig::new(DEFAULT_RANGE.parse().expect("valid default range"))
    }
}

/// An allocated address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allocation {
    pub ip: Ipv4Addr,
    /// The prefix length of the whole range (pods are on one flat L2 overlay).
    pub prefix_len: u8,
    pub pod: Option<String>,
    /// The address is in a block this router lost in a conflict (after a partition): it
    /// stays reserved for its holder, but another pod elsewhere may have it too.
    pub conflicting: bool,
}

/// What [`Mesh::remove_peer`] took over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoveOutcome {
    pub peer: PeerName,
    /// Blocks transferred to us (as CIDRs, adjacent blocks merged).
    pub blocks: Vec<Ipv4Net>,
    /// Addresses in them.
    pub addresses: u64,
    /// Blocks the removed peer owned (as CIDRs): transferred to us when we claim from the
    /// shared range, freed otherwise (a fixed CIDR takes nothing over).
    pub freed: Vec<Ipv4Net>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpamError {
    #[error("IP address management is not enabled on this router")]
    Disabled,
    #[error("invalid IPAM configuration: {0}")]
    Config(String),
    /// A block is being claimed or settling, or the block source is not decided yet;
    /// retry at `retry_at` (CNI: try again later).
    #[error("no address available yet: this router's address space is not settled yet (a block of the range is being claimed, or the node's pod CIDR is not known yet); try again shortly")]
    Pending { retry_at: Instant },
    #[error(
        "IP range {range} is exhausted: all {blocks} blocks of {block_size} addresses are \
         claimed ({ours} by this router, {others} by other peers) and this router's {usable} \
         usable addresses are all in use; remove dead peers (weft rmpeer) or use a larger \
         --ipalloc-range"
    )]
    Exhausted {
        range: Ipv4Net,
        blocks: u32,
        block_size: u32,
        ours: u32,
        others: u32,
        usable: u64,
    },
    #[error(
        "the saved IPAM state is for {saved}, but this router is configured with {configured}"
    )]
    RangeMismatch { configured: String, saved: String },
    #[error("unreadable IPAM state: {0}")]
    Snapshot(String),
    #[error("IPAM state can only be restored before the first allocation or claim")]
    AlreadyStarted,
    /// Peers refuse this router as a duplicate: another live router has its name, and the
    /// blocks of that name are the other router's (CNI: try again later).
    #[error("this router hands out no addresses: another router with the peer name {0} is connected to the mesh and peers refuse this one; give each router its own --name (cloned machines share /etc/machine-id)")]
    NameInUse(PeerName),
    #[error("a router cannot remove itself")]
    RemoveSelf,
    #[error("peer {0} is reachable; remove only peers that are gone for good (or force it)")]
    PeerReachable(PeerName),
    #[error("peer {0} has no IPAM record here")]
    UnknownPeer(PeerName),
    #[error("peer {0} was already removed")]
    AlreadyRemoved(PeerName),
    #[error("this node's CIDR {cidr} is not inside the IP range {range}")]
    CidrOutsideRange { cidr: Ipv4Net, range: Ipv4Net },
    #[error("this node's pod CIDR {cidr} is exhausted: all {usable} addresses are in use")]
    CidrExhausted { cidr: Ipv4Net, usable: u64 },
}

/// The IPAM part of a [`Mesh`]: the replicated records and our own state.
#[derive(Debug)]
pub(crate) struct Ipam {
    pub store: Store<IpamRecord>,
    /// Removed peers (union over all records) -> the largest removed record key.
    pub removed: BTreeMap<PeerName, Key>,
    /// Our state; `None` when IPAM is disabled (we still relay others' records).
    pub local: Option<Local>,
    /// Why IPAM is disabled despite being configured.
    pub error: Option<String>,
    /// Ownership view, rebuilt when records change.
    pub index: OnceLock<Index>,
    /// The view changed: emit `IpamChanged`.
    pub notify: bool,
    /// `now` of the latest call that touched our state.
    pub last_now: Instant,
}

impl Ipam {
    pub fn new(cfg: Option<&IpamConfig>, now: Instant) -> Ipam {
        let (local, error) = match cfg.map(|c| c.space().map(|s| (s, c.settle))) {
            None => (None, None),
            Some(Ok((space, settle))) => (Some(Local::new(space, settle, now)), None),
            Some(Err(e)) => (None, Some(e.to_string())),
        };
        Ipam {
            store: Store::default(),
            removed: BTreeMap::new(),
            local,
            error,
            index: OnceLock::new(),
            notify: false,
            last_now: now,
        }
    }

    pub fn enabled(&self) -> bool {
        self.local.is_some()
    }

    fn touch(&mut self) {
        self.index = OnceLock::new();
        self.notify = true;
    }

    /// Whether to emit `IpamChanged` now (clears the flags).
    pub fn take_notify(&mut self) -> bool {
        let Some(local) = self.local.as_mut() else {
            self.notify = false;
            return false;
        };
        std::mem::take(&mut self.notify) | std::mem::take(&mut local.persist)
    }

    /// When the driver should tick for IPAM's sake.
    pub fn deadline(&self) -> Option<Instant> {
        let local = self.local.as_ref()?;
        if local.persist || local.dirty {
            return Some(self.last_now);
        }
        local.next_wake
    }

    fn check(&self) -> Result<(), IpamError> {
        match (&self.local, &self.error) {
            (Some(_), _) => Ok(()),
            (None, Some(e)) => Err(IpamError::Config(e.clone())),
            (None, None) => Err(IpamError::Disabled),
        }
    }
}

/// The ownership view (rebuilt if stale). A function of the fields it reads, so that
/// callers keep `Ipam::local` free for mutation.
pub(crate) fn view<'a>(
    index: &'a OnceLock<Index>,
    space: &IpamSpace,
    store: &Store<IpamRecord>,
    removed: &BTreeMap<PeerName, Key>,
) -> &'a Index {
    index.get_or_init(|| Index::build(space, store, removed))
}

impl Mesh {
    /// The key we hold for `origin` on the Ipam channel, raised to its removal stamp:
    /// removed records are never fetched, accepted or offered again.
    pub(crate) fn ipam_key(&self, origin: &PeerName) -> Option<Key> {
        let have = self.ipam.store.key(origin);
        if *origin == self.me.name {
            return have;
        }
        match self.ipam.removed.get(origin) {
            Some(r) => Some(have.map_or(*r, |h| h.max(*r))),
            None => have,
        }
    }

    /// A record of `origin` was merged from the network.
    pub(crate) fn ipam_merged(&mut self, origin: PeerName) {
        self.ipam.touch();
        let Some(rec) = self.ipam.store.get(&origin).cloned() else {
            return;
        };
        if let Some(l) = self.ipam.local.as_mut() {
            let ours = |b: &u32| l.settled.contains(b) || l.pending.contains_key(b);
            if rec.space == l.space && rec.blocks.iter().chain(&rec.pending).any(ours) {
                l.recheck = true;
            }
        }
        for r in &rec.removed {
            self.ipam_note_removal(*r);
        }
    }

    /// Learns of a removal: drops the removed records it voids.
    fn ipam_note_removal(&mut self, r: Removal) {
        let k = r.key();
        let known = self.ipam.removed.len();
        match self.ipam.removed.get_mut(&r.peer) {
            Some(e) if *e >= k => return,
            Some(e) => *e = k,
            None if known >= MAX_REMOVED_KNOWN => return,
            None => {
                self.ipam.removed.insert(r.peer, k);
            }
        }
        self.ipam.touch();
        if r.peer != self.me.name && self.ipam.store.key(&r.peer).is_some_and(|h| h <= k) {
            self.ipam.store.remove(&r.peer);
            self.chan[chan_index(Channel::Ipam)].news.remove(&r.peer);
        }
    }

    /// A neighbour's IPAM digest arrived: we know the mesh's claims (once fetched).
    pub(crate) fn ipam_note_digest(&mut self) {
        if let Some(l) = self.ipam.local.as_mut() {
            l.synced = true;
        }
    }

    /// A record of ours newer than our current one is around: republish above it.
    pub(crate) fn ipam_bump(&mut self) {
        if let Some(l) = self.ipam.local.as_mut() {
            l.dirty = true;
        }
    }

    /// Brings our IPAM state up to date with the view and the time; publishes our record
    /// if it changed. Called from every `handle` and every IPAM call.
    pub(crate) fn ipam_step(&mut self, now: Instant) {
        let me = self.me.name;
        let ci = chan_index(Channel::Ipam);
        self.ipam.last_now = now;
        let own = self.ipam.store.key(&me);
        let removed_at = self.ipam.removed.get(&me).copied();
        let Some(local) = self.ipam.local.as_mut() else {
            return;
        };
        if !local.published {
            local.dirty = true;
        }
        if let Some(k) = removed_at {
            // someone removed us (forced, or we were thought dead): publish above it
            if own.is_none_or(|own| own <= k) {
                self.version_floor[ci] = self.version_floor[ci].max(k.0);
                local.dirty = true;
            }
        }
        if local.dirty {
            self.ipam_publish();
        }
        let fetching = self.chan[ci].waiting();
        let ipam = &mut self.ipam;
        let Some(local) = ipam.local.as_mut() else {
            return;
        };
        let env = Env { me, now, fetching };
        let duplicate = self.names.refused(now).is_some();
        if duplicate {
            local.give_up_as_duplicate();
        }
        if local.recheck {
            local.reconcile(
                view(&ipam.index, &local.space, &ipam.store, &ipam.removed),
                me,
            );
        }
        local.settle_due(&env);
        // A duplicate of a live router claims nothing (the name's blocks are the other's).
        if local.wants_claim(&env) && !duplicate {
            local.claim(
                view(&ipam.index, &local.space, &ipam.store, &ipam.removed),
                &env,
            );
        }
        local.plan_wake(&env);
        if local.dirty {
            self.ipam_publish();
        }
    }

    /// Publishes a new version of our record.
    fn ipam_publish(&mut self) {
        let ci = chan_index(Channel::Ipam);
        let me = self.me.name;
        let version = self
            .ipam
            .store
            .key(&me)
            .map_or(0, |k| k.0)
            .max(self.version_floor[ci])
            + 1;
        let Some(local) = self.ipam.local.as_mut() else {
            return;
        };
        let summary = Summary {
            origin: me,
            uid: self.me.uid,
            version,
        };
        let rec = local.record(summary);
        local.dirty = false;
        local.published = true;
        local.recheck = true;
        self.ipam.store.put(Arc::new(rec));
        self.chan[ci].add_news(summary, None);
        self.ipam.touch();
    }

    /// Allocates an address for `key` (idempotent: an existing allocation is returned,
    /// its pod label updated). See [`IpamError`] for the failures; on `Pending` the caller
    /// retries at `retry_at`. After a successful allocation the driver persists
    /// [`Mesh::ipam_snapshot`] before handing the address out.
    pub fn ipam_allocate(
        &mut self,
        key: AllocKey,
        pod: Option<String>,
        now: Instant,
    ) -> Result<Allocation, IpamError> {
        self.ipam.check()?;
        if self.names.refused(now).is_some() {
            return Err(IpamError::NameInUse(self.me.name));
        }
        if let Some(mut a) = self.ipam_lookup(&key) {
            let local = self.ipam.local.as_mut().expect("checked");
            if pod.is_some() && local.allocs.set_pod(&key, pod.clone()) {
                local.persist = true;
                a.pod = pod;
            }
            return Ok(a);
        }
        if self.ipam.local.as_ref().expect("checked").source == BlockSource::Undecided {
            return Err(IpamError::Pending {
                retry_at: now + UNDECIDED_RETRY,
            });
        }
        self.ipam_step(now);
        let ipam = &mut self.ipam;
        let local = ipam.local.as_mut().expect("checked");
        let idx = view(&ipam.index, &local.space, &ipam.store, &ipam.removed);
        let (space, fixed) = (&local.space, &local.fixed);
        let reserved = |a: u32| {
            idx.reserved.contains_key(&a) || fixed.as_ref().is_some_and(|f| !f.allows(space, a))
        };
        let got = local
            .allocs
            .allocate(key, pod.clone(), space, &local.settled, reserved);
        if let Some(ip) = got {
            local.waiting = false;
            local.persist = true;
            let prefix_len = local.space.prefix_len;
            self.ipam_step(now); // a spare block when nearly full
            return Ok(Allocation {
                ip: Ipv4Addr::from(ip),
                prefix_len,
                pod,
                conflicting: false,
            });
        }
        if let Some(f) = &local.fixed {
            return Err(IpamError::CidrExhausted {
                cidr: f.net,
                usable: f.capacity(&local.space),
            });
        }
        local.waiting = true;
        self.ipam_step(now);
        let ipam = &self.ipam;
        let local = ipam.local.as_ref().expect("checked");
        let idx = view(&ipam.index, &local.space, &ipam.store, &ipam.removed);
        let free = idx.free_count(&local.space);
        if !local.pending.is_empty() || free > 0 {
            let retry_at = local.next_wake.unwrap_or(now + self.config.gossip_interval);
            return Err(IpamError::Pending { retry_at });
        }
        let ours = local.settled.len() as u32;
        let blocks = local.space.block_count();
        Err(IpamError::Exhausted {
            range: local.space.range(),
            blocks,
            block_size: local.space.block_size(),
            ours,
            others: blocks - ours,
            usable: local.usage().1,
        })
    }

    /// Releases the allocation of `key` (idempotent); returns its address.
    pub fn ipam_release(&mut self, key: &AllocKey, now: Instant) -> Option<Ipv4Addr> {
        let local = self.ipam.local.as_mut()?;
        let ip = local.allocs.release(key)?;
        local.persist = true;
        if local
            .space
            .block_of(ip)
            .is_none_or(|b| !local.settled.contains(&b))
        {
            local.dirty = true; // our list of lost addresses shrinks
        }
        self.ipam_step(now);
        Some(Ipv4Addr::from(ip))
    }

    /// Releases every allocation whose key is not in `valid` (CNI GC); returns them. The
    /// driver includes its own keys (the bridge gateway) in `valid`.
    pub fn ipam_gc(&mut self, valid: &[AllocKey], now: Instant) -> Vec<(AllocKey, Ipv4Addr)> {
        let Some(local) = self.ipam.local.as_ref() else {
            return Vec::new();
        };
        let valid: BTreeSet<&AllocKey> = valid.iter().collect();
        let stale: Vec<AllocKey> = local
            .allocs
            .iter()
            .filter(|(k, _)| !valid.contains(k))
            .map(|(k, _)| k.clone())
            .collect();
        stale
            .into_iter()
            .filter_map(|k| self.ipam_release(&k, now).map(|ip| (k, ip)))
            .collect()
    }

    /// The allocation of `key`, if any.
    pub fn ipam_lookup(&self, key: &AllocKey) -> Option<Allocation> {
        let local = self.ipam.local.as_ref()?;
        let e = local.allocs.get(key)?;
        let block = local.space.block_of(e.ip);
        Some(Allocation {
            ip: Ipv4Addr::from(e.ip),
            prefix_len: local.space.prefix_len,
            pod: e.pod.clone(),
            conflicting: block.is_none_or(|b| !local.settled.contains(&b)),
        })
    }

    /// All our allocations, sorted by key.
    pub fn ipam_allocations(&self) -> Vec<(AllocKey, Allocation)> {
        let Some(local) = self.ipam.local.as_ref() else {
            return Vec::new();
        };
        local
            .allocs
            .iter()
            .filter_map(|(k, _)| Some((k.clone(), self.ipam_lookup(k)?)))
            .collect()
    }

    /// Whether IPAM is enabled (configured with a valid range).
    pub fn ipam_enabled(&self) -> bool {
        self.ipam.enabled()
    }

    /// Where our blocks come from (`None` when IPAM is disabled).
    pub fn ipam_source(&self) -> Option<&BlockSource> {
        self.ipam.local.as_ref().map(|l| &l.source)
    }

    /// Sets where our blocks come from (see [`BlockSource`]); returns whether it changed.
    /// May be called at any time, also before [`Mesh::restore_ipam`] (the restored state
    /// then follows it). A fixed CIDR must lie inside the range. Our new record is
    /// gossiped on the next `handle`.
    pub fn ipam_set_source(
        &mut self,
        source: BlockSource,
        now: Instant,
    ) -> Result<bool, IpamError> {
        self.ipam.check()?;
        let local = self.ipam.local.as_mut().expect("checked");
        if !local.set_source(source)? {
            return Ok(false);
        }
        self.ipam.touch();
        self.ipam_step(now);
        Ok(true)
    }

    /// Removes peer `name` from IPAM (`weft rmpeer`): its records up to the latest we hold
    /// become void everywhere and we take over the blocks it owned (as claims settling
    /// like fresh ones, so a concurrent removal elsewhere cannot double-allocate them).
    /// Unless we claim from the shared range, nothing is taken over: the blocks are freed.
    /// Refused for ourselves, and for a peer we can reach unless `force`.
    pub fn remove_peer(
        &mut self,
        name: PeerName,
        force: bool,
        now: Instant,
    ) -> Result<RemoveOutcome, IpamError> {
        self.ipam.check()?;
        if name == self.me.name {
            return Err(IpamError::RemoveSelf);
        }
        let reachable =
            self.primary.contains_key(&name) || self.routes_ref().unicast.contains_key(&name);
        if reachable && !force {
            return Err(IpamError::PeerReachable(name));
        }
        let Some(rec) = self.ipam.store.get(&name).cloned() else {
            if self.ipam.removed.contains_key(&name) {
                return Err(IpamError::AlreadyRemoved(name));
            }
            return Err(IpamError::UnknownPeer(name));
        };
        self.ipam_step(now);
        let ipam = &mut self.ipam;
        let local = ipam.local.as_mut().expect("checked");
        let idx = view(&ipam.index, &local.space, &ipam.store, &ipam.removed);
        let owned: Vec<u32> = if rec.space == local.space {
            rec.blocks
                .iter()
                .copied()
                .filter(|&b| idx.owns(b, name))
                .collect()
        } else {
            Vec::new()
        };
        let taken = if local.source == BlockSource::Shared {
            owned.clone()
        } else {
            Vec::new()
        };
        for &b in &taken {
            local.pending.insert(b, now);
        }
        let s = rec.summary;
        local.add_removal(Removal {
            peer: name,
            uid: s.uid,
            version: s.version,
        });
        // chains: what it had removed stays removed
        for r in rec.removed.iter().filter(|r| r.peer != self.me.name) {
            local.add_removal(*r);
        }
        let space = local.space;
        let mut removals = vec![Removal {
            peer: name,
            uid: s.uid,
            version: s.version,
        }];
        removals.extend(rec.removed.iter().copied());
        for r in removals {
            self.ipam_note_removal(r);
        }
        self.ipam_publish();
        self.ipam_step(now);
        Ok(RemoveOutcome {
            peer: name,
            blocks: space::aggregate(&space, taken.iter().copied()),
            addresses: taken.len() as u64 * u64::from(space.block_size()),
            freed: space::aggregate(&space, owned.iter().copied()),
        })
    }
}
