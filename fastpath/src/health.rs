//! Fastpath health per peer: a pure state machine (no clock, no sockets, no entropy of its
//! own) that decides, from heartbeats sent through the kernel VXLAN path and the acks that come
//! back over the control connection, whether a peer's MACs belong on the fastpath or the sleeve.
//!
//! The router drives it:
//!
//! 1. [`Health::add_peer`] for every direct peer that is a fastpath candidate (or
//!    [`Health::set_unavailable`] with the reason when it cannot be one: kernel lacks VXLAN,
//!    encryption required and no ESP, bogus address, `--no-fastpath`).
//! 2. [`Health::poll`] at [`Health::next_deadline`] (and after every ack): it returns the
//!    heartbeats due now (`peer`, `seq`, `token`), which the router sends through
//!    [`crate::heartbeat::HeartbeatSocket`].
//! 3. [`Health::on_ack`] when the peer acknowledges `(seq, token)` over the control connection.
//! 4. [`Health::drain_events`]: each [`Event::Switched`] means "recompute the desired FDB and
//!    reconcile" (see [`crate::fdb`]).
//!
//! Rules (defaults in [`HealthConfig`]):
//!
//! - A heartbeat goes to every candidate peer every `interval` (200 ms), for as long as the
//!   peer is a candidate, whatever its state: probing never stops (Weave's fastpath could stay
//!   on the slow path for good after one failure).
//! - **Healthy → Failed** when no ack has arrived for `fail_after` (1.2 s): with a 200 ms poll
//!   granularity, traffic leaves the fastpath at most ~1.4 s after the path broke.
//! - **Failed/Probing → Healthy** only after a *streak*: every heartbeat acked (none lost, a
//!   heartbeat is lost when unacked after `loss_after`) for `recover_after` (2 s). Each failure
//!   without a calm period in between doubles the streak needed, up to `recover_after_max`
//!   (8 s), so a flapping link does not drag traffic back and forth five times a second; after
//!   `calm_after` (60 s) of uninterrupted health the penalty is forgiven. With the defaults a
//!   recovered path carries traffic again within 2.2 s (first failure) and at most ~8.4 s
//!   (flapping), inside the 10 s target.
//! - A new peer starts in `Probing` (traffic on the sleeve) and becomes `Healthy` by the same
//!   streak rule; with no ack for `fail_after` it becomes `Failed` (still probed).
//! - Acks must match an outstanding `(seq, token)`: tokens come from a generator seeded by the
//!   caller (splitmix64), so an ack for a heartbeat of an earlier run, or a replayed one, is
//!   ignored.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use serde::Serialize;

/// Timing of heartbeats and state changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthConfig {
    /// Time between two heartbeats to one peer.
    pub interval: Duration,
    /// A healthy peer fails when no ack arrived for this long.
    pub fail_after: Duration,
    /// A heartbeat not acked after this long is lost (and breaks a recovery streak).
    pub loss_after: Duration,
    /// Unbroken run of acked heartbeats needed to (re)enter `Healthy` after the first failure.
    pub recover_after: Duration,
    /// Cap on the streak needed after repeated failures.
    pub recover_after_max: Duration,
    /// Uninterrupted health that forgives earlier failures (the streak needed drops back).
    pub calm_after: Duration,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            interval: Duration::from_millis(200),
            fail_after: Duration::from_millis(1200),
            loss_after: Duration::from_secs(1),
            recover_after: Duration::from_secs(2),
            recover_after_max: Duration::from_secs(8),
            calm_after: Duration::from_secs(60),
        }
    }
}

/// Where a peer's MACs go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Path {
    Fastpath,
    Sleeve,
}

/// A peer's fastpath state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// New candidate, not proven yet (sleeve).
    Probing,
    /// Heartbeats acked (fastpath).
    Healthy,
    /// Heartbeats unacked (sleeve), still probed.
    Failed,
    /// Not a candidate, for the reason given (sleeve); nothing is sent.
    Unavailable,
}

impl State {
    pub fn path(self) -> Path {
        match self {
            State::Healthy => Path::Fastpath,
            _ => Path::Sleeve,
        }
    }
}

/// A heartbeat to send now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Due {
    pub peer: u64,
    pub seq: u64,
    pub token: u64,
}

