//! The sleeve packet header (docs/sleeve.md, "Wire format") and the small payloads of the
//! control packet types (Probe, ProbeAck).
//!
//! Every UDP datagram on the sleeve port is one packet: a fixed 16-byte header, the payload
//! and, in encrypted mode, a 16-byte ChaCha20-Poly1305 tag. All integers are big-endian.
//!
//! ```text
//!  0      1       2         4              8                16
//!  | type | flags | 0x0000  | receiver idx |  counter (u64) | payload ... | tag |
//! ```
//!
//! Parsing is strict: unknown types, unknown flag bits and non-zero reserved bytes are
//! rejected, so a packet has exactly one valid reading.

use thiserror::Error;

/// Length of the packet header, which is also the AEAD associated data.
pub const HEADER_LEN: usize = 16;
/// Length of the ChaCha20-Poly1305 tag that follows the payload in encrypted mode.
pub const TAG_LEN: usize = 16;
/// IPv4 header (no options) plus UDP header: what the underlay adds around a packet.
pub const IPV4_UDP_OVERHEAD: usize = 28;
/// Length of a Probe payload before its zero padding (the probe id).
pub const PROBE_LEN: usize = 4;
/// Length of a ProbeAck payload: probe id (u32) and probed size (u16).
pub const PROBE_ACK_LEN: usize = 6;

/// Flag bit 0: the key phase.
const FLAG_KEY_PHASE: u8 = 0x01;

/// The packet type, byte 0 of the header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum PacketType {
    /// One or more records carrying Ethernet frames.
    Data = 1,
    /// A path-MTU probe: probe id, then zero padding up to the probed size.
    Probe = 2,
    /// Answer to a probe: probe id and the probed size.
    ProbeAck = 3,
    /// Empty; keeps NAT mappings and liveness while idle.
    Keepalive = 4,
}

impl PacketType {
    /// The type for a wire byte, if it is one of the four known types.
    pub fn from_u8(b: u8) -> Option<PacketType> {
        match b {
            1 => Some(PacketType::Data),
            2 => Some(PacketType::Probe),
            3 => Some(PacketType::ProbeAck),
            4 => Some(PacketType::Keepalive),
            _ => None,
        }
    }
}

/// Why a header or a control payload was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Error)]
pub enum WireError {
    /// Fewer than [`HEADER_LEN`] bytes.
    #[error("shorter than the header")]
    Short,
    /// Byte 0 is not a known packet type.
    #[error("unknown packet type")]
    BadType,
    /// A flag bit other than the key phase is set.
    #[error("unknown flag bits")]
    BadFlags,
    /// The reserved bytes 2-3 are not zero.
    #[error("reserved bytes not zero")]
    Reserved,
}

/// The parsed packet header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Header {
    /// The packet type.
    pub ptype: PacketType,
    /// Key phase bit: flips at every rekey of the sending direction.
    pub key_phase: bool,
    /// The receiver's session index.
    pub receiver: u32,
    /// The per-direction packet counter (the AEAD nonce).
    pub counter: u64,
}

impl Header {
    /// Parses the first [`HEADER_LEN`] bytes of `buf`; bytes after them are ignored.
    pub fn parse(buf: &[u8]) -> Result<Header, WireError> {
        let h: &[u8; HEADER_LEN] = buf
            .get(..HEADER_LEN)
            .and_then(|s| s.try_into().ok())
            .ok_or(WireError::Short)?;
        let ptype = PacketType::from_u8(h[0]).ok_or(WireError::BadType)?;
        if h[1] & !FLAG_KEY_PHASE != 0 {
            return Err(WireError::BadFlags);
        }
        if h[2] != 0 || h[3] != 0 {
            return Err(WireError::Reserved);
        }
        let receiver = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
        let counter = u64::from_be_bytes([h[8], h[9], h[10], h[11], h[12], h[13], h[14], h[15]]);
        Ok(Header {
            ptype,
            key_phase: h[1] & FLAG_KEY_PHASE != 0,
            receiver,
            counter,
        })
    }

    /// The 16 header bytes.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[0] = self.ptype as u8;
        h[1] = if self.key_phase { FLAG_KEY_PHASE } else { 0 };
        h[4..8].copy_from_slice(&self.receiver.to_be_bytes());
        h[8..16].copy_from_slice(&self.counter.to_be_bytes());
        h
    }

    /// Writes the header into `out[..HEADER_LEN]`.
    ///
    /// # Panics
    /// If `out` is shorter than [`HEADER_LEN`] (a caller bug: senders size their own buffers).
    pub fn write(&self, out: &mut [u8]) {
        out[..HEADER_LEN].copy_from_slice(&self.encode());
    }
}

/// The receiver index of a packet, read without validating anything else: the cheap lookup
/// key for finding the session before the full parse. `None` if the packet is too short.
pub fn peek_receiver(buf: &[u8]) -> Option<u32> {
    let h = buf.get(..HEADER_LEN)?;
    Some(u32::from_be_bytes([h[4], h[5], h[6], h[7]]))
}

/// Writes a Probe payload into `out`: the probe id, then zeros over the rest of `out` (the
/// padding that makes the IP packet the probed size, if `out` spans it). Returns
/// `out.len()`, or `None` (nothing written) if `out` cannot hold the id.
pub fn write_probe(out: &mut [u8], id: u32) -> Option<usize> {
    let (idb, pad) = out.split_first_chunk_mut::<PROBE_LEN>()?;
    *idb = id.to_be_bytes();
    pad.fill(0);
    Some(out.len())
}

