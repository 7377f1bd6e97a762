//! The compiler: from a [`Cluster`] to what each pod may send and receive.
//!
//! The compiled form is factored, not expanded: every rule's peers become one [`AddrSet`]
//! (computed once, shared by every pod the policy selects), and every pod gets the list of
//! rules that apply to it in each direction (`None` = not isolated in that direction). Named
//! ports stay names until a query or the renderer resolves them against the destination pod.
//! This keeps compiling 10,000 pods and 1,000 policies linear in their sizes.

use crate::addr::AddrSet;
use crate::k8s::NAMESPACE_NAME_LABEL;
use crate::model::{
    Cluster, Direction, NamedPort, NamespaceScope, Peer, Peers, Pod, PolicyTypes, PortSpec, Ports,
    Protocol, Rule,
};
use crate::selector::{Labels, Selector};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

/// One rule, compiled: the addresses it admits (`None` = every address) and its ports.
///
/// `peers` is the union of the rule's peers (what [`Compiled::allowed`] uses). The renderer
/// uses the two parts separately: `pod_peers`, the union of the pod-selector peers, which is
/// shared by every rule with the same pod-selector peers (an index into
/// [`Compiled::peer_sets`]), and `blocks`, the union of the `ipBlock` peers.
#[derive(Clone, Debug)]
pub struct CompiledRule {
    pub peers: Option<Arc<AddrSet>>,
    pub ports: Ports,
    /// The rule's pod-selector peers (`podSelector` / `namespaceSelector`), if it has any.
    pub pod_peers: Option<u32>,
    /// The union of the rule's `ipBlock` peers, if it has any.
    pub blocks: Option<Arc<AddrSet>>,
}

/// The pod addresses selected by one list of pod-selector peers. `key` is the canonical text
/// of the peer definitions (selectors, and the namespace for same-namespace peers): two rules
/// with the same key always select the same pods, whatever the cluster's state.
#[derive(Clone, Debug)]
pub struct PeerSet {
    pub key: String,
    pub addrs: Arc<AddrSet>,
}

/// A policy, compiled.
#[derive(Clone, Debug)]
pub struct CompiledPolicy {
    pub namespace: String,
    pub name: String,
    pub types: PolicyTypes,
    /// Indices of the pods it selects (into [`Compiled::pods`]).
    pub selected: Vec<usize>,
    pub ingress: Vec<CompiledRule>,
    pub egress: Vec<CompiledRule>,
}

impl CompiledPolicy {
    pub fn rules(&self, d: Direction) -> &[CompiledRule] {
        match d {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }
}

/// A reference to one rule of one policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RuleRef {
    pub policy: u32,
    pub rule: u32,
}

/// Something the compiler noticed about its input (not fatal).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Note {
    pub object: String,
    pub note: String,
}

/// The compiled policy of a whole cluster.
#[derive(Debug)]
pub struct Compiled {
    pods: Vec<Pod>,
    by_ip: HashMap<IpAddr, usize>,
    policies: Vec<CompiledPolicy>,
    ingress: Vec<Option<Vec<RuleRef>>>,
    egress: Vec<Option<Vec<RuleRef>>>,
    peer_sets: Vec<PeerSet>,
    /// Every (address, named port) of every pod, by port name.
    named: HashMap<String, Vec<(IpAddr, NamedPort)>>,
    notes: Vec<Note>,
}

fn default_ns_labels(ns: &str) -> Labels {
    Labels::from([(NAMESPACE_NAME_LABEL.to_string(), ns.to_string())])
}

/// Port matching shared by the query and the renderer: does `ports` admit (`proto`, `port`)
/// towards `dst` (whose named ports resolve the names)?
pub fn ports_admit(ports: &Ports, dst: Option<&Pod>, proto: Protocol, port: u16) -> bool {
    match ports {
        Ports::Any => true,
        Ports::List(list) => list.iter().any(|p| {
            p.protocol == proto
                && match &p.port {
                    PortSpec::All => true,
                    PortSpec::Range(a, b) => (*a..=*b).contains(&port),
                    PortSpec::Named(n) => dst
                        .and_then(|d| d.named_ports.get(n))
                        .is_some_and(|np| np.protocol == proto && np.port == port),
                }
        }),
    }
}

