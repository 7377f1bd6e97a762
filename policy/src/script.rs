//! A [`Ruleset`] as nft text: the whole table (create-if-missing, delete, re-create, in one
//! transaction), or the element differences from an earlier ruleset of the same structure.
//!
//! Sets are written as typed element lists and compared typed: a difference costs time in
//! proportion to the elements compared, and text is made only for what changed.

use crate::model::{Direction, Protocol};
use crate::render::{counter_name, Elem, Group, LogSettings, Ruleset, Via, LOG_PREFIX};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// What a [`Ruleset::diff`] contains.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diff {
    pub script: String,
    pub added: usize,
    pub deleted: usize,
}

/// One set or map element.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum El<'a> {
    /// Verdict map entry: address → `jump` group.
    Map(IpAddr, &'a str),
    Range4(u32, u32),
    Range6(u128, u128),
    Rect4(Elem<u32>),
    Rect6(Elem<u128>),
    Addr4(u32),
    Addr6(u128),
    Port4(u32, u16),
    Port6(u128, u16),
    /// `inet_proto . inet_service` range.
    Svc(Protocol, u16, u16),
}

fn proto_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
        Protocol::Sctp => "sctp",
    }
}

fn ports_text(s: &mut String, (a, b): (u16, u16)) {
    if a == b {
        let _ = write!(s, "{a}");
    } else {
        let _ = write!(s, "{a}-{b}");
    }
}

impl El<'_> {
    /// The element as nft writes it; `key_only` for deleting map entries.
    fn write(&self, s: &mut String, key_only: bool) {
        match *self {
            El::Map(ip, g) => {
                let _ = write!(s, "{ip}");
                if !key_only {
                    let _ = write!(s, " : jump {g}");
                }
            }
            El::Range4(a, b) => range(s, Ipv4Addr::from(a), Ipv4Addr::from(b), a == b),
            El::Range6(a, b) => range(s, Ipv6Addr::from(a), Ipv6Addr::from(b), a == b),
            El::Rect4(e) => {
                range(
                    s,
                    Ipv4Addr::from(e.addr.0),
                    Ipv4Addr::from(e.addr.1),
                    e.addr.0 == e.addr.1,
                );
                rect_tail(s, e.proto, e.ports);
            }
            El::Rect6(e) => {
                range(
                    s,
                    Ipv6Addr::from(e.addr.0),
                    Ipv6Addr::from(e.addr.1),
                    e.addr.0 == e.addr.1,
                );
                rect_tail(s, e.proto, e.ports);
            }
            El::Addr4(a) => {
                let _ = write!(s, "{}", Ipv4Addr::from(a));
            }
            El::Addr6(a) => {
                let _ = write!(s, "{}", Ipv6Addr::from(a));
            }
            El::Port4(a, p) => {
                let _ = write!(s, "{} . {p}", Ipv4Addr::from(a));
            }
            El::Port6(a, p) => {
                let _ = write!(s, "{} . {p}", Ipv6Addr::from(a));
            }
            El::Svc(p, a, b) => {
                let _ = write!(s, "{} . ", proto_name(p));
                ports_text(s, (a, b));
            }
        }
    }
}

fn range<A: std::fmt::Display>(s: &mut String, a: A, b: A, single: bool) {
    if single {
        let _ = write!(s, "{a}");
    } else {
        let _ = write!(s, "{a}-{b}");
    }
}

fn rect_tail(s: &mut String, proto: Protocol, ports: (u16, u16)) {
    let _ = write!(s, " . {} . ", proto_name(proto));
    ports_text(s, ports);
}

/// Address family: the suffix of map and set names, the nft keyword and the key type.
struct Fam {
    suffix: &'static str,
    ip: &'static str,
    addr: &'static str,
}

const V4: Fam = Fam {
    suffix: "4",
    ip: "ip",
    addr: "ipv4_addr",
};
const V6: Fam = Fam {
    suffix: "6",
    ip: "ip6",
    addr: "ipv6_addr",
};

