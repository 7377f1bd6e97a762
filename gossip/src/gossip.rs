//! Per-channel gossip bookkeeping: news to announce, records we want and whom we asked,
//! and tombstones of garbage-collected origins. Plus exact wire sizes of gossip messages
//! computed without serialising (records' sizes come cached from the store).

use crate::mesh::ConnId;
use crate::message::Summary;
use crate::peer::{PeerName, PeerUid};
use crate::store::Key;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// How many neighbours we remember as able to serve one wanted record.
const MAX_SOURCES: usize = 8;

/// Gossip rounds in which one piece of news is announced (to fresh random neighbours).
/// One round of pushes to log2(n) neighbours misses a given peer with probability about
/// e^-log2(n) per version (measured: 1 in 10 versions missed someone at 100 peers, left to
/// the 30 s anti-entropy); two rounds square that.
pub(crate) const NEWS_ROUNDS: u8 = 2;

/// A changed record to announce at the next gossip round.
#[derive(Clone, Copy, Debug)]
pub(crate) struct News {
    pub summary: Summary,
    /// The connection it came from (not announced back there); `None` for our own.
    pub from: Option<ConnId>,
    /// Rounds in which it is still to be announced.
    pub rounds: u8,
}

#[derive(Debug)]
struct Want {
    /// The newest version we know exists.
    key: Key,
    /// Neighbours that offered it, with the key they offered.
    sources: Vec<(ConnId, Key)>,
    /// Outstanding request: to whom, until when.
    pending: Option<(ConnId, Instant)>,
}

#[derive(Debug, Clone, Copy)]
struct Dropped {
    uid: PeerUid,
    version: u64,
    at: Instant,
}

#[derive(Debug, Default)]
pub(crate) struct ChannelState {
    pub news: BTreeMap<PeerName, News>,
    wants: BTreeMap<PeerName, Want>,
    dropped: BTreeMap<PeerName, Dropped>,
    /// When `retries` has work: earliest request deadline, or now after a release.
    next_retry: Option<Instant>,
}

impl ChannelState {
    pub fn add_news(&mut self, summary: Summary, from: Option<ConnId>) {
        self.news.insert(
            summary.origin,
            News {
                summary,
                from,
                rounds: NEWS_ROUNDS,
            },
        );
    }

    /// Whether a record of this version was garbage-collected recently (not wanted again).
    pub fn suppressed(&self, s: &Summary) -> bool {
        self.dropped
            .get(&s.origin)
            .is_some_and(|d| d.uid == s.uid && s.version <= d.version)
    }

    pub fn tombstone(&mut self, s: &Summary, now: Instant) {
        self.dropped.insert(
            s.origin,
            Dropped {
                uid: s.uid,
                version: s.version,
                at: now,
            },
        );
        self.wants.remove(&s.origin);
        self.news.remove(&s.origin);
    }

    /// A live connection proves the peer exists: forget its tombstone.
    pub fn clear_tombstone(&mut self, origin: &PeerName) {
        self.dropped.remove(origin);
    }

    pub fn expire_tombstones(&mut self, now: Instant, ttl: Duration) {
        self.dropped
            .retain(|_, d| now.saturating_duration_since(d.at) < ttl);
    }

    /// `conn` offers `s` (announce or digest). Returns whether to request it from `conn`
    /// now: only if it is newer than `have`, not suppressed, and not already asked for
    /// from another neighbour whose answer is still awaited.
    pub fn offer(
        &mut self,
        s: &Summary,
        have: Option<Key>,
        conn: ConnId,
        now: Instant,
        timeout: Duration,
    ) -> bool {
        let key = s.key();
        if have.is_some_and(|h| h >= key) || self.suppressed(s) {
            return false;
        }
        let w = self.wants.entry(s.origin).or_insert(Want {
            key,
            sources: Vec::new(),
            pending: None,
        });
        w.key = w.key.max(key);
        if let Some(src) = w.sources.iter_mut().find(|(c, _)| *c == conn) {
            src.1 = src.1.max(key);
        } else if w.sources.len() < MAX_SOURCES {
            w.sources.push((conn, key));
        }
        match w.pending {
            Some((_, deadline)) if deadline > now => false,
            _ => {
                let deadline = now + timeout;
                w.pending = Some((conn, deadline));
                self.next_retry = Some(self.next_retry.map_or(deadline, |t| t.min(deadline)));
                true
            }
        }
    }

