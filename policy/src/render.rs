//! Rendering: the compiled policy of the pods on this node as one nftables table.
//!
//! Layout (`inet weft-policy`, see `docs/policy.md` for a full example):
//! - chain `forward` (hook forward, priority filter): `ct state established,related accept`,
//!   then `ip saddr vmap @egress4` and `ip daddr vmap @ingress4` (and the `ip6` pair when the
//!   node has IPv6 pods). Bridged pod↔pod and overlay traffic reaches this hook through
//!   `br_netfilter`; routed traffic reaches it anyway. Node↔pod traffic never does (input/output).
//! - the verdict maps send each isolated local pod address to its **group** chain: pods of one
//!   namespace selected by the same rules (and, for ingress, resolving the named ports those
//!   rules use to the same numbers) share one group.
//! - a group chain is two set lookups per family (`addr . l4proto . dport` in a concatenated
//!   interval set, and `addr` alone for rules without ports), then a rate-limited NFLOG line
//!   and a per-namespace named counter before `drop`. Egress groups `return` on a match (the
//!   destination's ingress is checked next); ingress groups `accept`.
//!
//! Group and set names derive from a hash of the group's identity (its rules, not its
//! contents), so a pod coming or going usually changes only set elements, which
//! [`Ruleset::diff`] turns into an element-only transaction.

use crate::addr::{normalize_ranges, AddrSet, Bound};
use crate::compile::{Compiled, CompiledRule};
use crate::model::{Direction, Pod, PortSpec, Ports, Protocol};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The table weft owns for policy (family `inet`; the masquerade table is `ip weft`).
pub const TABLE: &str = "weft-policy";
/// Default NFLOG group for blocked connections.
pub const DEFAULT_LOG_GROUP: u16 = 6786;
/// Prefix of every log line; the namespace follows.
pub const LOG_PREFIX: &str = "weft-policy drop";

/// How blocked connections are logged.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LogSettings {
    /// NFLOG group (`log group N`).
    pub group: u16,
    /// Per group chain: at most this many log lines per second...
    pub rate_per_second: u32,
    /// ...after a burst of this many.
    pub burst: u32,
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings {
            group: DEFAULT_LOG_GROUP,
            rate_per_second: 10,
            burst: 20,
        }
    }
}

/// One element of a concatenated `addr . l4proto . dport` interval set (inclusive ranges).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Elem<A> {
    pub addr: (A, A),
    pub proto: Protocol,
    pub ports: (u16, u16),
}

/// A group chain and its sets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Group {
    pub namespace: String,
    pub direction: Direction,
    /// Addresses admitted on every port and protocol.
    pub any4: Vec<(u32, u32)>,
    pub any6: Vec<(u128, u128)>,
    /// (address, protocol, port) admitted, disjoint.
    pub ported4: Vec<Elem<u32>>,
    pub ported6: Vec<Elem<u128>>,
    /// Local pods in the group.
    pub pods: Vec<String>,
}

fn in_ranges<T: Copy + Ord>(v: &[(T, T)], x: T) -> bool {
    v.iter().any(|r| r.0 <= x && x <= r.1)
}

fn in_elems<T: Copy + Ord>(v: &[Elem<T>], x: T, proto: Protocol, port: u16) -> bool {
    v.iter().any(|e| {
        e.proto == proto && e.addr.0 <= x && x <= e.addr.1 && e.ports.0 <= port && port <= e.ports.1
    })
}

impl Group {
    /// Whether this group's sets admit the peer address on (`proto`, `port`).
    pub fn matches(&self, peer: IpAddr, proto: Protocol, port: u16) -> bool {
        match peer {
            IpAddr::V4(a) => {
                let a = u32::from(a);
                in_ranges(&self.any4, a) || in_elems(&self.ported4, a, proto, port)
            }
            IpAddr::V6(a) => {
                let a = u128::from(a);
                in_ranges(&self.any6, a) || in_elems(&self.ported6, a, proto, port)
            }
        }
    }

    pub fn elements(&self) -> usize {
        self.any4.len() + self.any6.len() + self.ported4.len() + self.ported6.len()
    }
}

