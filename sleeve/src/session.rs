//! Per-neighbour sleeve sessions: key schedule, sealing, opening, rekeying, replay checks.
//!
//! Keys come from the control connection's Noise handshake (docs/sleeve.md, "Sessions and
//! keys"), with HKDF over BLAKE2s:
//!
//! ```text
//! K(dir, 0)   = HKDF(salt = h, ikm = k_dir,     info = "weft sleeve v1 key")
//! K(dir, n+1) = HKDF(salt = h, ikm = K(dir, n), info = "weft sleeve v1 rekey")
//! index_to_initiator = HKDF(salt = h, ikm = h, info = "weft sleeve v1 index i")[..4]
//! index_to_responder = HKDF(salt = h, ikm = h, info = "weft sleeve v1 index r")[..4]
//! ```
//!
//! The index bytes are put on the wire as they come out of HKDF (read as a big-endian u32).
//!
//! **Sending** ([`TxSession`]): the counter starts at 0 and grows by one per packet across
//! rekeys; it is the nonce (4 zero bytes, counter big-endian) and the 16-byte header is the
//! associated data. Before sealing, the sender moves to the next key when the current one
//! is [`RekeyPolicy::after`] old or has sealed [`RekeyPolicy::after_packets`] packets, and
//! flips the key phase.
//!
//! **Receiving** ([`RxSession`]): the counter is checked against the replay window before
//! any cryptography and recorded only after the packet authenticated. The key is chosen by
//! phase and counter, so each packet costs one authentication attempt in the normal case:
//! - same phase as the current key: the current key;
//! - other phase, counter below the first counter seen under the current key: the previous
//!   key, while its grace period ([`RekeyPolicy::grace`]) lasts ([`OpenError::StaleKey`]
//!   after);
//! - other phase otherwise: the next key (derived lazily, cached); when it authenticates the
//!   receiver moves on and keeps the old key for the grace period.
//!
//! As a receiver-side extension, a packet of the current phase that fails with the current
//! key but is newer than everything seen under it is also tried with the key after next,
//! so losing every packet sent under one whole key (two minutes of total loss) does not
//! wedge the session. Longer outages need a new session from the control plane;
//! [`RxSession::last_authenticated`] tells the engine when to suspect that.
//!
//! In [`Mode::Plain`] (no network password) packets use the same header without encryption
//! or tag; the index and the replay window are still checked, so duplicates are dropped.
//! All key material is erased on drop.

use core::ops::Range;
use std::time::{Duration, Instant};

use blake2::Blake2s256;
use hkdf::SimpleHkdf;
use ring::aead::{Aad, LessSafeKey, Nonce, Tag, UnboundKey, CHACHA20_POLY1305};
use thiserror::Error;
use zeroize::{Zeroize, Zeroizing};

use crate::replay::{ReplayError, ReplayWindow};
use crate::wire::{Header, PacketType, HEADER_LEN, TAG_LEN};

const INFO_KEY: &[u8] = b"weft sleeve v1 key";
const INFO_REKEY: &[u8] = b"weft sleeve v1 rekey";
const INFO_INDEX_I: &[u8] = b"weft sleeve v1 index i";
const INFO_INDEX_R: &[u8] = b"weft sleeve v1 index r";

/// Whether the sleeve encrypts (a network password is set) or only frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    /// ChaCha20-Poly1305 over the payload, 16-byte tag.
    Encrypted,
    /// Same header, no encryption, no tag.
    Plain,
}

impl Mode {
    /// Bytes a packet adds around its payload: the header, plus the tag when encrypted.
    pub fn overhead(self) -> usize {
        match self {
            Mode::Encrypted => HEADER_LEN + TAG_LEN,
            Mode::Plain => HEADER_LEN,
        }
    }
}

/// When the sending side moves to the next key, and how long a receiver keeps the old one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RekeyPolicy {
    /// Maximum age of a sending key.
    pub after: Duration,
    /// Maximum number of packets sealed with one key.
    pub after_packets: u64,
    /// How long a receiver keeps the previous key for packets still in flight.
    pub grace: Duration,
}

impl Default for RekeyPolicy {
    /// 120 s or 2^30 packets per key; the old receive key lives 5 s after the switch.
    fn default() -> Self {
        RekeyPolicy {
            after: Duration::from_secs(120),
            after_packets: 1 << 30,
            grace: Duration::from_secs(5),
        }
    }
}

