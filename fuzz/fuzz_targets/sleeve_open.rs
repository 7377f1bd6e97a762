//! `RxSession::open` with fixed keys, in both modes: arbitrary bytes (with or without the
//! right receiver index) never panic and are never accepted as encrypted packets; a genuine
//! packet carrying the input opens to it, and with any one byte changed it is refused.
#![no_main]

use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use weft_sleeve::session::{Mode, RekeyPolicy, SessionKeys};
use weft_sleeve::wire::{PacketType, HEADER_LEN, TAG_LEN};

const H: [u8; 32] = [7; 32];
const KI: [u8; 32] = [8; 32];
const KR: [u8; 32] = [9; 32];

fuzz_target!(|data: &[u8]| {
    let now = Instant::now();
    for mode in [Mode::Encrypted, Mode::Plain] {
        let policy = RekeyPolicy {
            after_packets: 2,
            ..RekeyPolicy::default()
        };
        let (mut tx, _) = SessionKeys::new(H, KI, KR, true).split(mode, policy, now);
        let (_, mut rx) = SessionKeys::new(H, KI, KR, false).split(mode, policy, now);

        // Arbitrary bytes, then the same with the right receiver index.
        let mut buf = data.to_vec();
        for fix in [false, true] {
            if fix && buf.len() >= 8 {
                buf[4..8].copy_from_slice(&rx.local_index().to_be_bytes());
            }
            let mut b = buf.clone();
            if let Ok((_, range)) = rx.open(&mut b, now) {
                assert_eq!(mode, Mode::Plain, "forged encrypted packet accepted");
                assert_eq!(range, HEADER_LEN..b.len());
            }
        }

        // A genuine packet (after two rekeys, to exercise the key chain) opens to the input.
        let mut scratch = [0u8; HEADER_LEN + TAG_LEN];
        for _ in 0..4 {
            tx.seal(PacketType::Keepalive, &mut scratch, 0, now)
                .expect("seal");
        }
        let mut pkt = vec![0u8; HEADER_LEN + data.len() + TAG_LEN];
        pkt[HEADER_LEN..HEADER_LEN + data.len()].copy_from_slice(data);
        let n = tx
            .seal(PacketType::Data, &mut pkt, data.len(), now)
            .expect("seal");
        pkt.truncate(n);
        if let Some(&sel) = data.first() {
            let mut bad = pkt.clone();
            let i = usize::from(sel) * 7 % bad.len();
            bad[i] ^= 1 << (sel % 8);
            let r = rx.open(&mut bad, now);
            if mode == Mode::Encrypted {
                assert!(r.is_err(), "tampered byte {i} accepted");
            }
        }
        let mut good = pkt.clone();
        if let Ok((_, range)) = rx.open(&mut good, now) {
            assert_eq!(&good[range], data);
        } else {
            // Only plain mode can have consumed the counter with the tampered copy above.
            assert_eq!(mode, Mode::Plain, "genuine packet refused");
        }
    }
});