/// Something the router must act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The peer's MACs move to `to`: recompute the desired FDB and reconcile.
    Switched { peer: u64, to: Path, reason: String },
}

/// What status shows for a peer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PeerStatus {
    pub state: State,
    pub path: Path,
    /// Why the peer is on its path, for humans ("heartbeats ok", "no heartbeat ack for 1.2s").
    pub reason: String,
    /// Path changes (fastpath ↔ sleeve) since the peer was added.
    pub switches: u64,
    pub sent: u64,
    pub acked: u64,
    pub lost: u64,
    /// Round trip of the last acked heartbeat (kernel path out, control connection back).
    pub rtt_ms: Option<f64>,
}

#[derive(Debug, Clone, Copy)]
struct Sent {
    seq: u64,
    token: u64,
    at: Instant,
}

#[derive(Debug, Clone)]
struct Peer {
    state: State,
    unavailable: Option<String>,
    /// When the state was entered.
    since: Instant,
    /// When probing (re)started: the peer was added or became a candidate again.
    probing_since: Instant,
    next_send: Instant,
    next_seq: u64,
    outstanding: VecDeque<Sent>,
    last_ack: Option<Instant>,
    streak_start: Option<Instant>,
    /// Failures since the last calm period.
    penalty: u32,
    switches: u64,
    sent: u64,
    acked: u64,
    lost: u64,
    rtt: Option<Duration>,
}

impl Peer {
    fn new(now: Instant) -> Peer {
        Peer {
            state: State::Probing,
            unavailable: None,
            since: now,
            probing_since: now,
            next_send: now,
            next_seq: 1,
            outstanding: VecDeque::new(),
            last_ack: None,
            streak_start: None,
            penalty: 0,
            switches: 0,
            sent: 0,
            acked: 0,
            lost: 0,
            rtt: None,
        }
    }
}

/// Fastpath health of every candidate peer. See the module documentation.
#[derive(Debug, Clone)]
pub struct Health {
    cfg: HealthConfig,
    peers: BTreeMap<u64, Peer>,
    events: Vec<Event>,
    rng: u64,
    /// When [`Health::poll`] last evaluated every peer.
    polled: Option<Instant>,
}

/// splitmix64: a tiny, well-known generator; good enough to make tokens unpredictable to
/// anyone who does not know the seed, which the caller draws from the OS.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

impl Health {
    /// `seed` seeds the token generator (draw it from the OS).
    pub fn new(cfg: HealthConfig, seed: u64) -> Health {
        Health {
            cfg,
            peers: BTreeMap::new(),
            events: Vec::new(),
            rng: seed,
            polled: None,
        }
    }

    pub fn config(&self) -> &HealthConfig {
        &self.cfg
    }

    /// Start probing `peer` (a direct peer that is a fastpath candidate). Adding a peer that
    /// is already there changes nothing (its history is kept).
    pub fn add_peer(&mut self, peer: u64, now: Instant) {
        self.peers.entry(peer).or_insert_with(|| Peer::new(now));
        // Its first heartbeat is due now, maybe at the instant of the last poll.
        self.polled = None;
    }

    /// Forget `peer` (connection gone). If it was on the fastpath, a `Switched` to the sleeve is
    /// emitted so the router moves its MACs.
    pub fn remove_peer(&mut self, peer: u64) {
        if let Some(p) = self.peers.remove(&peer) {
            if p.state == State::Healthy {
                self.events.push(Event::Switched {
                    peer,
                    to: Path::Sleeve,
                    reason: "peer removed".into(),
                });
            }
        }
    }

