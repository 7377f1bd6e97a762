//! The IPAM address space: one IPv4 range cut into equal power-of-two blocks, numbered
//! from 0 at the range's first address. Pure arithmetic on `u32` addresses.
//!
//! The range's own network and broadcast addresses are never handed out (they are the
//! first address of block 0 and the last address of the last block); every other address
//! of every block is usable.

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::Ipv4Addr;

/// Smallest block: a /30 (four addresses).
pub const MAX_BLOCK_PREFIX: u8 = 30;
/// Largest block: a /8.
pub const MIN_BLOCK_PREFIX: u8 = 8;
/// At most 2^20 blocks per range (block indices fit in 20 bits).
pub const MAX_BLOCK_BITS: u8 = 20;
/// Default block for ranges /8 to /22: 64 addresses.
pub const DEFAULT_BLOCK_PREFIX: u8 = 26;

/// A range and its block size, as published in every IPAM record. Two peers share a
/// block numbering exactly when their spaces are equal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct IpamSpace {
    /// First address of the range (no host bits set).
    pub network: Ipv4Addr,
    pub prefix_len: u8,
    /// Prefix length of one block (`prefix_len ..= 30`).
    pub block_prefix_len: u8,
}

impl IpamSpace {
    /// The space of `range` (host bits are cleared) with blocks of `/block_prefix`, or the
    /// default block size ([`IpamSpace::default_block_prefix`]).
    pub fn new(range: Ipv4Net, block_prefix: Option<u8>) -> Result<IpamSpace, String> {
        let range = range.trunc();
        let p = range.prefix_len();
        if p > MAX_BLOCK_PREFIX {
            return Err(format!(
                "IP range {range} is too small: at least a /{MAX_BLOCK_PREFIX} is needed"
            ));
        }
        let bp = block_prefix.unwrap_or_else(|| Self::default_block_prefix(p));
        let space = IpamSpace {
            network: range.network(),
            prefix_len: p,
            block_prefix_len: bp,
        };
        space.check()?;
        Ok(space)
    }

    /// /26 blocks for ranges /8 to /22; for smaller ranges blocks giving 16 of them (down
    /// to /30 blocks); for ranges larger than a /8, 2^18 blocks.
    pub fn default_block_prefix(prefix_len: u8) -> u8 {
        let bp = DEFAULT_BLOCK_PREFIX
            .max(prefix_len.saturating_add(4))
            .min(MAX_BLOCK_PREFIX);
        bp.min(prefix_len + 18).max(MIN_BLOCK_PREFIX)
    }

    /// Whether the space is well-formed (also applied to spaces received from peers).
    pub fn check(&self) -> Result<(), String> {
        let (p, bp) = (self.prefix_len, self.block_prefix_len);
        if p > MAX_BLOCK_PREFIX {
            return Err(format!(
                "range prefix /{p} is longer than /{MAX_BLOCK_PREFIX}"
            ));
        }
        if bp < p || !(MIN_BLOCK_PREFIX..=MAX_BLOCK_PREFIX).contains(&bp) {
            return Err(format!(
                "block size /{bp} must be between the range's /{p} and /{MAX_BLOCK_PREFIX} \
                 (and at most a /{MIN_BLOCK_PREFIX})"
            ));
        }
        if bp - p > MAX_BLOCK_BITS {
            return Err(format!(
                "/{bp} blocks cut a /{p} into more than 2^{MAX_BLOCK_BITS} blocks"
            ));
        }
        if u32::from(self.network) & !mask(p) != 0 {
            return Err(format!("{}/{p} has host bits set", self.network));
        }
        Ok(())
    }

    pub fn range(&self) -> Ipv4Net {
        Ipv4Net::new(self.network, self.prefix_len).expect("checked prefix length")
    }

    fn base(&self) -> u32 {
        u32::from(self.network)
    }

    /// Number of blocks.
    pub fn block_count(&self) -> u32 {
        1 << (self.block_prefix_len - self.prefix_len)
    }

    /// Addresses per block.
    pub fn block_size(&self) -> u32 {
        1 << (32 - self.block_prefix_len)
    }

