//! Reassembly of frames that crossed the sleeve in pieces, at their destination only.
//!
//! Pieces of one frame share `(src, id)`; they may arrive in any order and any split (a relay
//! may have split a piece again). Memory is bounded: at most `max_entries` partial frames,
//! each at most [`MAX_FRAME`](crate::records::MAX_FRAME) bytes; when the table is full the
//! entry started longest ago is evicted, and an entry whose first piece is older than the
//! timeout is dropped. A piece that overlaps bytes already received (a duplicate), or whose
//! frame length, destination or offload block disagrees with the entry's, drops the whole
//! entry: honest senders never produce either. Completed frames hand their buffer to the
//! caller, who gives it back with [`Reassembler::recycle`] so steady-state reassembly does
//! not allocate.

use std::time::{Duration, Instant};

use crate::offload::Offload;
use crate::records::RecordHeader;

/// Most disjoint byte ranges one partial frame may have; beyond it the entry is dropped
/// (bounds the work per piece against a sender spraying tiny out-of-order pieces).
pub const MAX_RANGES: usize = 64;

/// A frame put back together.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reassembled {
    /// The node whose pod sent it.
    pub src: u64,
    /// Its destination: this node or [`BROADCAST`](crate::records::BROADCAST).
    pub dst: u64,
    /// Its frame id.
    pub id: u32,
    /// Its offload header.
    pub offload: Option<Offload>,
    /// The frame. Give it back with [`Reassembler::recycle`] when done.
    pub frame: Vec<u8>,
}

/// Counters since creation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReasmStats {
    /// Frames completed (including whole records pushed by mistake).
    pub completed: u64,
    /// Partial frames evicted because the table was full.
    pub evicted: u64,
    /// Partial frames dropped after the timeout.
    pub expired: u64,
    /// Pieces rejected: invalid, overlapping or inconsistent (the entry is dropped too).
    pub rejected: u64,
}

struct Entry {
    src: u64,
    dst: u64,
    id: u32,
    total: u32,
    offload: Option<Offload>,
    started: Instant,
    have: u32,
    frame: Vec<u8>,
    /// Received byte ranges `[start, end)`, sorted, disjoint, not adjacent.
    ranges: Vec<(u32, u32)>,
}

/// Bounded reassembly table.
pub struct Reassembler {
    entries: Vec<Entry>,
    max_entries: usize,
    timeout: Duration,
    frames: Vec<Vec<u8>>,
    range_pool: Vec<Vec<(u32, u32)>>,
    stats: ReasmStats,
}

impl core::fmt::Debug for Reassembler {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Reassembler")
            .field("pending", &self.entries.len())
            .field("max_entries", &self.max_entries)
            .field("timeout", &self.timeout)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// Adds `[start, end)` to a sorted list of disjoint ranges, merging neighbours. `false` if
/// it overlaps a range already there (the list is then unchanged).
fn insert_range(ranges: &mut Vec<(u32, u32)>, start: u32, end: u32) -> bool {
    let i = ranges.partition_point(|&(s, _)| s < start);
    let joins_prev = match i.checked_sub(1).and_then(|p| ranges.get(p)) {
        Some(&(_, pe)) if pe > start => return false,
        Some(&(_, pe)) => pe == start,
        None => false,
    };
    let joins_next = match ranges.get(i) {
        Some(&(ns, _)) if ns < end => return false,
        Some(&(ns, _)) => ns == end,
        None => false,
    };
    match (joins_prev, joins_next) {
        (true, true) => {
            let ne = ranges[i].1;
            ranges[i - 1].1 = ne;
            ranges.remove(i);
        }
        (true, false) => ranges[i - 1].1 = end,
        (false, true) => ranges[i].0 = start,
        (false, false) => ranges.insert(i, (start, end)),
    }
    true
}

impl Reassembler {
    /// A table of at most `max_entries` partial frames (at least 1), each kept at most
    /// `timeout` after its first piece.
    pub fn new(max_entries: usize, timeout: Duration) -> Self {
        let max_entries = max_entries.max(1);
        Reassembler {
            entries: Vec::with_capacity(max_entries),
            max_entries,
            timeout,
            frames: Vec::new(),
            range_pool: Vec::new(),
            stats: ReasmStats::default(),
        }
    }

