//! ICMP "fragmentation needed" for pod frames that cannot fit the path, and the IPv4
//! inspection and MTU arithmetic around it.
//!
//! An IPv4 packet with DF from a pod that is larger than the path allows would otherwise be
//! split into records across datagrams (which works, but costs) or, worse, silently lost
//! somewhere. Instead the sleeve answers it, as a router would, with ICMP type 3 code 4
//! carrying the usable MTU, so the pod's TCP lowers its segment size.
//!
//! The answer is addressed back to the sender on the same link: Ethernet source and
//! destination swapped, IP source = the original destination, quoting the original IP
//! header and the first 8 bytes of its payload (RFC 792). No answer is built for anything
//! but a complete, unfragmented IPv4 packet with DF over untagged Ethernet, for ICMP error
//! messages (RFC 1122: never answer an error with an error), or for packets from or to
//! broadcast, multicast or unspecified addresses.

use crate::offload::Offload;
use crate::records::{OFFLOAD_LEN, RECORD_HEADER_LEN};
use crate::session::Mode;
use crate::wire::IPV4_UDP_OVERHEAD;

/// Ethernet header length (untagged).
pub const ETH_HLEN: usize = 14;
const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;
const IPV4_HLEN: usize = 20;
const ICMP_HLEN: usize = 8;
const PROTO_ICMP: u8 = 1;
const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;
const DF: u16 = 0x4000;
const MF: u16 = 0x2000;
const FRAG_OFFSET: u16 = 0x1fff;

/// The largest inner IP MTU a pod may use so that one of its frames, Ethernet header and
/// offload block included, fits one datagram on a path of `pmtu` (outer IPv4 packet size):
/// `pmtu - 20 (IPv4) - 8 (UDP) - HEADER_LEN - TAG_LEN (encrypted only) - RECORD_HEADER_LEN
/// - OFFLOAD_LEN - ETH_HLEN`. 1500 gives 1389 encrypted, 1405 plain.
pub fn inner_mtu(pmtu: u16, mode: Mode) -> u16 {
    let overhead = IPV4_UDP_OVERHEAD + mode.overhead() + RECORD_HEADER_LEN + OFFLOAD_LEN + ETH_HLEN;
    u16::try_from(usize::from(pmtu).saturating_sub(overhead)).unwrap_or(0)
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    let s = b.get(at..at + 2)?;
    Some(u16::from_be_bytes([s[0], s[1]]))
}

/// A checked view of the IPv4 packet in an Ethernet frame.
struct Ipv4<'a> {
    /// From the IP header to the end of the frame (may include Ethernet padding).
    ip: &'a [u8],
    ihl: usize,
    total: u16,
    flags_frag: u16,
}

fn ipv4(frame: &[u8]) -> Option<Ipv4<'_>> {
    if be16(frame, 12)? != ETHERTYPE_IPV4 {
        return None;
    }
    let ip = frame.get(ETH_HLEN..)?;
    let first = *ip.first()?;
    let ihl = usize::from(first & 0x0f) * 4;
    if first >> 4 != 4 || ihl < IPV4_HLEN || ip.len() < ihl {
        return None;
    }
    let total = be16(ip, 2)?;
    if usize::from(total) < ihl {
        return None;
    }
    Some(Ipv4 {
        ip,
        ihl,
        total,
        flags_frag: be16(ip, 6)?,
    })
}

/// For an Ethernet frame carrying IPv4: whether DF is set, and the IP total length.
pub fn ipv4_df_len(frame: &[u8]) -> Option<(bool, u16)> {
    let p = ipv4(frame)?;
    Some((p.flags_frag & DF != 0, p.total))
}

/// For a segmentation-offload frame: the IP packet size of each segment the kernel will
/// cut it into (L3 header + L4 header + `gso_size`). `None` if the offload is not
/// segmentation, or the frame is not IPv4/IPv6 (without extension headers) carrying TCP or
/// UDP.
pub fn gso_segment_ip_len(frame: &[u8], off: &Offload) -> Option<u16> {
    if !off.is_gso() || off.gso_size == 0 {
        return None;
    }
    let (l3, proto) = match be16(frame, 12)? {
        ETHERTYPE_IPV4 => {
            let p = ipv4(frame)?;
            (p.ihl, *p.ip.get(9)?)
        }
        ETHERTYPE_IPV6 => (40, *frame.get(ETH_HLEN + 6)?),
        _ => return None,
    };
    let l4 = match proto {
        PROTO_TCP => {
            let doff = usize::from(frame.get(ETH_HLEN + l3 + 12)? >> 4) * 4;
            if doff < 20 {
                return None;
            }
            doff
        }
        PROTO_UDP => 8,
        _ => return None,
    };
    u16::try_from(l3 + l4 + usize::from(off.gso_size)).ok()
}

