//! Reassembly: any order, re-split pieces, duplicates and inconsistencies, eviction,
//! expiry, buffer reuse, and hostile piece streams (proptest).

use std::time::{Duration, Instant};

use proptest::prelude::*;
use weft_sleeve::reasm::{ReasmStats, Reassembler};
use weft_sleeve::records::{pieces, Offload, RecordHeader};

const TIMEOUT: Duration = Duration::from_secs(1);

fn frame(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(13).wrapping_add(seed))
        .collect()
}

/// The pieces of `f` (frame `id` from `src`) for records of at most `room` bytes.
fn split(f: &[u8], src: u64, id: u32, room: usize) -> Vec<(RecordHeader, Vec<u8>)> {
    pieces(0, f.len() as u32, room, false)
        .map(|(o, l)| {
            let h = RecordHeader {
                dst: 1,
                src,
                id,
                offset: o,
                total: f.len() as u32,
                len: l,
                offload: None,
            };
            (h, f[o as usize..o as usize + usize::from(l)].to_vec())
        })
        .collect()
}

fn feed(r: &mut Reassembler, ps: &[(RecordHeader, Vec<u8>)], now: Instant) -> Vec<Vec<u8>> {
    ps.iter()
        .filter_map(|(h, d)| r.push(h, d, now))
        .map(|x| x.frame)
        .collect()
}

#[test]
fn in_order_reverse_and_shuffled() {
    let now = Instant::now();
    let f = frame(5000, 1);
    let ps = split(&f, 9, 1, 1000);
    assert_eq!(ps.len(), 6);
    let mut r = Reassembler::new(8, TIMEOUT);
    for (i, (h, d)) in ps.iter().enumerate() {
        let out = r.push(h, d, now);
        assert_eq!(out.is_some(), i == ps.len() - 1);
        if let Some(x) = out {
            assert_eq!((x.src, x.id, x.frame), (9, 1, f.clone()));
        }
    }
    let mut rev = split(&f, 9, 2, 1000);
    rev.reverse();
    assert_eq!(feed(&mut r, &rev, now), vec![f.clone()]);
    let mut mixed = split(&f, 9, 3, 700);
    let n = mixed.len();
    for i in 0..n {
        mixed.swap(i, (i * 7 + 3) % n);
    }
    assert_eq!(feed(&mut r, &mixed, now), vec![f.clone()]);
    assert_eq!(r.pending(), 0);
    assert_eq!(r.stats().completed, 3);
}

#[test]
fn interleaved_frames_and_sources() {
    let now = Instant::now();
    let a = frame(3000, 1);
    let b = frame(2500, 2);
    let pa = split(&a, 1, 5, 600);
    let pb = split(&b, 2, 5, 600); // same id, other source: another frame
    let mut r = Reassembler::new(8, TIMEOUT);
    let mut got = Vec::new();
    for i in 0..pa.len().max(pb.len()) {
        for p in [pa.get(i), pb.get(i)].into_iter().flatten() {
            if let Some(x) = r.push(&p.0, &p.1, now) {
                got.push((x.src, x.frame));
            }
        }
    }
    got.sort();
    assert_eq!(got, vec![(1, a), (2, b)]);
}

#[test]
fn relay_resplit_pieces_combine() {
    // A relay splits piece 1 of 3 further; the destination sees a mix of sizes.
    let now = Instant::now();
    let f = frame(3000, 3);
    let ps = split(&f, 4, 8, 1027); // 1000-byte pieces
    let mut all = vec![ps[0].clone(), ps[2].clone()];
    let (h1, _) = &ps[1];
    for (o, l) in pieces(h1.offset, u32::from(h1.len), 300, false) {
        let h = RecordHeader {
            offset: o,
            len: l,
            ..*h1
        };
        all.push((h, f[o as usize..o as usize + usize::from(l)].to_vec()));
    }
    let mut r = Reassembler::new(8, TIMEOUT);
    assert_eq!(feed(&mut r, &all, now), vec![f]);
}