/// The whole table, as data. [`Ruleset::to_nft`] writes it; [`Ruleset::diff`] writes the
/// change from an earlier one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ruleset {
    pub table: String,
    pub log: LogSettings,
    /// Whether the IPv6 maps, sets and rules exist.
    pub ipv6: bool,
    /// Group chains by name.
    pub groups: BTreeMap<String, Group>,
    /// Local isolated pod address → group, per direction.
    pub ingress: BTreeMap<IpAddr, String>,
    pub egress: BTreeMap<IpAddr, String>,
}

/// What a [`Ruleset::diff`] contains.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diff {
    pub script: String,
    pub added: usize,
    pub deleted: usize,
}

fn fnv64(s: &str) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

fn group_key(c: &Compiled, pod: &Pod, d: Direction, refs: &[crate::compile::RuleRef]) -> String {
    let mut key = format!("{}|{}", d.as_str(), pod.namespace);
    let mut names = BTreeSet::new();
    for r in refs {
        let p = &c.policies()[r.policy as usize];
        let _ = write!(key, "|{}/{}#{}", p.namespace, p.name, r.rule);
        if let Ports::List(list) = &c.rule(*r, d).ports {
            for pr in list {
                if let PortSpec::Named(n) = &pr.port {
                    names.insert(n.as_str());
                }
            }
        }
    }
    // Ingress named ports resolve against this pod: pods resolving them differently differ.
    if d == Direction::Ingress {
        for n in names {
            let _ = write!(key, "|{n}={:?}", pod.named_ports.get(n));
        }
    }
    key
}

struct Rects {
    any: Vec<AddrSet>,
    ported: Vec<(AddrSet, Protocol, (u16, u16))>,
    singles: Vec<(IpAddr, Protocol, u16)>,
}

