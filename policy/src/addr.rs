//! Sets of addresses as sorted, disjoint, non-adjacent inclusive ranges, one list per family.
//! The compiler builds one per rule (pod addresses and `ipBlock`s less their `except`s); the
//! renderer writes them out as nftables interval set elements.

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Sorted, disjoint, non-adjacent inclusive ranges of an unsigned integer type.
fn normalize<T: Copy + Ord + Bound>(mut v: Vec<(T, T)>) -> Vec<(T, T)> {
    v.sort_unstable();
    let mut out: Vec<(T, T)> = Vec::with_capacity(v.len());
    for (a, b) in v {
        match out.last_mut() {
            Some(last) if last.1 == T::MAX || a <= last.1.succ() => {
                if b > last.1 {
                    last.1 = b;
                }
            }
            _ => out.push((a, b)),
        }
    }
    out
}

/// `a` less `b`, both normalized.
fn subtract<T: Copy + Ord + Bound>(a: &[(T, T)], b: &[(T, T)]) -> Vec<(T, T)> {
    let mut out = Vec::new();
    let mut j = 0;
    for &(mut lo, hi) in a {
        while j < b.len() && b[j].1 < lo {
            j += 1;
        }
        let mut k = j;
        let mut done = false;
        while k < b.len() && b[k].0 <= hi {
            if b[k].0 > lo {
                out.push((lo, b[k].0.pred()));
            }
            if b[k].1 >= hi {
                done = true;
                break;
            }
            lo = b[k].1.succ();
            k += 1;
        }
        if !done {
            out.push((lo, hi));
        }
    }
    out
}

fn contains<T: Copy + Ord>(v: &[(T, T)], x: T) -> bool {
    let i = v.partition_point(|r| r.1 < x);
    i < v.len() && v[i].0 <= x
}

pub(crate) trait Bound {
    const MAX: Self;
    fn succ(self) -> Self;
    fn pred(self) -> Self;
}

impl Bound for u32 {
    const MAX: Self = u32::MAX;
    fn succ(self) -> Self {
        self + 1
    }
    fn pred(self) -> Self {
        self - 1
    }
}

impl Bound for u128 {
    const MAX: Self = u128::MAX;
    fn succ(self) -> Self {
        self + 1
    }
    fn pred(self) -> Self {
        self - 1
    }
}

/// A set of IPv4 and IPv6 addresses.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AddrSet {
    v4: Vec<(u32, u32)>,
    v6: Vec<(u128, u128)>,
}

fn net_range(n: &IpNet) -> Range {
    match n {
        IpNet::V4(n) => Range::V4(u32::from(n.network()), u32::from(n.broadcast())),
        IpNet::V6(n) => Range::V6(u128::from(n.network()), u128::from(n.broadcast())),
    }
}

#[derive(Clone, Copy)]
enum Range {
    V4(u32, u32),
    V6(u128, u128),
}

impl AddrSet {
    /// Every address of both families.
    pub fn everything() -> Self {
        AddrSet {
            v4: vec![(0, u32::MAX)],
            v6: vec![(0, u128::MAX)],
        }
    }

    /// The given single addresses.
    pub fn from_addrs(addrs: impl IntoIterator<Item = IpAddr>) -> Self {
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for a in addrs {
            match a {
                IpAddr::V4(a) => v4.push((u32::from(a), u32::from(a))),
                IpAddr::V6(a) => v6.push((u128::from(a), u128::from(a))),
            }
        }
        AddrSet {
            v4: normalize(v4),
            v6: normalize(v6),
        }
    }

    /// `cidr` less every `except`.
    pub fn from_block(cidr: &IpNet, except: &[IpNet]) -> Self {
        let all = AddrSet::from_nets(std::slice::from_ref(cidr));
        all.minus(&AddrSet::from_nets(except))
    }

    fn from_nets(nets: &[IpNet]) -> Self {
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for n in nets {
            match net_range(n) {
                Range::V4(a, b) => v4.push((a, b)),
                Range::V6(a, b) => v6.push((a, b)),
            }
        }
        AddrSet {
            v4: normalize(v4),
            v6: normalize(v6),
        }
    }

