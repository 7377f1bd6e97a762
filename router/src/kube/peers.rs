//! Nodes → the desired peer set (pure).
//!
//! [`PeerSet::from_nodes`] turns the Node objects of the cluster into what the router needs:
//! one address per other Node (InternalIP before ExternalIP, the control port's address family
//! first), this node's own facts (`spec.podCIDR(s)`, the `NetworkUnavailable` condition), and
//! the Nodes that had to be skipped with the reason why. [`PeerSet::diff`] says what changed
//! between two sets, including the Nodes that are gone (whose IP space can be reclaimed).
//! No I/O, no clock: the watch driver in `nodes.rs` feeds it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net};
use k8s_openapi::api::core::v1::{Node, NodeCondition, NodeSpec, NodeStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};
use weft_gossip::PeerName;

/// The name of the Node condition weft sets when the pod network is up.
pub const NETWORK_UNAVAILABLE: &str = "NetworkUnavailable";

/// The peer name a router running with `--kube` takes (unless `--name` is given): derived
/// from the Node name, which is unique in the cluster and known to every other router, so
/// any router can tell which peer a deleted Node was. (`/etc/machine-id` is not used in
/// Kubernetes: cloned VM images share it.)
pub fn peer_name_for_node(node: &str) -> PeerName {
    PeerName::derive(node)
}

/// Which kind of Node address a peer address came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AddressKind {
    InternalIP,
    ExternalIP,
}

/// Another Node the router should connect to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodePeer {
    /// The Node's name.
    pub node: String,
    /// The weft peer name of the router on that Node ([`peer_name_for_node`]).
    pub peer_name: PeerName,
    /// The address to dial (the control port is the router's own `--listen` port).
    pub address: IpAddr,
    pub kind: AddressKind,
    /// The Node's `spec.podCIDRs` (or `spec.podCIDR`), empty when not set.
    #[serde(with = "cidr_strings")]
    pub pod_cidrs: Vec<IpNet>,
}

/// This router's own Node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThisNode {
    pub node: String,
    /// Its address as other routers see it (same choice as for peers), if it has one.
    pub address: Option<IpAddr>,
    /// `spec.podCIDRs` (or `spec.podCIDR`), empty when the cluster does not allocate them.
    #[serde(with = "cidr_strings")]
    pub pod_cidrs: Vec<IpNet>,
    /// The `NetworkUnavailable` condition: `Some(true)` = True, `Some(false)` = False,
    /// `None` = absent or Unknown.
    pub network_unavailable: Option<bool>,
}

impl ThisNode {
    /// The first IPv4 pod CIDR: what weft's IPv4 IPAM can use.
    pub fn pod_cidr_v4(&self) -> Option<Ipv4Net> {
        self.pod_cidrs.iter().find_map(|n| match n {
            IpNet::V4(v4) => Some(*v4),
            IpNet::V6(_) => None,
        })
    }
}

/// The desired peers, from the complete list of Nodes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerSet {
    /// This router's Node; `None` when no Node has this router's node name.
    pub this_node: Option<ThisNode>,
    /// Every other Node with a usable address, by Node name.
    pub peers: BTreeMap<String, NodePeer>,
    /// Nodes left out (no usable address), with the reason.
    pub skipped: BTreeMap<String, String>,
    /// Problems that did not exclude a Node (an unparsable pod CIDR), one line each.
    pub warnings: Vec<String>,
}

/// What changed from one [`PeerSet`] to the next.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerSetDiff {
    /// Nodes that became peers (new, or given a usable address).
    pub added: Vec<NodePeer>,
    /// Peers whose address or pod CIDRs changed: (before, after).
    pub changed: Vec<(NodePeer, NodePeer)>,
    /// Peers that are no longer peers but whose Node still exists (lost its addresses).
    pub unaddressed: Vec<NodePeer>,
    /// Nodes that no longer exist: their routers are gone for good, their IP space can be
    /// reclaimed. Names of Nodes that were peers or skipped before.
    pub removed: Vec<String>,
    /// This node's own facts changed (pod CIDRs, address, condition, or it (dis)appeared).
    pub this_node_changed: bool,
}