/// The probe id of a Probe payload (at least [`PROBE_LEN`] bytes; the padding is not
/// inspected).
pub fn parse_probe(payload: &[u8]) -> Option<u32> {
    let (idb, _) = payload.split_first_chunk::<PROBE_LEN>()?;
    Some(u32::from_be_bytes(*idb))
}

/// Writes a ProbeAck payload (`id`, `size`) into `out[..PROBE_ACK_LEN]`; returns
/// [`PROBE_ACK_LEN`], or `None` (nothing written) if `out` is shorter.
pub fn write_probe_ack(out: &mut [u8], id: u32, size: u16) -> Option<usize> {
    let o = out.get_mut(..PROBE_ACK_LEN)?;
    o[..4].copy_from_slice(&id.to_be_bytes());
    o[4..6].copy_from_slice(&size.to_be_bytes());
    Some(PROBE_ACK_LEN)
}

/// Parses a ProbeAck payload into `(probe id, probed size)`. The payload must be exactly
/// [`PROBE_ACK_LEN`] bytes.
pub fn parse_probe_ack(payload: &[u8]) -> Option<(u32, u16)> {
    let p: &[u8; PROBE_ACK_LEN] = payload.try_into().ok()?;
    Some((
        u32::from_be_bytes([p[0], p[1], p[2], p[3]]),
        u16::from_be_bytes([p[4], p[5]]),
    ))
}

/// The size of the IPv4 packet that carried a UDP datagram of `datagram_len` bytes (no IP
/// options): what a ProbeAck reports as the probed size.
pub fn ipv4_packet_size(datagram_len: usize) -> u16 {
    u16::try_from(datagram_len.saturating_add(IPV4_UDP_OVERHEAD)).unwrap_or(u16::MAX)
}

/// The Probe payload length that makes the IPv4 packet exactly `size` bytes, given the
/// session's per-packet overhead ([`HEADER_LEN`] plus [`TAG_LEN`] when encrypted). `None` if
/// `size` cannot even hold the probe id.
pub fn probe_payload_len(size: u16, overhead: usize) -> Option<usize> {
    let len = usize::from(size).checked_sub(IPV4_UDP_OVERHEAD + overhead)?;
    (len >= PROBE_LEN).then_some(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_roundtrip() {
        for &(ptype, phase) in &[
            (PacketType::Data, false),
            (PacketType::Probe, true),
            (PacketType::ProbeAck, false),
            (PacketType::Keepalive, true),
        ] {
            let h = Header {
                ptype,
                key_phase: phase,
                receiver: 0xdead_beef,
                counter: 0x0102_0304_0506_0708,
            };
            let mut buf = [0xaau8; 20];
            h.write(&mut buf);
            assert_eq!(Header::parse(&buf), Ok(h));
            assert_eq!(peek_receiver(&buf), Some(0xdead_beef));
            assert_eq!(&buf[4..8], &[0xde, 0xad, 0xbe, 0xef]);
            assert_eq!(&buf[8..16], &[1, 2, 3, 4, 5, 6, 7, 8]);
        }
    }

    #[test]
    fn header_rejects() {
        let good = Header {
            ptype: PacketType::Data,
            key_phase: false,
            receiver: 1,
            counter: 2,
        }
        .encode();
        assert_eq!(Header::parse(&good[..15]), Err(WireError::Short));
        assert_eq!(peek_receiver(&good[..15]), None);
        for t in [0u8, 5, 0xff] {
            let mut b = good;
            b[0] = t;
            assert_eq!(Header::parse(&b), Err(WireError::BadType));
        }
        for f in [2u8, 0x80, 0x03] {
            let mut b = good;
            b[1] = f;
            assert_eq!(Header::parse(&b), Err(WireError::BadFlags));
        }
        for i in [2usize, 3] {
            let mut b = good;
            b[i] = 1;
            assert_eq!(Header::parse(&b), Err(WireError::Reserved));
        }
    }

    #[test]
    fn probe_payloads() {
        let mut p = [0xffu8; 40];
        assert_eq!(write_probe(&mut p, 0x0a0b0c0d), Some(40));
        assert_eq!(parse_probe(&p), Some(0x0a0b0c0d));
        assert_eq!(&p[..4], &[0x0a, 0x0b, 0x0c, 0x0d]);
        assert!(p[4..].iter().all(|&b| b == 0));
        let mut short = [0xffu8; 3];
        assert_eq!(write_probe(&mut short, 1), None);
        assert_eq!(short, [0xff; 3]);
        assert_eq!(parse_probe(&p[..3]), None);

        let mut a = [0u8; 8];
        assert_eq!(write_probe_ack(&mut a, 7, 1420), Some(PROBE_ACK_LEN));
        assert_eq!(parse_probe_ack(&a[..6]), Some((7, 1420)));
        assert_eq!(parse_probe_ack(&a[..5]), None);
        assert_eq!(parse_probe_ack(&a[..7]), None);
        assert_eq!(write_probe_ack(&mut a[..5], 7, 1), None);
    }

    #[test]
    fn probe_sizes() {
        // 1500-byte IP packet, encrypted: 1500 - 28 - 32 = 1440 bytes of probe payload.
        assert_eq!(probe_payload_len(1500, HEADER_LEN + TAG_LEN), Some(1440));
        assert_eq!(ipv4_packet_size(1440 + 32), 1500);
        assert_eq!(probe_payload_len(60, 32), None);
        assert_eq!(probe_payload_len(64, 32), Some(4));
        assert_eq!(ipv4_packet_size(usize::MAX), u16::MAX);
    }
}