    /// We now hold `have` for `origin` (after a merge, or a record that was not newer)
    /// received from `from`.
    pub fn received(&mut self, origin: PeerName, have: Key, from: ConnId, now: Instant) {
        let Some(w) = self.wants.get_mut(&origin) else {
            return;
        };
        if have >= w.key {
            self.wants.remove(&origin);
            return;
        }
        // still behind: that source is exhausted; ask another one soon
        w.sources.retain(|(_, k)| *k > have);
        if w.pending.is_some_and(|(c, _)| c == from) {
            w.pending = None;
            self.next_retry = Some(now);
        }
    }

    pub fn conn_closed(&mut self, conn: ConnId, now: Instant) {
        for w in self.wants.values_mut() {
            w.sources.retain(|(c, _)| *c != conn);
            if w.pending.is_some_and(|(c, _)| c == conn) {
                w.pending = None;
                self.next_retry = Some(now);
            }
        }
    }

    /// Whether records announced to us are still being fetched.
    pub fn waiting(&self) -> bool {
        !self.wants.is_empty()
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.next_retry
    }

    /// Wants whose request failed or timed out, re-assigned to another source:
    /// `(conn, origin)` pairs to request now. Wants nobody can serve are dropped (the
    /// next digest brings them back).
    pub fn retries(
        &mut self,
        now: Instant,
        timeout: Duration,
        have: impl Fn(&PeerName) -> Option<Key>,
    ) -> Vec<(ConnId, PeerName)> {
        if self.next_retry.is_none_or(|t| t > now) {
            return Vec::new();
        }
        let mut out = Vec::new();
        let mut next: Option<Instant> = None;
        self.wants.retain(|origin, w| {
            if have(origin).is_some_and(|h| h >= w.key) {
                return false;
            }
            match w.pending {
                Some((_, deadline)) if deadline > now => {
                    next = Some(next.map_or(deadline, |t| t.min(deadline)));
                    return true;
                }
                Some((failed, _)) => w.sources.retain(|(c, _)| *c != failed),
                None => {}
            }
            // prefer a source that offered the newest key
            let best = w
                .sources
                .iter()
                .find(|(_, k)| *k >= w.key)
                .or(w.sources.first())
                .copied();
            match best {
                Some((conn, _)) => {
                    let deadline = now + timeout;
                    w.pending = Some((conn, deadline));
                    next = Some(next.map_or(deadline, |t| t.min(deadline)));
                    out.push((conn, *origin));
                    true
                }
                None => false,
            }
        });
        self.next_retry = next;
        out
    }

    #[cfg(test)]
    pub fn wanted(&self) -> usize {
        self.wants.len()
    }
}

/// Length of `v` as a postcard varint.
pub(crate) fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

pub(crate) fn summary_len(s: &Summary) -> usize {
    varint_len(s.origin.as_u64()) + varint_len(s.uid.0) + varint_len(s.version)
}

/// Encoded size of an `Announce` or `Digest` (version byte, variant, channel, entries).
pub(crate) fn summaries_msg_len(entries: &[Summary]) -> usize {
    3 + varint_len(entries.len() as u64) + entries.iter().map(summary_len).sum::<usize>()
}

pub(crate) fn request_len(origins: &[PeerName]) -> usize {
    3 + varint_len(origins.len() as u64)
        + origins
            .iter()
            .map(|o| varint_len(o.as_u64()))
            .sum::<usize>()
}

