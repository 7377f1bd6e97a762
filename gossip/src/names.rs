//! Two live routers with one name (cloned machines share `/etc/machine-id`, so they derive the
//! same name): told apart from a restart, refused, and reported.
//!
//! A restarted router comes back under its old name with a new uid, and its new connection
//! replaces the old one at once (the old process is gone). A duplicate looks the same the
//! first time. What gives it away is that the replaced uid comes back: a router never returns
//! to an earlier incarnation, so a connection from a uid that a newer one replaced means two
//! routers are alive with that name. From then on (until [`FORGET_CONFLICT`] passes without
//! another attempt) the name is **in conflict** here: of the two uids the one this router saw
//! first keeps its connection, and every connection of the other made while that one is
//! connected is refused with a reason that names the problem. A connection from a router with our own name and another uid is refused
//! the same way on both ends. Status lists every conflict.
//!
//! Bounded: a few uids remembered per name, and only names of peers that connect.

use crate::peer::{PeerName, PeerUid};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// How long a replaced uid is remembered (a duplicate whose connection was replaced comes
/// back well within it: its next retry).
pub const REMEMBER_REPLACED: Duration = Duration::from_secs(600);
/// A conflict ends this long after the last refused attempt (well above the longest retry
/// backoff, so a clone that keeps retrying stays reported).
pub const FORGET_CONFLICT: Duration = Duration::from_secs(300);
/// Uids remembered per name.
const UIDS_PER_NAME: usize = 4;

/// Two routers using one peer name, as seen here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NameConflict {
    pub name: PeerName,
    /// The uid that keeps the name here (seen first).
    pub kept: PeerUid,
    /// The uid refused, and the address its last attempt came from.
    pub refused: PeerUid,
    pub refused_addr: SocketAddr,
    pub since: Instant,
    pub last: Instant,
    /// How many connections of `refused` were turned away.
    pub refusals: u64,
}

/// Peers refuse this router because another router with its name is connected to them:
/// this router is the duplicate (it hands out no addresses meanwhile, see `crate::ipam`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefusedHere {
    pub since: Instant,
    pub last: Instant,
    pub refusals: u64,
    /// The peer that refused us last, when known.
    pub by: Option<SocketAddr>,
}

/// What to do with a connection from a new incarnation of a connected peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// A restart (or the conflict's winner coming back): the new connection replaces the old.
    Replace,
    /// The new one is the conflict's loser: refuse it, keep the old.
    Refuse,
}

#[derive(Default)]
pub(crate) struct Names {
    /// When each uid of a name was first seen here.
    first_seen: BTreeMap<PeerName, Vec<(PeerUid, Instant)>>,
    /// Uids replaced by a newer incarnation, and when.
    replaced: BTreeMap<PeerName, Vec<(PeerUid, Instant)>>,
    conflicts: BTreeMap<PeerName, NameConflict>,
    refused: Option<RefusedHere>,
}

fn remember(list: &mut Vec<(PeerUid, Instant)>, uid: PeerUid, at: Instant, keep_first: bool) {
    match list.iter_mut().find(|(u, _)| *u == uid) {
        Some(e) if !keep_first => e.1 = at,
        Some(_) => {}
        None => {
            if list.len() >= UIDS_PER_NAME {
                // forget the oldest
                if let Some(i) = list
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, e)| e.1)
                    .map(|(i, _)| i)
                {
                    list.remove(i);
                }
            }
            list.push((uid, at));
        }
    }
}

impl Names {
    /// A connection of `name`/`uid` was established.
    pub(crate) fn seen(&mut self, name: PeerName, uid: PeerUid, now: Instant) {
        remember(self.first_seen.entry(name).or_default(), uid, now, true);
    }

    fn first_seen(&self, name: PeerName, uid: PeerUid) -> Option<Instant> {
        self.first_seen
            .get(&name)?
            .iter()
            .find(|(u, _)| *u == uid)
            .map(|e| e.1)
    }

    fn was_replaced(&self, name: PeerName, uid: PeerUid, now: Instant) -> bool {
        self.replaced.get(&name).is_some_and(|l| {
            l.iter()
                .any(|(u, t)| *u == uid && now.saturating_duration_since(*t) < REMEMBER_REPLACED)
        })
    }

    /// `name` is connected with `old`; a connection of `new` (a different uid) from `addr`
    /// arrived. Call [`Names::seen`] for `new` first.
    pub(crate) fn new_incarnation(
        &mut self,
        name: PeerName,
        old: PeerUid,
        new: PeerUid,
        addr: SocketAddr,
        old_addr: SocketAddr,
        now: Instant,
    ) -> Verdict {
        self.expire(now);
        let conflict = self.conflicts.contains_key(&name) || self.was_replaced(name, new, now);
        if !conflict {
            remember(self.replaced.entry(name).or_default(), old, now, false);
            return Verdict::Replace;
        }
        // The one seen first keeps the name.
        let old_first = self.first_seen(name, old).unwrap_or(now);
        let new_first = self.first_seen(name, new).unwrap_or(now);
        let (kept, refused, refused_addr, verdict) = if new_first < old_first {
            remember(self.replaced.entry(name).or_default(), old, now, false);
            (new, old, old_addr, Verdict::Replace)
        } else {
            (old, new, addr, Verdict::Refuse)
        };
        self.note(name, kept, refused, refused_addr, now);
        verdict
    }

    /// A router with our own name and another uid connected (either way).
    pub(crate) fn ours(
        &mut self,
        me: PeerName,
        my_uid: PeerUid,
        other: PeerUid,
        addr: SocketAddr,
        now: Instant,
    ) {
        self.expire(now);
        self.note(me, my_uid, other, addr, now);
    }

