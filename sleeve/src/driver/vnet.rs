//! The `virtio_net_hdr` that prefixes every frame on a TAP opened with `IFF_VNET_HDR`.
//!
//! With offloads enabled, the kernel hands the TAP reader frames it has not segmented or
//! checksummed: a TCP stream arrives as frames of up to 64 KB, each described by this 10-byte
//! header (which kind of segmentation is pending, the segment size, where the checksum goes).
//! Writing a frame with its header back into a TAP hands the same work to the receiving
//! kernel, which segments (or, for a local socket, simply accepts the large packet) and
//! completes checksums only where needed. The sleeve carries the header verbatim in a
//! record's offload block.
//!
//! Byte order: the kernel's header is in "virtio endianness"; [`super::Tap::attach`] asks for
//! little-endian (`TUNSETVNETLE`) so the bytes mean the same on every host, and this module
//! reads and writes little-endian. (On little-endian machines that is the default anyway.)
//!
//! Frames come from authenticated peers but are still untrusted input to the local kernel:
//! [`VnetHdr::check`] accepts only what the sleeve produces (no GSO, TCPv4, TCPv6, with or
//! without ECN; the `NEEDS_CSUM`/`DATA_VALID` flags) with offsets that fit the frame.

use crate::driver::tap::VNET_HDR_LEN;

/// `flags`: the checksum at `csum_start + csum_offset` still has to be completed.
pub const F_NEEDS_CSUM: u8 = 1;
/// `flags`: the checksum has already been verified.
pub const F_DATA_VALID: u8 = 2;
/// `gso_type`: a plain frame, no segmentation pending.
pub const GSO_NONE: u8 = 0;
/// `gso_type`: TCP over IPv4 segmentation pending.
pub const GSO_TCPV4: u8 = 1;
/// `gso_type`: UDP fragmentation offload (obsolete; never produced by this driver).
pub const GSO_UDP: u8 = 3;
/// `gso_type`: TCP over IPv6 segmentation pending.
pub const GSO_TCPV6: u8 = 4;
/// `gso_type`: UDP segmentation (USO; not enabled by this driver, see the tap module).
pub const GSO_UDP_L4: u8 = 5;
/// `gso_type` bit: the TCP segments carry ECN (CWR on the first segment only).
pub const GSO_ECN: u8 = 0x80;

/// A parsed `virtio_net_hdr` (without `num_buffers`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VnetHdr {
    pub flags: u8,
    pub gso_type: u8,
    /// Length of the Ethernet + IP + TCP headers (a hint for the kernel).
    pub hdr_len: u16,
    /// Payload bytes per segment (the MSS for TCP).
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
}

/// Why [`VnetHdr::check`] refused a header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VnetError {
    /// Flag bits other than `NEEDS_CSUM` and `DATA_VALID`.
    Flags,
    /// A segmentation type the sleeve does not carry (UFO, USO, unknown).
    GsoType,
    /// Segmentation pending with a segment size of 0.
    GsoSize,
    /// The checksum position lies outside the frame.
    CsumRange,
}

impl VnetHdr {
    /// Parse the first [`VNET_HDR_LEN`] bytes; `None` if `b` is shorter.
    pub fn parse(b: &[u8]) -> Option<VnetHdr> {
        let b: &[u8; VNET_HDR_LEN] = b.get(..VNET_HDR_LEN)?.try_into().ok()?;
        let u = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        Some(VnetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u(2),
            gso_size: u(4),
            csum_start: u(6),
            csum_offset: u(8),
        })
    }

    /// The header's wire bytes.
    pub fn to_bytes(&self) -> [u8; VNET_HDR_LEN] {
        let mut b = [0u8; VNET_HDR_LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
        b
    }

    /// Is segmentation pending (a "GSO frame")?
    pub fn is_gso(&self) -> bool {
        self.gso_type & !GSO_ECN != GSO_NONE
    }

    /// Check a header received from a peer before writing it with a frame of `frame_len`
    /// bytes (Ethernet header onwards) into the local TAP.
    pub fn check(&self, frame_len: usize) -> Result<(), VnetError> {
        if self.flags & !(F_NEEDS_CSUM | F_DATA_VALID) != 0 {
            return Err(VnetError::Flags);
        }
        match self.gso_type & !GSO_ECN {
            GSO_NONE if self.gso_type & GSO_ECN != 0 => return Err(VnetError::GsoType),
            GSO_NONE => {}
            GSO_TCPV4 | GSO_TCPV6 if self.gso_size == 0 => return Err(VnetError::GsoSize),
            GSO_TCPV4 | GSO_TCPV6 => {}
            _ => return Err(VnetError::GsoType),
        }
        if self.flags & F_NEEDS_CSUM != 0
            && self.csum_start as usize + self.csum_offset as usize + 2 > frame_len
        {
            return Err(VnetError::CsumRange);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_check() {
        let h = VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_TCPV4,
            hdr_len: 66,
            gso_size: 1448,
            csum_start: 34,
            csum_offset: 16,
        };
        let b = h.to_bytes();
        assert_eq!(b, [1, 1, 66, 0, 0xa8, 0x05, 34, 0, 16, 0]);
        assert_eq!(VnetHdr::parse(&b), Some(h));
        assert!(VnetHdr::parse(&b[..9]).is_none());
        assert!(h.is_gso());
        assert_eq!(h.check(60_000), Ok(()));
        assert_eq!(h.check(51), Err(VnetError::CsumRange));
        let bad = VnetHdr {
            gso_type: GSO_UDP_L4,
            ..h
        };
        assert_eq!(bad.check(60_000), Err(VnetError::GsoType));
        let zero = VnetHdr { gso_size: 0, ..h };
        assert_eq!(zero.check(60_000), Err(VnetError::GsoSize));
        let ecn_only = VnetHdr {
            gso_type: GSO_ECN,
            ..VnetHdr::default()
        };
        assert_eq!(ecn_only.check(100), Err(VnetError::GsoType));
        assert_eq!(VnetHdr::default().check(14), Ok(()));
        assert!(!VnetHdr::default().is_gso());
    }
}
