//! Rendering: the compiled policy of the pods on this node as one nftables table, as data.
//! [`Ruleset::to_nft`] and [`Ruleset::diff`] write it as nft text (whole, or the element
//! differences).
//!
//! Layout (`inet weft-policy`, see `docs/policy.md` for a full example):
//! - chain `forward` (hook forward, priority filter): `ct state established,related accept`,
//!   then `ip saddr vmap @egress4` and `ip daddr vmap @ingress4` (and the `ip6` pair when this
//!   node has IPv6 pod addresses). Bridged pod↔pod and overlay traffic reaches this hook
//!   through `br_netfilter`; routed traffic reaches it anyway. Node↔pod traffic never does.
//! - the verdict maps send each isolated local pod address to its **group** chain: pods of one
//!   namespace selected by the same rules (and, for ingress, resolving the named ports those
//!   rules use to the same numbers) share one group.
//! - a group chain looks the peer up in (a) **static sets**, whose contents follow from the
//!   policies alone and which are shared by content across groups: address ranges
//!   (`ipBlock`s, rules without peers) admitted on every port, `addr . l4proto . dport`
//!   rectangles admitted on some ports, and the port lists of the rules below; (b) **shared
//!   peer sets**: one hash set of pod addresses per distinct list of pod-selector peers,
//!   shared by every group and rule that uses it, with the ports the group's rules allow for
//!   it; (c) for egress to named ports, **shared named-port sets**: every pod address with a
//!   container port of that name and protocol, with its number. Then a rate-limited NFLOG line
//!   and a per-namespace named counter before `drop`. Egress groups `return` on a match (the
//!   destination's ingress is checked next); ingress groups `accept`.
//!
//! Which sets and rules exist depends only on the policies and on which rules apply to which
//! local pods, never on which pods a selector matches: a pod coming or going anywhere in the
//! cluster changes elements of the peer, named-port and map sets only, which
//! [`Ruleset::diff`] turns into an element-only transaction. Groups and peer sets are named
//! by a hash of their identity (the rules, or the peer definitions); static sets by a hash of
//! their contents (which only a policy change can change).

use crate::addr::AddrSet;
use crate::compile::{Compiled, RuleRef};
use crate::model::{Direction, Pod, PortSpec, Ports, Protocol};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::net::IpAddr;

pub use crate::rects::Elem;
use crate::rects::{disjoint, merge_ports};
pub use crate::script::Diff;

/// The table weft owns for policy (family `inet`; the masquerade table is `ip weft`).
pub const TABLE: &str = "weft-policy";
/// Default NFLOG group for blocked connections.
pub const DEFAULT_LOG_GROUP: u16 = 6786;
/// Prefix of every log line; the namespace follows.
pub const LOG_PREFIX: &str = "weft-policy drop";
/// The node bridge pods are attached to (`weft_fastpath::DEFAULT_BRIDGE`).
pub const DEFAULT_BRIDGE: &str = "weft";

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

/// `(protocol, first, last)` port ranges, sorted and disjoint.
pub type PortRanges = Vec<(Protocol, u16, u16)>;

/// A rule of a group chain that looks in shared sets.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Via {
    /// The peer is in the shared peer set `set` and, when `ports` names a static port set,
    /// the protocol and destination port are in it; `None` admits every port and protocol.
    Peers { set: String, ports: Option<String> },
    /// Egress to a named port: the destination (in the set `peers` when given: a shared peer
    /// set, or a static address set of the rule's ipBlocks) has a container port of that name
    /// with the packet's protocol and destination port, as listed in the shared named-port
    /// set `ports`.
    NamedPort {
        peers: Option<String>,
        ports: String,
    },
}

/// A group chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Group {
    pub namespace: String,
    pub direction: Direction,
    /// Static address set admitted on every port and protocol (ipBlocks and rules without
    /// peers, in rules without ports), if any.
    pub any: Option<String>,
    /// Static rectangle set admitted on some ports (the same, in rules with ports), if any.
    pub ported: Option<String>,
    /// Lookups in shared sets, in chain order.
    pub vias: Vec<Via>,
    /// Local pods in the group.
    pub pods: Vec<String>,
}

