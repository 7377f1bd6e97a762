//! The Linux `virtio_net_hdr`: a frame's checksum and segmentation offload state.
//!
//! With offloads enabled, the kernel hands the TAP reader frames it has not segmented or
//! checksummed: a TCP stream arrives as frames of up to 64 KB, each described by this 10-byte
//! header (which kind of segmentation is pending, the segment size, where the checksum goes).
//! Writing a frame with its header back into a TAP hands the same work to the receiving
//! kernel, which segments (or, for a local socket, simply accepts the large packet) and
//! completes checksums only where needed. The sleeve carries the header verbatim in a
//! record's offload block, so a 64 KB TSO frame crosses the tunnel whole and nobody segments
//! or checksums in userspace.
//!
//! ```text
//!  flags u8 | gso_type u8 | hdr_len u16 | gso_size u16 | csum_start u16 | csum_offset u16
//! ```
//!
//! Byte order: the kernel's header is in "virtio endianness"; the driver's TAP asks for
//! little-endian (`TUNSETVNETLE`) so the bytes mean the same on every host, and
//! [`Offload::from_vnet`]/[`Offload::to_vnet`] read and write little-endian. Inside a record
//! the same fields are big-endian like every other integer of the wire format.
//!
//! Frames come from authenticated peers but are still untrusted input to the local kernel:
//! [`Offload::check`] accepts only what the sleeve produces (no GSO, TCPv4, TCPv6, with or
//! without ECN; the `NEEDS_CSUM`/`DATA_VALID` flags) with offsets that fit the frame.
//!
//! Pure: no I/O; the driver re-exports this type and its constants.

use thiserror::Error;

/// Length of the header (the plain `virtio_net_hdr`, without `num_buffers`).
pub const LEN: usize = 10;

/// `flags`: the checksum at `csum_start + csum_offset` still has to be completed.
pub const F_NEEDS_CSUM: u8 = 1;
/// `flags`: the checksum has already been verified.
pub const F_DATA_VALID: u8 = 2;
/// `gso_type`: a plain frame, no segmentation pending.
pub const GSO_NONE: u8 = 0;
/// `gso_type`: TCP over IPv4 segmentation pending.
pub const GSO_TCPV4: u8 = 1;
/// `gso_type`: UDP fragmentation offload (obsolete; never produced by the driver).
pub const GSO_UDP: u8 = 3;
/// `gso_type`: TCP over IPv6 segmentation pending.
pub const GSO_TCPV6: u8 = 4;
/// `gso_type`: UDP segmentation (USO; not enabled by the driver, see its tap module).
pub const GSO_UDP_L4: u8 = 5;
/// `gso_type` bit: the TCP segments carry ECN (CWR on the first segment only).
pub const GSO_ECN: u8 = 0x80;

/// A frame's `virtio_net_hdr`. All fields zero ([`Offload::is_none`]) means the frame needs
/// no offload work.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Offload {
    /// `F_*` bits: [`F_NEEDS_CSUM`], [`F_DATA_VALID`].
    pub flags: u8,
    /// `GSO_*`: [`GSO_NONE`], [`GSO_TCPV4`], [`GSO_UDP`], [`GSO_TCPV6`], [`GSO_UDP_L4`],
    /// optionally with the [`GSO_ECN`] bit.
    pub gso_type: u8,
    /// Length of the Ethernet + IP + TCP headers before the segmented payload (a hint for
    /// the kernel).
    pub hdr_len: u16,
    /// Payload bytes per segment (the MSS for TCP).
    pub gso_size: u16,
    /// Where checksumming starts, from the start of the Ethernet frame.
    pub csum_start: u16,
    /// Where the checksum goes, from `csum_start`.
    pub csum_offset: u16,
}

/// Why [`Offload::check`] refused a header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum OffloadError {
    /// Flag bits other than `NEEDS_CSUM` and `DATA_VALID`.
    #[error("unknown offload flags")]
    Flags,
    /// A segmentation type the sleeve does not carry (UFO, USO, unknown, ECN alone).
    #[error("unsupported segmentation type")]
    GsoType,
    /// Segmentation pending with a segment size of 0.
    #[error("segmentation with a segment size of 0")]
    GsoSize,
    /// The checksum position lies outside the frame.
    #[error("checksum position outside the frame")]
    CsumRange,
    /// The header length exceeds the frame.
    #[error("header length beyond the frame")]
    HdrLen,
}

