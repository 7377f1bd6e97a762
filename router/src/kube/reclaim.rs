//! Reclaiming the IP space of routers whose Node is gone (pure: views, owners and `now` in,
//! peers to remove out; the daemon runs a non-forced `rmpeer` for each).
//!
//! The rule. The space of IPAM owner `P` is reclaimed only when all of these hold:
//! 1. **Evidence from complete lists.** Either (a) a Node `N` with
//!    `peer_name_for_node(N) == P` was in one view and is missing from a later view that
//!    came from the API (a complete list; the earlier one may be the peer cache written
//!    from the previous run's last complete list: Nodes deleted while this router was
//!    down), or (b) `P` is an *orphan*: it is not the peer of any Node of the current API
//!    view, and not the router of one either (its topology nickname is no Node's name:
//!    a router started with an explicit `--name` on a live Node keeps its space), for
//!    [`ORPHAN_GRACE`] without interruption. Orphans are looked for only when this router
//!    has no `--peer` targets: in a mesh that mixes plain hosts with Nodes, a host's space is
//!    never reclaimed automatically.
//! 2. **Both views contain this router's own Node.** A list without it is not this
//!    cluster's (a kubeconfig pointing elsewhere) or not trustworthy.
//! 3. **`P` is unreachable** (no connection, no route) right now; `rmpeer` refuses
//!    reachable peers anyway. A deleted Node whose router still runs keeps its space until
//!    the router stops; a Node that shows up again (re-created) cancels the reclaim.
//! 4. **Staggered.** Every surviving router ranks itself for `P` by a hash; the k-th waits
//!    `k` × [`STAGGER`] (at most [`MAX_STAGGER`]) after `P` became unreachable, so one
//!    router normally does it and the others find the space already reclaimed.
//!
//! Never from the cache alone, never from a partial list (the watch publishes only complete
//! lists). During an API outage no new evidence arrives, and orphans are not looked for
//! (a Node added meanwhile is unknown here): their grace period starts over once the Node
//! watch is connected again.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use weft_gossip::PeerName;

use super::nodes::{Origin, PeerView};
use super::peers::{peer_name_for_node, PeerSet};

/// Delay between survivors' turns to reclaim one peer's space.
pub const STAGGER: Duration = Duration::from_secs(20);
/// The longest any survivor waits for its turn.
pub const MAX_STAGGER: Duration = Duration::from_secs(300);
/// How long an owner must stay an orphan (unreachable, and no Node's) before its space is
/// reclaimed.
pub const ORPHAN_GRACE: Duration = Duration::from_secs(600);
/// How often orphans are looked for.
pub const ORPHAN_CHECK: Duration = Duration::from_secs(10);
/// How soon a reclaim that failed is tried again.
pub const RETRY: Duration = Duration::from_secs(5);
/// How long a deleted Node's router that has no IPAM record here is waited for (its record
/// may arrive through gossip after this router starts).
pub const DELETED_TTL: Duration = Duration::from_secs(600);
/// Reclaims remembered for status.
const HISTORY: usize = 16;

/// An IPAM owner as the mesh sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    pub name: PeerName,
    /// From the topology view, while the peer is in it.
    pub nickname: Option<String>,
    pub reachable: bool,
}

/// Why a peer's space is reclaimed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Why {
    /// Its Node (named) was deleted.
    Deleted(String),
    /// No Node's router, unreachable for [`ORPHAN_GRACE`].
    Orphan,
}

impl std::fmt::Display for Why {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Why::Deleted(n) => write!(f, "Node {n} deleted"),
            Why::Orphan => f.write_str("no Node's router"),
        }
    }
}

/// The outcome of one removal, as the daemon classifies `rmpeer`'s answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Reclaimed; the text says what was freed or taken over.
    Done(String),
    /// Nothing to reclaim (no record, already removed).
    Nothing,
    /// Not now (reachable after all, IPAM busy): try again later.
    Retry(String),
}

#[derive(Clone, Debug)]
struct Entry {
    why: Why,
    /// When it became a candidate (deletion seen, or first found orphaned).
    since: Instant,
    /// When it was last seen reachable-free: `None` while reachable.
    unreachable_since: Option<Instant>,
    /// Not before (after a try).
    next_try: Instant,
    last_error: Option<String>,
    /// Its IPAM record has been among the owners here (it can only vanish by a removal).
    seen: bool,
}