/// A static set of address ranges (inclusive, sorted, disjoint).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Ranges {
    pub v4: Vec<(u32, u32)>,
    pub v6: Vec<(u128, u128)>,
}

/// A static set of disjoint (address range, protocol, port range) rectangles.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Rects {
    pub v4: Vec<Elem<u32>>,
    pub v6: Vec<Elem<u128>>,
}

/// A shared set of pod addresses: the pods selected by one list of pod-selector peers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerSet {
    /// The peer definitions (see [`crate::compile::PeerSet::key`]).
    pub key: String,
    /// Single addresses, sorted.
    pub v4: Vec<u32>,
    pub v6: Vec<u128>,
}

/// A shared set of every pod address with a container port of one name and protocol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortSet {
    pub name: String,
    pub protocol: Protocol,
    /// (address, port number), sorted.
    pub v4: Vec<(u32, u16)>,
    pub v6: Vec<(u128, u16)>,
}

impl Ranges {
    pub fn contains(&self, a: IpAddr) -> bool {
        match a {
            IpAddr::V4(a) => in_ranges(&self.v4, u32::from(a)),
            IpAddr::V6(a) => in_ranges(&self.v6, u128::from(a)),
        }
    }
}

impl Rects {
    pub fn admits(&self, a: IpAddr, proto: Protocol, port: u16) -> bool {
        match a {
            IpAddr::V4(a) => in_elems(&self.v4, u32::from(a), proto, port),
            IpAddr::V6(a) => in_elems(&self.v6, u128::from(a), proto, port),
        }
    }
}

fn in_ranges<T: Copy + Ord>(v: &[(T, T)], x: T) -> bool {
    let i = v.partition_point(|r| r.1 < x);
    i < v.len() && v[i].0 <= x
}

fn in_elems<T: Copy + Ord>(v: &[Elem<T>], x: T, proto: Protocol, port: u16) -> bool {
    v.iter().any(|e| {
        e.proto == proto && e.addr.0 <= x && x <= e.addr.1 && e.ports.0 <= port && port <= e.ports.1
    })
}

impl Group {
    /// Set lookups the chain makes, per address family, for a first packet that matches
    /// none of its rules (the most it ever makes): one per static set, and per via one for
    /// the peer set plus one for its port set or named-port set.
    pub fn lookups(&self) -> usize {
        usize::from(self.any.is_some())
            + usize::from(self.ported.is_some())
            + self
                .vias
                .iter()
                .map(|v| match v {
                    Via::Peers { ports, .. } => 1 + usize::from(ports.is_some()),
                    Via::NamedPort { peers, .. } => 1 + usize::from(peers.is_some()),
                })
                .sum::<usize>()
    }
}

impl PeerSet {
    pub fn contains(&self, a: IpAddr) -> bool {
        match a {
            IpAddr::V4(a) => self.v4.binary_search(&u32::from(a)).is_ok(),
            IpAddr::V6(a) => self.v6.binary_search(&u128::from(a)).is_ok(),
        }
    }
}

impl PortSet {
    /// Whether `a` has this named port as (`proto`, `port`).
    pub fn admits(&self, a: IpAddr, proto: Protocol, port: u16) -> bool {
        proto == self.protocol
            && match a {
                IpAddr::V4(a) => self.v4.binary_search(&(u32::from(a), port)).is_ok(),
                IpAddr::V6(a) => self.v6.binary_search(&(u128::from(a), port)).is_ok(),
            }
    }
}

/// The whole table, as data. [`Ruleset::to_nft`] writes it; [`Ruleset::diff`] writes the
/// change from an earlier one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ruleset {
    pub table: String,
    pub log: LogSettings,
    /// Whether the IPv6 maps, sets and rules exist (this node has IPv6 pod addresses).
    pub ipv6: bool,
    /// Group chains by name.
    pub groups: BTreeMap<String, Group>,
    /// Local isolated pod address → group, per direction.
    pub ingress: BTreeMap<IpAddr, String>,
    pub egress: BTreeMap<IpAddr, String>,
    /// Shared peer sets by name (without the family suffix).
    pub peer_sets: BTreeMap<String, PeerSet>,
    /// Shared named-port sets by name (without the family suffix).
    pub port_sets: BTreeMap<String, PortSet>,
    /// Static address-range sets by name (without the family suffix).
    pub ranges: BTreeMap<String, Ranges>,
    /// Static rectangle sets by name (without the family suffix).
    pub rects: BTreeMap<String, Rects>,
    /// Static port sets (`inet_proto . inet_service`) by name.
    pub services: BTreeMap<String, PortRanges>,
    /// The pods' bridge, for the IPv6 guard (see [`Ruleset::ipv6_guard`]); `None`: no guard.
    pub bridge: Option<String>,
}