impl PeerSetDiff {
    pub fn is_empty(&self) -> bool {
        *self == PeerSetDiff::default()
    }
}

impl PeerSet {
    /// Builds the set from every Node. `this_node` is this router's Node name; `prefer_v6`
    /// picks the address family tried first (that of the control port's listen address).
    pub fn from_nodes<'a>(
        nodes: impl IntoIterator<Item = &'a Node>,
        this_node: &str,
        prefer_v6: bool,
    ) -> PeerSet {
        let mut set = PeerSet::default();
        for node in nodes {
            let Some(name) = node.metadata.name.clone() else {
                continue;
            };
            let pod_cidrs = pod_cidrs(node, &name, &mut set.warnings);
            let address = node_address(node, prefer_v6);
            if name == this_node {
                set.this_node = Some(ThisNode {
                    address: address.map(|(a, _)| a),
                    pod_cidrs,
                    network_unavailable: network_unavailable(node),
                    node: name,
                });
                continue;
            }
            match address {
                Some((address, kind)) => {
                    set.peers.insert(
                        name.clone(),
                        NodePeer {
                            peer_name: peer_name_for_node(&name),
                            node: name,
                            address,
                            kind,
                            pod_cidrs,
                        },
                    );
                }
                None => {
                    set.skipped.insert(name, no_address_reason(node));
                }
            }
        }
        set
    }

    /// Every Node name in the set, this node's included.
    pub fn node_names(&self) -> BTreeSet<&str> {
        self.peers
            .keys()
            .chain(self.skipped.keys())
            .map(String::as_str)
            .chain(self.this_node.as_ref().map(|t| t.node.as_str()))
            .collect()
    }

    /// The peer names of every Node's router, this node's included: IP space owned by any
    /// other peer name belongs to a router whose Node is gone.
    pub fn peer_names(&self) -> BTreeSet<PeerName> {
        self.node_names()
            .into_iter()
            .map(peer_name_for_node)
            .collect()
    }

    /// The addresses to connect to, with `port` (the control port), sorted.
    pub fn targets(&self, port: u16) -> Vec<std::net::SocketAddr> {
        let mut v: Vec<_> = self
            .peers
            .values()
            .map(|p| std::net::SocketAddr::new(p.address, port))
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// What changed from `before` to `self`.
    pub fn diff(&self, before: &PeerSet) -> PeerSetDiff {
        let mut d = PeerSetDiff::default();
        let now_names = self.node_names();
        for (name, p) in &self.peers {
            match before.peers.get(name) {
                None => d.added.push(p.clone()),
                Some(old) if old != p => d.changed.push((old.clone(), p.clone())),
                Some(_) => {}
            }
        }
        for (name, old) in &before.peers {
            if !self.peers.contains_key(name) && now_names.contains(name.as_str()) {
                d.unaddressed.push(old.clone());
            }
        }
        d.removed = before
            .node_names()
            .into_iter()
            .filter(|n| !now_names.contains(n))
            .filter(|n| before.this_node.as_ref().is_none_or(|t| t.node != *n))
            .map(str::to_string)
            .collect();
        d.this_node_changed = self.this_node != before.this_node;
        d
    }
}