/// The reclaim state of one router.
pub struct Reclaimer {
    me: PeerName,
    sweep_orphans: bool,
    /// The Node watch is connected (the last view is current).
    connected: bool,
    /// The last view from the API, or the cache before the first API view.
    last: Option<PeerView>,
    candidates: BTreeMap<PeerName, Entry>,
    next_orphan_check: Option<Instant>,
    history: VecDeque<String>,
}

/// The survivors' order for reclaiming `peer`: a stable hash of both names.
fn rank(survivor: PeerName, peer: PeerName) -> u64 {
    fn mix(mut x: u64) -> u64 {
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        x ^ (x >> 31)
    }
    mix(survivor.as_u64() ^ mix(peer.as_u64() ^ 0x7265_636c_6169_6d00))
}

impl Reclaimer {
    /// `sweep_orphans`: look for orphans (off when the router has `--peer` targets).
    pub fn new(me: PeerName, sweep_orphans: bool) -> Reclaimer {
        Reclaimer {
            me,
            sweep_orphans,
            connected: true,
            last: None,
            candidates: BTreeMap::new(),
            next_orphan_check: None,
            history: VecDeque::new(),
        }
    }

    fn api_set(&self) -> Option<&PeerSet> {
        self.last
            .as_ref()
            .filter(|v| v.origin == Origin::Api && v.set.this_node.is_some())
            .map(|v| &*v.set)
    }

    /// A new peer view.
    pub fn on_view(&mut self, v: &PeerView, now: Instant) {
        match v.origin {
            Origin::Nothing => return,
            Origin::Cache => {
                if self.last.is_none() {
                    self.last = Some(v.clone());
                }
                return;
            }
            Origin::Api => {}
        }
        if let Some(prev) = &self.last {
            if prev.set.this_node.is_some() && v.set.this_node.is_some() {
                for n in v.set.diff(&prev.set).removed {
                    let p = peer_name_for_node(&n);
                    if p != self.me {
                        self.candidates.insert(
                            p,
                            Entry {
                                why: Why::Deleted(n),
                                since: now,
                                unreachable_since: None,
                                next_try: now,
                                last_error: None,
                                seen: false,
                            },
                        );
                    }
                }
            }
        }
        // a Node that is back (re-created) cancels its reclaim
        let names = v.set.peer_names();
        self.candidates.retain(|p, _| !names.contains(p));
        if self.next_orphan_check.is_none() {
            self.next_orphan_check = Some(now);
        }
        self.last = Some(v.clone());
    }

    /// Whether the Node watch is connected. While it is not, orphans are not looked for and
    /// orphan candidates are forgotten (their grace period starts over).
    pub fn set_connected(&mut self, connected: bool) {
        self.connected = connected;
        if !connected {
            self.candidates.retain(|_, e| e.why != Why::Orphan);
        }
    }

    /// Whether [`due`](Self::due) has work now (so the daemon gathers owners only then).
    pub fn wants_owners(&self, now: Instant) -> bool {
        !self.candidates.is_empty() || self.orphan_check_due(now)
    }

    fn orphan_check_due(&self, now: Instant) -> bool {
        self.sweep_orphans
            && self.connected
            && self.api_set().is_some()
            && self.next_orphan_check.is_some_and(|t| now >= t)
    }

    /// This router's turn for `peer` among the Nodes of the last view: `k` × [`STAGGER`].
    fn turn(&self, peer: PeerName) -> Duration {
        let Some(set) = self.api_set() else {
            return MAX_STAGGER;
        };
        let mine = rank(self.me, peer);
        let ahead = set
            .peer_names()
            .into_iter()
            .filter(|s| *s != peer && *s != self.me && rank(*s, peer) < mine)
            .count();
        STAGGER.saturating_mul(ahead as u32).min(MAX_STAGGER)
    }

