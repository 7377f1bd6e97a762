//! Path-MTU discovery towards one neighbour (docs/sleeve.md, "Path MTU"). Sizes are outer
//! IPv4 packet sizes (what a DF-flagged Probe packet occupies on the wire).
//!
//! The search works in **rounds**. A round sends several probes of different sizes at once
//! ([`PmtuConfig::parallel`]), repeats each unanswered one every
//! [`PmtuConfig::probe_interval`] up to [`PmtuConfig::tries`] times, and ends when every
//! probe larger than the largest acknowledged one has gone unanswered that many times (or at
//! once, when the largest probe of the round is acknowledged). Between rounds the state is
//! an interval: `good`, the largest size known to pass (or the configured floor, assumed to
//! pass), and `bad`, the smallest size known to fail (or one above the link MTU). Each round
//! spreads its probes evenly over the sizes between them, so the interval shrinks about
//! `parallel + 1`-fold per round; once it is within [`PmtuConfig::granularity`] the search
//! has converged and [`Pmtu::current`] is `good`.
//!
//! - **Start**: optimistic. `current` is the link MTU (unconfirmed) and the first round,
//!   due immediately, probes the link MTU and sizes spread down to the floor. On a clean
//!   path the link-MTU probe is answered after one round trip and that is the end of it.
//! - **Black hole** below the link MTU: the first round times out after `tries × interval`
//!   (600 ms with the defaults); `current` drops to the largest size answered in it. With
//!   the defaults (floor 576, 12 probes per round, granularity 8) a 1500-byte link needs two
//!   rounds: **`current` is within 8 bytes of the true path MTU 1.2 s after start**, and is
//!   a size that was answered from 0.6 s on. A 9000-byte link needs three rounds (1.8 s).
//! - **Re-probe**: every [`PmtuConfig::reprobe`] (60 s) a validation round probes `current`
//!   together with sizes above it (up to the link MTU) and below it (down to the floor). A
//!   path that improved is found in the same round (plus narrowing rounds); a path that
//!   degraded fails `current`, which falls to the largest size answered below it at the end
//!   of that round and is then narrowed as above. [`Pmtu::reprobe_now`] starts such a round
//!   at once (e.g. when traffic suggests a black hole).
//!
//! - **Silence**: a round in which nothing is answered, not even a probe at the floor,
//!   says nothing about the MTU (the peer is not answering yet, is down, or drops probes):
//!   `current` is kept (unconfirmed) and a validation round is retried after 1 s, 2 s,
//!   4 s … up to `reprobe`. This covers the start of a session, when the peer may not
//!   have installed its half yet.
//!
//! Acknowledgements are matched by probe id (which encodes the round and the probe) and
//! size; acknowledgements from earlier rounds are ignored. The caller sends what
//! [`Pmtu::poll`] returns — **calling it until it returns `None`** — and wakes up again at
//! [`Pmtu::next_timeout`].

use std::time::{Duration, Instant};

use crate::wire::{HEADER_LEN, IPV4_UDP_OVERHEAD, PROBE_LEN, TAG_LEN};

/// Smallest probe packet: IPv4 + UDP + header + tag + probe id.
pub const MIN_PROBE_SIZE: u16 = (IPV4_UDP_OVERHEAD + HEADER_LEN + TAG_LEN + PROBE_LEN) as u16;
/// Most probes per round (the probe id has 5 bits for the probe's place in its round, and
/// one place may go to the floor).
pub const MAX_PARALLEL: u8 = 31;
/// First pause after a round in which nothing was answered; doubles up to `reprobe`.
pub const SILENCE_BACKOFF: Duration = Duration::from_secs(1);
const IDX_BITS: u32 = 5;
const SEQ_MASK: u32 = u32::MAX >> IDX_BITS;

