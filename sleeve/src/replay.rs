//! Sliding anti-replay window over 64-bit packet counters (4096 counters wide).
//!
//! A ring of 65 machine words holds one bit per counter; the word for counter `c` is
//! `(c / 64) % 65`. Moving the window forward clears the words that scroll in, at most 65
//! of them however far it jumps, so [`ReplayWindow::check`] and [`ReplayWindow::update`] are
//! O(1). The ring keeps one word more than the 4096 counters need, so every counter within
//! [`WINDOW`] of the newest one still has its bit even when the newest sits at the start of
//! its word.
//!
//! The session checks a counter before decrypting (cheap reject) and records it only after
//! the packet authenticated, so forged packets cannot move the window.

use thiserror::Error;

/// How many counters behind the newest accepted one are still accepted (once each).
pub const WINDOW: u64 = 4096;

const WORD_BITS: u64 = 64;
const WORDS: usize = (WINDOW / WORD_BITS) as usize + 1;

/// Why a counter was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Error)]
pub enum ReplayError {
    /// The counter was already accepted.
    #[error("replayed counter")]
    Replay,
    /// The counter is behind the window: it can no longer be told apart from a replay.
    #[error("counter behind the replay window")]
    TooOld,
}

/// The replay window of one receiving direction.
#[derive(Clone, Debug)]
pub struct ReplayWindow {
    bits: [u64; WORDS],
    /// The newest accepted counter; meaningful only when `any` is set.
    latest: u64,
    any: bool,
}

impl Default for ReplayWindow {
    fn default() -> Self {
        Self::new()
    }
}

impl ReplayWindow {
    /// An empty window: every counter is acceptable.
    pub fn new() -> Self {
        ReplayWindow {
            bits: [0; WORDS],
            latest: 0,
            any: false,
        }
    }

    /// The newest accepted counter, if any.
    pub fn latest(&self) -> Option<u64> {
        self.any.then_some(self.latest)
    }

    fn slot(counter: u64) -> (usize, u64) {
        let word = counter / WORD_BITS;
        // `word % WORDS` is < 65, so the cast is lossless.
        (
            (word % WORDS as u64) as usize,
            1u64 << (counter % WORD_BITS),
        )
    }

    /// Whether `counter` would be accepted, without recording it.
    pub fn check(&self, counter: u64) -> Result<(), ReplayError> {
        if !self.any || counter > self.latest {
            return Ok(());
        }
        if self.latest - counter >= WINDOW {
            return Err(ReplayError::TooOld);
        }
        let (i, bit) = Self::slot(counter);
        if self.bits[i] & bit != 0 {
            Err(ReplayError::Replay)
        } else {
            Ok(())
        }
    }

    /// Checks `counter` and, if acceptable, records it.
    pub fn update(&mut self, counter: u64) -> Result<(), ReplayError> {
        self.check(counter)?;
        if !self.any {
            self.bits = [0; WORDS];
            self.any = true;
            self.latest = counter;
        } else if counter > self.latest {
            let old_word = self.latest / WORD_BITS;
            let new_word = counter / WORD_BITS;
            let scrolled = new_word - old_word;
            if scrolled >= WORDS as u64 {
                self.bits = [0; WORDS];
            } else {
                for w in old_word + 1..=new_word {
                    self.bits[(w % WORDS as u64) as usize] = 0;
                }
            }
            self.latest = counter;
        }
        let (i, bit) = Self::slot(counter);
        self.bits[i] |= bit;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_and_duplicates() {
        let mut w = ReplayWindow::new();
        assert_eq!(w.latest(), None);
        assert_eq!(w.update(0), Ok(()));
        assert_eq!(w.update(0), Err(ReplayError::Replay));
        assert_eq!(w.update(1), Ok(()));
        assert_eq!(w.update(1), Err(ReplayError::Replay));
        assert_eq!(w.latest(), Some(1));
    }

    #[test]
    fn reorder_within_window() {
        let mut w = ReplayWindow::new();
        w.update(10_000).unwrap();
        // Everything from latest - 4095 up is still acceptable once.
        for c in (10_000 - (WINDOW - 1))..10_000 {
            assert_eq!(w.check(c), Ok(()), "{c}");
        }
        assert_eq!(w.update(10_000 - (WINDOW - 1)), Ok(()));
        assert_eq!(w.update(10_000 - (WINDOW - 1)), Err(ReplayError::Replay));
        assert_eq!(w.update(10_000 - WINDOW), Err(ReplayError::TooOld));
        assert_eq!(w.update(0), Err(ReplayError::TooOld));
        assert_eq!(w.update(9_999), Ok(()));
        assert_eq!(w.update(9_999), Err(ReplayError::Replay));
    }

    #[test]
    fn window_edge_at_word_start() {
        // Newest counter at the first bit of a word: the oldest in-window counter lives 64
        // words back, which the 65-word ring still holds.
        let mut w = ReplayWindow::new();
        let top = 64 * 100;
        let oldest = top - (WINDOW - 1);
        w.update(oldest).unwrap();
        w.update(top).unwrap();
        assert_eq!(w.check(oldest), Err(ReplayError::Replay));
        assert_eq!(w.check(oldest + 1), Ok(()));
    }

    #[test]
    fn big_jumps_clear_state() {
        let mut w = ReplayWindow::new();
        for c in 0..5000 {
            w.update(c).unwrap();
        }
        w.update(1_000_000).unwrap();
        // Counters that were set long ago map to the same bits as these; they must be clear.
        for c in 1_000_000 - (WINDOW - 1)..1_000_000 {
            assert_eq!(w.check(c), Ok(()), "{c}");
        }
        w.update(u64::MAX).unwrap();
        assert_eq!(w.update(u64::MAX), Err(ReplayError::Replay));
        assert_eq!(w.update(u64::MAX - 1), Ok(()));
        assert_eq!(w.update(1_000_000), Err(ReplayError::TooOld));
    }

    #[test]
    fn matches_a_naive_model() {
        // Pseudo-random walk compared against a set-based model.
        let mut w = ReplayWindow::new();
        let mut seen = std::collections::BTreeSet::new();
        let mut latest: Option<u64> = None;
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut base = 0u64;
        for _ in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let delta = x % 9000;
            base += x % 3;
            let c = (base + delta).saturating_sub(4500);
            let expect = match latest {
                Some(l) if c <= l && l - c >= WINDOW => Err(ReplayError::TooOld),
                _ if seen.contains(&c) => Err(ReplayError::Replay),
                _ => Ok(()),
            };
            assert_eq!(w.update(c), expect, "counter {c}");
            if expect.is_ok() {
                seen.insert(c);
                latest = Some(latest.map_or(c, |l| l.max(c)));
            }
        }
    }
}