impl Offload {
    /// Parses the first [`LEN`] bytes as the TAP device gives them (little-endian fields);
    /// `None` if `b` is shorter.
    pub fn parse(b: &[u8]) -> Option<Offload> {
        b.first_chunk::<LEN>()
            .map(|b| Offload::decode(b, u16::from_le_bytes))
    }

    /// Like [`Offload::parse`], but fewer than [`LEN`] bytes read as "no offload".
    pub fn from_vnet(b: &[u8]) -> Offload {
        Offload::parse(b).unwrap_or_default()
    }

    /// Writes the header for the TAP device (little-endian fields) into `out[..LEN]`;
    /// writes nothing if `out` is shorter.
    pub fn to_vnet(&self, out: &mut [u8]) {
        if let Some(o) = out.first_chunk_mut::<LEN>() {
            *o = self.encode(u16::to_le_bytes);
        }
    }

    /// All fields zero: the frame needs no offload information.
    pub fn is_none(&self) -> bool {
        *self == Offload::default()
    }

    /// Is segmentation pending (a "GSO frame")?
    pub fn is_gso(&self) -> bool {
        self.gso_type & !GSO_ECN != GSO_NONE
    }

    /// Checks a header received from a peer before it is written with a frame of
    /// `frame_len` bytes (Ethernet header onwards) into the local TAP: only the flags and
    /// segmentation types the sleeve produces, a segment size when segmentation is pending,
    /// and a checksum position (when one is asked for) and header length inside the frame.
    pub fn check(&self, frame_len: usize) -> Result<(), OffloadError> {
        if self.flags & !(F_NEEDS_CSUM | F_DATA_VALID) != 0 {
            return Err(OffloadError::Flags);
        }
        match self.gso_type & !GSO_ECN {
            GSO_NONE if self.gso_type & GSO_ECN != 0 => return Err(OffloadError::GsoType),
            GSO_NONE => {}
            GSO_TCPV4 | GSO_TCPV6 if self.gso_size == 0 => return Err(OffloadError::GsoSize),
            GSO_TCPV4 | GSO_TCPV6 => {}
            _ => return Err(OffloadError::GsoType),
        }
        if self.flags & F_NEEDS_CSUM != 0
            && usize::from(self.csum_start) + usize::from(self.csum_offset) + 2 > frame_len
        {
            return Err(OffloadError::CsumRange);
        }
        if usize::from(self.hdr_len) > frame_len {
            return Err(OffloadError::HdrLen);
        }
        Ok(())
    }

    /// The record's offload block: the same fields, big-endian.
    pub(crate) fn write_wire(&self, o: &mut [u8; LEN]) {
        *o = self.encode(u16::to_be_bytes);
    }

    /// Reads a record's offload block (big-endian fields).
    pub(crate) fn read_wire(b: &[u8; LEN]) -> Offload {
        Offload::decode(b, u16::from_be_bytes)
    }