/// Why [`TxSession::seal`] refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Error)]
pub enum SealError {
    /// `buf` cannot hold header, payload and tag.
    #[error("buffer too small for header, payload and tag")]
    BufferTooSmall,
    /// The 64-bit counter is used up; the session must be replaced.
    #[error("packet counter exhausted")]
    CounterExhausted,
    /// The payload is longer than ChaCha20-Poly1305 allows.
    #[error("payload too long")]
    TooLong,
}

/// Why [`RxSession::open`] dropped a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Error)]
pub enum OpenError {
    /// Not a well-formed packet (bad header, shorter than header and tag).
    #[error("malformed packet")]
    Malformed,
    /// The receiver index is not this session's.
    #[error("receiver index is not this session's")]
    WrongIndex,
    /// Authentication failed: forged, corrupted, or a key this side cannot derive.
    #[error("authentication failed")]
    Auth,
    /// The counter was already accepted.
    #[error("replayed packet")]
    Replay,
    /// The counter is behind the replay window.
    #[error("counter too old for the replay window")]
    TooOld,
    /// Sent under the previous key, whose grace period is over (or which was never held).
    #[error("previous key already erased")]
    StaleKey,
}

impl From<ReplayError> for OpenError {
    fn from(e: ReplayError) -> Self {
        match e {
            ReplayError::Replay => OpenError::Replay,
            ReplayError::TooOld => OpenError::TooOld,
        }
    }
}

type Secret = Zeroizing<[u8; 32]>;

fn hkdf32(salt: &[u8], ikm: &[u8], info: &[u8]) -> Secret {
    let hk = SimpleHkdf::<Blake2s256>::new(Some(salt), ikm);
    let mut okm = Zeroizing::new([0u8; 32]);
    // 32 bytes is far below HKDF's limit of 255 hash lengths: this cannot fail.
    hk.expand(info, okm.as_mut())
        .expect("32 bytes is a valid HKDF-BLAKE2s output length");
    okm
}

/// The session index of packets to the initiator (`true`) or to the responder.
fn index(hash: &[u8; 32], to_initiator: bool) -> u32 {
    let info = if to_initiator {
        INFO_INDEX_I
    } else {
        INFO_INDEX_R
    };
    let okm = hkdf32(hash, hash, info);
    u32::from_be_bytes([okm[0], okm[1], okm[2], okm[3]])
}

fn nonce(counter: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_be_bytes());
    // Unique per key: counters only go up, and a key is never used past the counter limit.
    Nonce::assume_unique_for_key(n)
}

/// One key of a direction's chain: the chain value (to derive the next) and its cipher.
struct ChainKey {
    secret: Secret,
    cipher: LessSafeKey,
}

impl ChainKey {
    fn new(secret: Secret) -> Self {
        let key = UnboundKey::new(&CHACHA20_POLY1305, secret.as_ref())
            .expect("a 32-byte ChaCha20-Poly1305 key");
        let cipher = LessSafeKey::new(key);
        ChainKey { secret, cipher }
    }

    fn next(&self, hash: &[u8; 32]) -> ChainKey {
        ChainKey::new(hkdf32(hash, self.secret.as_ref(), INFO_REKEY))
    }
}

/// What the control handshake hands the sleeve. Erased on drop.
pub struct SessionKeys {
    hash: [u8; 32],
    initiator_key: [u8; 32],
    responder_key: [u8; 32],
    initiator: bool,
}

impl Drop for SessionKeys {
    fn drop(&mut self) {
        self.hash.zeroize();
        self.initiator_key.zeroize();
        self.responder_key.zeroize();
    }
}

impl core::fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SessionKeys")
            .field("initiator", &self.initiator)
            .field("local_index", &self.local_index())
            .field("remote_index", &self.remote_index())
            .finish_non_exhaustive()
    }
}

impl SessionKeys {
    /// `handshake_hash` is the Noise handshake hash; `initiator_key` encrypts initiator →
    /// responder, `responder_key` the other way; `initiator` says whether this side dialled.
    pub fn new(
        handshake_hash: [u8; 32],
        initiator_key: [u8; 32],
        responder_key: [u8; 32],
        initiator: bool,
    ) -> Self {
        SessionKeys {
            hash: handshake_hash,
            initiator_key,
            responder_key,
            initiator,
        }
    }