/// A group chain's rules, without its sets' elements.
#[derive(PartialEq)]
struct GroupShape<'a> {
    name: &'a str,
    namespace: &'a str,
    direction: Direction,
    any: Option<&'a str>,
    ported: Option<&'a str>,
    vias: &'a [Via],
}

/// The parts of a ruleset that are not set elements: equal structures differ by elements only.
#[derive(PartialEq)]
struct Structure<'a> {
    table: &'a str,
    log: &'a LogSettings,
    ipv6: bool,
    groups: Vec<GroupShape<'a>>,
    peer_sets: Vec<&'a str>,
    port_sets: Vec<(&'a str, Protocol)>,
    /// Static sets are named by their contents: same names, same contents.
    static_sets: Vec<&'a str>,
    guard: Option<&'a str>,
}

impl Ruleset {
    fn fams(&self) -> &'static [Fam] {
        if self.ipv6 {
            &[V4, V6]
        } else {
            &[V4]
        }
    }

    fn structure(&self) -> Structure<'_> {
        Structure {
            table: &self.table,
            log: &self.log,
            ipv6: self.ipv6,
            groups: self
                .groups
                .iter()
                .map(|(n, g)| GroupShape {
                    name: n,
                    namespace: &g.namespace,
                    direction: g.direction,
                    any: g.any.as_deref(),
                    ported: g.ported.as_deref(),
                    vias: &g.vias,
                })
                .collect(),
            peer_sets: self.peer_sets.keys().map(String::as_str).collect(),
            port_sets: self
                .port_sets
                .iter()
                .map(|(n, s)| (n.as_str(), s.protocol))
                .collect(),
            static_sets: self
                .ranges
                .keys()
                .chain(self.rects.keys())
                .chain(self.services.keys())
                .map(String::as_str)
                .collect(),
            guard: self.bridge.as_deref().filter(|_| self.ipv6_guard()),
        }
    }

    /// Every set and map with its elements, sorted.
    fn contents(&self) -> BTreeMap<String, Vec<El<'_>>> {
        let mut out: BTreeMap<String, Vec<El<'_>>> = BTreeMap::new();
        for (map, entries) in [("ingress", &self.ingress), ("egress", &self.egress)] {
            for f in self.fams() {
                out.insert(format!("{map}{}", f.suffix), Vec::new());
            }
            for (ip, g) in entries {
                let f = if ip.is_ipv4() { "4" } else { "6" };
                if let Some(v) = out.get_mut(&format!("{map}{f}")) {
                    v.push(El::Map(*ip, g));
                }
            }
        }
        for (name, r) in &self.ranges {
            out.insert(
                format!("{name}-4"),
                r.v4.iter().map(|&(a, b)| El::Range4(a, b)).collect(),
            );
            if self.ipv6 {
                out.insert(
                    format!("{name}-6"),
                    r.v6.iter().map(|&(a, b)| El::Range6(a, b)).collect(),
                );
            }
        }
        for (name, r) in &self.rects {
            out.insert(
                format!("{name}-4"),
                r.v4.iter().map(|&e| El::Rect4(e)).collect(),
            );
            if self.ipv6 {
                out.insert(
                    format!("{name}-6"),
                    r.v6.iter().map(|&e| El::Rect6(e)).collect(),
                );
            }
        }
        for (name, v) in &self.services {
            out.insert(
                name.clone(),
                v.iter().map(|&(p, a, b)| El::Svc(p, a, b)).collect(),
            );
        }
        for (name, s) in &self.peer_sets {
            out.insert(
                format!("{name}-4"),
                s.v4.iter().map(|&a| El::Addr4(a)).collect(),
            );
            if self.ipv6 {
                out.insert(
                    format!("{name}-6"),
                    s.v6.iter().map(|&a| El::Addr6(a)).collect(),
                );
            }
        }
        for (name, s) in &self.port_sets {
            out.insert(
                format!("{name}-4"),
                s.v4.iter().map(|&(a, p)| El::Port4(a, p)).collect(),
            );
            if self.ipv6 {
                out.insert(
                    format!("{name}-6"),
                    s.v6.iter().map(|&(a, p)| El::Port6(a, p)).collect(),
                );
            }
        }
        for v in out.values_mut() {
            v.sort_unstable();
        }
        out
    }

    fn write_chain(&self, s: &mut String, name: &str, g: &Group) {
        let (field, verdict) = match g.direction {
            Direction::Ingress => ("saddr", "accept"),
            Direction::Egress => ("daddr", "return"),
        };
        let _ = writeln!(s, "\tchain {name} {{");
        for f in self.fams() {
            let (ip, x) = (f.ip, f.suffix);
            if let Some(p) = &g.ported {
                let _ = writeln!(
                    s,
                    "\t\t{ip} {field} . meta l4proto . th dport @{p}-{x} {verdict}"
                );
            }
            if let Some(a) = &g.any {
                let _ = writeln!(s, "\t\t{ip} {field} @{a}-{x} {verdict}");
            }
            for v in &g.vias {
                match v {
                    Via::Peers { set, ports } => {
                        let _ = write!(s, "\t\t{ip} {field} @{set}-{x} ");
                        if let Some(q) = ports {
                            let _ = write!(s, "meta l4proto . th dport @{q} ");
                        }
                        let _ = writeln!(s, "{verdict}");
                    }
                    Via::NamedPort { peers, ports } => {
                        let proto = proto_name(self.port_sets[ports].protocol);
                        let _ = write!(s, "\t\tmeta l4proto {proto} ");
                        if let Some(p) = peers {
                            let _ = write!(s, "{ip} {field} @{p}-{x} ");
                        }
                        let _ = writeln!(s, "{ip} {field} . th dport @{ports}-{x} {verdict}");
                    }
                }
            }
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

    /// The whole table as one nft script: create-if-missing, delete, re-create with every
    /// element, in one transaction.
    pub fn to_nft(&self) -> String {
        let t = &self.table;
        let mut s = format!("table inet {t}\ndelete table inet {t}\ntable inet {t} {{\n");
        for ((d, ns), name) in self.counters() {
            let _ = writeln!(s, "\tcounter {name} {{ comment \"{} {ns}\"; }}", d.as_str());
        }
        for f in self.fams() {
            let (addr, x) = (f.addr, f.suffix);
            for map in ["ingress", "egress"] {
                let _ = writeln!(s, "\tmap {map}{x} {{ type {addr} : verdict; }}");
            }
            for name in self.peer_sets.keys() {
                let _ = writeln!(s, "\tset {name}-{x} {{ type {addr}; }}");
            }
            for name in self.port_sets.keys() {
                let _ = writeln!(s, "\tset {name}-{x} {{ type {addr} . inet_service; }}");
            }
            for name in self.ranges.keys() {
                let _ = writeln!(s, "\tset {name}-{x} {{ type {addr}; flags interval; }}");
            }
            for name in self.rects.keys() {
                let _ = writeln!(
                    s,
                    "\tset {name}-{x} {{ type {addr} . inet_proto . inet_service; flags interval; }}"
                );
            }
        }
        for name in self.services.keys() {
            let _ = writeln!(
                s,
                "\tset {name} {{ type inet_proto . inet_service; flags interval; }}"
            );
        }
        for (name, g) in &self.groups {
            self.write_chain(&mut s, name, g);
        }
        let _ = writeln!(
            s,
            "\tchain forward {{\n\t\ttype filter hook forward priority filter; policy accept;\n\t\tct state established,related accept"
        );
        if let Some(br) = self.bridge.as_deref().filter(|_| self.ipv6_guard()) {
            if self.ipv6 {
                let _ = writeln!(
                    s,
                    "\t\tiifname \"{br}\" icmpv6 type {{ nd-neighbor-solicit, nd-neighbor-advert }} accept\n\t\tiifname \"{br}\" ip6 saddr fe80::/10 drop\n\t\tiifname \"{br}\" ip6 daddr fe80::/10 drop"
                );
            } else {
                let _ = writeln!(
                    s,
                    "\t\tmeta nfproto ipv6 iifname \"{br}\" drop\n\t\tmeta nfproto ipv6 oifname \"{br}\" drop"
                );
            }
        }
        for f in self.fams() {
            let _ = writeln!(s, "\t\t{} saddr vmap @egress{}", f.ip, f.suffix);
        }
        for f in self.fams() {
            let _ = writeln!(s, "\t\t{} daddr vmap @ingress{}", f.ip, f.suffix);
        }
        s.push_str("\t}\n}\n");
        for (set, elems) in self.contents() {
            write_elements(&mut s, "add", t, &set, &elems, false);
        }
        s
    }

    /// The change from `old` to `self` as element deletions and additions in one script, or
    /// `None` when the table's structure (groups and their rules, shared sets, families,
    /// logging) differs and the whole table must be replaced.
    pub fn diff(&self, old: &Ruleset) -> Option<Diff> {
        if self.structure() != old.structure() {
            return None;
        }
        let new = self.contents();
        let was = old.contents();
        let (mut dels, mut adds) = (String::new(), String::new());
        let (mut added, mut deleted) = (0, 0);
        for (set, n) in &new {
            let o = was.get(set).map(Vec::as_slice).unwrap_or(&[]);
            let (del, add) = sorted_difference(o, n);
            deleted += del.len();
            added += add.len();
            // Map entries are deleted by key (a changed verdict is a delete and an add).
            write_elements(&mut dels, "delete", &self.table, set, &del, true);
            write_elements(&mut adds, "add", &self.table, set, &add, false);
        }
        dels.push_str(&adds);
        Some(Diff {
            script: dels,
            added,
            deleted,
        })
    }
}

/// (in `old` only, in `new` only), both sorted.
fn sorted_difference<T: Ord + Copy>(old: &[T], new: &[T]) -> (Vec<T>, Vec<T>) {
    let (mut del, mut add) = (Vec::new(), Vec::new());
    let (mut i, mut j) = (0, 0);
    while i < old.len() || j < new.len() {
        match (old.get(i), new.get(j)) {
            (Some(a), Some(b)) if a == b => {
                i += 1;
                j += 1;
            }
            (Some(a), Some(b)) if a < b => {
                del.push(*a);
                i += 1;
            }
            (Some(a), None) => {
                del.push(*a);
                i += 1;
            }
            (_, Some(b)) => {
                add.push(*b);
                j += 1;
            }
            (None, None) => unreachable!(),
        }
    }
    (del, add)
}

fn write_elements(
    s: &mut String,
    verb: &str,
    table: &str,
    set: &str,
    elems: &[El<'_>],
    key_only: bool,
) {
    for chunk in elems.chunks(4096) {
        let _ = write!(s, "{verb} element inet {table} {set} {{ ");
        for (i, e) in chunk.iter().enumerate() {
            if i > 0 {
                s.push_str(", ");
            }
            e.write(s, key_only);
        }
        s.push_str(" }\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorted_difference_against_sets() {
        let mut seed = 3u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % 20
        };
        for _ in 0..200 {
            let mut a: Vec<u64> = (0..next()).map(|_| next()).collect();
            let mut b: Vec<u64> = (0..next()).map(|_| next()).collect();
            a.sort();
            a.dedup();
            b.sort();
            b.dedup();
            let (del, add) = sorted_difference(&a, &b);
            let want_del: Vec<u64> = a.iter().copied().filter(|x| !b.contains(x)).collect();
            let want_add: Vec<u64> = b.iter().copied().filter(|x| !a.contains(x)).collect();
            assert_eq!((del, add), (want_del, want_add), "{a:?} -> {b:?}");
        }
    }
}