    /// Adds one piece. Returns the frame when this piece completes it. Whole records need
    /// no reassembly (callers should deliver them directly; if pushed, they come straight
    /// back). Invalid, overlapping or inconsistent pieces are rejected and drop their entry.
    pub fn push(&mut self, hdr: &RecordHeader, data: &[u8], now: Instant) -> Option<Reassembled> {
        if data.len() != usize::from(hdr.len) || !hdr.is_valid() {
            self.stats.rejected += 1;
            return None;
        }
        if hdr.is_whole() {
            let mut frame = self.frame_buf();
            frame.extend_from_slice(data);
            self.stats.completed += 1;
            return Some(Reassembled {
                src: hdr.src,
                dst: hdr.dst,
                id: hdr.id,
                offload: hdr.offload,
                frame,
            });
        }
        let start = hdr.offset;
        let end = hdr.offset + u32::from(hdr.len);
        let found = self
            .entries
            .iter()
            .position(|e| e.src == hdr.src && e.id == hdr.id);
        let i = match found {
            Some(i) if now.saturating_duration_since(self.entries[i].started) >= self.timeout => {
                self.stats.expired += 1;
                self.drop_entry(i);
                self.start_entry(hdr, now)
            }
            Some(i) => i,
            None => self.start_entry(hdr, now),
        };
        let e = &mut self.entries[i];
        let consistent = e.total == hdr.total && e.dst == hdr.dst && e.offload == hdr.offload;
        if !consistent || !insert_range(&mut e.ranges, start, end) || e.ranges.len() > MAX_RANGES {
            self.stats.rejected += 1;
            self.drop_entry(i);
            return None;
        }
        // `end <= total == frame.len()` was checked by `is_valid` and `consistent`.
        e.frame[start as usize..end as usize].copy_from_slice(data);
        e.have += u32::from(hdr.len);
        if e.have < e.total {
            return None;
        }
        let e = self.entries.swap_remove(i);
        self.stats.completed += 1;
        self.give_ranges(e.ranges);
        Some(Reassembled {
            src: e.src,
            dst: e.dst,
            id: e.id,
            offload: e.offload,
            frame: e.frame,
        })
    }

    /// Starts an entry for `hdr`'s frame (evicting the oldest when full); returns its index.
    fn start_entry(&mut self, hdr: &RecordHeader, now: Instant) -> usize {
        if self.entries.len() >= self.max_entries {
            let oldest = self
                .entries
                .iter()
                .enumerate()
                .min_by_key(|(_, e)| e.started)
                .map(|(i, _)| i);
            if let Some(o) = oldest {
                self.stats.evicted += 1;
                self.drop_entry(o);
            }
        }
        let mut frame = self.frame_buf();
        frame.resize(hdr.total as usize, 0);
        let mut ranges = self.range_pool.pop().unwrap_or_default();
        ranges.clear();
        self.entries.push(Entry {
            src: hdr.src,
            dst: hdr.dst,
            id: hdr.id,
            total: hdr.total,
            offload: hdr.offload,
            started: now,
            have: 0,
            frame,
            ranges,
        });
        self.entries.len() - 1
    }

    fn frame_buf(&mut self) -> Vec<u8> {
        let mut f = self.frames.pop().unwrap_or_default();
        f.clear();
        f
    }

    fn give_ranges(&mut self, r: Vec<(u32, u32)>) {
        if self.range_pool.len() < self.max_entries {
            self.range_pool.push(r);
        }
    }

    fn drop_entry(&mut self, i: usize) {
        let e = self.entries.swap_remove(i);
        self.recycle(e.frame);
        self.give_ranges(e.ranges);
    }

    /// Drops partial frames whose first piece arrived `timeout` or more before `now`.
    pub fn expire(&mut self, now: Instant) {
        let mut i = 0;
        while i < self.entries.len() {
            if now.saturating_duration_since(self.entries[i].started) >= self.timeout {
                self.stats.expired += 1;
                self.drop_entry(i);
            } else {
                i += 1;
            }
        }
    }

    /// Gives a completed frame's buffer back for reuse (kept up to `max_entries` buffers).
    pub fn recycle(&mut self, buf: Vec<u8>) {
        if self.frames.len() < self.max_entries {
            self.frames.push(buf);
        }
    }

    /// The counters.
    pub fn stats(&self) -> ReasmStats {
        self.stats
    }

    /// Partial frames currently held.
    pub fn pending(&self) -> usize {
        self.entries.len()
    }

    /// When the oldest partial frame expires, if any (for the caller's timer).
    pub fn next_timeout(&self) -> Option<Instant> {
        self.entries.iter().map(|e| e.started + self.timeout).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_merge_and_refuse_overlap() {
        let mut r = Vec::new();
        assert!(insert_range(&mut r, 10, 20));
        assert!(insert_range(&mut r, 30, 40));
        assert!(insert_range(&mut r, 0, 5));
        assert_eq!(r, vec![(0, 5), (10, 20), (30, 40)]);
        assert!(!insert_range(&mut r, 19, 25));
        assert!(!insert_range(&mut r, 25, 31));
        assert!(!insert_range(&mut r, 12, 13));
        assert!(!insert_range(&mut r, 0, 50));
        assert_eq!(r, vec![(0, 5), (10, 20), (30, 40)]);
        assert!(insert_range(&mut r, 20, 30));
        assert_eq!(r, vec![(0, 5), (10, 40)]);
        assert!(insert_range(&mut r, 5, 10));
        assert_eq!(r, vec![(0, 40)]);
        assert!(insert_range(&mut r, 40, 41));
        assert_eq!(r, vec![(0, 41)]);
    }
}