    /// The peers whose space to reclaim now. `owners`: every peer holding IPAM space (blocks
    /// or claims) in our range, ourselves excluded or not.
    pub fn due(&mut self, owners: &[Owner], now: Instant) -> Vec<(PeerName, Why)> {
        let Some(set) = self.api_set().cloned() else {
            return Vec::new();
        };
        let by_name: BTreeMap<PeerName, &Owner> = owners.iter().map(|o| (o.name, o)).collect();
        if self.orphan_check_due(now) {
            self.next_orphan_check = Some(now + ORPHAN_CHECK);
            let names = set.peer_names();
            let nodes: BTreeSet<&str> = set.node_names();
            for o in owners {
                let orphan = o.name != self.me
                    && !o.reachable
                    && !names.contains(&o.name)
                    && o.nickname.as_deref().is_none_or(|n| !nodes.contains(n));
                match self.candidates.get(&o.name) {
                    Some(e) if e.why == Why::Orphan && !orphan => {
                        self.candidates.remove(&o.name);
                    }
                    None if orphan => {
                        self.candidates.insert(
                            o.name,
                            Entry {
                                why: Why::Orphan,
                                since: now,
                                unreachable_since: Some(now),
                                next_try: now,
                                last_error: None,
                                seen: true,
                            },
                        );
                    }
                    _ => {}
                }
            }
            // orphans whose record went away (reclaimed elsewhere)
            self.candidates
                .retain(|p, e| e.why != Why::Orphan || by_name.contains_key(p));
        }
        let mut out = Vec::new();
        let peers: Vec<PeerName> = self.candidates.keys().copied().collect();
        for p in peers {
            let turn = self.turn(p);
            let e = self.candidates.get_mut(&p).expect("listed");
            let Some(o) = by_name.get(&p) else {
                if e.seen {
                    // its record went away: another survivor reclaimed it first
                    let why = e.why.clone();
                    self.candidates.remove(&p);
                    self.remember(format!("{p} ({why}): reclaimed by another router"));
                } else if matches!(e.why, Why::Deleted(_)) && now >= e.since + DELETED_TTL {
                    self.candidates.remove(&p);
                }
                continue;
            };
            e.seen = true;
            if o.reachable {
                if e.why == Why::Orphan {
                    // an orphan must stay unreachable without interruption
                    self.candidates.remove(&p);
                } else {
                    e.unreachable_since = None;
                }
                continue;
            }
            let from = *e.unreachable_since.get_or_insert(now);
            let wait = match e.why {
                Why::Orphan => ORPHAN_GRACE + turn,
                Why::Deleted(_) => turn,
            };
            let start = match e.why {
                Why::Orphan => e.since,
                Why::Deleted(_) => from,
            };
            if now >= start + wait && now >= e.next_try {
                e.next_try = now + RETRY;
                out.push((p, e.why.clone()));
            }
        }
        out
    }

    /// What the removal of `peer` did.
    pub fn outcome(&mut self, peer: PeerName, outcome: Outcome) {
        match outcome {
            Outcome::Done(what) => {
                let why = self.candidates.remove(&peer).map(|e| e.why);
                let why = why.map(|w| format!(" ({w})")).unwrap_or_default();
                self.remember(format!("{peer}{why}: {what}"));
            }
            Outcome::Nothing => {
                self.candidates.remove(&peer);
            }
            Outcome::Retry(e) => {
                if let Some(c) = self.candidates.get_mut(&peer) {
                    c.last_error = Some(e);
                }
            }
        }
    }

    fn remember(&mut self, line: String) {
        self.history.push_back(line);
        if self.history.len() > HISTORY {
            self.history.pop_front();
        }
    }

    /// Reclaims waiting for their conditions, one line each, for status.
    pub fn pending(&self) -> Vec<String> {
        self.candidates
            .iter()
            .map(|(p, e)| {
                let state = if !e.seen {
                    "waiting for its IPAM record to reach this router"
                } else if e.unreachable_since.is_none() {
                    "waiting until it is unreachable"
                } else {
                    "waiting for its turn"
                };
                let err = e
                    .last_error
                    .as_deref()
                    .map(|x| format!("; last try: {x}"))
                    .unwrap_or_default();
                format!("{p} ({}): {state}{err}", e.why)
            })
            .collect()
    }

    /// The most recent reclaims, oldest first.
    pub fn history(&self) -> Vec<String> {
        self.history.iter().cloned().collect()
    }
}

#[cfg(test)]
#[path = "reclaim_tests.rs"]
mod tests;