impl Compiled {
    /// Compiles a cluster. Pods are ordered by `namespace/name`; a later duplicate of the same
    /// pod replaces an earlier one; an address claimed by two pods belongs to the first (noted).
    pub fn new(cluster: &Cluster) -> Self {
        let mut notes = Vec::new();
        let mut pods_by_key: BTreeMap<(String, String), Pod> = BTreeMap::new();
        for p in &cluster.pods {
            pods_by_key.insert((p.namespace.clone(), p.name.clone()), p.clone());
        }
        let pods: Vec<Pod> = pods_by_key.into_values().collect();
        let mut by_ip: HashMap<IpAddr, usize> = HashMap::new();
        let mut named: HashMap<String, Vec<(IpAddr, NamedPort)>> = HashMap::new();
        let mut pods_by_ns: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (i, p) in pods.iter().enumerate() {
            pods_by_ns.entry(p.namespace.as_str()).or_default().push(i);
            for ip in &p.ips {
                if let Some(&other) = by_ip.get(ip) {
                    notes.push(Note {
                        object: p.key(),
                        note: format!(
                            "address {ip} is already {}'s; ignored here",
                            pods[other].key()
                        ),
                    });
                    continue;
                }
                by_ip.insert(*ip, i);
                for (name, np) in &p.named_ports {
                    named.entry(name.clone()).or_default().push((*ip, *np));
                }
            }
        }
        let ns_labels: HashMap<&str, &Labels> = cluster
            .namespaces
            .iter()
            .map(|n| (n.name.as_str(), &n.labels))
            .collect();
        let defaults: HashMap<&str, Labels> = pods_by_ns
            .keys()
            .filter(|n| !ns_labels.contains_key(*n))
            .map(|n| (*n, default_ns_labels(n)))
            .collect();
        let mut peers = PeerCompiler {
            pods: &pods,
            by_ip: &by_ip,
            pods_by_ns: &pods_by_ns,
            ns_labels: &ns_labels,
            defaults: &defaults,
            one: HashMap::new(),
            shared: HashMap::new(),
            sets: Vec::new(),
        };
        let v6_pods = by_ip.keys().any(IpAddr::is_ipv6);

        let mut ingress: Vec<Option<Vec<RuleRef>>> = vec![None; pods.len()];
        let mut egress: Vec<Option<Vec<RuleRef>>> = vec![None; pods.len()];
        let mut policies = Vec::with_capacity(cluster.policies.len());
        // Ordered by namespace/name; a later definition of the same policy replaces an earlier one.
        let sorted: BTreeMap<(&str, &str), &crate::model::Policy> = cluster
            .policies
            .iter()
            .map(|p| ((p.namespace.as_str(), p.name.as_str()), p))
            .collect();
        for (pi, pol) in sorted.into_values().enumerate() {
            let selected = select(
                &pol.pod_selector,
                pods_by_ns.get(pol.namespace.as_str()),
                &pods,
            );
            let mut v6_blocks = Vec::new();
            let mut compile_rules = |d: Direction| -> Vec<CompiledRule> {
                if !pol.types.has(d) {
                    return Vec::new();
                }
                pol.rules(d)
                    .iter()
                    .map(|r| {
                        if let Peers::List(list) = &r.peers {
                            for p in list {
                                if let Peer::Block(b) = p {
                                    if b.cidr.addr().is_ipv6() && !v6_pods {
                                        v6_blocks.push(b.cidr.to_string());
                                    }
                                }
                            }
                        }
                        peers.rule(&pol.namespace, r)
                    })
                    .collect()
            };
            let cin = compile_rules(Direction::Ingress);
            let ceg = compile_rules(Direction::Egress);
            if !v6_blocks.is_empty() {
                v6_blocks.sort();
                v6_blocks.dedup();
                notes.push(Note {
                    object: pol.key(),
                    note: format!(
                        "IPv6 ipBlock {} matches nothing: no pod has an IPv6 address",
                        v6_blocks.join(", ")
                    ),
                });
            }
            for &s in &selected {
                for (d, table, rules) in [
                    (Direction::Ingress, &mut ingress, &cin),
                    (Direction::Egress, &mut egress, &ceg),
                ] {
                    if pol.types.has(d) {
                        let refs = table[s].get_or_insert_with(Vec::new);
                        refs.extend((0..rules.len()).map(|ri| RuleRef {
                            policy: pi as u32,
                            rule: ri as u32,
                        }));
                    }
                }
            }
            policies.push(CompiledPolicy {
                namespace: pol.namespace.clone(),
                name: pol.name.clone(),
                types: pol.types,
                selected,
                ingress: cin,
                egress: ceg,
            });
        }
        let peer_sets = peers.sets;
        Compiled {
            pods,
            by_ip,
            policies,
            ingress,
            egress,
            peer_sets,
            named,
            notes,
        }
    }