/// Encoded size of a `Topology`/`Endpoints` message given its records' sizes.
pub(crate) fn records_msg_len(count: usize, records_bytes: usize) -> usize {
    2 + varint_len(count as u64) + records_bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{Channel, Message};

    fn sum(o: u64, v: u64, u: u64) -> Summary {
        Summary {
            origin: PeerName::new(o).unwrap(),
            uid: PeerUid(u),
            version: v,
        }
    }

    #[test]
    fn sizes_match_postcard() {
        for v in [0u64, 1, 127, 128, 16383, 16384, u64::MAX] {
            assert_eq!(
                varint_len(v),
                postcard::to_allocvec(&v).unwrap().len(),
                "{v}"
            );
        }
        let entries = vec![
            sum(1, 1, 0),
            sum(PeerName::MAX, 300, u64::MAX),
            sum(77, 1 << 40, 5),
        ];
        for channel in Channel::ALL {
            let m = Message::Announce {
                channel,
                entries: entries.clone(),
            };
            assert_eq!(summaries_msg_len(&entries), m.encoded_len());
            let m = Message::Digest {
                channel,
                entries: entries.clone(),
            };
            assert_eq!(summaries_msg_len(&entries), m.encoded_len());
            let origins: Vec<PeerName> = entries.iter().map(|s| s.origin).collect();
            let m = Message::Request {
                channel,
                origins: origins.clone(),
            };
            assert_eq!(request_len(&origins), m.encoded_len());
        }
        assert_eq!(
            summaries_msg_len(&[]),
            Message::Digest {
                channel: Channel::Endpoints,
                entries: vec![]
            }
            .encoded_len()
        );
    }

    #[test]
    fn one_request_in_flight_then_retry_elsewhere() {
        let t0 = Instant::now();
        let to = Duration::from_millis(300);
        let mut ch = ChannelState::default();
        let s = sum(5, 3, 1);
        assert!(ch.offer(&s, None, 1, t0, to), "first offer is requested");
        assert!(!ch.offer(&s, None, 2, t0, to), "second neighbour waits");
        assert!(!ch.offer(&s, Some((3, PeerUid(1))), 3, t0, to), "not newer");
        assert!(ch
            .retries(t0 + Duration::from_millis(100), to, |_| None)
            .is_empty());
        // timeout: asked again, from neighbour 2
        let r = ch.retries(t0 + to, to, |_| None);
        assert_eq!(r, vec![(2, s.origin)]);
        // neighbour 2 goes away: nobody left, want dropped
        ch.conn_closed(2, t0 + to);
        assert!(ch.retries(t0 + to, to, |_| None).is_empty());
        assert_eq!(ch.wanted(), 0);
    }

    #[test]
    fn satisfied_wants_are_dropped_and_tombstones_suppress() {
        let t0 = Instant::now();
        let to = Duration::from_millis(300);
        let mut ch = ChannelState::default();
        let s = sum(5, 3, 1);
        assert!(ch.offer(&s, None, 1, t0, to));
        ch.received(s.origin, s.key(), 1, t0);
        assert_eq!(ch.wanted(), 0);
        ch.tombstone(&s, t0);
        assert!(
            !ch.offer(&s, None, 1, t0, to),
            "collected version is not wanted back"
        );
        assert!(!ch.offer(&sum(5, 2, 1), None, 1, t0, to));
        assert!(
            ch.offer(&sum(5, 4, 1), None, 1, t0, to),
            "a newer version is"
        );
        ch.tombstone(&s, t0);
        assert!(
            ch.offer(&sum(5, 1, 9), None, 1, t0, to),
            "a new incarnation is"
        );
        ch.tombstone(&s, t0);
        ch.expire_tombstones(t0 + Duration::from_secs(61), Duration::from_secs(60));
        assert!(!ch.suppressed(&s));
    }
}
