//! Rectangles of (address range, protocol, port range): what a group's rules admit on some
//! ports, split into disjoint elements because nftables refuses overlapping elements in an
//! interval set; and merged port lists.

use crate::addr::{normalize_ranges, Bound};
use crate::model::Protocol;
use crate::render::PortRanges;

/// One element of a concatenated `addr . l4proto . dport` interval set (inclusive ranges).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Elem<A> {
    pub addr: (A, A),
    pub proto: Protocol,
    pub ports: (u16, u16),
}

/// An (address range, protocol, port range) rectangle, possibly overlapping others.
pub(crate) type Rect<T> = ((T, T), Protocol, (u16, u16));

/// Disjoint (address range, protocol, port range) elements covering the union of `rects`.
pub(crate) fn disjoint<T: Copy + Ord + Bound>(rects: Vec<Rect<T>>) -> Vec<Elem<T>> {
    let mut out = Vec::new();
    for proto in Protocol::ALL {
        let rs: Vec<_> = rects.iter().filter(|r| r.1 == proto).collect();
        if rs.is_empty() {
            continue;
        }
        let mut points: Vec<T> = Vec::with_capacity(rs.len() * 2);
        for r in &rs {
            points.push(r.0 .0);
            if r.0 .1 != T::MAX {
                points.push(r.0 .1.succ());
            }
        }
        points.sort_unstable();
        points.dedup();
        let mut cover: Vec<Vec<(u32, u32)>> = vec![Vec::new(); points.len()];
        for r in &rs {
            let mut i = points.partition_point(|p| *p < r.0 .0);
            while i < points.len() && points[i] <= r.0 .1 {
                cover[i].push((u32::from(r.2 .0), u32::from(r.2 .1)));
                i += 1;
            }
        }
        let cover: Vec<Vec<(u32, u32)>> = cover.into_iter().map(normalize_ranges).collect();
        let end_of = |i: usize| {
            if i + 1 < points.len() {
                points[i + 1].pred()
            } else {
                T::MAX
            }
        };
        let mut i = 0;
        while i < points.len() {
            if cover[i].is_empty() {
                i += 1;
                continue;
            }
            let mut j = i;
            while j + 1 < points.len() && cover[j + 1] == cover[i] {
                j += 1;
            }
            for &(a, b) in &cover[i] {
                out.push(Elem {
                    addr: (points[i], end_of(j)),
                    proto,
                    ports: (a as u16, b as u16),
                });
            }
            i = j + 1;
        }
    }
    out.sort_unstable();
    out
}

/// Sorted, disjoint, merged (protocol, first, last) port ranges.
pub(crate) fn merge_ports(v: PortRanges) -> PortRanges {
    let mut out = Vec::new();
    for proto in Protocol::ALL {
        let r: Vec<(u32, u32)> = v
            .iter()
            .filter(|p| p.0 == proto)
            .map(|p| (u32::from(p.1), u32::from(p.2)))
            .collect();
        out.extend(
            normalize_ranges(r)
                .into_iter()
                .map(|(a, b)| (proto, a as u16, b as u16)),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disjoint_covers_exactly_the_union() {
        let mut seed = 99u64;
        let mut next = |m: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % m
        };
        for _ in 0..300 {
            let n = 1 + next(6) as usize;
            let rects: Vec<Rect<u32>> = (0..n)
                .map(|_| {
                    let a = next(40) as u32;
                    let p = next(20) as u16;
                    let proto = if next(3) == 0 {
                        Protocol::Udp
                    } else {
                        Protocol::Tcp
                    };
                    ((a, a + next(10) as u32), proto, (p, p + next(5) as u16))
                })
                .collect();
            let out = disjoint(rects.clone());
            for proto in [Protocol::Tcp, Protocol::Udp] {
                for a in 0..55u32 {
                    for p in 0..30u16 {
                        let want = rects.iter().any(|r| {
                            r.1 == proto
                                && (r.0 .0..=r.0 .1).contains(&a)
                                && (r.2 .0..=r.2 .1).contains(&p)
                        });
                        let hits = out
                            .iter()
                            .filter(|e| {
                                e.proto == proto
                                    && (e.addr.0..=e.addr.1).contains(&a)
                                    && (e.ports.0..=e.ports.1).contains(&p)
                            })
                            .count();
                        assert_eq!(
                            hits,
                            usize::from(want),
                            "{rects:?} -> {out:?} at {a} {proto} {p}"
                        );
                    }
                }
            }
        }
    }
}