/// The Internet checksum (RFC 1071) of `data`.
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Whether an IPv4 address may be the source of a packet we answer with an error.
fn unicast_source(a: &[u8]) -> bool {
    !(a == [0, 0, 0, 0] || a == [255, 255, 255, 255] || a[0] >= 224 || a[0] == 127)
}

/// ICMP types that are not errors (may be answered).
fn icmp_informational(t: u8) -> bool {
    matches!(t, 0 | 8 | 9 | 10 | 13 | 14 | 15 | 16 | 17 | 18)
}

/// If `frame` is Ethernet + IPv4 with DF, not a fragment, with IP total length above
/// `mtu`, builds into `out` (cleared first) an Ethernet frame carrying ICMP "fragmentation
/// needed" (type 3, code 4, next-hop MTU = `mtu`) back to its sender and returns true.
/// Returns false, with `out` left empty, otherwise.
///
/// For a segmentation-offload frame, compare [`gso_segment_ip_len`] with the MTU first:
/// the frame's own length is always above it.
pub fn frag_needed(frame: &[u8], mtu: u16, out: &mut Vec<u8>) -> bool {
    out.clear();
    let Some(p) = ipv4(frame) else { return false };
    if p.flags_frag & DF == 0 || p.flags_frag & (MF | FRAG_OFFSET) != 0 || p.total <= mtu {
        return false;
    }
    let ip = p.ip;
    if usize::from(p.total) > ip.len() || frame[6] & 1 != 0 {
        return false;
    }
    let (src, dst) = (&ip[12..16], &ip[16..20]);
    if !unicast_source(src) || !unicast_source(dst) {
        return false;
    }
    if ip[9] == PROTO_ICMP && !ip.get(p.ihl).is_some_and(|&t| icmp_informational(t)) {
        return false;
    }
    let quote = p.ihl + (usize::from(p.total) - p.ihl).min(8);
    let ip_len = IPV4_HLEN + ICMP_HLEN + quote;
    out.reserve(ETH_HLEN + ip_len);
    // Ethernet: back to the sender, from the MAC it addressed.
    out.extend_from_slice(&frame[6..12]);
    out.extend_from_slice(&frame[0..6]);
    out.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
    // IPv4 header, checksum filled below. `ip_len` is at most 20 + 8 + 60 + 8.
    let ip_start = out.len();
    out.extend_from_slice(&[0x45, 0xc0]);
    out.extend_from_slice(&(ip_len as u16).to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0, 64, PROTO_ICMP, 0, 0]);
    out.extend_from_slice(dst);
    out.extend_from_slice(src);
    let ip_sum = checksum(&out[ip_start..]);
    out[ip_start + 10..ip_start + 12].copy_from_slice(&ip_sum.to_be_bytes());
    // ICMP: type 3 code 4, checksum, unused, next-hop MTU, quote.
    let icmp_start = out.len();
    out.extend_from_slice(&[3, 4, 0, 0, 0, 0]);
    out.extend_from_slice(&mtu.to_be_bytes());
    out.extend_from_slice(&ip[..quote]);
    let icmp_sum = checksum(&out[icmp_start..]);
    out[icmp_start + 2..icmp_start + 4].copy_from_slice(&icmp_sum.to_be_bytes());
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_known_vectors() {
        // RFC 1071 example bytes: 00 01 f2 03 f4 f5 f6 f7 sum to 0xddf2 (before inversion).
        assert_eq!(
            checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
            !0xddf2
        );
        assert_eq!(checksum(&[]), 0xffff);
        assert_eq!(checksum(&[0xff]), !0xff00);
    }

    #[test]
    fn inner_mtu_values() {
        assert_eq!(inner_mtu(1500, Mode::Encrypted), 1389);
        assert_eq!(inner_mtu(1500, Mode::Plain), 1405);
        assert_eq!(inner_mtu(50, Mode::Encrypted), 0);
    }
}
