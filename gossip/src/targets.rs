//! Connection targets: the addresses we keep dialling, with backoff and jitter.
//!
//! A target is configured (`set_targets`), discovered (from other peers' connection
//! records), or both. Configured targets are retried forever; backoff grows as
//! `backoff_initial * 2^(attempts-1)` up to `backoff_max`, times a jitter factor drawn
//! uniformly from [0.5, 1.5). A success resets the attempts.

use crate::mesh::{ConnId, TargetState};
use crate::peer::PeerName;
use rand::seq::SliceRandom;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// A connection that stayed up this long counts as a success for backoff.
pub(crate) const STABLE: Duration = Duration::from_secs(10);

/// Retry delay after `attempts` consecutive failures (`attempts >= 1`), before jitter.
pub(crate) fn backoff_base(attempts: u32, initial: Duration, max: Duration) -> Duration {
    let exp = attempts.saturating_sub(1).min(31);
    initial.saturating_mul(1u32 << exp).min(max)
}

/// Jitter factor in [0.5, 1.5).
pub(crate) fn jitter(rng: &mut ChaCha8Rng, d: Duration) -> Duration {
    d.mul_f64(rng.random_range(0.5..1.5))
}

#[derive(Clone, Debug)]
pub(crate) struct Target {
    pub configured: bool,
    pub discovered: bool,
    /// The peer behind the address, once known (connection or discovery).
    pub peer: Option<PeerName>,
    pub nickname: Option<String>,
    pub state: TargetState,
    /// Consecutive failures, as shown in status (0 while established).
    pub attempts: u32,
    /// Failures counted for backoff: reset only once a connection has stayed up for
    /// [`STABLE`], so that a peer accepting and then closing at once backs off too.
    strikes: u32,
    /// When the current connection from this target was established.
    since: Option<Instant>,
    pub next_attempt: Instant,
    /// Last failure, or why the target is idle.
    pub reason: Option<String>,
    /// The established outbound connection made from this target.
    pub conn: Option<ConnId>,
}

impl Target {
    fn new(now: Instant) -> Self {
        Target {
            configured: false,
            discovered: false,
            peer: None,
            nickname: None,
            state: TargetState::Idle,
            attempts: 0,
            strikes: 0,
            since: None,
            next_attempt: now,
            reason: None,
            conn: None,
        }
    }

    fn busy(&self) -> bool {
        matches!(
            self.state,
            TargetState::Connecting | TargetState::Established
        )
    }
}

/// Dial budget for one pass.
pub(crate) struct Budget {
    /// Dials allowed for any target.
    pub total: usize,
    /// Dials allowed for discovered-only targets (at most `total`).
    pub discovered: usize,
}

#[derive(Debug)]
pub(crate) struct Targets {
    map: BTreeMap<SocketAddr, Target>,
    /// Addresses with a `Connect` in flight.
    connecting: BTreeSet<SocketAddr>,
    /// Something changed: the next pass must look at every target.
    pub dirty: bool,
    /// Earliest `next_attempt` in the future of a target waiting to retry.
    next_due: Option<Instant>,
}

impl Targets {
    pub fn new() -> Self {
        Targets {
            map: BTreeMap::new(),
            connecting: BTreeSet::new(),
            dirty: true,
            next_due: None,
        }
    }

    pub fn connecting(&self) -> usize {
        self.connecting.len()
    }