    /// The reference query: may a new connection from `src` to `dst` (`proto`, destination
    /// `port`) be opened? True iff the source's egress and the destination's ingress both allow
    /// it (a side that is not a known pod, or a pod not isolated in that direction, allows
    /// everything). A pod always reaches itself. Node traffic is outside this model: the
    /// dataplane exempts it (see `docs/policy.md`).
    pub fn allowed(&self, src: IpAddr, dst: IpAddr, proto: Protocol, port: u16) -> bool {
        let sp = self.by_ip.get(&src).copied();
        let dp = self.by_ip.get(&dst).copied();
        if sp.is_some() && sp == dp {
            return true;
        }
        let dst_pod = dp.map(|d| &self.pods[d]);
        let admits = |refs: &Option<Vec<RuleRef>>, d: Direction, peer: IpAddr| match refs {
            None => true,
            Some(refs) => refs.iter().any(|r| {
                let rule = self.rule(*r, d);
                rule.peers.as_ref().is_none_or(|s| s.contains(peer))
                    && ports_admit(&rule.ports, dst_pod, proto, port)
            }),
        };
        if let Some(s) = sp {
            if !admits(&self.egress[s], Direction::Egress, dst) {
                return false;
            }
        }
        if let Some(d) = dp {
            if !admits(&self.ingress[d], Direction::Ingress, src) {
                return false;
            }
        }
        true
    }

    /// All pods, ordered by `namespace/name`.
    pub fn pods(&self) -> &[Pod] {
        &self.pods
    }

    pub fn policies(&self) -> &[CompiledPolicy] {
        &self.policies
    }

    pub fn notes(&self) -> &[Note] {
        &self.notes
    }

    /// The pod owning an address.
    pub fn pod_by_ip(&self, ip: IpAddr) -> Option<usize> {
        self.by_ip.get(&ip).copied()
    }

    /// The rules that apply to a pod in a direction; `None` if it is not isolated there.
    pub fn grants(&self, pod: usize, d: Direction) -> Option<&[RuleRef]> {
        match d {
            Direction::Ingress => self.ingress[pod].as_deref(),
            Direction::Egress => self.egress[pod].as_deref(),
        }
    }

    /// The shared pod-peer sets ([`CompiledRule::pod_peers`] indexes this).
    pub fn peer_sets(&self) -> &[PeerSet] {
        &self.peer_sets
    }

    pub fn rule(&self, r: RuleRef, d: Direction) -> &CompiledRule {
        &self.policies[r.policy as usize].rules(d)[r.rule as usize]
    }

    /// Every (address, protocol, port) a named port stands for, across all pods.
    pub fn named_port_targets(&self, name: &str) -> &[(IpAddr, NamedPort)] {
        self.named.get(name).map(Vec::as_slice).unwrap_or(&[])
    }
}

/// Computes peer address sets, memoized: many policies repeat the same peers.
struct PeerCompiler<'a> {
    pods: &'a [Pod],
    by_ip: &'a HashMap<IpAddr, usize>,
    pods_by_ns: &'a BTreeMap<&'a str, Vec<usize>>,
    ns_labels: &'a HashMap<&'a str, &'a Labels>,
    defaults: &'a HashMap<&'a str, Labels>,
    /// One peer's addresses, by (namespace of the policy for same-namespace peers, peer).
    one: HashMap<(String, Peer), Arc<AddrSet>>,
    /// Shared pod-peer sets by canonical key.
    shared: HashMap<String, u32>,
    sets: Vec<PeerSet>,
}

/// Canonical text of a selector (expressions sorted; values are sorted sets already).
fn selector_key(s: &Selector) -> String {
    let mut s = s.clone();
    s.expressions.sort();
    s.expressions.dedup();
    serde_json::to_string(&s).expect("selectors serialize")
}