    /// Peers currently tracked.
    pub fn peers(&self) -> impl Iterator<Item = u64> + '_ {
        self.peers.keys().copied()
    }

    /// Mark `peer` as not a fastpath candidate for `reason` (`Some`), or a candidate again
    /// (`None`: probing restarts, the failure penalty is kept). The peer is added if unknown.
    pub fn set_unavailable(&mut self, peer: u64, reason: Option<String>, now: Instant) {
        self.polled = None;
        let p = self.peers.entry(peer).or_insert_with(|| Peer::new(now));
        match reason {
            Some(r) => {
                if p.state == State::Healthy {
                    p.switches += 1;
                    self.events.push(Event::Switched {
                        peer,
                        to: Path::Sleeve,
                        reason: r.clone(),
                    });
                }
                p.state = State::Unavailable;
                p.unavailable = Some(r);
                p.outstanding.clear();
                p.streak_start = None;
                p.since = now;
            }
            None if p.state == State::Unavailable => {
                p.state = State::Probing;
                p.unavailable = None;
                p.since = now;
                p.probing_since = now;
                p.next_send = now;
                p.last_ack = None;
            }
            None => {}
        }
    }

    /// Whether `peer`'s MACs belong on the fastpath now.
    pub fn use_fastpath(&self, peer: u64) -> bool {
        self.peers
            .get(&peer)
            .is_some_and(|p| p.state == State::Healthy)
    }

    /// Run timers; return the heartbeats due now (send each through the kernel path).
    pub fn poll(&mut self, now: Instant) -> Vec<Due> {
        self.polled = Some(now);
        let mut due = Vec::new();
        for (&name, p) in self.peers.iter_mut() {
            if p.state == State::Unavailable {
                continue;
            }
            // Losses first: they break a recovery streak.
            while let Some(s) = p.outstanding.front() {
                if now.saturating_duration_since(s.at) < self.cfg.loss_after {
                    break;
                }
                let lost = p.outstanding.pop_front().expect("front exists");
                p.lost += 1;
                // Only a loss inside the streak breaks it (heartbeats sent before the path came
                // back expire later but say nothing about it now).
                if p.streak_start.is_some_and(|start| lost.at >= start) {
                    p.streak_start = None;
                }
            }
            Self::evaluate(&self.cfg, name, p, now, &mut self.events);
            if now >= p.next_send {
                let token = splitmix64(&mut self.rng);
                let seq = p.next_seq;
                p.next_seq += 1;
                p.outstanding.push_back(Sent {
                    seq,
                    token,
                    at: now,
                });
                p.sent += 1;
                // Keep the cadence, but never burst to catch up after a stall.
                p.next_send += self.cfg.interval;
                if p.next_send <= now {
                    p.next_send = now + self.cfg.interval;
                }
                due.push(Due {
                    peer: name,
                    seq,
                    token,
                });
            }
        }
        due
    }

    /// `peer` acknowledged heartbeat `(seq, token)`. Returns whether it matched one still
    /// outstanding (others are ignored: late, replayed, or from an earlier run).
    pub fn on_ack(&mut self, peer: u64, seq: u64, token: u64, now: Instant) -> bool {
        let Some(p) = self.peers.get_mut(&peer) else {
            return false;
        };
        let Some(i) = p
            .outstanding
            .iter()
            .position(|s| s.seq == seq && s.token == token)
        else {
            return false;
        };
        let sent = p.outstanding.remove(i).expect("index from position");
        p.acked += 1;
        p.last_ack = Some(now);
        p.rtt = Some(now.saturating_duration_since(sent.at));
        if p.streak_start.is_none() {
            p.streak_start = Some(sent.at);
        }
        Self::evaluate(&self.cfg, peer, p, now, &mut self.events);
        true
    }

    /// Take the events produced so far.
    pub fn drain_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    /// When [`Health::poll`] next has something to do (`None` with no candidate peers).
    pub fn next_deadline(&self) -> Option<Instant> {
        let cfg = &self.cfg;
        self.peers
            .values()
            .filter(|p| p.state != State::Unavailable)
            .flat_map(|p| {
                let loss = p.outstanding.front().map(|s| s.at + cfg.loss_after);
                let fail = (p.state == State::Healthy)
                    .then(|| p.last_ack.unwrap_or(p.since) + cfg.fail_after);
                let probe_fail = (p.state == State::Probing).then(|| p.since + cfg.fail_after);
                let recover = p.streak_start.map(|s| s + required_streak(cfg, p.penalty));
                [Some(p.next_send), loss, fail, probe_fail, recover]
            })
            .flatten()
            // A time already evaluated by the last poll is a condition that did not fire
            // (a healthy peer's streak start, a streak waiting for a fresh ack): it changes
            // only with an ack, a loss or a send, which have deadlines of their own. As a
            // deadline it would wake the caller in a loop.
            .filter(|&d| self.polled.is_none_or(|p| d > p))
            .min()
    }

    /// Status of `peer` at `now`.
    pub fn status(&self, peer: u64, now: Instant) -> Option<PeerStatus> {
        let p = self.peers.get(&peer)?;
        let needed = required_streak(&self.cfg, p.penalty);
        let streak = p.streak_start.map(|s| now.saturating_duration_since(s));
        let reason = match p.state {
            State::Unavailable => p.unavailable.clone().unwrap_or_default(),
            State::Healthy => "heartbeats ok".to_string(),
            State::Probing | State::Failed => match (streak, p.last_ack) {
                (Some(s), _) => format!(
                    "heartbeats ok again for {} of the {} needed",
                    secs(s),
                    secs(needed)
                ),
                (None, Some(at)) => format!(
                    "no heartbeat ack for {}",
                    secs(now.saturating_duration_since(at))
                ),
                (None, None) if p.state == State::Probing => {
                    "probing: waiting for the first heartbeat ack".to_string()
                }
                (None, None) => format!(
                    "no heartbeat ack since probing started {} ago",
                    secs(now.saturating_duration_since(p.probing_since))
                ),
            },
        };
        Some(PeerStatus {
            state: p.state,
            path: p.state.path(),
            reason,
            switches: p.switches,
            sent: p.sent,
            acked: p.acked,
            lost: p.lost,
            rtt_ms: p.rtt.map(|d| d.as_secs_f64() * 1000.0),
        })
    }

    fn evaluate(cfg: &HealthConfig, name: u64, p: &mut Peer, now: Instant, ev: &mut Vec<Event>) {
        match p.state {
            State::Unavailable => {}
            State::Healthy => {
                let last = p.last_ack.unwrap_or(p.since);
                let silent = now.saturating_duration_since(last);
                if silent >= cfg.fail_after {
                    p.state = State::Failed;
                    p.since = now;
                    p.penalty = p.penalty.saturating_add(1);
                    p.streak_start = None;
                    p.switches += 1;
                    ev.push(Event::Switched {
                        peer: name,
                        to: Path::Sleeve,
                        reason: format!("no heartbeat ack for {}", secs(silent)),
                    });
                } else if p.penalty > 0 && now.saturating_duration_since(p.since) >= cfg.calm_after
                {
                    p.penalty = 0;
                }
            }
            State::Probing | State::Failed => {
                let needed = required_streak(cfg, p.penalty);
                let fresh = p
                    .last_ack
                    .is_some_and(|a| now.saturating_duration_since(a) < cfg.fail_after);
                if let Some(start) = p.streak_start {
                    if fresh && now.saturating_duration_since(start) >= needed {
                        p.state = State::Healthy;
                        p.since = now;
                        p.switches += 1;
                        ev.push(Event::Switched {
                            peer: name,
                            to: Path::Fastpath,
                            reason: format!("heartbeats ok for {}", secs(needed)),
                        });
                        return;
                    }
                }
                if p.state == State::Probing
                    && p.streak_start.is_none()
                    && now.saturating_duration_since(p.since) >= cfg.fail_after
                {
                    p.state = State::Failed;
                    p.since = now;
                }
            }
        }
    }
}