/// Tuning of the search.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PmtuConfig {
    /// Size assumed to always pass; the search never goes below it. Default 576 (the IPv4
    /// minimum every host must accept).
    pub floor: u16,
    /// Time between repeats of an unanswered probe. Default 200 ms.
    pub probe_interval: Duration,
    /// Sends of a probe before its size counts as failed. Default 3.
    pub tries: u8,
    /// Time between validation rounds once converged. Default 60 s.
    pub reprobe: Duration,
    /// The search stops when the answer is known within this many bytes. Default 8.
    pub granularity: u16,
    /// Probes per round (1..=31), plus one at the floor while no size is known to pass.
    /// Default 12.
    pub parallel: u8,
}

impl Default for PmtuConfig {
    fn default() -> Self {
        PmtuConfig {
            floor: 576,
            probe_interval: Duration::from_millis(200),
            tries: 3,
            reprobe: Duration::from_secs(60),
            granularity: 8,
            parallel: 12,
        }
    }
}

/// A probe to send: a Probe packet with this id whose IPv4 packet is exactly `size` bytes,
/// sent with DF.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Probe {
    /// Goes into the Probe payload; the ProbeAck echoes it.
    pub id: u32,
    /// The IPv4 packet size to probe.
    pub size: u16,
}

#[derive(Clone, Copy, Debug)]
struct Candidate {
    size: u16,
    sent: u8,
    /// When to send next; after the last try, when the candidate counts as failed.
    due: Instant,
    acked: bool,
}

#[derive(Clone, Debug)]
struct Round {
    seq: u32,
    cands: Vec<Candidate>,
}

impl Round {
    fn max_acked(&self) -> u16 {
        self.cands
            .iter()
            .filter(|c| c.acked)
            .map(|c| c.size)
            .max()
            .unwrap_or(0)
    }
}

/// Path-MTU state towards one neighbour.
#[derive(Clone, Debug)]
pub struct Pmtu {
    cfg: PmtuConfig,
    link: u16,
    floor: u16,
    current: u16,
    confirmed: bool,
    good: u16,
    good_acked: bool,
    /// Smallest size known to fail; `link + 1` when none is known.
    bad: u32,
    round: Option<Round>,
    seq: u32,
    reprobe_at: Instant,
    /// Consecutive rounds in which nothing at all was answered.
    silent: u8,
}

/// Up to `n` sizes spread evenly over `(lo, hi)` (both exclusive), largest first; always
/// includes `hi - 1` when the interval is not empty.
fn spread(lo: u16, hi: u32, n: u8, out: &mut Vec<u16>) {
    let lo32 = u32::from(lo);
    let width = hi.saturating_sub(1).saturating_sub(lo32);
    let n = u32::from(n);
    if width == 0 || n == 0 {
        return;
    }
    for j in 0..n {
        let c = lo32 + width * (n - j) / n;
        let c = u16::try_from(c).unwrap_or(u16::MAX);
        if c > lo && out.last() != Some(&c) {
            out.push(c);
        }
    }
}

impl Pmtu {
    /// Starts optimistic: `current` is `link_mtu` until a round proves otherwise; the first
    /// probes are due at `now`.
    pub fn new(link_mtu: u16, cfg: PmtuConfig, now: Instant) -> Self {
        let cfg = PmtuConfig {
            tries: cfg.tries.max(1),
            granularity: cfg.granularity.max(1),
            parallel: cfg.parallel.clamp(1, MAX_PARALLEL),
            ..cfg
        };
        let link = link_mtu.max(MIN_PROBE_SIZE);
        let mut p = Pmtu {
            cfg,
            link,
            floor: cfg.floor.clamp(MIN_PROBE_SIZE, link),
            current: link,
            confirmed: false,
            good: 0,
            good_acked: false,
            bad: 0,
            round: None,
            seq: 0,
            reprobe_at: now,
            silent: 0,
        };
        p.reset_interval();
        p.start_search(now);
        p
    }

    fn reset_interval(&mut self) {
        self.good = self.floor;
        self.good_acked = false;
        self.bad = u32::from(self.link) + 1;
    }

    fn converged(&self) -> bool {
        self.bad.saturating_sub(u32::from(self.good)) <= u32::from(self.cfg.granularity)
    }