pub(crate) fn fnv64(s: &str) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

/// `<tag>-<12 hex digits of the key's hash>`, bumped past names `taken` by other keys.
fn hashed_name(tag: char, key: &str, taken: impl Fn(&str) -> bool) -> String {
    let mut h = fnv64(key);
    loop {
        let name = format!("{tag}-{:012x}", h >> 16);
        if !taken(&name) {
            return name;
        }
        h = h.wrapping_add(1 << 16);
    }
}

fn group_key(c: &Compiled, pod: &Pod, d: Direction, refs: &[RuleRef]) -> String {
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

/// Builds a [`Ruleset`]: names and fills the shared sets as groups ask for them.
struct Builder<'a> {
    c: &'a Compiled,
    ipv6: bool,
    peer_names: HashMap<u32, String>,
    peer_sets: BTreeMap<String, PeerSet>,
    port_names: HashMap<(Protocol, String), String>,
    port_sets: BTreeMap<String, PortSet>,
    ranges: BTreeMap<String, Ranges>,
    rects: BTreeMap<String, Rects>,
    services: BTreeMap<String, PortRanges>,
}

/// Names a static set by a hash of its contents; equal contents share one set.
fn static_set<T: PartialEq + std::fmt::Debug>(
    sets: &mut BTreeMap<String, T>,
    tag: char,
    value: T,
) -> String {
    let key = format!("{value:?}");
    let name = hashed_name(tag, &key, |n| sets.get(n).is_some_and(|v| *v != value));
    sets.entry(name.clone()).or_insert(value);
    name
}

/// What one group's rules say, before it becomes a [`Group`].
#[derive(Default)]
struct Terms<'a> {
    any: Vec<&'a AddrSet>,
    ported: Vec<(&'a AddrSet, Protocol, (u16, u16))>,
    /// Shared peer set → its ports (`None`: every port).
    peers: BTreeMap<u32, Option<PortRanges>>,
    /// Egress named ports: (every address, a shared peer set, or a rule's ipBlocks;
    /// protocol, port name).
    named: Vec<(NamedPeers<'a>, Protocol, &'a str)>,
}

enum NamedPeers<'a> {
    Any,
    Pods(u32),
    Blocks(&'a AddrSet),
}

impl<'a> Builder<'a> {
    fn peer_set(&mut self, id: u32) -> String {
        if let Some(n) = self.peer_names.get(&id) {
            return n.clone();
        }
        let def = &self.c.peer_sets()[id as usize];
        let name = hashed_name('s', &def.key, |n| self.peer_sets.contains_key(n));
        let expand4 = def
            .addrs
            .raw_v4()
            .iter()
            .flat_map(|&(a, b)| a..=b)
            .collect();
        let expand6 = if self.ipv6 {
            def.addrs
                .raw_v6()
                .iter()
                .flat_map(|&(a, b)| a..=b)
                .collect()
        } else {
            Vec::new()
        };
        self.peer_sets.insert(
            name.clone(),
            PeerSet {
                key: def.key.clone(),
                v4: expand4,
                v6: expand6,
            },
        );
        self.peer_names.insert(id, name.clone());
        name
    }

    fn port_set(&mut self, proto: Protocol, port_name: &str) -> String {
        let key = (proto, port_name.to_string());
        if let Some(n) = self.port_names.get(&key) {
            return n.clone();
        }
        let name = hashed_name('n', &format!("{proto}/{port_name}"), |n| {
            self.port_sets.contains_key(n)
        });
        let (mut v4, mut v6) = (Vec::new(), Vec::new());
        for (ip, np) in self.c.named_port_targets(port_name) {
            if np.protocol != proto {
                continue;
            }
            match ip {
                IpAddr::V4(a) => v4.push((u32::from(*a), np.port)),
                IpAddr::V6(a) if self.ipv6 => v6.push((u128::from(*a), np.port)),
                IpAddr::V6(_) => {}
            }
        }
        v4.sort_unstable();
        v6.sort_unstable();
        self.port_sets.insert(
            name.clone(),
            PortSet {
                name: port_name.to_string(),
                protocol: proto,
                v4,
                v6,
            },
        );
        self.port_names.insert(key, name.clone());
        name
    }