#[test]
fn duplicates_overlaps_and_inconsistencies_drop_the_entry() {
    let now = Instant::now();
    let f = frame(3000, 5);
    let ps = split(&f, 1, 1, 1027);
    let mut r = Reassembler::new(8, TIMEOUT);

    // Duplicate.
    assert!(r.push(&ps[0].0, &ps[0].1, now).is_none());
    assert!(r.push(&ps[0].0, &ps[0].1, now).is_none());
    assert_eq!(r.pending(), 0);
    assert_eq!(r.stats().rejected, 1);

    // Overlap with a different split.
    let h = ps[1].0;
    r.push(&h, &ps[1].1, now);
    let over = RecordHeader {
        offset: h.offset + 10,
        len: 20,
        ..h
    };
    assert!(r
        .push(&over, &f[over.offset as usize..][..20], now)
        .is_none());
    assert_eq!(r.pending(), 0);

    // Inconsistent total, destination, offload.
    for bad in [
        RecordHeader {
            total: 3001,
            ..ps[2].0
        },
        RecordHeader { dst: 2, ..ps[2].0 },
        RecordHeader {
            offload: Some(Offload {
                flags: 1,
                ..Offload::default()
            }),
            ..ps[2].0
        },
    ] {
        r.push(&ps[0].0, &ps[0].1, now);
        assert_eq!(r.pending(), 1);
        assert!(r.push(&bad, &ps[2].1, now).is_none());
        assert_eq!(r.pending(), 0, "{bad:?}");
    }
    // Data length disagreeing with the header; invalid headers.
    assert!(r.push(&ps[0].0, &ps[0].1[1..], now).is_none());
    let outside = RecordHeader {
        offset: 2990,
        ..ps[0].0
    };
    assert!(r.push(&outside, &ps[0].1, now).is_none());
    assert_eq!(r.stats().rejected, 7);
    assert_eq!(r.stats().completed, 0);
    // The table still works.
    assert_eq!(feed(&mut r, &ps, now), vec![f]);
}

#[test]
fn whole_records_come_straight_back() {
    let now = Instant::now();
    let mut r = Reassembler::new(8, TIMEOUT);
    let h = RecordHeader::whole(1, 2, 3, 5, None);
    let x = r.push(&h, b"hello", now).unwrap();
    assert_eq!((x.src, x.frame.as_slice()), (2, &b"hello"[..]));
    assert_eq!(r.pending(), 0);
}

#[test]
fn eviction_of_the_oldest_when_full() {
    let t0 = Instant::now();
    let mut r = Reassembler::new(4, TIMEOUT);
    let frames: Vec<_> = (0..5u32).map(|i| frame(2000, i as u8)).collect();
    let ps: Vec<_> = frames
        .iter()
        .enumerate()
        .map(|(i, f)| split(f, 1, i as u32, 1027))
        .collect();
    for (i, p) in ps.iter().enumerate() {
        assert!(r
            .push(&p[0].0, &p[0].1, t0 + Duration::from_millis(i as u64))
            .is_none());
    }
    assert_eq!(r.pending(), 4);
    assert_eq!(r.stats().evicted, 1);
    let t = t0 + Duration::from_millis(10);
    // Frame 0 was evicted: its second piece starts a new entry that cannot complete.
    assert!(r.push(&ps[0][1].0, &ps[0][1].1, t).is_none());
    // That push evicted frame 1 in turn; 2..5 complete.
    for (i, p) in ps.iter().enumerate().skip(2) {
        let x = r.push(&p[1].0, &p[1].1, t).unwrap();
        assert_eq!(x.frame, frames[i]);
    }
    assert_eq!(r.stats().evicted, 2);
}