    fn begin_round(&mut self, mut sizes: Vec<u16>, now: Instant) {
        if !self.good_acked {
            // Nothing is known to pass: find out whether the floor itself gets through.
            sizes.push(self.floor);
        }
        sizes.sort_unstable_by(|a, b| b.cmp(a));
        sizes.dedup();
        self.seq = (self.seq + 1) & SEQ_MASK;
        let cands = sizes
            .into_iter()
            .take(usize::from(MAX_PARALLEL) + 1)
            .map(|size| Candidate {
                size,
                sent: 0,
                due: now,
                acked: false,
            })
            .collect();
        self.round = Some(Round {
            seq: self.seq,
            cands,
        });
    }

    fn start_search(&mut self, now: Instant) {
        let mut sizes = Vec::with_capacity(usize::from(self.cfg.parallel));
        if !self.converged() {
            spread(self.good, self.bad, self.cfg.parallel, &mut sizes);
        }
        if sizes.is_empty() {
            self.finish(now);
        } else {
            self.begin_round(sizes, now);
        }
    }

    fn start_validation(&mut self, now: Instant) {
        let cur = self.current;
        self.reset_interval();
        let others = self.cfg.parallel - 1;
        let up = if cur < self.link {
            others.div_ceil(2)
        } else {
            0
        };
        let mut sizes = Vec::with_capacity(usize::from(self.cfg.parallel));
        spread(cur, u32::from(self.link) + 1, up, &mut sizes);
        sizes.push(cur);
        spread(self.floor, u32::from(cur), others - up, &mut sizes);
        self.begin_round(sizes, now);
    }

    fn finish(&mut self, now: Instant) {
        self.round = None;
        self.current = self.good;
        self.confirmed = self.good_acked;
        self.reprobe_at = now + self.cfg.reprobe;
    }

    /// Ends the round if nothing above the largest answered probe can still be answered.
    fn settle(&mut self, now: Instant) {
        let Some(round) = &self.round else { return };
        let best = round.max_acked();
        let done = round
            .cands
            .iter()
            .filter(|c| c.size > best)
            .all(|c| c.sent >= self.cfg.tries && now >= c.due);
        if !done {
            return;
        }
        if best == 0 && !self.good_acked {
            // Not even the floor got through: the peer is not answering (not ready yet,
            // down, probes filtered). That says nothing about the MTU: keep `current` and
            // try again soon, backing off.
            self.round = None;
            self.confirmed = false;
            self.silent = self.silent.saturating_add(1);
            let backoff = SILENCE_BACKOFF * (1u32 << (self.silent - 1).min(6));
            self.reprobe_at = now + backoff.min(self.cfg.reprobe);
            return;
        }
        self.silent = 0;
        if best >= self.good {
            self.good = best;
            self.good_acked = true;
        }
        let good = self.good;
        if let Some(f) = round
            .cands
            .iter()
            .filter(|c| !c.acked && c.size > good)
            .map(|c| u32::from(c.size))
            .min()
        {
            self.bad = self.bad.min(f);
        }
        self.current = self.good;
        self.confirmed = self.good_acked;
        self.round = None;
        if self.converged() {
            self.finish(now);
        } else {
            self.start_search(now);
        }
    }

    /// A probe to send now, if any. Call until it returns `None`.
    pub fn poll(&mut self, now: Instant) -> Option<Probe> {
        if self.round.is_none() && now >= self.reprobe_at {
            self.start_validation(now);
        }
        self.settle(now);
        let tries = self.cfg.tries;
        let interval = self.cfg.probe_interval;
        let round = self.round.as_mut()?;
        let best = round.max_acked();
        let seq = round.seq;
        let (i, c) = round
            .cands
            .iter_mut()
            .enumerate()
            .find(|(_, c)| !c.acked && c.size > best && c.sent < tries && now >= c.due)?;
        c.sent += 1;
        c.due = now + interval;
        // At most MAX_PARALLEL + 1 = 32 candidates: `i` fits the id's 5 low bits.
        Some(Probe {
            id: (seq << IDX_BITS) | i as u32,
            size: c.size,
        })
    }

