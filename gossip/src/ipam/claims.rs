//! Our own IPAM state: the blocks we claim, settle and own, our allocations and the peers
//! we removed; and the step that moves it forward against the ownership view.
//!
//! A claim is *pending* until it settles: `settle` has passed since we claimed it, we
//! still win it in our view, and no IPAM record announced to us is still being fetched
//! (a fetch in flight may carry a conflicting claim; after `3 * settle` we stop waiting
//! for it). Only settled blocks are allocated from. We claim a block when an allocation
//! finds no free address, and one spare block ahead when our settled blocks are more than
//! 75 % used — one claim at a time. Before the first claim we wait until we have
//! synchronised IPAM records with a neighbour (its IPAM digest received and fetched), or
//! `settle` after start without one (a lone first router needs nobody).
//!
//! All of that is for the shared range ([`BlockSource::Shared`]). With a fixed CIDR
//! (`source.rs`) our settled blocks are the CIDR's, always, and nothing is claimed; while
//! the source is undecided nothing is claimed either.

use super::alloc::Allocs;
use super::blocks::Index;
use super::source::{BlockSource, Fixed};
use super::space::IpamSpace;
use super::IpamError;
use crate::message::{IpamRecord, Removal, Summary};
use crate::peer::PeerName;
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

/// Removals kept in our record (oldest dropped first). A removal must outlive every copy
/// of the removed peer's record, so this is generous.
pub(crate) const MAX_OWN_REMOVALS: usize = 4096;

/// Claim a spare block when settled blocks are used above this fraction (3/4).
const SPARE_NUM: u64 = 3;
const SPARE_DEN: u64 = 4;

#[derive(Debug)]
pub(crate) struct Local {
    pub space: IpamSpace,
    pub settle: Duration,
    pub started: Instant,
    /// An IPAM digest from a neighbour arrived (we know the mesh's claims, modulo fetches).
    pub synced: bool,
    /// Blocks we own and allocate from.
    pub settled: BTreeSet<u32>,
    /// Claims settling -> when claimed.
    pub pending: BTreeMap<u32, Instant>,
    pub allocs: Allocs,
    /// Peers we removed, oldest first.
    pub removals: Vec<Removal>,
    /// An allocation found no address: claim a block.
    pub waiting: bool,
    /// Our record must be republished.
    pub dirty: bool,
    /// The snapshot changed since the last `IpamChanged`.
    pub persist: bool,
    /// A record of this incarnation was published.
    pub published: bool,
    /// When `step` has timed work next.
    pub next_wake: Option<Instant>,
    /// A record claiming one of our blocks (or ours) changed: re-check who wins them.
    pub recheck: bool,
    /// Where our blocks come from.
    pub source: BlockSource,
    /// The fixed CIDR when `source` is [`BlockSource::Fixed`].
    pub fixed: Option<Fixed>,
}

/// What `step` needs to know about the mesh besides the view.
pub(crate) struct Env {
    pub me: PeerName,
    pub now: Instant,
    /// IPAM records announced to us are still being fetched.
    pub fetching: bool,
}

impl Local {
    pub fn new(space: IpamSpace, settle: Duration, now: Instant) -> Local {
        Local {
            space,
            settle,
            started: now,
            synced: false,
            settled: BTreeSet::new(),
            pending: BTreeMap::new(),
            allocs: Allocs::default(),
            removals: Vec::new(),
            waiting: false,
            dirty: false,
            persist: false,
            published: false,
            next_wake: None,
            recheck: true,
            source: BlockSource::Shared,
            fixed: None,
        }
    }

    /// Nothing claimed, allocated or removed yet (a snapshot may still be restored). The
    /// blocks of a fixed CIDR are not claims.
    pub fn pristine(&self) -> bool {
        let fixed = self.fixed.as_ref();
        self.settled
            .iter()
            .all(|b| fixed.is_some_and(|f| f.blocks.contains(b)))
            && self.pending.is_empty()
            && self.allocs.is_empty()
            && self.removals.is_empty()
    }

    /// Peers refuse us as a duplicate of a live router with our name: the name's blocks
    /// are the other router's. Drops our pending claims and the settled blocks we hold no
    /// address in (those we do stay, so nothing handed out is given out again).
    pub fn give_up_as_duplicate(&mut self) {
        let (space, allocs) = (&self.space, &self.allocs);
        let before = (self.pending.len(), self.settled.len());
        self.pending.clear();
        let fixed = self.fixed.as_ref();
        self.settled.retain(|&b| {
            allocs.used_in(space, b) > 0 || fixed.is_some_and(|f| f.blocks.contains(&b))
        });
        if before != (self.pending.len(), self.settled.len()) {
            self.changed();
        }
    }

    fn changed(&mut self) {
        self.dirty = true;
        self.persist = true;
    }

    /// Changes where our blocks come from; returns whether anything changed. To a fixed
    /// CIDR: our settled blocks become exactly the CIDR's and pending claims are dropped
    /// (addresses we hold elsewhere stay allocated, published as lost until released).
    /// To the shared range: the blocks we hold stay ours and claiming resumes.
    pub fn set_source(&mut self, source: BlockSource) -> Result<bool, IpamError> {
        let source = match source {
            BlockSource::Fixed(net) => BlockSource::Fixed(net.trunc()),
            other => other,
        };
        if source == self.source {
            return Ok(false);
        }
        self.fixed = match &source {
            BlockSource::Fixed(net) => {
                let f = Fixed::new(&self.space, *net)?;
                self.settled = f.blocks.clone();
                self.pending.clear();
                self.waiting = false;
                Some(f)
            }
            _ => None,
        };
        self.source = source;
        self.recheck = true;
        self.changed();
        Ok(true)
    }