    /// Addresses in the range (2^32 for a /0 does not fit a u32).
    pub fn size(&self) -> u64 {
        1u64 << (32 - self.prefix_len)
    }

    /// First address of block `b`.
    pub fn block_start(&self, b: u32) -> u32 {
        self.base() + b * self.block_size()
    }

    /// Last address of block `b`.
    pub fn block_end(&self, b: u32) -> u32 {
        self.block_start(b) + (self.block_size() - 1)
    }

    pub fn block_net(&self, b: u32) -> Ipv4Net {
        Ipv4Net::new(Ipv4Addr::from(self.block_start(b)), self.block_prefix_len)
            .expect("checked prefix length")
    }

    /// The block holding `addr`, if it is in the range.
    pub fn block_of(&self, addr: u32) -> Option<u32> {
        let off = addr.wrapping_sub(self.base());
        (u64::from(off) < self.size() && addr >= self.base())
            .then(|| off >> (32 - self.block_prefix_len))
    }

    /// Whether `addr` may be handed out: in the range, and neither the range's network
    /// nor its broadcast address.
    pub fn usable(&self, addr: u32) -> bool {
        let last = self.base() + (self.size() - 1) as u32;
        self.block_of(addr).is_some() && addr != self.base() && addr != last
    }

    /// Usable addresses of block `b`.
    pub fn usable_in_block(&self, b: u32) -> u32 {
        let mut n = self.block_size();
        if b == 0 {
            n -= 1;
        }
        if b == self.block_count() - 1 {
            n -= 1;
        }
        n
    }

    /// Our block indices overlapping block `b` of `other` (a space with another
    /// numbering), as an inclusive index range.
    pub fn overlap(&self, other: &IpamSpace, b: u32) -> Option<(u32, u32)> {
        let (lo, hi) = (
            u64::from(other.block_start(b)),
            u64::from(other.block_end(b)),
        );
        let (mlo, mhi) = (
            u64::from(self.base()),
            u64::from(self.base()) + self.size() - 1,
        );
        if hi < mlo || lo > mhi {
            return None;
        }
        let (lo, hi) = (lo.max(mlo) as u32, hi.min(mhi) as u32);
        Some((self.block_of(lo)?, self.block_of(hi)?))
    }
}

impl fmt::Display for IpamSpace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{} in /{} blocks",
            self.network, self.prefix_len, self.block_prefix_len
        )
    }
}

fn mask(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix)
    }
}

