//! Sessions: sealing and opening in both modes, the key schedule against an independent
//! computation of docs/sleeve.md, tampering, replays, reordering, rekeying and grace.

use std::time::{Duration, Instant};

use blake2::Blake2s256;
use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::{ChaCha20Poly1305, KeyInit};
use hkdf::SimpleHkdf;
use proptest::prelude::*;
use weft_sleeve::session::{
    Mode, OpenError, RekeyPolicy, RxSession, SealError, SessionKeys, TxSession,
};
use weft_sleeve::wire::{Header, PacketType, HEADER_LEN, TAG_LEN};

const H: [u8; 32] = [0x11; 32];
const KI: [u8; 32] = [0x22; 32];
const KR: [u8; 32] = [0x33; 32];

struct Side {
    tx: TxSession,
    rx: RxSession,
}

fn pair(mode: Mode, policy: RekeyPolicy, now: Instant) -> (Side, Side) {
    let (tx, rx) = SessionKeys::new(H, KI, KR, true).split(mode, policy, now);
    let a = Side { tx, rx };
    let (tx, rx) = SessionKeys::new(H, KI, KR, false).split(mode, policy, now);
    (a, Side { tx, rx })
}

fn seal(tx: &mut TxSession, payload: &[u8], now: Instant) -> Vec<u8> {
    let mut buf = vec![0u8; HEADER_LEN + payload.len() + TAG_LEN];
    buf[HEADER_LEN..HEADER_LEN + payload.len()].copy_from_slice(payload);
    let n = tx
        .seal(PacketType::Data, &mut buf, payload.len(), now)
        .expect("seal");
    buf.truncate(n);
    buf
}

fn open(rx: &mut RxSession, pkt: &[u8], now: Instant) -> Result<(Header, Vec<u8>), OpenError> {
    let mut b = pkt.to_vec();
    let (h, r) = rx.open(&mut b, now)?;
    Ok((h, b[r].to_vec()))
}

fn hkdf(salt: &[u8], ikm: &[u8], info: &[u8]) -> [u8; 32] {
    let mut okm = [0u8; 32];
    SimpleHkdf::<Blake2s256>::new(Some(salt), ikm)
        .expand(info, &mut okm)
        .unwrap();
    okm
}

fn policy_packets(n: u64) -> RekeyPolicy {
    RekeyPolicy {
        after_packets: n,
        ..RekeyPolicy::default()
    }
}

#[test]
fn indices_follow_the_spec_and_match_across_sides() {
    let i = SessionKeys::new(H, KI, KR, true);
    let r = SessionKeys::new(H, KI, KR, false);
    let to_i = hkdf(&H, &H, b"weft sleeve v1 index i");
    let to_r = hkdf(&H, &H, b"weft sleeve v1 index r");
    assert_eq!(i.local_index().to_be_bytes(), to_i[..4]);
    assert_eq!(r.local_index().to_be_bytes(), to_r[..4]);
    assert_eq!(i.local_index(), r.remote_index());
    assert_eq!(r.local_index(), i.remote_index());
    assert_ne!(i.local_index(), i.remote_index());
    let now = Instant::now();
    let (itx, irx) = i.split(Mode::Encrypted, RekeyPolicy::default(), now);
    let (rtx, rrx) = r.split(Mode::Encrypted, RekeyPolicy::default(), now);
    assert_eq!(itx.remote_index(), rrx.local_index());
    assert_eq!(rtx.remote_index(), irx.local_index());
}