    /// Whether this side is the initiator.
    pub fn is_initiator(&self) -> bool {
        self.initiator
    }

    /// The index peers put in the headers of packets to us.
    pub fn local_index(&self) -> u32 {
        index(&self.hash, self.initiator)
    }

    /// The index we put in the headers of packets to the peer.
    pub fn remote_index(&self) -> u32 {
        index(&self.hash, !self.initiator)
    }

    /// Derives both directions' first keys and returns the two halves of the session.
    pub fn split(self, mode: Mode, policy: RekeyPolicy, now: Instant) -> (TxSession, RxSession) {
        let (tx_k, rx_k) = if self.initiator {
            (&self.initiator_key, &self.responder_key)
        } else {
            (&self.responder_key, &self.initiator_key)
        };
        let encrypted = mode == Mode::Encrypted;
        let tx_key = encrypted.then(|| ChainKey::new(hkdf32(&self.hash, tx_k, INFO_KEY)));
        let rx_key = encrypted.then(|| ChainKey::new(hkdf32(&self.hash, rx_k, INFO_KEY)));
        let hash = Zeroizing::new(self.hash);
        let tx = TxSession {
            mode,
            policy,
            remote: self.remote_index(),
            hash: hash.clone(),
            key: tx_key,
            phase: false,
            counter: 0,
            key_since: now,
            key_packets: 0,
            rekeys: 0,
            last_sent: None,
        };
        let rx = RxSession {
            mode,
            grace: policy.grace,
            local: self.local_index(),
            hash,
            window: ReplayWindow::new(),
            cur: rx_key,
            phase: false,
            cur_first: None,
            cur_last: None,
            next: None,
            next2: None,
            prev: None,
            skip_after: policy.after,
            skip_packets: policy.after_packets,
            received: 0,
            rekeys: 0,
            last_authenticated: None,
        };
        (tx, rx)
    }
}

/// The sending half of a session.
pub struct TxSession {
    mode: Mode,
    policy: RekeyPolicy,
    remote: u32,
    hash: Secret,
    /// `None` in plain mode.
    key: Option<ChainKey>,
    phase: bool,
    counter: u64,
    key_since: Instant,
    key_packets: u64,
    rekeys: u64,
    last_sent: Option<Instant>,
}

impl core::fmt::Debug for TxSession {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("TxSession")
            .field("mode", &self.mode)
            .field("remote", &self.remote)
            .field("phase", &self.phase)
            .field("counter", &self.counter)
            .field("rekeys", &self.rekeys)
            .finish_non_exhaustive()
    }
}

impl TxSession {
    /// Seals one packet in place. `buf[HEADER_LEN..HEADER_LEN + payload_len]` holds the
    /// plaintext payload, and `buf` must have [`TAG_LEN`] spare bytes after it (unless
    /// plain). Writes the header, encrypts the payload, appends the tag and returns the
    /// packet length. Moves to the next key first when the policy says so.
    pub fn seal(
        &mut self,
        ptype: PacketType,
        buf: &mut [u8],
        payload_len: usize,
        now: Instant,
    ) -> Result<usize, SealError> {
        let tag_len = if self.key.is_some() { TAG_LEN } else { 0 };
        let total = HEADER_LEN
            .checked_add(payload_len)
            .and_then(|n| n.checked_add(tag_len))
            .ok_or(SealError::BufferTooSmall)?;
        if buf.len() < total {
            return Err(SealError::BufferTooSmall);
        }
        if self.counter == u64::MAX {
            return Err(SealError::CounterExhausted);
        }
        if self.key.is_some()
            && (self.key_packets >= self.policy.after_packets
                || now.saturating_duration_since(self.key_since) >= self.policy.after)
        {
            self.rekey(now);
        }
        let header = Header {
            ptype,
            key_phase: self.phase,
            receiver: self.remote,
            counter: self.counter,
        };
        let (head, rest) = buf.split_at_mut(HEADER_LEN);
        header.write(head);
        if let Some(key) = &self.key {
            let (payload, tail) = rest.split_at_mut(payload_len);
            let tag = key
                .cipher
                .seal_in_place_separate_tag(nonce(self.counter), Aad::from(&*head), payload)
                .map_err(|_| SealError::TooLong)?;
            tail[..TAG_LEN].copy_from_slice(tag.as_ref());
        }
        self.counter += 1;
        self.key_packets += 1;
        self.last_sent = Some(now);
        Ok(total)
    }

