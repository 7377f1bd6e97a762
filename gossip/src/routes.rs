//! Route computation over the topology view.
//!
//! The graph has an edge between two peers only when both report the connection (for us:
//! our live connection set), so half-open or one-sided connections never carry traffic.
//! Unicast: a breadth-first search from us, neighbours in name order; a destination's next
//! hop is the first hop of the path that reached it first. Broadcast: for every origin `O`
//! the shortest-path tree in which each peer's parent is its smallest-named neighbour one
//! step closer to `O`. Every peer computes the same trees from the same view, so a
//! broadcast forwarded along them reaches each peer exactly once. Our children in `O`'s
//! tree come from level sets computed with bitsets: O(n^3 / 64) word operations for all
//! origins, about 15 M at 1,000 peers.
//!
//! Reachability for garbage collection is different: it follows edges outward only (a
//! peer that others still report is alive, even if it has not heard of them yet).

use crate::mesh::Routes;
use crate::message::PeerRecord;
use crate::peer::PeerName;
use crate::store::Store;
use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};

/// Whether `rec` lists a connection to `peer` (records keep connections sorted).
/// (An unsorted record, which validation rejects, gives wrong answers but never a panic.)
fn lists(rec: &PeerRecord, peer: PeerName) -> bool {
    rec.connections
        .binary_search_by(|c| c.peer.cmp(&peer))
        .is_ok()
}

/// The symmetric graph reachable from us: names in order, adjacency by index (sorted).
struct Graph {
    names: Vec<PeerName>,
    adj: Vec<Vec<usize>>,
    me: usize,
}

fn build(me: PeerName, mine: &[PeerName], topo: &Store<PeerRecord>) -> Graph {
    // neighbours of one peer by name, symmetric edges only
    let neighbours = |x: PeerName| -> Vec<PeerName> {
        let mut out: Vec<PeerName> = if x == me {
            mine.iter()
                .copied()
                .filter(|&y| y != me && topo.get(&y).is_some_and(|r| lists(r, me)))
                .collect()
        } else {
            let Some(rx) = topo.get(&x) else {
                return Vec::new();
            };
            rx.connections
                .iter()
                .map(|c| c.peer)
                .filter(|&y| {
                    y != x
                        && if y == me {
                            mine.binary_search(&x).is_ok()
                        } else {
                            topo.get(&y).is_some_and(|r| lists(r, x))
                        }
                })
                .collect()
        };
        out.sort_unstable();
        out.dedup();
        out
    };
    let mut by_name: BTreeMap<PeerName, Vec<PeerName>> = BTreeMap::new();
    let mut queue = VecDeque::from([me]);
    let mut seen = BTreeSet::from([me]);
    while let Some(x) = queue.pop_front() {
        let ns = neighbours(x);
        for &y in &ns {
            if seen.insert(y) {
                queue.push_back(y);
            }
        }
        by_name.insert(x, ns);
    }
    let names: Vec<PeerName> = by_name.keys().copied().collect();
    let index: BTreeMap<PeerName, usize> = names.iter().enumerate().map(|(i, n)| (*n, i)).collect();
    let adj = by_name
        .values()
        .map(|ns| ns.iter().map(|n| index[n]).collect())
        .collect();
    Graph {
        me: index[&me],
        names,
        adj,
    }
}

/// Unicast next hops and broadcast children for us.
pub(crate) fn compute(me: PeerName, mine: &[PeerName], topo: &Store<PeerRecord>) -> Routes {
    let g = build(me, mine, topo);
    let n = g.names.len();
    let mut routes = Routes::default();

    // unicast: BFS from us, neighbours in name order
    let mut hop: Vec<Option<usize>> = vec![None; n];
    let mut queue = VecDeque::new();
    for &v in &g.adj[g.me] {
        hop[v] = Some(v);
        queue.push_back(v);
    }
    while let Some(u) = queue.pop_front() {
        for &v in &g.adj[u] {
            if v != g.me && hop[v].is_none() {
                hop[v] = hop[u];
                queue.push_back(v);
            }
        }
    }
    for (v, h) in hop.iter().enumerate() {
        if let Some(h) = h {
            routes.unicast.insert(g.names[v], g.names[*h]);
        }
    }

    // broadcast: level sets per origin as bitsets
    let words = n.div_ceil(64);
    let mut bits = vec![0u64; n * words];
    for (u, ns) in g.adj.iter().enumerate() {
        for &v in ns {
            bits[u * words + v / 64] |= 1 << (v % 64);
        }
    }
    let row = |u: usize| &bits[u * words..(u + 1) * words];
    // nodes with a smaller name than us (indices are in name order)
    let mut smaller = vec![0u64; words];
    for i in 0..g.me {
        smaller[i / 64] |= 1 << (i % 64);
    }
    let mut visited = vec![0u64; words];
    let mut frontier = vec![0u64; words];
    let mut next = vec![0u64; words];
    let mut prev = vec![0u64; words];
    for o in 0..n {
        visited.fill(0);
        frontier.fill(0);
        visited[o / 64] |= 1 << (o % 64);
        frontier[o / 64] |= 1 << (o % 64);
        let me_bit = |s: &[u64]| s[g.me / 64] & (1 << (g.me % 64)) != 0;
        // advance levels until `frontier` holds us; `prev` then becomes our level
        while !me_bit(&frontier) {
            if frontier.iter().all(|&w| w == 0) {
                break; // cannot happen: every node was reached from us
            }
            expand(&frontier, &mut next, &mut visited, words, &row);
            std::mem::swap(&mut frontier, &mut next);
        }
        // frontier = L_d (contains us); compute L_{d+1}
        prev.copy_from_slice(&frontier);
        expand(&prev, &mut next, &mut visited, words, &row);
        let mut children = Vec::new();
        for &v in &g.adj[g.me] {
            if next[v / 64] & (1 << (v % 64)) == 0 {
                continue;
            }
            // v's parent is its smallest-named neighbour on our level: us unless a smaller one
            let rv = row(v);
            let beaten = (0..words).any(|w| rv[w] & prev[w] & smaller[w] != 0);
            if !beaten {
                children.push(g.names[v]);
            }
        }
        routes.broadcast.insert(g.names[o], children);
    }
    routes
}