    fn note(
        &mut self,
        name: PeerName,
        kept: PeerUid,
        refused: PeerUid,
        addr: SocketAddr,
        now: Instant,
    ) {
        let c = self.conflicts.entry(name).or_insert(NameConflict {
            name,
            kept,
            refused,
            refused_addr: addr,
            since: now,
            last: now,
            refusals: 0,
        });
        c.kept = kept;
        c.refused = refused;
        c.refused_addr = addr;
        c.last = now;
        c.refusals += 1;
    }

    /// A peer refused us as a duplicate of another router with our name.
    pub(crate) fn refused_here(&mut self, by: Option<SocketAddr>, now: Instant) {
        let r = self.refused.get_or_insert(RefusedHere {
            since: now,
            last: now,
            refusals: 0,
            by,
        });
        r.last = now;
        r.refusals += 1;
        if by.is_some() {
            r.by = by;
        }
    }

    /// Whether peers refuse us as a duplicate (within [`FORGET_CONFLICT`] of the last time).
    pub(crate) fn refused(&self, now: Instant) -> Option<&RefusedHere> {
        self.refused
            .as_ref()
            .filter(|r| now.saturating_duration_since(r.last) < FORGET_CONFLICT)
    }

    fn expire(&mut self, now: Instant) {
        self.conflicts
            .retain(|_, c| now.saturating_duration_since(c.last) < FORGET_CONFLICT);
        for l in self.replaced.values_mut() {
            l.retain(|(_, t)| now.saturating_duration_since(*t) < REMEMBER_REPLACED);
        }
        self.replaced.retain(|_, l| !l.is_empty());
    }

    /// Names of peers forgotten by the mesh: their history goes too (unless in conflict).
    pub(crate) fn forget(&mut self, name: &PeerName) {
        if !self.conflicts.contains_key(name) {
            self.first_seen.remove(name);
        }
    }

    pub(crate) fn conflicts(&self, now: Instant) -> Vec<NameConflict> {
        self.conflicts
            .values()
            .filter(|c| now.saturating_duration_since(c.last) < FORGET_CONFLICT)
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(p: u16) -> SocketAddr {
        ([10, 0, 0, 1], p).into()
    }

    #[test]
    fn a_restart_replaces_and_a_returning_uid_is_a_duplicate() {
        let t0 = Instant::now();
        let n = PeerName::new(7).unwrap();
        let (a, b, c) = (PeerUid(1), PeerUid(2), PeerUid(3));
        let mut names = Names::default();
        names.seen(n, a, t0);
        // b replaces a: a restart, as far as anyone can tell.
        names.seen(n, b, t0 + Duration::from_secs(1));
        assert_eq!(
            names.new_incarnation(n, a, b, addr(2), addr(1), t0 + Duration::from_secs(1)),
            Verdict::Replace
        );
        assert!(names.conflicts(t0).is_empty());
        // b restarts too (c): still a restart.
        names.seen(n, c, t0 + Duration::from_secs(2));
        assert_eq!(
            names.new_incarnation(n, b, c, addr(3), addr(2), t0 + Duration::from_secs(2)),
            Verdict::Replace
        );
        // a comes back: two routers are alive. a was seen first: it wins, c is refused.
        let t = t0 + Duration::from_secs(3);
        assert_eq!(
            names.new_incarnation(n, c, a, addr(1), addr(3), t),
            Verdict::Replace
        );
        let cs = names.conflicts(t);
        assert_eq!(cs.len(), 1);
        assert_eq!(
            (cs[0].kept, cs[0].refused, cs[0].refused_addr),
            (a, c, addr(3))
        );
        // c tries again while a is connected: refused, and counted.
        let t5 = t + Duration::from_secs(5);
        assert_eq!(
            names.new_incarnation(n, a, c, addr(3), addr(1), t5),
            Verdict::Refuse
        );
        assert_eq!(names.conflicts(t5)[0].refusals, 2);
        // FORGET_CONFLICT after the last attempt the conflict is over.
        let later = t5 + FORGET_CONFLICT + Duration::from_secs(1);
        assert!(names.conflicts(later).is_empty());
    }

    #[test]
    fn the_newer_of_two_is_refused_when_it_returns() {
        let t0 = Instant::now();
        let n = PeerName::new(9).unwrap();
        let (a, b) = (PeerUid(10), PeerUid(20));
        let mut names = Names::default();
        names.seen(n, a, t0);
        names.seen(n, b, t0 + Duration::from_secs(1));
        assert_eq!(
            names.new_incarnation(n, a, b, addr(2), addr(1), t0 + Duration::from_secs(1)),
            Verdict::Replace
        );
        // a came back and won; b returns: refused.
        let t = t0 + Duration::from_secs(2);
        assert_eq!(
            names.new_incarnation(n, b, a, addr(1), addr(2), t),
            Verdict::Replace
        );
        assert_eq!(
            names.new_incarnation(n, a, b, addr(2), addr(1), t + Duration::from_secs(1)),
            Verdict::Refuse
        );
    }

    #[test]
    fn memory_is_bounded() {
        let t0 = Instant::now();
        let n = PeerName::new(1).unwrap();
        let mut names = Names::default();
        for i in 0..100 {
            names.seen(n, PeerUid(i), t0 + Duration::from_millis(i));
        }
        assert!(names.first_seen[&n].len() <= UIDS_PER_NAME);
    }
}