impl PeerCompiler<'_> {
    fn labels_of_ns(&self, n: &str) -> &Labels {
        self.ns_labels
            .get(n)
            .copied()
            .unwrap_or_else(|| &self.defaults[n])
    }

    fn peer(&mut self, policy_ns: &str, peer: &Peer) -> Arc<AddrSet> {
        let key_ns = match peer {
            Peer::Pods {
                namespaces: NamespaceScope::Same,
                ..
            } => policy_ns.to_string(),
            _ => String::new(),
        };
        let key = (key_ns, peer.clone());
        if let Some(s) = self.one.get(&key) {
            return s.clone();
        }
        let set = match peer {
            Peer::Block(b) => AddrSet::from_block(&b.cidr, &b.except),
            Peer::Pods {
                namespaces,
                pods: sel,
            } => {
                let mut addrs = Vec::new();
                let mut scan = |ns: &str| {
                    for &i in self.pods_by_ns.get(ns).map(Vec::as_slice).unwrap_or(&[]) {
                        if sel.matches(&self.pods[i].labels) {
                            // Only the addresses this pod owns (a duplicate is the first pod's).
                            addrs.extend(
                                self.pods[i]
                                    .ips
                                    .iter()
                                    .filter(|ip| self.by_ip.get(ip) == Some(&i)),
                            );
                        }
                    }
                };
                match namespaces {
                    NamespaceScope::Same => scan(policy_ns),
                    NamespaceScope::Matching(nsel) => {
                        for ns in self.pods_by_ns.keys() {
                            if nsel.matches(self.labels_of_ns(ns)) {
                                scan(ns);
                            }
                        }
                    }
                }
                AddrSet::from_addrs(addrs)
            }
        };
        let set = Arc::new(set);
        self.one.insert(key, set.clone());
        set
    }

    fn union(sets: Vec<Arc<AddrSet>>) -> Option<Arc<AddrSet>> {
        match sets.len() {
            0 => None,
            1 => sets.into_iter().next(),
            _ => Some(Arc::new(AddrSet::union_all(sets.iter().map(|s| &**s)))),
        }
    }

    fn rule(&mut self, policy_ns: &str, r: &Rule) -> CompiledRule {
        let Peers::List(list) = &r.peers else {
            return CompiledRule {
                peers: None,
                ports: r.ports.clone(),
                pod_peers: None,
                blocks: None,
            };
        };
        let (mut pod_sets, mut pod_keys, mut block_sets) = (Vec::new(), Vec::new(), Vec::new());
        for p in list {
            let set = self.peer(policy_ns, p);
            match p {
                Peer::Block(_) => block_sets.push(set),
                Peer::Pods { namespaces, pods } => {
                    pod_keys.push(match namespaces {
                        NamespaceScope::Same => {
                            format!("ns={policy_ns} pods={}", selector_key(pods))
                        }
                        NamespaceScope::Matching(n) => {
                            format!("nsel={} pods={}", selector_key(n), selector_key(pods))
                        }
                    });
                    pod_sets.push(set);
                }
            }
        }
        let all = Self::union(pod_sets.iter().chain(&block_sets).cloned().collect());
        let pod_peers = if pod_keys.is_empty() {
            None
        } else {
            pod_keys.sort();
            pod_keys.dedup();
            let key = pod_keys.join(" | ");
            Some(match self.shared.get(&key) {
                Some(&id) => id,
                None => {
                    let id = self.sets.len() as u32;
                    let addrs = if block_sets.is_empty() {
                        all.clone().expect("non-empty peer list")
                    } else {
                        Self::union(pod_sets).expect("pod peers")
                    };
                    self.sets.push(PeerSet {
                        key: key.clone(),
                        addrs,
                    });
                    self.shared.insert(key, id);
                    id
                }
            })
        };
        CompiledRule {
            peers: all,
            ports: r.ports.clone(),
            pod_peers,
            blocks: Self::union(block_sets),
        }
    }
}