    fn encode(&self, order: fn(u16) -> [u8; 2]) -> [u8; LEN] {
        let mut b = [0u8; LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        let fields = [
            self.hdr_len,
            self.gso_size,
            self.csum_start,
            self.csum_offset,
        ];
        for (chunk, v) in b[2..].chunks_exact_mut(2).zip(fields) {
            chunk.copy_from_slice(&order(v));
        }
        b
    }

    fn decode(b: &[u8; LEN], order: fn([u8; 2]) -> u16) -> Offload {
        let u = |i: usize| order([b[i], b[i + 1]]);
        Offload {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u(2),
            gso_size: u(4),
            csum_start: u(6),
            csum_offset: u(8),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tso() -> Offload {
        Offload {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_TCPV4,
            hdr_len: 66,
            gso_size: 1448,
            csum_start: 34,
            csum_offset: 16,
        }
    }

    #[test]
    fn vnet_round_trip_is_little_endian() {
        let h = tso();
        let mut b = [0u8; LEN];
        h.to_vnet(&mut b);
        assert_eq!(b, [1, 1, 66, 0, 0xa8, 0x05, 34, 0, 16, 0]);
        assert_eq!(Offload::parse(&b), Some(h));
        assert_eq!(Offload::from_vnet(&b), h);
        assert_eq!(Offload::parse(&[b.as_slice(), b"frame"].concat()), Some(h));
        assert!(Offload::parse(&b[..9]).is_none());
        assert!(Offload::from_vnet(&b[..9]).is_none());
        // A short output buffer is left alone.
        let mut short = [0xeeu8; 9];
        h.to_vnet(&mut short);
        assert_eq!(short, [0xee; 9]);
    }

    #[test]
    fn wire_round_trip_is_big_endian() {
        let mut b = [0u8; LEN];
        tso().write_wire(&mut b);
        assert_eq!(b, [1, 1, 0, 66, 0x05, 0xa8, 0, 34, 0, 16]);
        assert_eq!(Offload::read_wire(&b), tso());
    }

    #[test]
    fn none_and_gso() {
        assert!(Offload::default().is_none());
        assert!(!Offload::default().is_gso());
        assert!(!tso().is_none());
        assert!(tso().is_gso());
        let ecn_only = Offload {
            gso_type: GSO_ECN,
            ..Offload::default()
        };
        assert!(!ecn_only.is_none());
        assert!(!ecn_only.is_gso());
        let csum_only = Offload {
            gso_type: GSO_NONE,
            gso_size: 0,
            ..tso()
        };
        assert!(!csum_only.is_none());
        assert!(!csum_only.is_gso());
    }

    #[test]
    fn check_accepts_what_the_sleeve_produces() {
        let h = tso();
        assert_eq!(h.check(60_000), Ok(()));
        assert_eq!(h.check(100), Ok(()));
        // The checksum field (2 bytes at 34 + 16) fits in 52 bytes, the 66-byte headers do not.
        assert_eq!(h.check(66), Ok(()));
        assert_eq!(h.check(52), Err(OffloadError::HdrLen));
        for gso_type in [GSO_TCPV6, GSO_TCPV4 | GSO_ECN, GSO_TCPV6 | GSO_ECN] {
            assert_eq!(Offload { gso_type, ..h }.check(100), Ok(()));
        }
        let valid = Offload {
            flags: F_DATA_VALID,
            ..Offload::default()
        };
        assert_eq!(valid.check(14), Ok(()));
        assert_eq!(Offload::default().check(14), Ok(()));
        // Without NEEDS_CSUM the checksum fields are not looked at.
        let no_csum = Offload {
            flags: 0,
            csum_start: 60_000,
            ..h
        };
        assert_eq!(no_csum.check(100), Ok(()));
    }

    #[test]
    fn check_refuses_what_the_kernel_would_refuse_or_misuse() {
        let h = tso();
        let cases = [
            (Offload { flags: 4, ..h }, Err(OffloadError::Flags)),
            (
                Offload {
                    gso_type: GSO_UDP,
                    ..h
                },
                Err(OffloadError::GsoType),
            ),
            (
                Offload {
                    gso_type: GSO_UDP_L4,
                    ..h
                },
                Err(OffloadError::GsoType),
            ),
            (Offload { gso_type: 2, ..h }, Err(OffloadError::GsoType)),
            (
                Offload {
                    gso_type: GSO_ECN,
                    ..Offload::default()
                },
                Err(OffloadError::GsoType),
            ),
            (Offload { gso_size: 0, ..h }, Err(OffloadError::GsoSize)),
            (
                Offload {
                    gso_type: GSO_TCPV6 | GSO_ECN,
                    gso_size: 0,
                    ..h
                },
                Err(OffloadError::GsoSize),
            ),
            (
                Offload {
                    csum_start: u16::MAX,
                    csum_offset: u16::MAX,
                    ..h
                },
                Err(OffloadError::CsumRange),
            ),
        ];
        for (o, want) in cases {
            assert_eq!(o.check(60_000), want, "{o:?}");
        }
        // The checksum field must fit: 34 + 16 + 2 = 52 bytes.
        let small = Offload { hdr_len: 0, ..h };
        assert_eq!(small.check(52), Ok(()));
        assert_eq!(small.check(51), Err(OffloadError::CsumRange));
        assert_eq!(h.check(51), Err(OffloadError::CsumRange));
        // The header length must fit as well, with or without segmentation.
        let plain = Offload {
            hdr_len: 101,
            ..Offload::default()
        };
        assert_eq!(plain.check(100), Err(OffloadError::HdrLen));
        assert_eq!(plain.check(101), Ok(()));
    }
}