#[test]
fn wire_matches_an_independent_implementation_of_the_spec() {
    let now = Instant::now();
    let (mut a, _) = pair(Mode::Encrypted, policy_packets(2), now);
    let k0 = hkdf(&H, &KI, b"weft sleeve v1 key");
    let k1 = hkdf(&H, &k0, b"weft sleeve v1 rekey");
    for (counter, key, phase) in [(0u64, k0, false), (1, k0, false), (2, k1, true)] {
        let payload = format!("packet {counter}");
        let pkt = seal(&mut a.tx, payload.as_bytes(), now);
        assert_eq!(pkt.len(), HEADER_LEN + payload.len() + TAG_LEN);
        let hdr = Header::parse(&pkt).unwrap();
        assert_eq!(hdr.counter, counter);
        assert_eq!(hdr.key_phase, phase);
        assert_eq!(
            hdr.receiver.to_be_bytes(),
            hkdf(&H, &H, b"weft sleeve v1 index r")[..4]
        );
        let mut nonce = [0u8; 12];
        nonce[4..].copy_from_slice(&counter.to_be_bytes());
        let mut body = pkt[HEADER_LEN..pkt.len() - TAG_LEN].to_vec();
        ChaCha20Poly1305::new(&key.into())
            .decrypt_in_place_detached(
                &nonce.into(),
                &pkt[..HEADER_LEN],
                &mut body,
                pkt[pkt.len() - TAG_LEN..].into(),
            )
            .expect("decrypts with the spec's key, nonce and AAD");
        assert_eq!(body, payload.as_bytes());
    }
}

#[test]
fn roundtrip_both_directions() {
    let now = Instant::now();
    let (mut a, mut b) = pair(Mode::Encrypted, RekeyPolicy::default(), now);
    assert_eq!(a.tx.overhead(), HEADER_LEN + TAG_LEN);
    for i in 0..100u32 {
        let msg = vec![i as u8; i as usize * 13];
        let pkt = seal(&mut a.tx, &msg, now);
        if msg.len() > 4 {
            assert_ne!(
                &pkt[HEADER_LEN..HEADER_LEN + msg.len()],
                &msg[..],
                "encrypted"
            );
        }
        let (h, body) = open(&mut b.rx, &pkt, now).unwrap();
        assert_eq!(body, msg);
        assert_eq!(h.counter, u64::from(i));
        let pkt = seal(&mut b.tx, &msg, now);
        assert_eq!(open(&mut a.rx, &pkt, now).unwrap().1, msg);
    }
    assert_eq!(a.tx.packets_sent(), 100);
    assert_eq!(b.rx.packets_received(), 100);
    // A side cannot open its own packets: they carry the peer's index.
    let pkt = seal(&mut a.tx, b"x", now);
    assert_eq!(open(&mut a.rx, &pkt, now), Err(OpenError::WrongIndex));
}

#[test]
fn plain_mode_frames_without_crypto_and_drops_duplicates() {
    let now = Instant::now();
    let (mut a, mut b) = pair(Mode::Plain, RekeyPolicy::default(), now);
    assert_eq!(a.tx.overhead(), HEADER_LEN);
    let mut buf = vec![0u8; HEADER_LEN + 5];
    buf[HEADER_LEN..].copy_from_slice(b"hello");
    let n = a.tx.seal(PacketType::Keepalive, &mut buf, 5, now).unwrap();
    assert_eq!(n, HEADER_LEN + 5);
    assert_eq!(&buf[HEADER_LEN..], b"hello");
    let (h, body) = open(&mut b.rx, &buf, now).unwrap();
    assert_eq!(
        (h.ptype, body.as_slice()),
        (PacketType::Keepalive, &b"hello"[..])
    );
    assert_eq!(open(&mut b.rx, &buf, now), Err(OpenError::Replay));
    let mut other = buf.clone();
    other[4] ^= 1;
    assert_eq!(open(&mut b.rx, &other, now), Err(OpenError::WrongIndex));
    assert_eq!(open(&mut b.rx, &buf[..10], now), Err(OpenError::Malformed));
    // Plain mode never rekeys.
    for _ in 0..10 {
        seal(&mut a.tx, b"", now + Duration::from_secs(1000));
    }
    assert_eq!(a.tx.rekeys(), 0);
}