fn select(sel: &Selector, in_ns: Option<&Vec<usize>>, pods: &[Pod]) -> Vec<usize> {
    in_ns
        .map(|v| {
            v.iter()
                .copied()
                .filter(|&i| sel.matches(&pods[i].labels))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{IpBlock, Namespace, Policy};

    fn pod(ns: &str, name: &str, app: &str, ip: &str) -> Pod {
        Pod {
            namespace: ns.into(),
            name: name.into(),
            labels: [("app".to_string(), app.to_string())].into(),
            ips: vec![ip.parse().unwrap()],
            named_ports: BTreeMap::new(),
        }
    }

    fn from(ns: &str, name: &str, peers: Vec<Peer>) -> Policy {
        Policy {
            namespace: ns.into(),
            name: name.into(),
            pod_selector: Selector::everything(),
            types: PolicyTypes {
                ingress: true,
                egress: false,
            },
            ingress: vec![Rule {
                peers: Peers::List(peers),
                ports: Ports::Any,
            }],
            egress: vec![],
        }
    }

    fn same(app: &str) -> Peer {
        Peer::Pods {
            namespaces: NamespaceScope::Same,
            pods: Selector::labels([("app", app)]),
        }
    }

    fn anywhere(app: &str) -> Peer {
        Peer::Pods {
            namespaces: NamespaceScope::Matching(Selector::everything()),
            pods: Selector::labels([("app", app)]),
        }
    }

    fn block(cidr: &str) -> Peer {
        Peer::Block(IpBlock {
            cidr: cidr.parse().unwrap(),
            except: vec![],
        })
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn pod_peers_are_shared_by_definition() {
        let cl = Cluster {
            namespaces: vec![Namespace {
                name: "a".into(),
                labels: Labels::new(),
            }],
            pods: vec![
                pod("a", "w", "web", "10.0.0.1"),
                pod("b", "w", "web", "10.0.1.1"),
            ],
            policies: vec![
                from("a", "p1", vec![anywhere("web"), block("192.0.2.0/24")]),
                from("b", "p2", vec![anywhere("web")]),
                // Same peers in another order and repeated: the same set.
                from(
                    "b",
                    "p3",
                    vec![block("198.51.100.0/24"), anywhere("web"), anywhere("web")],
                ),
                // Same-namespace peers: the namespace is part of the definition.
                from("a", "p4", vec![same("web")]),
                from("b", "p5", vec![same("web")]),
                from("b", "p6", vec![block("192.0.2.0/24")]),
            ],
        };
        let c = Compiled::new(&cl);
        let rule = |name: &str| {
            let p = c.policies().iter().find(|p| p.name == name).unwrap();
            p.ingress[0].clone()
        };
        let id = |name: &str| rule(name).pod_peers;
        assert_eq!(c.peer_sets().len(), 3, "{:?}", c.peer_sets());
        assert!(id("p1").is_some());
        assert_eq!((id("p2"), id("p3")), (id("p1"), id("p1")));
        assert!(id("p4").is_some() && id("p5").is_some() && id("p4") != id("p5"));
        assert_ne!(id("p4"), id("p1"));
        assert_eq!(id("p6"), None);
        let all = &c.peer_sets()[id("p1").unwrap() as usize].addrs;
        assert!(all.contains(ip("10.0.0.1")) && all.contains(ip("10.0.1.1")));
        assert!(
            !all.contains(ip("192.0.2.1")),
            "ipBlocks stay out of shared sets"
        );
        let r = rule("p1");
        assert!(r.blocks.as_ref().unwrap().contains(ip("192.0.2.1")));
        assert!(r.peers.as_ref().unwrap().contains(ip("192.0.2.1")));
        assert!(r.peers.as_ref().unwrap().contains(ip("10.0.1.1")));
        // The reference query sees the union.
        assert!(c.allowed(ip("192.0.2.1"), ip("10.0.0.1"), Protocol::Tcp, 1));
        assert!(c.allowed(ip("10.0.1.1"), ip("10.0.0.1"), Protocol::Tcp, 1));
        assert!(!c.allowed(ip("10.9.9.9"), ip("10.0.0.1"), Protocol::Tcp, 1));
    }

    #[test]
    fn a_duplicate_address_stays_with_its_first_pod() {
        // b/w claims a/w's address; the selector matching b/w must not admit it.
        let cl = Cluster {
            namespaces: vec![],
            pods: vec![
                pod("a", "w", "web", "10.0.0.1"),
                pod("a", "x", "db", "10.0.0.2"),
                pod("b", "w", "cli", "10.0.0.1"),
            ],
            policies: vec![from("a", "p", vec![anywhere("cli")])],
        };
        let c = Compiled::new(&cl);
        assert_eq!(c.notes().len(), 1, "{:?}", c.notes());
        assert!(c.peer_sets()[0].addrs.is_empty());
        assert!(!c.allowed(ip("10.0.0.1"), ip("10.0.0.2"), Protocol::Tcp, 80));
    }

    #[test]
    fn ipv6_blocks_are_noted_while_no_pod_has_ipv6() {
        let mut cl = Cluster {
            namespaces: vec![],
            pods: vec![pod("a", "w", "web", "10.0.0.1")],
            policies: vec![from("a", "p", vec![block("::/0"), block("2001:db8::/32")])],
        };
        let c = Compiled::new(&cl);
        assert_eq!(
            c.notes(),
            &[Note {
                object: "a/p".into(),
                note:
                    "IPv6 ipBlock 2001:db8::/32, ::/0 matches nothing: no pod has an IPv6 address"
                        .into()
            }]
        );
        assert!(!c.allowed(ip("10.0.0.9"), ip("10.0.0.1"), Protocol::Tcp, 80));
        cl.pods[0].ips.push(ip("fd00::1"));
        assert!(Compiled::new(&cl).notes().is_empty());
    }
}