#[test]
fn expiry_by_timer_and_on_arrival() {
    let t0 = Instant::now();
    let f = frame(2000, 7);
    let ps = split(&f, 1, 1, 1027);
    let mut r = Reassembler::new(4, TIMEOUT);
    r.push(&ps[0].0, &ps[0].1, t0);
    assert_eq!(r.next_timeout(), Some(t0 + TIMEOUT));
    r.expire(t0 + TIMEOUT - Duration::from_millis(1));
    assert_eq!(r.pending(), 1);
    r.expire(t0 + TIMEOUT);
    assert_eq!(r.pending(), 0);
    assert_eq!(r.next_timeout(), None);
    // A late piece of an expired entry that was not yet cleaned up starts over.
    r.push(&ps[0].0, &ps[0].1, t0);
    assert!(r.push(&ps[1].0, &ps[1].1, t0 + TIMEOUT * 2).is_none());
    assert_eq!(r.pending(), 1);
    assert_eq!(
        r.stats(),
        ReasmStats {
            completed: 0,
            evicted: 0,
            expired: 2,
            rejected: 0
        }
    );
    // The restarted entry completes with the other piece.
    assert_eq!(
        r.push(&ps[0].0, &ps[0].1, t0 + TIMEOUT * 2).unwrap().frame,
        f
    );
}

#[test]
fn recycled_buffers_are_reused() {
    let now = Instant::now();
    let f = frame(4000, 2);
    let mut r = Reassembler::new(4, TIMEOUT);
    let x = feed(&mut r, &split(&f, 1, 1, 1027), now).pop().unwrap();
    let ptr = x.as_ptr();
    r.recycle(x);
    let y = feed(&mut r, &split(&f, 1, 2, 1027), now).pop().unwrap();
    assert_eq!(
        y.as_ptr(),
        ptr,
        "the recycled allocation carries the next frame"
    );
    assert_eq!(y, f);
}

#[test]
fn too_many_fragments_are_refused() {
    let now = Instant::now();
    let mut r = Reassembler::new(4, TIMEOUT);
    // Every other byte of a 1000-byte frame: 65 disjoint ranges is one too many.
    for i in 0..65u32 {
        let h = RecordHeader {
            dst: 1,
            src: 1,
            id: 1,
            offset: i * 2,
            total: 1000,
            len: 1,
            offload: None,
        };
        r.push(&h, &[0], now);
    }
    assert_eq!(r.pending(), 0);
    assert_eq!(r.stats().rejected, 1);
}

proptest! {
    #[test]
    fn any_order_any_split_completes_exactly_once(
        len in 2usize..9000,
        room in 28usize..3000,
        seed in any::<u64>(),
    ) {
        let now = Instant::now();
        let f = frame(len, seed as u8);
        // At most 100 pieces: at most 50 disjoint ranges, within MAX_RANGES.
        let room = room.max(27 + len.div_ceil(100));
        let mut ps = split(&f, 3, 4, room);
        let mut x = seed | 1;
        for i in (1..ps.len()).rev() {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            ps.swap(i, (x % (i as u64 + 1)) as usize);
        }
        let mut r = Reassembler::new(2, TIMEOUT);
        let out = feed(&mut r, &ps, now);
        prop_assert!(out == vec![f], "{} frames out", out.len());
        prop_assert_eq!(r.pending(), 0);
    }

    #[test]
    fn hostile_piece_streams_never_panic(
        ps in proptest::collection::vec(
            (0u64..4, 0u32..4, 0u32..3000, 0u32..3000, 0u16..3000, any::<bool>(), 0u64..3000),
            0..200,
        )
    ) {
        let t0 = Instant::now();
        let mut r = Reassembler::new(3, TIMEOUT);
        let data = vec![0xab; 3000];
        for (src, id, offset, total, len, off, ms) in ps {
            let h = RecordHeader {
                dst: 1, src, id, offset, total, len,
                offload: off.then(Offload::default),
            };
            let now = t0 + Duration::from_millis(ms);
            if let Some(x) = r.push(&h, &data[..usize::from(len)], now) {
                prop_assert_eq!(x.frame.len() as u32, total);
                r.recycle(x.frame);
            }
            prop_assert!(r.pending() <= 3);
            r.expire(now);
        }
    }
}
