//! What an inbound connection attempt may cost before it is authenticated.
//!
//! Anyone on the underlay (or a pod, through its node's address) can send QUIC Initials.
//! Three rules keep that cheap (the accept loop in `daemon` applies them):
//! - **Address validation first.** An attempt from an address that has not proven it receives
//!   there gets a stateless QUIC Retry ([`Verdict::Retry`]): nothing is kept, and the Retry is
//!   smaller than the Initial (no amplification). Spoofed or unanswered Initials never reach a
//!   handshake slot.
//! - **Slots per source.** At most [`MAX_PER_SOURCE`] handshakes from one IP run at once (a
//!   real peer needs one), and [`MAX_TOTAL`] in all; more are refused at once.
//! - **Bounded reporting.** [`LogLimiter`]: a failed inbound handshake is logged at WARN at
//!   most once per source per [`LOG_EVERY`] and [`LOG_BURST`] lines per [`LOG_EVERY`] in all;
//!   the rest are counted and the count is logged with the next line.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Inbound handshakes running at once, in all.
pub const MAX_TOTAL: usize = 64;
/// Inbound handshakes running at once from one IP address.
pub const MAX_PER_SOURCE: usize = 4;
/// Per source, at most one WARN line this often.
pub const LOG_EVERY: Duration = Duration::from_secs(60);
/// WARN lines per [`LOG_EVERY`], all sources together.
pub const LOG_BURST: u32 = 10;
/// Sources remembered by the log limiter.
const LOG_SOURCES: usize = 1024;

/// What to do with an inbound attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Send a stateless Retry: the dialer's address is not validated yet.
    Retry,
    /// Run the handshake (a slot is taken: call [`Admission::done`] after).
    Admit,
    /// Refuse it: too many handshakes from this source, or in all.
    Refuse(&'static str),
}

/// Handshake slots in use, per source.
#[derive(Debug, Default)]
pub struct Admission {
    pending: HashMap<IpAddr, usize>,
    total: usize,
}

impl Admission {
    pub fn on_incoming(&mut self, source: IpAddr, validated: bool) -> Verdict {
        if !validated {
            return Verdict::Retry;
        }
        if self.total >= MAX_TOTAL {
            return Verdict::Refuse("too many handshakes in progress");
        }
        let n = self.pending.entry(source).or_default();
        if *n >= MAX_PER_SOURCE {
            return Verdict::Refuse("too many handshakes in progress from this address");
        }
        *n += 1;
        self.total += 1;
        Verdict::Admit
    }

    /// An admitted handshake from `source` ended (either way).
    pub fn done(&mut self, source: IpAddr) {
        if let Some(n) = self.pending.get_mut(&source) {
            *n -= 1;
            self.total -= 1;
            if *n == 0 {
                self.pending.remove(&source);
            }
        }
    }

    pub fn in_progress(&self) -> usize {
        self.total
    }
}

/// Rate limit for WARN lines about inbound failures (see the module docs).
#[derive(Debug, Default)]
pub struct LogLimiter {
    last: HashMap<IpAddr, Instant>,
    window: Option<Instant>,
    lines: u32,
    suppressed: u64,
}

impl LogLimiter {
    /// Whether to log a failure from `source` now; `Some(n)`: yes, and `n` earlier ones were
    /// not logged. `None`: count it, do not log it.
    pub fn allow(&mut self, source: IpAddr, now: Instant) -> Option<u64> {
        if self
            .window
            .is_none_or(|w| now.saturating_duration_since(w) >= LOG_EVERY)
        {
            self.window = Some(now);
            self.lines = 0;
        }
        let recent = self
            .last
            .get(&source)
            .is_some_and(|t| now.saturating_duration_since(*t) < LOG_EVERY);
        if recent || self.lines >= LOG_BURST {
            self.suppressed += 1;
            return None;
        }
        if self.last.len() >= LOG_SOURCES {
            self.last
                .retain(|_, t| now.saturating_duration_since(*t) < LOG_EVERY);
            if self.last.len() >= LOG_SOURCES {
                self.suppressed += 1;
                return None;
            }
        }
        self.last.insert(source, now);
        self.lines += 1;
        Some(std::mem::take(&mut self.suppressed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(i: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, i])
    }

    #[test]
    fn unvalidated_attempts_take_no_slot() {
        let mut a = Admission::default();
        for _ in 0..1000 {
            assert_eq!(a.on_incoming(ip(1), false), Verdict::Retry);
        }
        assert_eq!(a.in_progress(), 0);
        assert_eq!(a.on_incoming(ip(2), true), Verdict::Admit);
    }

    #[test]
    fn one_source_cannot_take_every_slot() {
        let mut a = Admission::default();
        for _ in 0..MAX_PER_SOURCE {
            assert_eq!(a.on_incoming(ip(1), true), Verdict::Admit);
        }
        assert!(matches!(a.on_incoming(ip(1), true), Verdict::Refuse(_)));
        // others still get in
        assert_eq!(a.on_incoming(ip(2), true), Verdict::Admit);
        a.done(ip(1));
        assert_eq!(a.on_incoming(ip(1), true), Verdict::Admit);
        // the total is bounded too
        let mut a = Admission::default();
        for i in 0..MAX_TOTAL {
            assert_eq!(a.on_incoming(ip(i as u8), true), Verdict::Admit);
        }
        assert!(matches!(a.on_incoming(ip(250), true), Verdict::Refuse(_)));
        for i in 0..MAX_TOTAL {
            a.done(ip(i as u8));
        }
        assert_eq!(a.in_progress(), 0);
        a.done(ip(9)); // an unknown source is ignored
        assert_eq!(a.in_progress(), 0);
    }

    #[test]
    fn logging_is_bounded_per_source_and_in_all() {
        let t0 = Instant::now();
        let mut l = LogLimiter::default();
        assert_eq!(l.allow(ip(1), t0), Some(0));
        for k in 0..100 {
            assert_eq!(l.allow(ip(1), t0 + Duration::from_millis(k)), None);
        }
        // a minute later: logged again, with the count of the silent ones
        assert_eq!(l.allow(ip(1), t0 + LOG_EVERY), Some(100));
        // many sources: LOG_BURST lines per window
        let t1 = t0 + LOG_EVERY * 3;
        let logged = (0..200u8).filter(|&i| l.allow(ip(i), t1).is_some()).count();
        assert_eq!(logged, LOG_BURST as usize);
    }
}