#[test]
fn every_tampered_byte_is_rejected_and_harmless() {
    let now = Instant::now();
    let (mut a, mut b) = pair(Mode::Encrypted, RekeyPolicy::default(), now);
    let pkt = seal(&mut a.tx, b"the quick brown fox", now);
    for i in 0..pkt.len() {
        for bit in [0x01u8, 0x80] {
            let mut t = pkt.clone();
            t[i] ^= bit;
            let expect = match (i, bit) {
                // Type 1 becomes 0 or 0x81; unknown flag bit; reserved bytes.
                (0, _) | (1, 0x80) | (2..=3, _) => OpenError::Malformed,
                (4..=7, _) => OpenError::WrongIndex,
                // Key phase, counter (the nonce), ciphertext, tag.
                _ => OpenError::Auth,
            };
            assert_eq!(
                open(&mut b.rx, &t, now).map(|_| ()),
                Err(expect),
                "byte {i} ^ {bit:#x}"
            );
        }
        // A valid other type in byte 0 is authenticated data: Auth.
        let mut t = pkt.clone();
        t[0] = PacketType::Probe as u8;
        assert_eq!(open(&mut b.rx, &t, now).map(|_| ()), Err(OpenError::Auth));
    }
    // Truncations.
    for cut in 0..HEADER_LEN + TAG_LEN {
        assert!(open(&mut b.rx, &pkt[..cut], now).is_err());
    }
    // None of this moved the window or broke the session.
    assert_eq!(
        open(&mut b.rx, &pkt, now).unwrap().1,
        b"the quick brown fox"
    );
}

#[test]
fn forged_packets_do_not_move_the_window() {
    let now = Instant::now();
    let (mut a, mut b) = pair(Mode::Encrypted, RekeyPolicy::default(), now);
    let genuine = seal(&mut a.tx, b"first", now);
    let mut forged = genuine.clone();
    forged[8..16].copy_from_slice(&1_000_000u64.to_be_bytes());
    assert_eq!(open(&mut b.rx, &forged, now), Err(OpenError::Auth));
    forged[1] = 1; // other phase: tries the next key
    assert_eq!(open(&mut b.rx, &forged, now), Err(OpenError::Auth));
    assert_eq!(open(&mut b.rx, &genuine, now).unwrap().1, b"first");
    assert_eq!(b.rx.rekeys(), 0);
}

#[test]
fn replays_and_reordering() {
    let now = Instant::now();
    let (mut a, mut b) = pair(Mode::Encrypted, RekeyPolicy::default(), now);
    let pkts: Vec<Vec<u8>> = (0..5000u32)
        .map(|i| seal(&mut a.tx, &i.to_be_bytes(), now))
        .collect();
    assert!(open(&mut b.rx, &pkts[4999], now).is_ok());
    assert_eq!(open(&mut b.rx, &pkts[4999], now), Err(OpenError::Replay));
    // Within the window, in any order, each once.
    let mut order: Vec<usize> = (4999 - 4095..4999).collect();
    let mut x = 0x1234_5678u64;
    for i in (1..order.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        order.swap(i, (x % (i as u64 + 1)) as usize);
    }
    for &i in &order {
        let (_, body) = open(&mut b.rx, &pkts[i], now).unwrap();
        assert_eq!(body, (i as u32).to_be_bytes());
    }
    for &i in order.iter().take(50) {
        assert_eq!(open(&mut b.rx, &pkts[i], now), Err(OpenError::Replay));
    }
    assert_eq!(
        open(&mut b.rx, &pkts[4999 - 4096], now),
        Err(OpenError::TooOld)
    );
    assert_eq!(open(&mut b.rx, &pkts[0], now), Err(OpenError::TooOld));
}

#[test]
fn rekey_by_packet_count() {
    let now = Instant::now();
    let (mut a, mut b) = pair(Mode::Encrypted, policy_packets(10), now);
    for i in 0..35u32 {
        let pkt = seal(&mut a.tx, &i.to_be_bytes(), now);
        assert_eq!(Header::parse(&pkt).unwrap().key_phase, (i / 10) % 2 == 1);
        assert_eq!(open(&mut b.rx, &pkt, now).unwrap().1, i.to_be_bytes());
    }
    assert_eq!(a.tx.rekeys(), 3);
    assert_eq!(b.rx.rekeys(), 3);
    assert_eq!(a.tx.packets_sent(), 35);
}