/// The smallest set of CIDRs covering exactly the given blocks (adjacent blocks merge).
pub fn aggregate(space: &IpamSpace, blocks: impl IntoIterator<Item = u32>) -> Vec<Ipv4Net> {
    let nets: Vec<Ipv4Net> = blocks.into_iter().map(|b| space.block_net(b)).collect();
    Ipv4Net::aggregate(&nets)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn space(r: &str, bp: Option<u8>) -> IpamSpace {
        IpamSpace::new(r.parse().unwrap(), bp).unwrap()
    }

    #[test]
    fn default_block_sizes() {
        assert_eq!(IpamSpace::default_block_prefix(12), 26);
        assert_eq!(IpamSpace::default_block_prefix(8), 26);
        assert_eq!(IpamSpace::default_block_prefix(20), 26);
        assert_eq!(IpamSpace::default_block_prefix(22), 26);
        assert_eq!(IpamSpace::default_block_prefix(24), 28, "16 blocks of 16");
        assert_eq!(IpamSpace::default_block_prefix(26), 30, "16 blocks of 4");
        assert_eq!(IpamSpace::default_block_prefix(28), 30);
        assert_eq!(IpamSpace::default_block_prefix(4), 22, "2^18 blocks");
        for p in 0..=30 {
            let s = IpamSpace {
                network: Ipv4Addr::UNSPECIFIED,
                prefix_len: p,
                block_prefix_len: IpamSpace::default_block_prefix(p),
            };
            s.check().unwrap();
            if (8..=26).contains(&p) {
                assert!(s.block_count() >= 16, "/{p}");
            }
        }
    }

    #[test]
    fn range_split() {
        let s = space("10.32.0.0/12", None);
        assert_eq!(s.block_count(), 16384);
        assert_eq!(s.block_size(), 64);
        assert_eq!(s.block_net(0).to_string(), "10.32.0.0/26");
        assert_eq!(s.block_net(1).to_string(), "10.32.0.64/26");
        assert_eq!(s.block_net(16383).to_string(), "10.47.255.192/26");
        let a = u32::from(Ipv4Addr::new(10, 32, 1, 7));
        assert_eq!(s.block_of(a), Some(4));
        assert_eq!(s.block_of(u32::from(Ipv4Addr::new(10, 48, 0, 0))), None);
        assert_eq!(s.block_of(u32::from(Ipv4Addr::new(10, 31, 255, 255))), None);
        // host bits are cleared
        assert_eq!(space("10.32.1.1/12", None), s);
    }

    #[test]
    fn network_and_broadcast_are_never_usable() {
        let s = space("192.168.0.0/24", Some(28));
        assert_eq!(s.block_count(), 16);
        let net = u32::from(Ipv4Addr::new(192, 168, 0, 0));
        assert!(!s.usable(net));
        assert!(s.usable(net + 1));
        assert!(
            s.usable(net + 16),
            "block boundaries inside the range are usable"
        );
        assert!(s.usable(net + 254));
        assert!(!s.usable(net + 255));
        assert!(!s.usable(net + 256));
        assert_eq!(s.usable_in_block(0), 15);
        assert_eq!(s.usable_in_block(1), 16);
        assert_eq!(s.usable_in_block(15), 15);
        let one = space("10.0.0.0/30", None);
        assert_eq!(one.block_count(), 1);
        assert_eq!(one.usable_in_block(0), 2);
    }

    #[test]
    fn small_and_invalid_ranges() {
        let s = space("10.1.2.0/26", Some(28));
        assert_eq!((s.block_count(), s.block_size()), (4, 16));
        let s = space("10.1.2.0/26", None);
        assert_eq!((s.block_count(), s.block_size()), (16, 4));
        assert!(IpamSpace::new("10.0.0.0/31".parse().unwrap(), None).is_err());
        assert!(IpamSpace::new("10.0.0.0/24".parse().unwrap(), Some(31)).is_err());
        assert!(IpamSpace::new("10.0.0.0/24".parse().unwrap(), Some(23)).is_err());
        assert!(IpamSpace::new("10.0.0.0/8".parse().unwrap(), Some(30)).is_err());
        assert!(IpamSpace::new("0.0.0.0/0".parse().unwrap(), Some(0)).is_err());
        let all = IpamSpace::new("0.0.0.0/0".parse().unwrap(), None).unwrap();
        assert_eq!(all.block_count(), 1 << 18);
        assert!(all.usable(1) && !all.usable(0) && !all.usable(u32::MAX));
        assert_eq!(all.block_of(u32::MAX), Some((1 << 18) - 1));
        let bad = IpamSpace {
            network: Ipv4Addr::new(10, 0, 0, 1),
            prefix_len: 24,
            block_prefix_len: 28,
        };
        assert!(bad.check().is_err());
    }

    #[test]
    fn overlap_between_numberings() {
        let ours = space("10.32.0.0/12", None);
        let theirs = space("10.32.0.0/16", Some(24));
        assert_eq!(ours.overlap(&theirs, 0), Some((0, 3)));
        assert_eq!(ours.overlap(&theirs, 1), Some((4, 7)));
        let outside = space("192.168.0.0/16", None);
        assert_eq!(ours.overlap(&outside, 3), None);
        let wide = space("10.0.0.0/8", Some(20));
        assert_eq!(wide.overlap(&ours, 0), Some((512, 512)));
        assert_eq!(ours.overlap(&wide, 512), Some((0, 63)));
    }

    #[test]
    fn aggregation() {
        let s = space("10.32.0.0/12", None);
        let nets = aggregate(&s, [0, 1, 2, 3, 5]);
        let shown: Vec<String> = nets.iter().map(|n| n.to_string()).collect();
        assert_eq!(shown, ["10.32.0.0/24", "10.32.1.64/26"]);
    }
}