    /// A ProbeAck arrived for probe `id` of `size` bytes.
    pub fn on_ack(&mut self, id: u32, size: u16, now: Instant) {
        let Some(round) = self.round.as_mut() else {
            return;
        };
        if id >> IDX_BITS != round.seq {
            return;
        }
        let i = (id & ((1 << IDX_BITS) - 1)) as usize;
        if let Some(c) = round.cands.get_mut(i).filter(|c| c.size == size) {
            c.acked = true;
            self.settle(now);
        }
    }

    /// The path MTU to use now (outer IPv4 packet size).
    pub fn current(&self) -> u16 {
        self.current
    }

    /// Whether `current` was answered by a probe (not the optimistic start, not the
    /// assumed floor).
    pub fn confirmed(&self) -> bool {
        self.confirmed
    }

    /// Whether a round is under way.
    pub fn searching(&self) -> bool {
        self.round.is_some()
    }

    /// The link MTU the search tops out at.
    pub fn link_mtu(&self) -> u16 {
        self.link
    }

    /// When [`Pmtu::poll`] next has something to do.
    pub fn next_timeout(&self) -> Option<Instant> {
        let Some(round) = &self.round else {
            return Some(self.reprobe_at);
        };
        let best = round.max_acked();
        round
            .cands
            .iter()
            .filter(|c| !c.acked && c.size > best)
            .map(|c| c.due)
            .min()
    }

    /// The underlay interface MTU changed: clamp `current` to it and start a validation
    /// round (which also looks upward if the link grew).
    pub fn set_link_mtu(&mut self, mtu: u16, now: Instant) {
        self.link = mtu.max(MIN_PROBE_SIZE);
        self.floor = self.cfg.floor.clamp(MIN_PROBE_SIZE, self.link);
        if self.current > self.link {
            self.current = self.link;
            self.confirmed = false;
        }
        self.start_validation(now);
    }

    /// Starts a validation round now unless one is under way.
    pub fn reprobe_now(&mut self, now: Instant) {
        if self.round.is_none() {
            self.start_validation(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_covers_the_interval() {
        let mut v = Vec::new();
        spread(576, 1501, 12, &mut v);
        assert_eq!(v.len(), 12);
        assert_eq!(v[0], 1500);
        assert!(v.windows(2).all(|w| w[0] > w[1]));
        assert!(*v.last().unwrap() > 576 && *v.last().unwrap() <= 576 + 77);
        v.clear();
        spread(100, 105, 12, &mut v);
        assert_eq!(v, vec![104, 103, 102, 101]);
        v.clear();
        spread(100, 101, 12, &mut v);
        assert!(v.is_empty());
    }

    #[test]
    fn clean_path_confirms_link_mtu_at_once() {
        let t0 = Instant::now();
        let mut p = Pmtu::new(1500, PmtuConfig::default(), t0);
        assert_eq!(p.current(), 1500);
        assert!(!p.confirmed());
        let first = p.poll(t0).unwrap();
        assert_eq!(first.size, 1500);
        p.on_ack(first.id, first.size, t0 + Duration::from_millis(1));
        assert!(p.confirmed());
        assert!(!p.searching());
        assert_eq!(p.current(), 1500);
        assert_eq!(p.poll(t0 + Duration::from_millis(2)), None);
        assert_eq!(
            p.next_timeout(),
            Some(t0 + Duration::from_millis(1) + Duration::from_secs(60))
        );
    }

    #[test]
    fn stale_and_mismatched_acks_are_ignored() {
        let t0 = Instant::now();
        let mut p = Pmtu::new(1500, PmtuConfig::default(), t0);
        let first = p.poll(t0).unwrap();
        p.on_ack(first.id, first.size - 1, t0);
        p.on_ack(first.id ^ (1 << IDX_BITS), first.size, t0);
        p.on_ack(first.id + 31, first.size, t0);
        assert!(!p.confirmed());
        assert!(p.searching());
    }
}