#[test]
fn rekey_by_time_keeps_counters_going() {
    let t0 = Instant::now();
    let (mut a, mut b) = pair(Mode::Encrypted, RekeyPolicy::default(), t0);
    let p0 = seal(&mut a.tx, b"a", t0);
    let t1 = t0 + Duration::from_secs(119);
    let p1 = seal(&mut a.tx, b"b", t1);
    assert_eq!(a.tx.rekeys(), 0);
    let t2 = t0 + Duration::from_secs(120);
    let p2 = seal(&mut a.tx, b"c", t2);
    assert_eq!(a.tx.rekeys(), 1);
    assert!(a.tx.key_phase());
    let h2 = Header::parse(&p2).unwrap();
    assert_eq!((h2.counter, h2.key_phase), (2, true));
    // The new key's clock starts at the rekey.
    seal(&mut a.tx, b"d", t2 + Duration::from_secs(119));
    assert_eq!(a.tx.rekeys(), 1);
    seal(&mut a.tx, b"e", t2 + Duration::from_secs(120));
    assert_eq!(a.tx.rekeys(), 2);
    for (p, m) in [(&p0, b"a"), (&p1, b"b"), (&p2, b"c")] {
        assert_eq!(open(&mut b.rx, p, t2).unwrap().1, m);
    }
}

#[test]
fn old_phase_packets_across_the_boundary_within_and_after_grace() {
    let t0 = Instant::now();
    let grace = Duration::from_secs(5);
    let policy = RekeyPolicy {
        after_packets: 10,
        grace,
        ..RekeyPolicy::default()
    };
    let (mut a, mut b) = pair(Mode::Encrypted, policy, t0);
    let pkts: Vec<Vec<u8>> = (0..30u32)
        .map(|i| seal(&mut a.tx, &i.to_be_bytes(), t0))
        .collect();
    // Key 1 packets arrive first (the receiver moves on), then the delayed key 0 ones.
    open(&mut b.rx, &pkts[12], t0).unwrap();
    assert_eq!(b.rx.rekeys(), 1);
    assert!(b.rx.has_previous_key());
    for i in (0..10).rev() {
        let (_, body) = open(&mut b.rx, &pkts[i], t0 + Duration::from_secs(1)).unwrap();
        assert_eq!(body, (i as u32).to_be_bytes());
    }
    // Key 1 packets older than the one that moved the receiver still use key 1.
    open(&mut b.rx, &pkts[10], t0).unwrap();
    open(&mut b.rx, &pkts[11], t0).unwrap();
    // Key 2 arrives; key 1 packets now rely on the grace period...
    let t_switch = t0 + Duration::from_secs(2);
    open(&mut b.rx, &pkts[25], t_switch).unwrap();
    assert_eq!(b.rx.rekeys(), 2);
    open(
        &mut b.rx,
        &pkts[13],
        t_switch + grace - Duration::from_millis(1),
    )
    .unwrap();
    // ...which ends: the old key is erased and its packets refused.
    assert_eq!(
        open(&mut b.rx, &pkts[14], t_switch + grace),
        Err(OpenError::StaleKey)
    );
    assert!(!b.rx.has_previous_key());
    // Two keys back is never accepted.
    assert!(open(&mut b.rx, &pkts[5], t_switch).is_err());
    // Current-key packets are unaffected.
    for p in &pkts[20..25] {
        open(&mut b.rx, p, t_switch + grace * 10).unwrap();
    }
}

#[test]
fn expire_erases_the_previous_key_on_a_timer() {
    let t0 = Instant::now();
    let (mut a, mut b) = pair(Mode::Encrypted, policy_packets(1), t0);
    let p0 = seal(&mut a.tx, b"0", t0);
    let p1 = seal(&mut a.tx, b"1", t0);
    open(&mut b.rx, &p1, t0).unwrap();
    assert!(b.rx.has_previous_key());
    b.rx.expire(t0 + Duration::from_secs(4));
    assert!(b.rx.has_previous_key());
    b.rx.expire(t0 + Duration::from_secs(5));
    assert!(!b.rx.has_previous_key());
    assert_eq!(open(&mut b.rx, &p0, t0), Err(OpenError::StaleKey));
}