    fn rekey(&mut self, now: Instant) {
        if let Some(key) = &self.key {
            // The old key is dropped (and erased) by the assignment.
            self.key = Some(key.next(&self.hash));
            self.phase = !self.phase;
            self.key_since = now;
            self.key_packets = 0;
            self.rekeys += 1;
        }
    }

    /// Bytes added around a payload: `HEADER_LEN + TAG_LEN`, or `HEADER_LEN` in plain mode.
    pub fn overhead(&self) -> usize {
        self.mode.overhead()
    }

    /// The session's mode.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The index written into every packet's header (the peer's local index).
    pub fn remote_index(&self) -> u32 {
        self.remote
    }

    /// Packets sealed so far (also the next counter).
    pub fn packets_sent(&self) -> u64 {
        self.counter
    }

    /// How many times the sending key was replaced.
    pub fn rekeys(&self) -> u64 {
        self.rekeys
    }

    /// The current key phase.
    pub fn key_phase(&self) -> bool {
        self.phase
    }

    /// When the last packet was sealed (for keepalive timing).
    pub fn last_sent(&self) -> Option<Instant> {
        self.last_sent
    }
}

/// Which key authenticated a packet.
enum Used {
    Cur,
    Prev,
    Next,
    Next2,
}

/// The receiving half of a session.
pub struct RxSession {
    mode: Mode,
    grace: Duration,
    local: u32,
    hash: Secret,
    window: ReplayWindow,
    /// `None` in plain mode.
    cur: Option<ChainKey>,
    phase: bool,
    /// Lowest and highest counters authenticated under `cur`.
    cur_first: Option<u64>,
    cur_last: Option<u64>,
    next: Option<ChainKey>,
    next2: Option<ChainKey>,
    prev: Option<(LessSafeKey, Instant)>,
    /// A packet may be two keys ahead only after this long without one (or a counter jump
    /// of a whole key's packets): only then is its ciphertext kept for a second attempt.
    skip_after: Duration,
    skip_packets: u64,
    received: u64,
    rekeys: u64,
    last_authenticated: Option<Instant>,
}

impl core::fmt::Debug for RxSession {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("RxSession")
            .field("mode", &self.mode)
            .field("local", &self.local)
            .field("phase", &self.phase)
            .field("received", &self.received)
            .field("rekeys", &self.rekeys)
            .finish_non_exhaustive()
    }
}

/// One authentication attempt. ring decrypts while it authenticates, so a failed attempt
/// leaves the payload garbled: a caller that may try another key keeps a copy first.
fn try_open(
    cipher: &LessSafeKey,
    counter: u64,
    head: &[u8],
    payload: &mut [u8],
    tag: &[u8],
) -> bool {
    let Ok(tag) = Tag::try_from(tag) else {
        return false;
    };
    cipher
        .open_in_place_separate_tag(nonce(counter), Aad::from(head), tag, payload, 0..)
        .is_ok()
}

