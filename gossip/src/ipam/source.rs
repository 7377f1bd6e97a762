//! Where a router's address blocks come from ([`BlockSource`]): claimed from the shared
//! range through gossip (the default), fixed by someone with authority over the cluster's
//! address plan (Kubernetes `spec.podCIDR`), or not known yet.
//!
//! A fixed CIDR is this router's only source: the blocks it overlaps are settled at once,
//! without a claim and without waiting for anyone, and addresses are handed out only inside
//! the CIDR (never its own network and broadcast addresses, as Kubernetes' `host-local`
//! IPAM does). The router publishes those blocks like any settled blocks, so routers that
//! claim from the shared range keep out of them. It never claims blocks of the shared range,
//! and when it removes a dead peer it does not take the peer's blocks over: it only voids
//! the peer's record, which frees them for whoever the cluster gives that CIDR next.

use super::space::IpamSpace;
use super::IpamError;
use ipnet::Ipv4Net;
use std::collections::BTreeSet;
use std::fmt;

/// Where this router's address blocks come from.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub enum BlockSource {
    /// Claim free blocks of the shared range through gossip (no quorum, no coordinator).
    #[default]
    Shared,
    /// This router's own CIDR (Kubernetes `spec.podCIDR`), inside the range: its blocks are
    /// settled at once and nothing else is claimed.
    Fixed(Ipv4Net),
    /// Not known yet (waiting for the Node's `spec.podCIDR`): no new blocks are claimed and
    /// no new addresses handed out; existing allocations stay valid.
    Undecided,
}

impl fmt::Display for BlockSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BlockSource::Shared => f.write_str("shared range (gossip)"),
            BlockSource::Fixed(net) => write!(f, "fixed CIDR {net}"),
            BlockSource::Undecided => f.write_str("undecided"),
        }
    }
}

/// A fixed CIDR in a space: the blocks it overlaps and which of their addresses it allows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Fixed {
    pub net: Ipv4Net,
    pub blocks: BTreeSet<u32>,
}

impl Fixed {
    /// `net` (host bits cleared) in `space`; it must lie inside the range.
    pub fn new(space: &IpamSpace, net: Ipv4Net) -> Result<Fixed, IpamError> {
        let net = net.trunc();
        let range = space.range();
        if !range.contains(&net) {
            return Err(IpamError::CidrOutsideRange { cidr: net, range });
        }
        let lo = space
            .block_of(u32::from(net.network()))
            .expect("inside the range");
        let hi = space
            .block_of(u32::from(net.broadcast()))
            .expect("inside the range");
        Ok(Fixed {
            net,
            blocks: (lo..=hi).collect(),
        })
    }

    /// Whether address `a` may be handed out: inside the CIDR, not its network or broadcast
    /// address (for CIDRs of four addresses or more), and usable in the space.
    pub fn allows(&self, space: &IpamSpace, a: u32) -> bool {
        let (first, last) = (
            u32::from(self.net.network()),
            u32::from(self.net.broadcast()),
        );
        if a < first || a > last || !space.usable(a) {
            return false;
        }
        self.net.prefix_len() > 30 || (a != first && a != last)
    }

    /// How many addresses [`allows`](Self::allows) admits.
    pub fn capacity(&self, space: &IpamSpace) -> u64 {
        let (first, last) = (
            u32::from(self.net.network()),
            u32::from(self.net.broadcast()),
        );
        (first..=last).filter(|&a| self.allows(space, a)).count() as u64
    }

    /// The CIDR covers its blocks whole (it is not smaller than a block): another claimant
    /// of one of them is a real conflict, not a neighbour sharing a block.
    pub fn whole_blocks(&self, space: &IpamSpace) -> bool {
        self.net.prefix_len() <= space.block_prefix_len
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn space() -> IpamSpace {
        IpamSpace::new("10.32.0.0/12".parse().unwrap(), None).unwrap()
    }

    fn a(s: &str) -> u32 {
        u32::from(s.parse::<std::net::Ipv4Addr>().unwrap())
    }

    #[test]
    fn a_24_is_four_blocks_and_skips_its_own_network_and_broadcast() {
        let s = space();
        let f = Fixed::new(&s, "10.32.1.7/24".parse().unwrap()).unwrap();
        assert_eq!(f.net.to_string(), "10.32.1.0/24", "host bits cleared");
        assert_eq!(f.blocks, [4, 5, 6, 7].into());
        assert!(!f.allows(&s, a("10.32.1.0")));
        assert!(f.allows(&s, a("10.32.1.1")));
        assert!(f.allows(&s, a("10.32.1.64")), "block boundaries are usable");
        assert!(!f.allows(&s, a("10.32.1.255")));
        assert!(!f.allows(&s, a("10.32.2.1")));
        assert_eq!(f.capacity(&s), 254);
        assert!(f.whole_blocks(&s));
    }

    #[test]
    fn smaller_than_a_block_and_outside_the_range() {
        let s = space();
        let f = Fixed::new(&s, "10.32.0.32/27".parse().unwrap()).unwrap();
        assert_eq!(f.blocks, [0].into(), "shares block 0 with its neighbour");
        assert!(!f.whole_blocks(&s));
        assert_eq!(f.capacity(&s), 30);
        assert!(!f.allows(&s, a("10.32.0.1")), "the neighbour's half");
        // the range's own network address is never usable, even at a CIDR's edge
        let first = Fixed::new(&s, "10.32.0.0/30".parse().unwrap()).unwrap();
        assert_eq!(first.capacity(&s), 2);
        let slash31 = Fixed::new(&s, "10.32.0.0/31".parse().unwrap()).unwrap();
        assert_eq!(slash31.capacity(&s), 1, "10.32.0.0 is the range's network");
        for bad in ["10.48.0.0/24", "10.0.0.0/8", "192.168.0.0/24"] {
            match Fixed::new(&s, bad.parse().unwrap()) {
                Err(IpamError::CidrOutsideRange { cidr, range }) => {
                    assert_eq!(cidr.to_string(), bad);
                    assert_eq!(range.to_string(), "10.32.0.0/12");
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
        assert_eq!(
            BlockSource::Fixed("10.32.1.0/24".parse().unwrap()).to_string(),
            "fixed CIDR 10.32.1.0/24"
        );
    }
}