/// The address other routers should dial: InternalIP before ExternalIP, the preferred
/// family first (then the other family in the same order). Unparsable values are ignored.
pub fn node_address(node: &Node, prefer_v6: bool) -> Option<(IpAddr, AddressKind)> {
    let addrs = node.status.as_ref()?.addresses.as_ref()?;
    let parsed: Vec<(IpAddr, AddressKind)> = addrs
        .iter()
        .filter_map(|a| {
            let kind = match a.type_.as_str() {
                "InternalIP" => AddressKind::InternalIP,
                "ExternalIP" => AddressKind::ExternalIP,
                _ => return None,
            };
            Some((a.address.trim().parse::<IpAddr>().ok()?, kind))
        })
        .collect();
    let order = [
        (prefer_v6, AddressKind::InternalIP),
        (prefer_v6, AddressKind::ExternalIP),
        (!prefer_v6, AddressKind::InternalIP),
        (!prefer_v6, AddressKind::ExternalIP),
    ];
    order.into_iter().find_map(|(v6, kind)| {
        parsed
            .iter()
            .find(|(ip, k)| *k == kind && ip.is_ipv6() == v6)
            .copied()
    })
}

fn no_address_reason(node: &Node) -> String {
    let addrs = node
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .map(Vec::as_slice)
        .unwrap_or_default();
    if addrs.is_empty() {
        "the Node has no addresses in its status".to_string()
    } else {
        let listed: Vec<String> = addrs
            .iter()
            .map(|a| format!("{}={}", a.type_, a.address))
            .collect();
        format!(
            "no InternalIP or ExternalIP that is an IP address (has {})",
            listed.join(", ")
        )
    }
}

fn pod_cidrs(node: &Node, name: &str, warnings: &mut Vec<String>) -> Vec<IpNet> {
    let Some(spec) = node.spec.as_ref() else {
        return Vec::new();
    };
    let raw: Vec<&String> = match (&spec.pod_cidrs, &spec.pod_cidr) {
        (Some(v), _) if !v.is_empty() => v.iter().collect(),
        (_, Some(one)) if !one.is_empty() => vec![one],
        _ => Vec::new(),
    };
    raw.into_iter()
        .filter_map(|s| match s.trim().parse::<IpNet>() {
            Ok(n) => Some(n.trunc()),
            Err(_) => {
                warnings.push(format!(
                    "Node {name}: pod CIDR {s:?} is not a CIDR; ignored"
                ));
                None
            }
        })
        .collect()
}

fn network_unavailable(node: &Node) -> Option<bool> {
    let c = node
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == NETWORK_UNAVAILABLE)?;
    match c.status.as_str() {
        "True" => Some(true),
        "False" => Some(false),
        _ => None,
    }
}

/// Keeps only what [`PeerSet::from_nodes`] reads (name, resource version, pod CIDRs,
/// addresses, the `NetworkUnavailable` condition): Node objects carry image lists, capacity,
/// volumes and managed fields that would otherwise sit in memory for every Node.
pub fn prune_node(node: &mut Node) {
    let meta = std::mem::take(&mut node.metadata);
    node.metadata = ObjectMeta {
        name: meta.name,
        uid: meta.uid,
        resource_version: meta.resource_version,
        deletion_timestamp: meta.deletion_timestamp,
        ..Default::default()
    };
    node.spec = node.spec.take().map(|s| NodeSpec {
        pod_cidr: s.pod_cidr,
        pod_cidrs: s.pod_cidrs,
        ..Default::default()
    });
    node.status = node.status.take().map(|s| NodeStatus {
        addresses: s.addresses,
        conditions: s.conditions.map(|c| {
            c.into_iter()
                .filter(|c| c.type_ == NETWORK_UNAVAILABLE)
                .map(|c| NodeCondition {
                    // the heartbeat time changes on every status update: not kept, so an
                    // unchanged condition compares equal
                    last_heartbeat_time: None,
                    ..c
                })
                .collect()
        }),
        ..Default::default()
    });
}

/// CIDRs as strings in JSON (`"10.32.1.0/24"`).
mod cidr_strings {
    use ipnet::IpNet;
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[IpNet], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|n| n.to_string()))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<IpNet>, D::Error> {
        Vec::<String>::deserialize(d)?
            .iter()
            .map(|s| s.parse().map_err(D::Error::custom))
            .collect()
    }
}

#[cfg(test)]
#[path = "peers_tests.rs"]
mod tests;
