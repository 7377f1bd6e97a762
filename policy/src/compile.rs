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
    Protocol,
};
use crate::selector::{Labels, Selector};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

/// One rule, compiled: the addresses it admits (`None` = every address) and its ports.
#[derive(Clone, Debug)]
pub struct CompiledRule {
    pub peers: Option<Arc<AddrSet>>,
    pub ports: Ports,
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
        let labels_of_ns =
            |n: &str| -> &Labels { ns_labels.get(n).copied().unwrap_or_else(|| &defaults[n]) };

        // Peer address sets, memoized: many policies repeat the same peers.
        let mut peer_cache: HashMap<(String, Peer), Arc<AddrSet>> = HashMap::new();
        let mut peer_set = |policy_ns: &str, peer: &Peer| -> Arc<AddrSet> {
            let key_ns = match peer {
                Peer::Pods {
                    namespaces: NamespaceScope::Same,
                    ..
                } => policy_ns.to_string(),
                _ => String::new(),
            };
            if let Some(s) = peer_cache.get(&(key_ns.clone(), peer.clone())) {
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
                        for &i in pods_by_ns.get(ns).map(Vec::as_slice).unwrap_or(&[]) {
                            if sel.matches(&pods[i].labels) {
                                addrs.extend(pods[i].ips.iter().copied());
                            }
                        }
                    };
                    match namespaces {
                        NamespaceScope::Same => scan(policy_ns),
                        NamespaceScope::Matching(nsel) => {
                            for ns in pods_by_ns.keys() {
                                if nsel.matches(labels_of_ns(ns)) {
                                    scan(ns);
                                }
                            }
                        }
                    }
                    AddrSet::from_addrs(addrs)
                }
            };
            let set = Arc::new(set);
            peer_cache.insert((key_ns, peer.clone()), set.clone());
            set
        };

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
            let mut compile_rules = |d: Direction| -> Vec<CompiledRule> {
                if !pol.types.has(d) {
                    return Vec::new();
                }
                pol.rules(d)
                    .iter()
                    .map(|r| CompiledRule {
                        peers: match &r.peers {
                            Peers::Any => None,
                            Peers::List(list) => {
                                let sets: Vec<Arc<AddrSet>> =
                                    list.iter().map(|p| peer_set(&pol.namespace, p)).collect();
                                Some(if sets.len() == 1 {
                                    sets[0].clone()
                                } else {
                                    Arc::new(AddrSet::union_all(sets.iter().map(|s| &**s)))
                                })
                            }
                        },
                        ports: r.ports.clone(),
                    })
                    .collect()
            };
            let cin = compile_rules(Direction::Ingress);
            let ceg = compile_rules(Direction::Egress);
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
        Compiled {
            pods,
            by_ip,
            policies,
            ingress,
            egress,
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

    /// The index of a pod by namespace and name.
    pub fn pod_index(&self, namespace: &str, name: &str) -> Option<usize> {
        self.pods
            .binary_search_by(|p| (p.namespace.as_str(), p.name.as_str()).cmp(&(namespace, name)))
            .ok()
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

    pub fn rule(&self, r: RuleRef, d: Direction) -> &CompiledRule {
        &self.policies[r.policy as usize].rules(d)[r.rule as usize]
    }

    /// Every (address, protocol, port) a named port stands for, across all pods.
    pub fn named_port_targets(&self, name: &str) -> &[(IpAddr, NamedPort)] {
        self.named.get(name).map(Vec::as_slice).unwrap_or(&[])
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
