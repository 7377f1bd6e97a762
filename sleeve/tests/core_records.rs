//! Records and packet headers: roundtrips, many records per payload, splitting, and
//! hostile bytes (proptest).

use std::time::Instant;

use proptest::prelude::*;
use weft_sleeve::reasm::Reassembler;
use weft_sleeve::records::{
    header_len, max_piece, pieces, write_record, Offload, RecordError, RecordHeader, Records,
    BROADCAST, MAX_FRAME, RECORD_HEADER_LEN,
};
use weft_sleeve::session::{Mode, RekeyPolicy, SessionKeys};
use weft_sleeve::wire::{peek_receiver, Header, PacketType, WireError, HEADER_LEN, TAG_LEN};

fn frame(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn tso() -> Offload {
    Offload {
        flags: 1,
        gso_type: 1,
        hdr_len: 66,
        gso_size: 1448,
        csum_start: 34,
        csum_offset: 16,
    }
}

#[test]
fn many_records_in_one_payload() {
    let mut buf = vec![0u8; 20_000];
    let mut at = 0;
    let mut expect = Vec::new();
    for i in 0..60u32 {
        let len = 1 + (i as usize * 37) % 300;
        let data = frame(len, i as u8);
        let hdr = RecordHeader {
            dst: if i % 7 == 0 {
                BROADCAST
            } else {
                0x0000_1234_5678 + u64::from(i)
            },
            src: 0xfedc_ba98_7654 - u64::from(i),
            id: i * 1000,
            offset: i % 3,
            total: len as u32 + i % 3 + i % 5,
            len: len as u16,
            offload: (i % 2 == 0).then(tso),
        };
        let n = write_record(&mut buf[at..], &hdr, &data).unwrap();
        assert_eq!(n, hdr.record_len());
        at += n;
        expect.push((hdr, data));
    }
    let got: Vec<_> = Records::new(&buf[..at])
        .map(|r| r.map(|(h, d)| (h, d.to_vec())))
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(got, expect);
}

#[test]
fn write_record_reports_room() {
    let h = RecordHeader::whole(1, 2, 3, 100, Some(tso()));
    let data = frame(100, 0);
    let mut out = vec![0u8; 137];
    assert_eq!(write_record(&mut out[..136], &h, &data), None);
    assert!(
        out.iter().all(|&b| b == 0),
        "nothing written when it does not fit"
    );
    assert_eq!(write_record(&mut out, &h, &data), Some(137));
    assert_eq!(header_len(true), 37);
    assert_eq!(max_piece(137, true), 100);
    assert_eq!(max_piece(36, true), 0);
}

#[test]
fn offload_frame_crosses_as_pieces_in_sealed_datagrams() {
    // A 64 KB TSO frame, split to fill 1500-byte datagrams, sealed, opened, parsed and
    // reassembled in reverse order.
    let now = Instant::now();
    let (mut tx, _) = SessionKeys::new([1; 32], [2; 32], [3; 32], true).split(
        Mode::Encrypted,
        RekeyPolicy::default(),
        now,
    );
    let (_, mut rx) = SessionKeys::new([1; 32], [2; 32], [3; 32], false).split(
        Mode::Encrypted,
        RekeyPolicy::default(),
        now,
    );
    let f = frame(65_549, 9);
    let room = 1500 - 28 - tx.overhead();
    let mut datagrams = Vec::new();
    for (off, len) in pieces(0, f.len() as u32, room, true) {
        let hdr = RecordHeader {
            dst: 0x0a,
            src: 0x0b,
            id: 77,
            offset: off,
            total: f.len() as u32,
            len,
            offload: Some(tso()),
        };
        let mut buf = vec![0u8; 1500 - 28];
        let n = write_record(
            &mut buf[HEADER_LEN..],
            &hdr,
            &f[off as usize..off as usize + usize::from(len)],
        )
        .unwrap();
        let sealed = tx.seal(PacketType::Data, &mut buf, n, now).unwrap();
        assert!(sealed <= 1500 - 28);
        buf.truncate(sealed);
        datagrams.push(buf);
    }
    assert_eq!(datagrams.len(), 65_549usize.div_ceil(room - 37));
    // All but the last are full: same-size datagrams for UDP GSO.
    assert!(datagrams[..datagrams.len() - 1]
        .iter()
        .all(|d| d.len() == 1500 - 28));
    let mut reasm = Reassembler::new(8, std::time::Duration::from_secs(1));
    let mut done = None;
    for mut d in datagrams.into_iter().rev() {
        assert_eq!(peek_receiver(&d), Some(rx.local_index()));
        let (h, range) = rx.open(&mut d, now).unwrap();
        assert_eq!(h.ptype, PacketType::Data);
        for rec in Records::new(&d[range]) {
            let (rh, data) = rec.unwrap();
            assert!(!rh.is_whole());
            if let Some(r) = reasm.push(&rh, data, now) {
                done = Some(r);
            }
        }
    }
    let r = done.expect("frame completed");
    assert_eq!(
        (r.src, r.dst, r.id, r.offload),
        (0x0b, 0x0a, 77, Some(tso()))
    );
    assert_eq!(r.frame, f);
}

#[test]
fn limits() {
    let mut out = vec![0u8; 100];
    let h = RecordHeader {
        dst: 1,
        src: 2,
        id: 0,
        offset: MAX_FRAME - 3,
        total: MAX_FRAME,
        len: 3,
        offload: None,
    };
    let n = write_record(&mut out, &h, b"end").unwrap();
    assert_eq!(Records::new(&out[..n]).next(), Some(Ok((h, &b"end"[..]))));
    // total = MAX_FRAME + 1 on the wire is refused.
    out[26] += 1;
    assert_eq!(
        Records::new(&out[..n]).next(),
        Some(Err(RecordError::TooLarge))
    );
    // offset + len overflowing u32 is a range error, not a wraparound.
    out[19..23].copy_from_slice(&u32::MAX.to_be_bytes());
    out[23..27].copy_from_slice(&100u32.to_be_bytes());
    assert_eq!(
        Records::new(&out[..n]).next(),
        Some(Err(RecordError::BadRange))
    );
}

fn arb_header() -> impl Strategy<Value = RecordHeader> {
    (
        0u64..=0xFFFF_FFFF_FFFF,
        0u64..=0xFFFF_FFFF_FFFF,
        any::<u32>(),
        1u16..2000,
        0u32..70_000,
        any::<Option<(u8, u8, u16, u16, u16, u16)>>(),
    )
        .prop_map(|(dst, src, id, len, offset, off)| {
            let offset = offset.min(MAX_FRAME - u32::from(len));
            RecordHeader {
                dst,
                src,
                id,
                offset,
                total: (offset + u32::from(len) + id % 100).min(MAX_FRAME),
                len,
                offload: off.map(|(a, b, c, d, e, f)| Offload {
                    flags: a,
                    gso_type: b,
                    hdr_len: c,
                    gso_size: d,
                    csum_start: e,
                    csum_offset: f,
                }),
            }
        })
}

proptest! {
    #[test]
    fn header_parse_never_panics_and_roundtrips(bytes in proptest::collection::vec(any::<u8>(), 0..40)) {
        match Header::parse(&bytes) {
            Ok(h) => {
                prop_assert_eq!(&h.encode()[..], &bytes[..HEADER_LEN]);
                prop_assert_eq!(peek_receiver(&bytes), Some(h.receiver));
            }
            Err(e) => prop_assert_eq!(e == WireError::Short, bytes.len() < HEADER_LEN),
        }
    }

    #[test]
    fn records_never_panic_on_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let mut n = 0;
        let mut failed = false;
        for r in Records::new(&bytes) {
            prop_assert!(!failed, "nothing after an error");
            match r {
                Ok((h, data)) => {
                    n += 1;
                    prop_assert_eq!(data.len(), usize::from(h.len));
                    prop_assert!(h.is_valid());
                    // What parses re-encodes to the same bytes.
                    let mut out = vec![0u8; h.record_len()];
                    prop_assert_eq!(write_record(&mut out, &h, data), Some(h.record_len()));
                }
                Err(_) => failed = true,
            }
        }
        prop_assert!(n <= bytes.len() / (RECORD_HEADER_LEN + 1));
        let mut reasm = Reassembler::new(4, std::time::Duration::from_secs(1));
        for (h, d) in Records::new(&bytes).flatten() {
            let _ = reasm.push(&h, d, Instant::now());
        }
    }

    #[test]
    fn records_roundtrip(hs in proptest::collection::vec(arb_header(), 1..8)) {
        let mut buf = vec![0u8; 8 * 2100];
        let mut at = 0;
        for (i, h) in hs.iter().enumerate() {
            let data = frame(usize::from(h.len), i as u8);
            at += write_record(&mut buf[at..], h, &data).unwrap();
        }
        let got: Vec<RecordHeader> = Records::new(&buf[..at]).map(|r| r.unwrap().0).collect();
        prop_assert_eq!(got, hs);
    }

    #[test]
    fn pieces_tile_the_range(offset in 0u32..100_000, len in 0u32..200_000, room in 0usize..70_000, off in any::<bool>()) {
        let mut next = offset;
        let mut count = 0;
        for (o, l) in pieces(offset, len, room, off) {
            prop_assert_eq!(o, next);
            prop_assert!(l > 0);
            prop_assert!(header_len(off) + usize::from(l) <= room);
            next += u32::from(l);
            count += 1;
        }
        prop_assert_eq!(count, pieces(offset, len, room, off).len());
        if max_piece(room, off) > 0 {
            prop_assert_eq!(next, offset + len);
        } else {
            prop_assert_eq!(count, 0);
        }
    }
}

#[test]
fn tag_len_is_sixteen() {
    // The record layer sizes datagrams from these; keep them pinned.
    assert_eq!((HEADER_LEN, TAG_LEN, RECORD_HEADER_LEN), (16, 16, 27));
}