impl RxSession {
    /// Verifies, replay-checks and decrypts one packet in place. Returns the header and the
    /// payload's range within `buf`.
    pub fn open(
        &mut self,
        buf: &mut [u8],
        now: Instant,
    ) -> Result<(Header, Range<usize>), OpenError> {
        let hdr = Header::parse(buf).map_err(|_| OpenError::Malformed)?;
        if hdr.receiver != self.local {
            return Err(OpenError::WrongIndex);
        }
        self.window.check(hdr.counter)?;
        if self.mode == Mode::Plain {
            self.window.update(hdr.counter)?;
            self.accepted(now);
            return Ok((hdr, HEADER_LEN..buf.len()));
        }
        let tag_at = buf
            .len()
            .checked_sub(TAG_LEN)
            .filter(|&t| t >= HEADER_LEN)
            .ok_or(OpenError::Malformed)?;
        self.expire(now);
        let (head, rest) = buf.split_at_mut(HEADER_LEN);
        let (payload, tag) = rest.split_at_mut(tag_at - HEADER_LEN);
        let head: &[u8] = head;
        let counter = hdr.counter;
        let newer = self.cur_last.is_none_or(|l| counter > l);
        let used = if hdr.key_phase == self.phase {
            let cur = self.cur.as_ref().ok_or(OpenError::Auth)?;
            // The sender can be two keys ahead only after a whole key period we did not
            // see: then keep the ciphertext for a second attempt (rare; normally one).
            let may_skip = newer
                && (self
                    .last_authenticated
                    .is_none_or(|t| now.saturating_duration_since(t) >= self.skip_after)
                    || counter.saturating_sub(self.cur_last.unwrap_or(0)) >= self.skip_packets);
            let copy = may_skip.then(|| payload.to_vec());
            if try_open(&cur.cipher, counter, head, payload, tag) {
                Used::Cur
            } else if let Some(copy) = copy.filter(|_| self.next2_key().is_some()) {
                payload.copy_from_slice(&copy);
                let k = self.next2_key().expect("checked above");
                if !try_open(&k.cipher, counter, head, payload, tag) {
                    return Err(OpenError::Auth);
                }
                Used::Next2
            } else {
                return Err(OpenError::Auth);
            }
        } else if self.cur_first.is_some_and(|f| counter < f) {
            let (prev, _) = self.prev.as_ref().ok_or(OpenError::StaleKey)?;
            if !try_open(prev, counter, head, payload, tag) {
                return Err(OpenError::Auth);
            }
            Used::Prev
        } else if self
            .next_key()
            .is_some_and(|k| try_open(&k.cipher, counter, head, payload, tag))
        {
            Used::Next
        } else {
            return Err(OpenError::Auth);
        };
        match used {
            Used::Cur => {
                self.cur_first = Some(self.cur_first.map_or(counter, |f| f.min(counter)));
                self.cur_last = Some(self.cur_last.map_or(counter, |l| l.max(counter)));
            }
            Used::Prev => {}
            Used::Next => {
                let next = self.next.take();
                let old = core::mem::replace(&mut self.cur, next);
                self.prev = old.map(|k| (k.cipher, now + self.grace));
                self.next = self.next2.take();
                self.advanced(counter, 1);
            }
            Used::Next2 => {
                let next2 = self.next2.take();
                self.cur = next2;
                self.prev = self.next.take().map(|k| (k.cipher, now + self.grace));
                self.advanced(counter, 2);
            }
        }
        self.window.update(counter)?;
        self.accepted(now);
        Ok((hdr, HEADER_LEN..tag_at))
    }

    fn advanced(&mut self, counter: u64, steps: u64) {
        if steps % 2 == 1 {
            self.phase = !self.phase;
        }
        self.cur_first = Some(counter);
        self.cur_last = Some(counter);
        self.rekeys += steps;
    }

    fn accepted(&mut self, now: Instant) {
        self.received += 1;
        self.last_authenticated = Some(now);
    }

    fn next_key(&mut self) -> Option<&ChainKey> {
        if self.next.is_none() {
            self.next = self.cur.as_ref().map(|c| c.next(&self.hash));
        }
        self.next.as_ref()
    }

    fn next2_key(&mut self) -> Option<&ChainKey> {
        if self.next2.is_none() {
            self.next_key();
            self.next2 = self.next.as_ref().map(|n| n.next(&self.hash));
        }
        self.next2.as_ref()
    }

    /// The newest counter accepted so far (`None` before the first packet). A packet whose
    /// counter is above it is the newest the peer has sent that we have seen; only such a
    /// packet may move the peer's address (an older one may be a datagram an on-path attacker
    /// held back and replays from elsewhere).
    pub fn latest_counter(&self) -> Option<u64> {
        self.window.latest()
    }

    /// Erases the previous key once its grace period is over. `open` does this too; call it
    /// from a timer so an idle session does not keep the old key around.
    pub fn expire(&mut self, now: Instant) {
        if self.prev.as_ref().is_some_and(|&(_, until)| now >= until) {
            self.prev = None;
        }
    }

    /// The index peers put in headers of packets to us.
    pub fn local_index(&self) -> u32 {
        self.local
    }

    /// The session's mode.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Packets accepted so far.
    pub fn packets_received(&self) -> u64 {
        self.received
    }

    /// How many keys this side moved through.
    pub fn rekeys(&self) -> u64 {
        self.rekeys
    }

    /// Whether the previous key is still held (within its grace period).
    pub fn has_previous_key(&self) -> bool {
        self.prev.is_some()
    }

    /// When the last packet was accepted: if the peer is alive (keepalives flow) but this
    /// stays in the past, the session is out of step and should be replaced.
    pub fn last_authenticated(&self) -> Option<Instant> {
        self.last_authenticated
    }
}