    /// The union of many sets.
    pub fn union_all<'a>(sets: impl IntoIterator<Item = &'a AddrSet>) -> Self {
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for s in sets {
            v4.extend_from_slice(&s.v4);
            v6.extend_from_slice(&s.v6);
        }
        AddrSet {
            v4: normalize(v4),
            v6: normalize(v6),
        }
    }

    pub fn minus(&self, other: &AddrSet) -> Self {
        AddrSet {
            v4: subtract(&self.v4, &other.v4),
            v6: subtract(&self.v6, &other.v6),
        }
    }

    pub fn contains(&self, a: IpAddr) -> bool {
        match a {
            IpAddr::V4(a) => contains(&self.v4, u32::from(a)),
            IpAddr::V6(a) => contains(&self.v6, u128::from(a)),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }

    /// True if this is every address of both families.
    pub fn is_everything(&self) -> bool {
        *self == Self::everything()
    }

    /// The IPv4 ranges, inclusive.
    pub fn v4(&self) -> impl Iterator<Item = (Ipv4Addr, Ipv4Addr)> + '_ {
        self.v4
            .iter()
            .map(|&(a, b)| (Ipv4Addr::from(a), Ipv4Addr::from(b)))
    }

    /// The IPv6 ranges, inclusive.
    pub fn v6(&self) -> impl Iterator<Item = (Ipv6Addr, Ipv6Addr)> + '_ {
        self.v6
            .iter()
            .map(|&(a, b)| (Ipv6Addr::from(a), Ipv6Addr::from(b)))
    }

    /// Number of ranges (both families).
    pub fn ranges(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    /// The ranges as raw integers (crate-internal, for the renderer).
    pub(crate) fn raw_v4(&self) -> &[(u32, u32)] {
        &self.v4
    }

    pub(crate) fn raw_v6(&self) -> &[(u128, u128)] {
        &self.v6
    }
}

/// Public helpers on plain range lists, for the renderer.
pub(crate) fn normalize_ranges<T: Copy + Ord + Bound>(v: Vec<(T, T)>) -> Vec<(T, T)> {
    normalize(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn block_with_excepts() {
        let s = AddrSet::from_block(
            &net("10.0.0.0/24"),
            &[net("10.0.0.0/26"), net("10.0.0.128/25")],
        );
        let r: Vec<_> = s.v4().collect();
        assert_eq!(r, vec![(ip4("10.0.0.64"), ip4("10.0.0.127"))]);
        assert!(!s.contains(ip("10.0.0.1")));
        assert!(s.contains(ip("10.0.0.64")));
        assert!(s.contains(ip("10.0.0.127")));
        assert!(!s.contains(ip("10.0.0.128")));
        assert!(!s.contains(ip("::1")));
    }

    fn ip4(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn except_in_the_middle_and_at_edges() {
        let s = AddrSet::from_block(&net("0.0.0.0/0"), &[net("10.0.0.0/8")]);
        let r: Vec<_> = s.v4().collect();
        assert_eq!(
            r,
            vec![
                (ip4("0.0.0.0"), ip4("9.255.255.255")),
                (ip4("11.0.0.0"), ip4("255.255.255.255"))
            ]
        );
        let all6 = AddrSet::from_block(&net("::/0"), &[]);
        assert!(all6.contains(ip("2001:db8::1")));
        assert!(!all6.contains(ip("1.2.3.4")));
    }

    #[test]
    fn addresses_merge_when_adjacent() {
        let s = AddrSet::from_addrs([
            ip("10.0.0.2"),
            ip("10.0.0.1"),
            ip("10.0.0.3"),
            ip("10.0.0.9"),
        ]);
        assert_eq!(s.ranges(), 2);
        let u = AddrSet::union_all([&s, &AddrSet::from_addrs([ip("10.0.0.4")])]);
        assert_eq!(u.ranges(), 2);
        assert!(u.contains(ip("10.0.0.4")));
        assert!(!u.contains(ip("10.0.0.5")));
    }

    #[test]
    fn subtract_against_a_brute_force_model() {
        // Small universe: compare with a bitmap.
        let mut seed = 7u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..300 {
            let mut gen = |n| -> Vec<(u32, u32)> {
                (0..n)
                    .map(|_| {
                        let a = (next() % 64) as u32;
                        let b = a + (next() % 8) as u32;
                        (a, b)
                    })
                    .collect()
            };
            let a = normalize(gen(4));
            let b = normalize(gen(4));
            let d = subtract(&a, &b);
            for x in 0..80u32 {
                assert_eq!(
                    contains(&d, x),
                    contains(&a, x) && !contains(&b, x),
                    "{a:?} - {b:?} at {x}"
                );
            }
            for w in d.windows(2) {
                assert!(w[0].1 + 1 < w[1].0, "not normalized: {d:?}");
            }
        }
    }

    #[test]
    fn everything_round_trip() {
        assert!(AddrSet::everything().is_everything());
        let s = AddrSet::union_all([
            &AddrSet::from_block(&net("0.0.0.0/1"), &[]),
            &AddrSet::from_block(&net("128.0.0.0/1"), &[]),
            &AddrSet::from_block(&net("::/0"), &[]),
        ]);
        assert!(s.is_everything());
    }
}