    /// The static address set of `set` (IPv6 part only on an IPv6 node); `None` if empty.
    fn range_set(&mut self, set: &AddrSet) -> Option<String> {
        let r = Ranges {
            v4: set.raw_v4().to_vec(),
            v6: if self.ipv6 {
                set.raw_v6().to_vec()
            } else {
                Vec::new()
            },
        };
        if r.v4.is_empty() && r.v6.is_empty() {
            return None;
        }
        Some(static_set(&mut self.ranges, 'a', r))
    }

    fn terms<'t>(&self, pod: &'t Pod, d: Direction, refs: &[RuleRef], all: &'t AddrSet) -> Terms<'t>
    where
        'a: 't,
    {
        let c = self.c;
        let mut t = Terms::default();
        for rr in refs {
            let rule = c.rule(*rr, d);
            // Addresses the static sets cover: every address for a rule without peers, else
            // the rule's ipBlocks. Pod-selector peers go through a shared peer set.
            let own: Option<&AddrSet> = match &rule.peers {
                None => Some(all),
                Some(_) => rule.blocks.as_deref(),
            };
            let shared = rule.pod_peers;
            let list = match &rule.ports {
                Ports::Any => {
                    t.any.extend(own);
                    if let Some(id) = shared {
                        // Every port: absorbs any list collected for this set.
                        t.peers.insert(id, None);
                    }
                    continue;
                }
                Ports::List(list) => list,
            };
            for pr in list {
                let range = match &pr.port {
                    PortSpec::All => Some((0, u16::MAX)),
                    PortSpec::Range(a, b) => Some((*a, *b)),
                    PortSpec::Named(n) if d == Direction::Ingress => pod
                        .named_ports
                        .get(n)
                        .filter(|np| np.protocol == pr.protocol)
                        .map(|np| (np.port, np.port)),
                    PortSpec::Named(n) => {
                        let n = n.as_str();
                        if rule.peers.is_none() {
                            t.named.push((NamedPeers::Any, pr.protocol, n));
                        }
                        if let Some(b) = rule.blocks.as_deref() {
                            t.named.push((NamedPeers::Blocks(b), pr.protocol, n));
                        }
                        if let Some(id) = shared {
                            t.named.push((NamedPeers::Pods(id), pr.protocol, n));
                        }
                        None
                    }
                };
                let Some(range) = range else { continue };
                if let Some(a) = own {
                    t.ported.push((a, pr.protocol, range));
                }
                if let Some(id) = shared {
                    // `None` (every port) absorbs any list.
                    if let Some(v) = t.peers.entry(id).or_insert_with(|| Some(Vec::new())) {
                        v.push((pr.protocol, range.0, range.1));
                    }
                }
            }
        }
        t
    }

    fn group(&mut self, pod: &Pod, d: Direction, refs: &[RuleRef], all: &AddrSet) -> Group {
        let t = self.terms(pod, d, refs, all);
        let any = AddrSet::union_all(t.any.iter().copied());
        let any = self.range_set(&any);
        let (mut p4, mut p6) = (Vec::new(), Vec::new());
        for (set, proto, ports) in &t.ported {
            p4.extend(set.raw_v4().iter().map(|&a| (a, *proto, *ports)));
            if self.ipv6 {
                p6.extend(set.raw_v6().iter().map(|&a| (a, *proto, *ports)));
            }
        }
        let rects = Rects {
            v4: disjoint(p4),
            v6: disjoint(p6),
        };
        let ported = if rects.v4.is_empty() && rects.v6.is_empty() {
            None
        } else {
            Some(static_set(&mut self.rects, 'p', rects))
        };
        let mut vias = Vec::new();
        for (id, ports) in t.peers {
            let ports = ports.map(|p| static_set(&mut self.services, 'q', merge_ports(p)));
            vias.push(Via::Peers {
                set: self.peer_set(id),
                ports,
            });
        }
        for (peers, proto, name) in t.named {
            let peers = match peers {
                NamedPeers::Any => None,
                NamedPeers::Pods(id) => Some(self.peer_set(id)),
                // Blocks without an address of this node's families match nothing.
                NamedPeers::Blocks(b) => match self.range_set(b) {
                    Some(n) => Some(n),
                    None => continue,
                },
            };
            vias.push(Via::NamedPort {
                peers,
                ports: self.port_set(proto, name),
            });
        }
        vias.sort();
        vias.dedup();
        Group {
            namespace: pod.namespace.clone(),
            direction: d,
            any,
            ported,
            vias,
            pods: Vec::new(),
        }
    }