#[test]
fn a_whole_key_lost_is_survived_two_is_not() {
    let now = Instant::now();
    let (mut a, mut b) = pair(Mode::Encrypted, policy_packets(10), now);
    let pkts: Vec<Vec<u8>> = (0..50u32)
        .map(|i| seal(&mut a.tx, &i.to_be_bytes(), now))
        .collect();
    open(&mut b.rx, &pkts[0], now).unwrap();
    // Everything under key 1 (packets 10..20) is lost; key 2 has key 0's phase.
    assert_eq!(
        open(&mut b.rx, &pkts[20], now).unwrap().1,
        20u32.to_be_bytes()
    );
    assert_eq!(b.rx.rekeys(), 2);
    open(&mut b.rx, &pkts[21], now).unwrap();
    // Keys 3 and 4 lost entirely: key 5 is three steps ahead, beyond the lookahead.
    let (mut c, mut d) = pair(Mode::Encrypted, policy_packets(10), now);
    let q: Vec<Vec<u8>> = (0..60u32)
        .map(|i| seal(&mut c.tx, &i.to_be_bytes(), now))
        .collect();
    open(&mut d.rx, &q[0], now).unwrap();
    assert_eq!(open(&mut d.rx, &q[30], now), Err(OpenError::Auth));
    let _ = &mut d.tx;
}

#[test]
fn seal_checks_the_buffer() {
    let now = Instant::now();
    let (mut a, _) = pair(Mode::Encrypted, RekeyPolicy::default(), now);
    let mut buf = [0u8; HEADER_LEN + 10 + TAG_LEN];
    assert_eq!(
        a.tx.seal(
            PacketType::Data,
            &mut buf[..HEADER_LEN + 10 + TAG_LEN - 1],
            10,
            now
        ),
        Err(SealError::BufferTooSmall)
    );
    assert_eq!(
        a.tx.seal(PacketType::Data, &mut buf, usize::MAX, now),
        Err(SealError::BufferTooSmall)
    );
    assert_eq!(a.tx.packets_sent(), 0, "refused seals use no counter");
    assert_eq!(
        a.tx.seal(PacketType::Data, &mut buf, 10, now),
        Ok(buf.len())
    );
    assert_eq!(a.tx.last_sent(), Some(now));
}

#[test]
fn different_handshakes_do_not_interoperate() {
    let now = Instant::now();
    let (mut a, _) = pair(Mode::Encrypted, RekeyPolicy::default(), now);
    let mut h2 = H;
    h2[0] ^= 1;
    let keys = SessionKeys::new(H, [0x44; 32], KR, false);
    let (_, mut other_key) = keys.split(Mode::Encrypted, RekeyPolicy::default(), now);
    let pkt = seal(&mut a.tx, b"x", now);
    // Same hash (same index), different initiator key: authentication fails.
    assert_eq!(open(&mut other_key, &pkt, now), Err(OpenError::Auth));
    let (_, mut other_hash) =
        SessionKeys::new(h2, KI, KR, false).split(Mode::Encrypted, RekeyPolicy::default(), now);
    assert_eq!(open(&mut other_hash, &pkt, now), Err(OpenError::WrongIndex));
}

proptest! {
    #[test]
    fn open_never_panics_on_random_bytes(
        bytes in proptest::collection::vec(any::<u8>(), 0..200),
        fix_header in any::<bool>(),
        phase in any::<bool>(),
    ) {
        let now = Instant::now();
        for mode in [Mode::Encrypted, Mode::Plain] {
            let (_, mut b) = pair(mode, policy_packets(3), now);
            let mut buf = bytes.clone();
            if fix_header && buf.len() >= HEADER_LEN {
                Header {
                    ptype: PacketType::Data,
                    key_phase: phase,
                    receiver: b.rx.local_index(),
                    counter: 7,
                }
                .write(&mut buf);
            }
            let r = b.rx.open(&mut buf, now);
            match (mode, r) {
                (Mode::Encrypted, r) => prop_assert!(r.is_err(), "forgery accepted"),
                (Mode::Plain, Ok((_, range))) => {
                    prop_assert_eq!(range, HEADER_LEN..buf.len());
                }
                (Mode::Plain, Err(_)) => {}
            }
        }
    }
}