/// Streak needed to become healthy with `penalty` failures since the last calm period.
fn required_streak(cfg: &HealthConfig, penalty: u32) -> Duration {
    let doublings = penalty.saturating_sub(1).min(16);
    cfg.recover_after
        .saturating_mul(1u32 << doublings)
        .min(cfg.recover_after_max)
        .max(cfg.recover_after)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEER: u64 = 0x0a_0b_0c_0d_0e_0f;

    /// Virtual time: a link that delivers (or not) each heartbeat, with a fixed RTT.
    struct Sim {
        h: Health,
        now: Instant,
        t0: Instant,
        /// Heartbeats in flight: (ack arrives at, seq, token).
        flight: Vec<(Instant, u64, u64)>,
        switches: Vec<(Duration, Path)>,
    }

    impl Sim {
        fn new() -> Sim {
            let t0 = Instant::now();
            let mut h = Health::new(HealthConfig::default(), 42);
            h.add_peer(PEER, t0);
            Sim {
                h,
                now: t0,
                t0,
                flight: Vec::new(),
                switches: Vec::new(),
            }
        }

        /// Advance to `until` (from t0) in 10 ms steps; `up(t)` says whether a heartbeat sent at
        /// t gets through.
        fn run(&mut self, until: Duration, up: impl Fn(Duration) -> bool) {
            while self.now < self.t0 + until {
                self.now += Duration::from_millis(10);
                let now = self.now;
                let mut arrived = Vec::new();
                self.flight.retain(|&(at, seq, tok)| {
                    if at <= now {
                        arrived.push((seq, tok));
                        false
                    } else {
                        true
                    }
                });
                for (seq, tok) in arrived {
                    assert!(self.h.on_ack(PEER, seq, tok, now));
                }
                for d in self.h.poll(now) {
                    if up(now - self.t0) {
                        self.flight
                            .push((now + Duration::from_millis(3), d.seq, d.token));
                    }
                }
                for e in self.h.drain_events() {
                    let Event::Switched { to, .. } = e;
                    self.switches.push((now - self.t0, to));
                }
                // The caller sleeps until the next deadline: one already past would make it
                // loop without sleeping.
                if let Some(d) = self.h.next_deadline() {
                    assert!(d > now, "next deadline {:?} not after now", now - d);
                }
            }
        }

        fn state(&self) -> State {
            self.h.status(PEER, self.now).unwrap().state
        }
    }

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn healthy_after_a_streak_then_fails_within_limit_and_comes_back() {
        let mut s = Sim::new();
        s.run(ms(1000), |_| true);
        assert_eq!(s.state(), State::Probing);
        s.run(ms(2500), |_| true);
        assert_eq!(s.state(), State::Healthy);
        assert_eq!(s.switches.len(), 1);
        assert!(s.switches[0].0 <= ms(2100), "{:?}", s.switches);
        // Link breaks at 5 s.
        s.run(ms(8000), |t| t < ms(5000));
        assert_eq!(s.state(), State::Failed);
        let (at, to) = s.switches[1];
        assert_eq!(to, Path::Sleeve);
        assert!(
            at > ms(5000) && at <= ms(5000) + ms(1500),
            "failover at {at:?}"
        );
        assert!(s
            .h
            .status(PEER, s.now)
            .unwrap()
            .reason
            .starts_with("no heartbeat ack for"));
        // Link back at 8 s: fastpath again within 10 s (here: one streak of 2 s).
        s.run(ms(12000), |t| !(ms(5000)..ms(8000)).contains(&t));
        let (at, to) = s.switches[2];
        assert_eq!(to, Path::Fastpath);
        assert!(
            at > ms(8000) && at <= ms(8000) + ms(2500),
            "failback at {at:?}"
        );
        assert_eq!(s.h.status(PEER, s.now).unwrap().switches, 3);
        assert_eq!(s.h.status(PEER, s.now).unwrap().reason, "heartbeats ok");
    }

    #[test]
    fn a_peer_that_never_answers_is_probed_forever_and_never_switches() {
        let mut s = Sim::new();
        s.run(ms(600_000), |_| false);
        assert_eq!(s.state(), State::Failed);
        assert!(s.switches.is_empty());
        let st = s.h.status(PEER, s.now).unwrap();
        // 10 minutes at 5 per second: still sending.
        assert!(st.sent >= 2999, "sent {}", st.sent);
        assert_eq!(st.acked, 0);
        assert!(
            st.reason
                .starts_with("no heartbeat ack since probing started"),
            "{}",
            st.reason
        );
        // And it answers at last: healthy 2 s later.
        s.run(ms(603_000), |_| true);
        assert_eq!(s.state(), State::Healthy);
    }

    #[test]
    fn flapping_link_backs_off_but_still_returns_within_ten_seconds() {
        let mut s = Sim::new();
        s.run(ms(3000), |_| true);
        assert_eq!(s.state(), State::Healthy);
        // Flap: 1.5 s down, 3 s up, repeatedly, for 60 s.
        let flap = |t: Duration| t < ms(3000) || (t.as_millis() - 3000) % 4500 >= 1500;
        s.run(ms(63_000), flap);
        let n = s.switches.len();
        // With a fixed 2 s streak it would switch twice per 4.5 s cycle (~26 times); the
        // backoff makes the needed streak exceed the 3 s up-time, so it stays on the sleeve.
        assert!(n <= 6, "too many switches while flapping: {:?}", s.switches);
        assert_eq!(s.state(), State::Failed);
        // Stable again from 63 s: back on the fastpath within 10 s despite the penalty.
        let before = s.switches.len();
        s.run(ms(80_000), |t| t < ms(3000) || t >= ms(63_000));
        let back = s.switches[before..]
            .iter()
            .find(|(_, to)| *to == Path::Fastpath)
            .expect("came back");
        assert!(
            back.0 <= ms(63_000) + ms(10_000),
            "failback at {:?}",
            back.0
        );
        // And a long calm period forgives: the next failure recovers after 2 s again.
        s.run(ms(150_000), |t| t < ms(3000) || t >= ms(63_000));
        let before = s.switches.len();
        s.run(ms(160_000), |t| {
            t < ms(3000) || (t >= ms(63_000) && !(ms(150_000)..ms(152_000)).contains(&t))
        });
        let back = &s.switches[before..];
        assert_eq!(back.len(), 2, "{back:?}");
        assert!(back[1].0 - ms(152_000) <= ms(2500), "{back:?}");
    }

    #[test]
    fn single_losses_do_not_fail_a_healthy_peer_but_break_a_streak() {
        let mut s = Sim::new();
        s.run(ms(3000), |_| true);
        assert_eq!(s.state(), State::Healthy);
        // Lose every 4th heartbeat: never 1.2 s without an ack.
        s.run(ms(20_000), |t| (t.as_millis() / 200) % 4 != 0);
        assert_eq!(s.state(), State::Healthy);
        assert_eq!(s.switches.len(), 1);
        assert!(s.h.status(PEER, s.now).unwrap().lost > 10);
    }

    #[test]
    fn stray_and_replayed_acks_are_ignored() {
        let t0 = Instant::now();
        let mut h = Health::new(HealthConfig::default(), 7);
        h.add_peer(PEER, t0);
        let d = h.poll(t0);
        assert_eq!(d.len(), 1);
        assert!(!h.on_ack(PEER, d[0].seq, d[0].token ^ 1, t0));
        assert!(!h.on_ack(PEER + 1, d[0].seq, d[0].token, t0));
        assert!(h.on_ack(PEER, d[0].seq, d[0].token, t0));
        assert!(!h.on_ack(PEER, d[0].seq, d[0].token, t0), "replay");
        // Nothing due before the interval.
        assert!(h.poll(t0 + ms(100)).is_empty());
        assert_eq!(h.poll(t0 + ms(200)).len(), 1);
        // Same seed, same tokens: deterministic.
        let mut h2 = Health::new(HealthConfig::default(), 7);
        h2.add_peer(PEER, t0);
        assert_eq!(h2.poll(t0)[0].token, d[0].token);
    }

    #[test]
    fn unavailable_peers_get_no_heartbeats_and_say_why() {
        let mut s = Sim::new();
        s.run(ms(3000), |_| true);
        assert!(s.h.use_fastpath(PEER));
        s.h.set_unavailable(
            PEER,
            Some("encryption required, kernel lacks ESP".into()),
            s.now,
        );
        assert!(!s.h.use_fastpath(PEER));
        assert_eq!(
            s.h.drain_events(),
            vec![Event::Switched {
                peer: PEER,
                to: Path::Sleeve,
                reason: "encryption required, kernel lacks ESP".into()
            }]
        );
        assert!(s.h.poll(s.now + ms(1000)).is_empty());
        let st = s.h.status(PEER, s.now).unwrap();
        assert_eq!(st.state, State::Unavailable);
        assert_eq!(st.reason, "encryption required, kernel lacks ESP");
        // Candidate again: probing restarts.
        s.h.set_unavailable(PEER, None, s.now);
        assert_eq!(s.h.poll(s.now).len(), 1);
        assert_eq!(s.state(), State::Probing);
    }

    #[test]
    fn deadline_is_never_later_than_the_next_send() {
        let t0 = Instant::now();
        let mut h = Health::new(HealthConfig::default(), 1);
        assert_eq!(h.next_deadline(), None);
        h.add_peer(PEER, t0);
        assert_eq!(h.next_deadline(), Some(t0));
        h.poll(t0);
        assert_eq!(h.next_deadline(), Some(t0 + ms(200)));
        h.remove_peer(PEER);
        assert_eq!(h.next_deadline(), None);
    }
}