    pub fn get(&self, addr: &SocketAddr) -> Option<&Target> {
        self.map.get(addr)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&SocketAddr, &Target)> + '_ {
        self.map.iter()
    }

    /// When the next pass is needed without any other change.
    pub fn next_due(&self) -> Option<Instant> {
        self.next_due
    }

    pub fn needs_pass(&self, now: Instant) -> bool {
        self.dirty || self.next_due.is_some_and(|t| t <= now)
    }

    /// Replaces the configured set; new addresses are due at once.
    pub fn set_configured(&mut self, addrs: &[SocketAddr], now: Instant) {
        let want: BTreeSet<SocketAddr> = addrs.iter().copied().collect();
        for (addr, t) in self.map.iter_mut() {
            t.configured = want.contains(addr);
        }
        for addr in &want {
            self.map
                .entry(*addr)
                .or_insert_with(|| Target::new(now))
                .configured = true;
        }
        self.map
            .retain(|_, t| t.configured || t.discovered || t.busy());
        self.dirty = true;
    }

    /// Adds (or marks) a discovered address of `peer`. Returns whether it is new.
    pub fn add_discovered(&mut self, addr: SocketAddr, peer: PeerName, now: Instant) -> bool {
        let t = self.map.entry(addr).or_insert_with(|| Target::new(now));
        let new = !t.discovered && !t.configured;
        t.discovered = true;
        if t.peer.is_none() {
            t.peer = Some(peer);
        }
        self.dirty |= new;
        new
    }

    /// Drops discovered-only targets of peers that no longer exist.
    pub fn forget_peer(&mut self, peer: PeerName) {
        let before = self.map.len();
        self.map
            .retain(|_, t| t.configured || t.busy() || t.peer != Some(peer));
        for t in self.map.values_mut() {
            if t.peer == Some(peer) {
                t.discovered = false;
            }
        }
        self.map
            .retain(|_, t| t.configured || t.discovered || t.busy());
        if self.map.len() != before {
            self.dirty = true;
        }
    }

    /// Peers some target already points at.
    pub fn peers(&self) -> BTreeSet<PeerName> {
        self.map.values().filter_map(|t| t.peer).collect()
    }

    /// A `Connect` to `addr` succeeded with `peer`.
    pub fn on_established(
        &mut self,
        addr: SocketAddr,
        conn: ConnId,
        peer: PeerName,
        nick: &str,
        now: Instant,
    ) {
        self.connecting.remove(&addr);
        if let Some(t) = self.map.get_mut(&addr) {
            t.state = TargetState::Established;
            t.attempts = 0;
            t.since = Some(now);
            t.reason = None;
            t.conn = Some(conn);
            t.peer = Some(peer);
            t.nickname = Some(nick.to_string());
        }
        self.dirty = true;
    }

    /// The target at `addr` turned out to be ourselves.
    pub fn mark_self(&mut self, addr: SocketAddr) {
        self.connecting.remove(&addr);
        if let Some(t) = self.map.get_mut(&addr) {
            t.state = TargetState::IsSelf;
            t.conn = None;
            t.reason = Some("address of this node".into());
        }
        self.dirty = true;
    }

    /// A dial or a connection from `addr` failed: back off.
    pub fn on_failed(
        &mut self,
        addr: SocketAddr,
        reason: &str,
        now: Instant,
        rng: &mut ChaCha8Rng,
        initial: Duration,
        max: Duration,
    ) {
        self.connecting.remove(&addr);
        let mut drop_it = false;
        if let Some(t) = self.map.get_mut(&addr) {
            if t.state == TargetState::IsSelf {
                return;
            }
            if t.since
                .take()
                .is_some_and(|s| now.saturating_duration_since(s) >= STABLE)
            {
                t.strikes = 0;
            }
            t.strikes = t.strikes.saturating_add(1);
            t.attempts = t.strikes;
            t.state = TargetState::Failed;
            t.conn = None;
            t.reason = Some(reason.to_string());
            t.next_attempt = now + jitter(rng, backoff_base(t.strikes, initial, max));
            drop_it = !t.configured && !t.discovered;
        }
        if drop_it {
            self.map.remove(&addr);
        }
        self.dirty = true;
    }

    /// The connection made from target `addr` ended without an error: retry soon.
    pub fn on_closed_clean(
        &mut self,
        addr: SocketAddr,
        now: Instant,
        rng: &mut ChaCha8Rng,
        initial: Duration,
    ) {
        if let Some(t) = self.map.get_mut(&addr) {
            if t.since
                .take()
                .is_some_and(|s| now.saturating_duration_since(s) >= STABLE)
            {
                t.strikes = 0;
            }
            if t.state != TargetState::IsSelf {
                t.state = TargetState::Idle;
                t.conn = None;
                t.reason = Some("connection closed".into());
                t.next_attempt = now + jitter(rng, initial);
            }
            if !t.configured && !t.discovered {
                self.map.remove(&addr);
            }
        }
        self.dirty = true;
    }

    /// Another connection to `peer` ended: its idle targets wait a little before dialling,
    /// so that both sides do not redial each other at the same instant.
    pub fn delay_peer(
        &mut self,
        peer: PeerName,
        now: Instant,
        rng: &mut ChaCha8Rng,
        initial: Duration,
    ) {
        for t in self.map.values_mut() {
            if t.peer == Some(peer) && !t.busy() && t.state != TargetState::IsSelf {
                t.next_attempt = t.next_attempt.max(now + jitter(rng, initial));
            }
        }
        self.dirty = true;
    }

    /// Picks the targets to dial now and marks them connecting. `blocked(p, configured)`
    /// says why a target of known peer `p` is not to be dialled now (already connected,
    /// or at its connection limit), if it is not.
    pub fn pass(
        &mut self,
        now: Instant,
        mut budget: Budget,
        rng: &mut ChaCha8Rng,
        blocked: impl Fn(PeerName, bool) -> Option<&'static str>,
    ) -> Vec<SocketAddr> {
        self.dirty = false;
        self.next_due = None;
        let connecting_peers: BTreeSet<PeerName> = self
            .connecting
            .iter()
            .filter_map(|a| self.map.get(a).and_then(|t| t.peer))
            .collect();
        let mut configured = Vec::new();
        let mut discovered = Vec::new();
        for (addr, t) in self.map.iter_mut() {
            if t.busy() || t.state == TargetState::IsSelf {
                continue;
            }
            if let Some(p) = t.peer {
                let why = if connecting_peers.contains(&p) {
                    Some("peer being dialled at another address")
                } else {
                    blocked(p, t.configured)
                };
                if let Some(why) = why {
                    if t.state != TargetState::Failed || t.next_attempt <= now {
                        t.state = TargetState::Idle;
                        t.reason = Some(why.into());
                    }
                    continue;
                }
            }
            if t.next_attempt > now {
                self.next_due = Some(
                    self.next_due
                        .map_or(t.next_attempt, |d| d.min(t.next_attempt)),
                );
                continue;
            }
            if t.configured {
                configured.push(*addr);
            } else {
                discovered.push(*addr);
            }
        }
        configured.shuffle(rng);
        discovered.shuffle(rng);
        let mut out = Vec::new();
        let mut peers_dialled = BTreeSet::new();
        for (addr, is_configured) in configured
            .into_iter()
            .map(|a| (a, true))
            .chain(discovered.into_iter().map(|a| (a, false)))
        {
            let t = self.map.get_mut(&addr).expect("listed above");
            let allowed = if is_configured {
                budget.total
            } else {
                budget.discovered.min(budget.total)
            };
            let dup = t.peer.is_some_and(|p| peers_dialled.contains(&p));
            if allowed == 0 || dup {
                if t.state != TargetState::Failed {
                    t.state = TargetState::Idle;
                }
                t.reason = Some(
                    if dup {
                        "peer being dialled at another address"
                    } else {
                        "connection limit reached"
                    }
                    .into(),
                );
                continue;
            }
            budget.total -= 1;
            budget.discovered = budget.discovered.saturating_sub(1);
            t.state = TargetState::Connecting;
            if let Some(p) = t.peer {
                peers_dialled.insert(p);
            }
            self.connecting.insert(addr);
            out.push(addr);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn addr(i: u8) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, i], 6783))
    }

    fn budget(n: usize) -> Budget {
        Budget {
            total: n,
            discovered: n,
        }
    }

    #[test]
    fn backoff_grows_and_caps() {
        let i = Duration::from_millis(500);
        let m = Duration::from_secs(60);
        assert_eq!(backoff_base(1, i, m), i);
        assert_eq!(backoff_base(2, i, m), Duration::from_secs(1));
        assert_eq!(backoff_base(5, i, m), Duration::from_secs(8));
        assert_eq!(backoff_base(8, i, m), Duration::from_secs(60));
        assert_eq!(backoff_base(1000, i, m), Duration::from_secs(60));
    }

    #[test]
    fn jitter_stays_in_range() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let d = Duration::from_secs(10);
        let (mut lo, mut hi) = (d * 2, Duration::ZERO);
        for _ in 0..10_000 {
            let j = jitter(&mut rng, d);
            assert!(j >= d / 2 && j < d * 3 / 2, "{j:?}");
            lo = lo.min(j);
            hi = hi.max(j);
        }
        assert!(lo < Duration::from_millis(5_100) && hi > Duration::from_millis(14_900));
    }

    #[test]
    fn failures_back_off_and_success_resets() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let t0 = Instant::now();
        let (i, m) = (Duration::from_millis(500), Duration::from_secs(60));
        let mut ts = Targets::new();
        ts.set_configured(&[addr(1)], t0);
        assert_eq!(
            ts.pass(t0, budget(10), &mut rng, |_, _| None),
            vec![addr(1)]
        );
        assert_eq!(ts.connecting(), 1);
        let mut now = t0;
        let mut last = Duration::ZERO;
        for n in 1..=10u32 {
            ts.on_failed(addr(1), "no route", now, &mut rng, i, m);
            let t = ts.get(&addr(1)).unwrap();
            assert_eq!(t.attempts, n);
            assert_eq!(t.state, TargetState::Failed);
            let wait = t.next_attempt - now;
            let base = backoff_base(n, i, m);
            assert!(wait >= base / 2 && wait < base * 3 / 2);
            assert!(
                ts.pass(now, budget(10), &mut rng, |_, _| None).is_empty(),
                "not yet due"
            );
            assert_eq!(ts.next_due(), Some(now + wait));
            now += wait;
            assert_eq!(
                ts.pass(now, budget(10), &mut rng, |_, _| None),
                vec![addr(1)]
            );
            last = wait;
        }
        assert!(last <= m * 3 / 2, "capped");
        ts.on_established(addr(1), 7, PeerName::new(9).unwrap(), "nine", now);
        let t = ts.get(&addr(1)).unwrap();
        assert_eq!(
            (t.attempts, t.state, t.conn),
            (0, TargetState::Established, Some(7))
        );
    }

    #[test]
    fn limit_and_connected_peers_are_respected() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let t0 = Instant::now();
        let mut ts = Targets::new();
        ts.set_configured(&[addr(1), addr(2), addr(3)], t0);
        ts.add_discovered(addr(4), PeerName::new(4).unwrap(), t0);
        ts.add_discovered(addr(5), PeerName::new(5).unwrap(), t0);
        let d = ts.pass(
            t0,
            Budget {
                total: 5,
                discovered: 4,
            },
            &mut rng,
            |p, _| (p.as_u64() == 5).then_some("busy"),
        );
        assert_eq!(d.len(), 4);
        assert!(d.contains(&addr(1)) && d.contains(&addr(2)) && d.contains(&addr(3)));
        assert!(d.contains(&addr(4)), "discovered target of a free peer");
        assert_eq!(ts.get(&addr(5)).unwrap().state, TargetState::Idle);
        // configured set replaced: 3 dropped once it is no longer connecting
        ts.set_configured(&[addr(1)], t0);
        assert!(ts.get(&addr(3)).is_some(), "kept while connecting");
        ts.on_failed(
            addr(3),
            "x",
            t0,
            &mut rng,
            Duration::from_secs(1),
            Duration::from_secs(2),
        );
        assert!(ts.get(&addr(3)).is_none());
        ts.forget_peer(PeerName::new(5).unwrap());
        assert!(ts.get(&addr(5)).is_none());
    }

    #[test]
    fn self_target_is_never_dialled_again() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let t0 = Instant::now();
        let mut ts = Targets::new();
        ts.set_configured(&[addr(1)], t0);
        assert_eq!(ts.pass(t0, budget(1), &mut rng, |_, _| None).len(), 1);
        ts.mark_self(addr(1));
        let later = t0 + Duration::from_secs(3600);
        assert!(ts.pass(later, budget(1), &mut rng, |_, _| None).is_empty());
        assert_eq!(ts.get(&addr(1)).unwrap().state, TargetState::IsSelf);
    }
}