/// `next` = neighbours of `frontier` not yet visited; marks them visited.
fn expand<'a>(
    frontier: &[u64],
    next: &mut [u64],
    visited: &mut [u64],
    words: usize,
    row: &impl Fn(usize) -> &'a [u64],
) {
    next.fill(0);
    for (w, &fw) in frontier.iter().enumerate().take(words) {
        let mut f = fw;
        while f != 0 {
            let u = w * 64 + f.trailing_zeros() as usize;
            f &= f - 1;
            for (x, r) in next.iter_mut().zip(row(u)) {
                *x |= r;
            }
        }
    }
    for (x, v) in next.iter_mut().zip(visited.iter_mut()) {
        *x &= !*v;
        *v |= *x;
    }
}

/// Peers reachable from us following reported connections outward (our own from `mine`).
/// Stops as soon as `expect` peers of `topo` have been seen (callers pass how many could
/// possibly be reached), so the common all-reachable case costs far less than a full walk.
pub(crate) fn reachable_outward(
    me: PeerName,
    mine: &[PeerName],
    topo: &Store<PeerRecord>,
    expect: usize,
) -> HashSet<PeerName> {
    let mut seen = HashSet::from([me]);
    let seen_me = usize::from(topo.contains(&me));
    if seen_me >= expect {
        return seen;
    }
    let mut seen_known = seen_me;
    let mut queue = VecDeque::new();
    let mut visit = |y: PeerName, seen: &mut HashSet<PeerName>, queue: &mut VecDeque<PeerName>| {
        if seen.insert(y) && topo.contains(&y) {
            seen_known += 1;
            queue.push_back(y);
        }
        seen_known >= expect
    };
    for &y in mine {
        if visit(y, &mut seen, &mut queue) {
            return seen;
        }
    }
    while let Some(x) = queue.pop_front() {
        if let Some(r) = topo.get(&x) {
            for c in &r.connections {
                if visit(c.peer, &mut seen, &mut queue) {
                    return seen;
                }
            }
        }
    }
    seen
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::message::{ConnRecord, Summary};
    use crate::peer::PeerUid;
    use std::sync::Arc;

    pub fn name(v: u64) -> PeerName {
        PeerName::new(v).unwrap()
    }

    /// A store where each listed peer reports the given neighbours.
    pub fn store(adj: &[(u64, &[u64])]) -> Store<PeerRecord> {
        let mut s = Store::default();
        for (o, ns) in adj {
            let mut ns: Vec<u64> = ns.to_vec();
            ns.sort();
            s.merge(Arc::new(PeerRecord {
                summary: Summary {
                    origin: name(*o),
                    uid: PeerUid(1),
                    version: 1,
                },
                nickname: String::new(),
                connections: ns
                    .iter()
                    .map(|&p| ConnRecord {
                        peer: name(p),
                        addr: ([10, 0, 0, p as u8], 6783).into(),
                        outbound: true,
                    })
                    .collect(),
            }));
        }
        s
    }

    /// Undirected edge list -> store (everyone reports every edge).
    pub fn symmetric(n: u64, edges: &[(u64, u64)]) -> Store<PeerRecord> {
        let mut adj: Vec<(u64, Vec<u64>)> = (1..=n).map(|i| (i, Vec::new())).collect();
        for &(a, b) in edges {
            adj[(a - 1) as usize].1.push(b);
            adj[(b - 1) as usize].1.push(a);
        }
        let refs: Vec<(u64, &[u64])> = adj.iter().map(|(o, v)| (*o, v.as_slice())).collect();
        store(&refs)
    }

    fn mine(topo: &Store<PeerRecord>, me: u64) -> Vec<PeerName> {
        topo.get(&name(me))
            .unwrap()
            .connections
            .iter()
            .map(|c| c.peer)
            .collect()
    }

    fn all_routes(n: u64, topo: &Store<PeerRecord>) -> BTreeMap<PeerName, Routes> {
        (1..=n)
            .map(|i| (name(i), compute(name(i), &mine(topo, i), topo)))
            .collect()
    }

    /// Floods a broadcast from `o` along everyone's routes; counts receipts per peer.
    fn flood(routes: &BTreeMap<PeerName, Routes>, o: PeerName) -> BTreeMap<PeerName, usize> {
        let mut got = BTreeMap::new();
        let mut queue = VecDeque::from([o]);
        while let Some(x) = queue.pop_front() {
            for &c in routes[&x].broadcast.get(&o).into_iter().flatten() {
                *got.entry(c).or_insert(0) += 1;
                if got[&c] == 1 {
                    queue.push_back(c);
                }
            }
        }
        got
    }

    #[test]
    fn unicast_on_a_line_and_a_square() {
        // 1 - 2 - 3 - 4, plus 1 - 5 - 4
        let topo = symmetric(5, &[(1, 2), (2, 3), (3, 4), (1, 5), (5, 4)]);
        let r = compute(name(1), &mine(&topo, 1), &topo);
        assert_eq!(r.unicast[&name(2)], name(2));
        assert_eq!(r.unicast[&name(3)], name(2));
        assert_eq!(r.unicast[&name(4)], name(5));
        assert!(!r.unicast.contains_key(&name(1)));
        let r3 = compute(name(3), &mine(&topo, 3), &topo);
        // 3 -> 1: via 2 (distance 2); via 4 would be 3 hops
        assert_eq!(r3.unicast[&name(1)], name(2));
        // 3 -> 5: via 2? no: 2 is not adjacent to 5; 4 is.
        assert_eq!(r3.unicast[&name(5)], name(4));
    }

    #[test]
    fn one_sided_connections_are_not_edges() {
        // 1 reports 2 but 2 does not report 1
        let topo = store(&[(1, &[2]), (2, &[3]), (3, &[2])]);
        let r = compute(name(1), &[name(2)], &topo);
        assert!(r.unicast.is_empty());
        assert_eq!(
            r.broadcast.keys().copied().collect::<Vec<_>>(),
            vec![name(1)]
        );
        let r2 = compute(name(2), &[name(3)], &topo);
        assert_eq!(r2.unicast.len(), 1);
        // ...but GC reachability follows them outward
        let reach = reachable_outward(name(1), &[name(2)], &topo, usize::MAX);
        assert!(reach.contains(&name(3)));
    }

    #[test]
    fn broadcast_reaches_everyone_exactly_once() {
        // a ring of 12 with chords, and an isolated pair 20-21
        let mut edges: Vec<(u64, u64)> = (1..=12).map(|i| (i, i % 12 + 1)).collect();
        edges.extend([(1, 7), (2, 9), (3, 6), (4, 11), (5, 10), (8, 12), (13, 14)]);
        let topo = symmetric(14, &edges);
        let routes = all_routes(14, &topo);
        for o in 1..=12 {
            let got = flood(&routes, name(o));
            assert_eq!(got.len(), 11, "origin {o} reaches all others: {got:?}");
            assert!(
                got.values().all(|&c| c == 1),
                "exactly once from {o}: {got:?}"
            );
            assert!(!got.contains_key(&name(o)));
        }
        // the pair only broadcasts to each other
        assert_eq!(routes[&name(13)].broadcast[&name(13)], vec![name(14)]);
        assert!(!routes[&name(13)].broadcast.contains_key(&name(1)));
    }

    #[test]
    fn broadcast_exactly_once_in_a_dense_graph() {
        // 90 peers, each connected to the next 7 (mod 90): many equal-length paths
        let n = 90u64;
        let mut edges = Vec::new();
        for i in 0..n {
            for k in 1..=7 {
                edges.push((i + 1, (i + k) % n + 1));
            }
        }
        let topo = symmetric(n, &edges);
        let routes = all_routes(n, &topo);
        for o in [1, 17, 45, 90] {
            let got = flood(&routes, name(o));
            assert_eq!(got.len() as u64, n - 1);
            assert!(got.values().all(|&c| c == 1));
        }
        // unicast paths lead to the destination without loops
        for s in 1..=n {
            for d in 1..=n {
                if s == d {
                    continue;
                }
                let (mut at, mut steps) = (name(s), 0);
                while at != name(d) {
                    at = routes[&at].unicast[&name(d)];
                    steps += 1;
                    assert!(steps <= 10, "loop from {s} to {d}");
                }
            }
        }
    }

    #[test]
    fn outward_reachability_stops_at_missing_edges() {
        let topo = store(&[(1, &[2]), (2, &[1]), (3, &[1])]);
        let reach = reachable_outward(name(1), &[name(2)], &topo, usize::MAX);
        assert!(reach.contains(&name(2)));
        assert!(
            !reach.contains(&name(3)),
            "3 points at us, nobody points at 3"
        );
    }
}