    /// Whether address `a` of a settled block may be handed out (a fixed CIDR admits only
    /// its own addresses).
    pub fn allows(&self, a: u32) -> bool {
        self.fixed.as_ref().is_none_or(|f| f.allows(&self.space, a))
    }

    /// (used, usable) addresses we can allocate from: the settled blocks, or the CIDR.
    pub fn usage(&self) -> (u64, u64) {
        let (used, usable) = self.allocs.usage(&self.space, &self.settled);
        match &self.fixed {
            Some(f) => (used, f.capacity(&self.space)),
            None => (used, usable),
        }
    }

    /// Drops claims we no longer win (a conflict lost, a removal of us). Allocations in a
    /// lost settled block stay, reported as lost. Needed only after `recheck` was set:
    /// who wins one of our blocks changes only with a record that claims it, or ours.
    /// The blocks of a fixed CIDR are kept whoever else claims them: the CIDR was given
    /// to us (status reports the contest).
    pub fn reconcile(&mut self, idx: &Index, me: PeerName) {
        self.recheck = false;
        let before = (self.pending.len(), self.settled.len());
        let fixed = self.fixed.as_ref();
        self.pending.retain(|&b, _| idx.owns(b, me));
        self.settled
            .retain(|&b| idx.owns(b, me) || fixed.is_some_and(|f| f.blocks.contains(&b)));
        if before != (self.pending.len(), self.settled.len()) {
            self.changed();
        }
    }

    /// Settles the pending claims that are due (we still win them: `reconcile` drops
    /// the ones we lose).
    pub fn settle_due(&mut self, env: &Env) {
        let (settle, now) = (self.settle, env.now);
        let due: Vec<u32> = self
            .pending
            .iter()
            .filter(|(_, &at)| now >= at + settle && (!env.fetching || now >= at + settle * 3))
            .map(|(&b, _)| b)
            .collect();
        for b in due {
            self.pending.remove(&b);
            self.settled.insert(b);
            self.waiting = false; // retried allocations take it from here
            self.changed();
        }
    }

    fn may_claim(&self, env: &Env) -> bool {
        (self.synced && !env.fetching) || env.now >= self.started + self.settle
    }

    /// Whether to claim a block now: we claim from the shared range, one is needed, none is
    /// being claimed, and we know the mesh's claims (or waited long enough to claim alone).
    pub fn wants_claim(&self, env: &Env) -> bool {
        self.source == BlockSource::Shared
            && self.pending.is_empty()
            && self.needs_block()
            && self.may_claim(env)
    }

    /// Claims the free block we prefer most, if any.
    pub fn claim(&mut self, idx: &Index, env: &Env) {
        if let Some(b) = idx.preferred_free(&self.space, env.me) {
            self.pending.insert(b, env.now);
            self.changed();
        }
    }

    /// When timed work is due next: a claim settling, or the end of the startup wait.
    pub fn plan_wake(&mut self, env: &Env) {
        let (settle, now) = (self.settle, env.now);
        let mut wake = self
            .pending
            .values()
            .map(|&at| {
                if now < at + settle {
                    at + settle
                } else {
                    at + settle * 3
                }
            })
            .min();
        if self.source == BlockSource::Shared
            && self.pending.is_empty()
            && self.needs_block()
            && !self.may_claim(env)
        {
            let t = self.started + settle;
            wake = Some(wake.map_or(t, |w| w.min(t)));
        }
        self.next_wake = wake.filter(|&w| w > now);
    }

    /// An allocation is waiting, or our settled blocks are more than 3/4 used.
    fn needs_block(&self) -> bool {
        if self.waiting {
            return true;
        }
        if self.settled.is_empty() {
            return false;
        }
        let (used, usable) = self.allocs.usage(&self.space, &self.settled);
        used * SPARE_DEN > usable * SPARE_NUM
    }

    /// Addresses we hold outside our settled blocks.
    pub fn lost(&self) -> Vec<u32> {
        self.allocs.outside(&self.space, &self.settled)
    }

    /// Our record's contents under `summary`.
    pub fn record(&self, summary: Summary) -> IpamRecord {
        let mut removed = self.removals.clone();
        removed.sort_by_key(|r| r.peer);
        IpamRecord {
            summary,
            space: self.space,
            blocks: self.settled.iter().copied().collect(),
            pending: self.pending.keys().copied().collect(),
            lost: self.lost().into_iter().map(Ipv4Addr::from).collect(),
            removed,
        }
    }

    /// Records a removal (replacing an older one of the same peer), bounded.
    pub fn add_removal(&mut self, r: Removal) {
        if let Some(i) = self.removals.iter().position(|x| x.peer == r.peer) {
            if self.removals[i].key() >= r.key() {
                return;
            }
            self.removals.remove(i);
        }
        self.removals.push(r);
        if self.removals.len() > MAX_OWN_REMOVALS {
            self.removals.remove(0);
        }
        self.changed();
    }
}