    /// Whether a group's static `any` set admits every address (of this node's families).
    fn admits_all(&self, g: &Group) -> bool {
        g.any.as_ref().is_some_and(|n| {
            let r = &self.ranges[n];
            r.v4.first() == Some(&(0, u32::MAX))
                && (!self.ipv6 || r.v6.first() == Some(&(0, u128::MAX)))
        })
    }
}

impl Ruleset {
    /// The ruleset for the pods owning `local` addresses (this node's pods, from its CNI
    /// records). Addresses the compiled policy does not know are left alone (not isolated).
    pub fn build(c: &Compiled, local: &[IpAddr], log: &LogSettings) -> Ruleset {
        let mut local_pods: BTreeMap<usize, Vec<IpAddr>> = BTreeMap::new();
        for ip in local {
            if let Some(p) = c.pod_by_ip(*ip) {
                local_pods.entry(p).or_default().push(*ip);
            }
        }
        let ipv6 = local_pods.values().flatten().any(IpAddr::is_ipv6);
        let mut b = Builder {
            c,
            ipv6,
            peer_names: HashMap::new(),
            peer_sets: BTreeMap::new(),
            port_names: HashMap::new(),
            port_sets: BTreeMap::new(),
            ranges: BTreeMap::new(),
            rects: BTreeMap::new(),
            services: BTreeMap::new(),
        };
        let all = AddrSet::everything();
        let mut groups: BTreeMap<String, Group> = BTreeMap::new();
        let mut names: HashMap<String, Option<String>> = HashMap::new(); // key -> name
        let mut maps: [BTreeMap<IpAddr, String>; 2] = [BTreeMap::new(), BTreeMap::new()];
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
                        let g = b.group(pod, d, refs, &all);
                        let name = if b.admits_all(&g) {
                            // Admits everything: the pod is not restricted in this direction.
                            None
                        } else {
                            let tag = if d == Direction::Ingress { 'i' } else { 'e' };
                            let name = hashed_name(tag, &key, |n| groups.contains_key(n));
                            groups.insert(name.clone(), g);
                            Some(name)
                        };
                        names.insert(key, name.clone());
                        name
                    }
                };
                let Some(name) = name else { continue };
                let g = groups.get_mut(&name).expect("group exists");
                g.pods.push(pod.key());
                for ip in ips {
                    maps[k].insert(*ip, name.clone());
                }
            }
        }
        // Sets no group uses are not rendered (groups left out above may have asked for some).
        let mut used: BTreeSet<&String> = BTreeSet::new();
        for g in groups.values() {
            used.extend(g.any.iter().chain(&g.ported));
            for v in &g.vias {
                match v {
                    Via::Peers { set, ports } => used.extend(std::iter::once(set).chain(ports)),
                    Via::NamedPort { peers, ports } => {
                        used.extend(peers.iter().chain(std::iter::once(ports)))
                    }
                }
            }
        }
        b.peer_sets.retain(|n, _| used.contains(n));
        b.port_sets.retain(|n, _| used.contains(n));
        b.ranges.retain(|n, _| used.contains(n));
        b.rects.retain(|n, _| used.contains(n));
        b.services.retain(|n, _| used.contains(n));
        let [ingress, egress] = maps;
        Ruleset {
            table: TABLE.into(),
            log: log.clone(),
            ipv6,
            groups,
            ingress,
            egress,
            peer_sets: b.peer_sets,
            port_sets: b.port_sets,
            ranges: b.ranges,
            rects: b.rects,
            services: b.services,
            bridge: Some(DEFAULT_BRIDGE.into()),
        }
    }

    /// The same ruleset for pods on another bridge (`None`: no IPv6 guard).
    pub fn with_bridge(mut self, bridge: Option<&str>) -> Self {
        self.bridge = bridge.map(str::to_string);
        self
    }

    /// Whether the forward chain guards isolated pods against IPv6 they have no rules for:
    /// only when this node has isolated pods. The rules match pod addresses, and a pod has
    /// IPv6 link-local addresses the cluster never hears of. So on a node without IPv6 pod
    /// addresses (weft's pod network is IPv4) all IPv6 to or from the bridge is dropped, and
    /// on a node with IPv6 pods, link-local IPv6 across the bridge except neighbour discovery.
    pub fn ipv6_guard(&self) -> bool {
        self.bridge.is_some() && !(self.ingress.is_empty() && self.egress.is_empty())
    }

    /// Whether the chain of group `name` lets a first packet through with `peer` as the other
    /// end (the source for ingress, the destination for egress): the kernel's lookups, on
    /// this data.
    pub fn group_admits(&self, name: &str, peer: IpAddr, proto: Protocol, port: u16) -> bool {
        let g = &self.groups[name];
        let in_set = |n: &String| match self.peer_sets.get(n) {
            Some(s) => s.contains(peer),
            None => self.ranges[n].contains(peer),
        };
        g.any
            .as_ref()
            .is_some_and(|n| self.ranges[n].contains(peer))
            || g.ported
                .as_ref()
                .is_some_and(|n| self.rects[n].admits(peer, proto, port))
            || g.vias.iter().any(|v| match v {
                Via::Peers { set, ports } => {
                    in_set(set)
                        && ports.as_ref().is_none_or(|n| {
                            self.services[n]
                                .iter()
                                .any(|&(p, a, b)| p == proto && a <= port && port <= b)
                        })
                }
                Via::NamedPort { peers, ports } => {
                    peers.as_ref().is_none_or(in_set)
                        && self.port_sets[ports].admits(peer, proto, port)
                }
            })
    }

    /// What the table does with the first packet of a connection from `src` to `dst`
    /// (forwarded through this node): the same lookups the kernel makes, on this data. Used
    /// by the tests to check rendering against the compiled policy.
    pub fn admits(&self, src: IpAddr, dst: IpAddr, proto: Protocol, port: u16) -> bool {
        let link_local = |a: IpAddr| matches!(a, IpAddr::V6(a) if a.is_unicast_link_local());
        if src.is_ipv6() && self.ipv6_guard() && (!self.ipv6 || link_local(src) || link_local(dst))
        {
            return false;
        }
        if src.is_ipv6() && !self.ipv6 {
            return true; // no IPv6 rules
        }
        self.egress
            .get(&src)
            .is_none_or(|g| self.group_admits(g, dst, proto, port))
            && self
                .ingress
                .get(&dst)
                .is_none_or(|g| self.group_admits(g, src, proto, port))
    }

    /// Number of set and map elements.
    pub fn elements(&self) -> usize {
        self.ingress.len()
            + self.egress.len()
            + self
                .peer_sets
                .values()
                .map(|s| s.v4.len() + s.v6.len())
                .sum::<usize>()
            + self
                .port_sets
                .values()
                .map(|s| s.v4.len() + s.v6.len())
                .sum::<usize>()
            + self
                .ranges
                .values()
                .map(|s| s.v4.len() + s.v6.len())
                .sum::<usize>()
            + self
                .rects
                .values()
                .map(|s| s.v4.len() + s.v6.len())
                .sum::<usize>()
            + self.services.values().map(Vec::len).sum::<usize>()
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
}

/// Named counter of blocked packets for a (direction, namespace).
pub fn counter_name(d: Direction, ns: &str) -> String {
    let tag = match d {
        Direction::Ingress => "in",
        Direction::Egress => "eg",
    };
    format!("drop-{tag}-{ns}")
}

#[cfg(test)]
#[path = "render_tests.rs"]
mod tests;