fn collect(c: &Compiled, pod: &Pod, d: Direction, refs: &[crate::compile::RuleRef]) -> Rects {
    let mut r = Rects {
        any: Vec::new(),
        ported: Vec::new(),
        singles: Vec::new(),
    };
    let everything = AddrSet::everything();
    for rr in refs {
        let CompiledRule { peers, ports } = c.rule(*rr, d);
        let peers: &AddrSet = peers.as_deref().unwrap_or(&everything);
        match ports {
            Ports::Any => r.any.push(peers.clone()),
            Ports::List(list) => {
                for pr in list {
                    match &pr.port {
                        PortSpec::All => r.ported.push((peers.clone(), pr.protocol, (0, u16::MAX))),
                        PortSpec::Range(a, b) => {
                            r.ported.push((peers.clone(), pr.protocol, (*a, *b)))
                        }
                        PortSpec::Named(n) if d == Direction::Ingress => {
                            if let Some(np) = pod.named_ports.get(n) {
                                if np.protocol == pr.protocol {
                                    r.ported
                                        .push((peers.clone(), np.protocol, (np.port, np.port)));
                                }
                            }
                        }
                        PortSpec::Named(n) => {
                            for (ip, np) in c.named_port_targets(n) {
                                if np.protocol == pr.protocol && peers.contains(*ip) {
                                    r.singles.push((*ip, np.protocol, np.port));
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    r
}

/// An (address range, protocol, port range) rectangle, possibly overlapping others.
type Rect<T> = ((T, T), Protocol, (u16, u16));

/// Disjoint (address range, protocol, port range) elements covering the union of `rects`.
fn disjoint<T: Copy + Ord + Bound>(rects: Vec<Rect<T>>) -> Vec<Elem<T>> {
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
        let mut cover: Vec<Vec<(u16, u16)>> = vec![Vec::new(); points.len()];
        for r in &rs {
            let first = points.partition_point(|p| *p < r.0 .0);
            let mut i = first;
            while i < points.len() && points[i] <= r.0 .1 {
                cover[i].push(r.2);
                i += 1;
            }
        }
        let cover: Vec<Vec<(u16, u16)>> = cover
            .into_iter()
            .map(|v| {
                let v: Vec<(u32, u32)> = v
                    .into_iter()
                    .map(|(a, b)| (u32::from(a), u32::from(b)))
                    .collect();
                normalize_ranges(v)
                    .into_iter()
                    .map(|(a, b)| (a as u16, b as u16))
                    .collect()
            })
            .collect();
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
            for &ports in &cover[i] {
                out.push(Elem {
                    addr: (points[i], end_of(j)),
                    proto,
                    ports,
                });
            }
            i = j + 1;
        }
    }
    out.sort_unstable();
    out
}

fn build_group(c: &Compiled, pod: &Pod, d: Direction, refs: &[crate::compile::RuleRef]) -> Group {
    let r = collect(c, pod, d, refs);
    let any = AddrSet::union_all(r.any.iter());
    let mut p4 = Vec::new();
    let mut p6 = Vec::new();
    for (set, proto, ports) in &r.ported {
        p4.extend(set.raw_v4().iter().map(|&a| (a, *proto, *ports)));
        p6.extend(set.raw_v6().iter().map(|&a| (a, *proto, *ports)));
    }
    for (ip, proto, port) in &r.singles {
        match ip {
            IpAddr::V4(a) => p4.push(((u32::from(*a), u32::from(*a)), *proto, (*port, *port))),
            IpAddr::V6(a) => p6.push(((u128::from(*a), u128::from(*a)), *proto, (*port, *port))),
        }
    }
    Group {
        namespace: pod.namespace.clone(),
        direction: d,
        any4: any.raw_v4().to_vec(),
        any6: any.raw_v6().to_vec(),
        ported4: disjoint(p4),
        ported6: disjoint(p6),
        pods: Vec::new(),
    }
}

impl Ruleset {
    /// The ruleset for the pods owning `local` addresses (this node's pods, from its CNI
    /// records). Addresses the compiled policy does not know are left alone (not isolated).
    pub fn build(c: &Compiled, local: &[IpAddr], log: &LogSettings) -> Ruleset {
        let mut groups: BTreeMap<String, Group> = BTreeMap::new();
        let mut names: BTreeMap<String, String> = BTreeMap::new(); // key -> name
        let mut maps: [BTreeMap<IpAddr, String>; 2] = [BTreeMap::new(), BTreeMap::new()];
        let mut ipv6 = false;
        let mut local_pods: BTreeMap<usize, Vec<IpAddr>> = BTreeMap::new();
        for ip in local {
            if let Some(p) = c.pod_by_ip(*ip) {
                local_pods.entry(p).or_default().push(*ip);
            }
        }
        for (&pi, ips) in &local_pods {
            let pod = &c.pods()[pi];
            for (k, d) in [Direction::Ingress, Direction::Egress]
                .into_iter()
                .enumerate()
            {
                let Some(refs) = c.grants(pi, d) else {
                    continue;
                };
                let key = group_key(c, pod, d, refs);
                let name = match names.get(&key) {
                    Some(n) => n.clone(),
                    None => {
                        let tag = if d == Direction::Ingress { 'i' } else { 'e' };
                        let mut h = fnv64(&key);
                        let mut name = format!("{tag}-{:012x}", h >> 16);
                        while groups.contains_key(&name) {
                            h = h.wrapping_add(1);
                            name = format!("{tag}-{:012x}", h >> 16);
                        }
                        let g = build_group(c, pod, d, refs);
                        if g.any4.first() == Some(&(0, u32::MAX))
                            && g.any6.first() == Some(&(0, u128::MAX))
                        {
                            // Admits everything: the pod is not restricted in this direction.
                            names.insert(key, String::new());
                            continue;
                        }
                        names.insert(key, name.clone());
                        groups.insert(name.clone(), g);
                        name
                    }
                };
                if name.is_empty() {
                    continue;
                }
                let g = groups.get_mut(&name).expect("group exists");
                g.pods.push(pod.key());
                ipv6 |= !g.any6.is_empty() || !g.ported6.is_empty();
                for ip in ips {
                    ipv6 |= ip.is_ipv6();
                    maps[k].insert(*ip, name.clone());
                }
            }
        }
        let [ingress, egress] = maps;
        Ruleset {
            table: TABLE.into(),
            log: log.clone(),
            ipv6,
            groups,
            ingress,
            egress,
        }
    }

    /// What the table does with the first packet of a connection from `src` to `dst`
    /// (forwarded through this node): the same lookups the kernel makes, on this data. Used
    /// by the tests to check rendering against the compiled policy.
    pub fn admits(&self, src: IpAddr, dst: IpAddr, proto: Protocol, port: u16) -> bool {
        let ok = |g: &String, peer: IpAddr| self.groups[g].matches(peer, proto, port);
        self.egress.get(&src).is_none_or(|g| ok(g, dst))
            && self.ingress.get(&dst).is_none_or(|g| ok(g, src))
    }

    /// Number of set and map elements.
    pub fn elements(&self) -> usize {
        self.ingress.len()
            + self.egress.len()
            + self.groups.values().map(Group::elements).sum::<usize>()
    }

    /// The named counters: (direction, namespace) → counter name.
    pub fn counters(&self) -> BTreeMap<(Direction, String), String> {
        self.groups
            .values()
            .map(|g| {
                (
                    (g.direction, g.namespace.clone()),
                    counter_name(g.direction, &g.namespace),
                )
            })
            .collect()
    }

    fn structure(
        &self,
    ) -> (
        String,
        &LogSettings,
        bool,
        Vec<(&String, &String, Direction)>,
    ) {
        (
            self.table.clone(),
            &self.log,
            self.ipv6,
            self.groups
                .iter()
                .map(|(n, g)| (n, &g.namespace, g.direction))
                .collect(),
        )
    }

    /// The set/map contents as (set name, element text) pairs.
    fn contents(&self) -> BTreeSet<(String, String)> {
        let mut out = BTreeSet::new();
        for (map, entries) in [("ingress", &self.ingress), ("egress", &self.egress)] {
            for (ip, g) in entries {
                let fam = if ip.is_ipv4() { "4" } else { "6" };
                out.insert((format!("{map}{fam}"), format!("{ip} : jump {g}")));
            }
        }
        for (name, g) in &self.groups {
            for e in g.any4.iter().map(|r| range4(*r)) {
                out.insert((format!("{name}-a4"), e));
            }
            for e in g.any6.iter().map(|r| range6(*r)) {
                out.insert((format!("{name}-a6"), e));
            }
            for e in &g.ported4 {
                out.insert((format!("{name}-p4"), elem(range4(e.addr), e)));
            }
            for e in &g.ported6 {
                out.insert((format!("{name}-p6"), elem(range6(e.addr), e)));
            }
        }
        out
    }

    /// The whole table as one nft script: create-if-missing, delete, re-create with every
    /// element, in one transaction.
    pub fn to_nft(&self) -> String {
        let t = &self.table;
        let mut s = format!("table inet {t}\ndelete table inet {t}\ntable inet {t} {{\n");
        for ((d, ns), name) in self.counters() {
            let _ = writeln!(s, "\tcounter {name} {{ comment \"{} {ns}\"; }}", d.as_str());
        }
        let fams: &[&str] = if self.ipv6 { &["4", "6"] } else { &["4"] };
        for f in fams {
            let addr = if *f == "4" { "ipv4_addr" } else { "ipv6_addr" };
            for map in ["ingress", "egress"] {
                let _ = writeln!(s, "\tmap {map}{f} {{ type {addr} : verdict; }}");
            }
            for name in self.groups.keys() {
                let _ = writeln!(s, "\tset {name}-a{f} {{ type {addr}; flags interval; }}");
                let _ = writeln!(
                    s,
                    "\tset {name}-p{f} {{ type {addr} . inet_proto . inet_service; flags interval; }}"
                );
            }
        }
        for (name, g) in &self.groups {
            let (field, verdict) = match g.direction {
                Direction::Ingress => ("saddr", "accept"),
                Direction::Egress => ("daddr", "return"),
            };
            let _ = writeln!(s, "\tchain {name} {{");
            for f in fams {
                let ip = if *f == "4" { "ip" } else { "ip6" };
                let _ = writeln!(
                    s,
                    "\t\t{ip} {field} . meta l4proto . th dport @{name}-p{f} {verdict}"
                );
                let _ = writeln!(s, "\t\t{ip} {field} @{name}-a{f} {verdict}");
            }
            let _ = writeln!(
                s,
                "\t\tlimit rate {}/second burst {} packets log prefix \"{LOG_PREFIX} {} {}: \" group {}",
                self.log.rate_per_second,
                self.log.burst,
                g.direction.as_str(),
                g.namespace,
                self.log.group
            );
            let _ = writeln!(
                s,
                "\t\tcounter name \"{}\" drop",
                counter_name(g.direction, &g.namespace)
            );
            let _ = writeln!(s, "\t}}");
        }
        let _ = writeln!(
            s,
            "\tchain forward {{\n\t\ttype filter hook forward priority filter; policy accept;\n\t\tct state established,related accept"
        );
        for f in fams {
            let ip = if *f == "4" { "ip" } else { "ip6" };
            let _ = writeln!(s, "\t\t{ip} saddr vmap @egress{f}");
        }
        for f in fams {
            let ip = if *f == "4" { "ip" } else { "ip6" };
            let _ = writeln!(s, "\t\t{ip} daddr vmap @ingress{f}");
        }
        s.push_str("\t}\n}\n");
        let contents = self.contents();
        write_elements(&mut s, "add", t, contents.iter());
        s
    }

    /// The change from `old` to `self` as element deletions and additions in one script, or
    /// `None` when the table's structure (groups, families, logging) differs and the whole
    /// table must be replaced.
    pub fn diff(&self, old: &Ruleset) -> Option<Diff> {
        if self.structure() != old.structure() {
            return None;
        }
        let new = self.contents();
        let was = old.contents();
        let mut s = String::new();
        let del: Vec<_> = was.difference(&new).collect();
        let add: Vec<_> = new.difference(&was).collect();
        // Map entries are deleted by key.
        let del_keys: Vec<(String, String)> = del
            .iter()
            .map(|(set, e)| match e.split_once(" : ") {
                Some((k, _)) => (set.clone(), k.to_string()),
                None => (set.clone(), e.clone()),
            })
            .collect();
        write_elements(&mut s, "delete", &self.table, del_keys.iter());
        write_elements(&mut s, "add", &self.table, add.iter().copied());
        Some(Diff {
            script: s,
            added: add.len(),
            deleted: del.len(),
        })
    }
}

/// Named counter of blocked packets for a (direction, namespace).
pub fn counter_name(d: Direction, ns: &str) -> String {
    let tag = match d {
        Direction::Ingress => "in",
        Direction::Egress => "eg",
    };
    format!("drop-{tag}-{ns}")
}

fn write_elements<'a>(
    s: &mut String,
    verb: &str,
    table: &str,
    items: impl Iterator<Item = &'a (String, String)>,
) {
    let mut by_set: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (set, e) in items {
        by_set.entry(set).or_default().push(e);
    }
    for (set, elems) in by_set {
        for chunk in elems.chunks(4096) {
            let _ = writeln!(
                s,
                "{verb} element inet {table} {set} {{ {} }}",
                chunk.join(", ")
            );
        }
    }
}

fn range4((a, b): (u32, u32)) -> String {
    if a == b {
        Ipv4Addr::from(a).to_string()
    } else {
        format!("{}-{}", Ipv4Addr::from(a), Ipv4Addr::from(b))
    }
}

fn range6((a, b): (u128, u128)) -> String {
    if a == b {
        Ipv6Addr::from(a).to_string()
    } else {
        format!("{}-{}", Ipv6Addr::from(a), Ipv6Addr::from(b))
    }
}

fn elem<A>(addr: String, e: &Elem<A>) -> String {
    let proto = match e.proto {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
        Protocol::Sctp => "sctp",
    };
    if e.ports.0 == e.ports.1 {
        format!("{addr} . {proto} . {}", e.ports.0)
    } else {
        format!("{addr} . {proto} . {}-{}", e.ports.0, e.ports.1)
    }
}

#[cfg(test)]
#[path = "render_tests.rs"]
mod tests;
