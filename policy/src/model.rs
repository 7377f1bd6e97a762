//! The normalized, validated model: what the compiler works from. Built from the Kubernetes
//! API types by [`crate::k8s`] (or directly, in tests). Every value here is already valid:
//! CIDRs parsed, protocols known, port ranges ordered, `policyTypes` defaulted.

use crate::selector::{Labels, Selector};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

/// A transport protocol NetworkPolicy ports can name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    pub const ALL: [Protocol; 3] = [Protocol::Tcp, Protocol::Udp, Protocol::Sctp];

    /// Parses the API spelling (`TCP`, `UDP`, `SCTP`; case-sensitive like the API server).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "TCP" => Some(Self::Tcp),
            "UDP" => Some(Self::Udp),
            "SCTP" => Some(Self::Sctp),
            _ => None,
        }
    }

    /// The API spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "TCP",
            Self::Udp => "UDP",
            Self::Sctp => "SCTP",
        }
    }

    /// The IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Self::Tcp => 6,
            Self::Udp => 17,
            Self::Sctp => 132,
        }
    }

    pub fn from_number(n: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.number() == n)
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Ingress (towards the selected pod) or egress (from it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ingress => "ingress",
            Self::Egress => "egress",
        }
    }
}

/// A namespace: its name and labels (namespace selectors match these).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Namespace {
    pub name: String,
    pub labels: Labels,
}

/// A container port that has a name: what a named policy port resolves to on this pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NamedPort {
    pub protocol: Protocol,
    pub port: u16,
}

/// A pod: where it is, its labels, its addresses and its named container ports.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pod {
    pub namespace: String,
    pub name: String,
    pub labels: Labels,
    /// The pod's addresses (`status.podIPs`, or the CNI records). A pod without addresses can
    /// be selected but neither sends nor receives anything we could match.
    pub ips: Vec<IpAddr>,
    /// Named container ports, by name (names are unique within a pod).
    pub named_ports: BTreeMap<String, NamedPort>,
}

impl Pod {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// Which directions a policy isolates, after the API's defaulting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PolicyTypes {
    pub ingress: bool,
    pub egress: bool,
}

impl PolicyTypes {
    pub fn has(self, d: Direction) -> bool {
        match d {
            Direction::Ingress => self.ingress,
            Direction::Egress => self.egress,
        }
    }
}

/// `ipBlock`: a CIDR less some sub-CIDRs.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct IpBlock {
    pub cidr: IpNet,
    pub except: Vec<IpNet>,
}

/// Which namespaces a pod peer looks in.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum NamespaceScope {
    /// No `namespaceSelector`: the policy's own namespace.
    Same,
    /// `namespaceSelector` (empty = every namespace).
    Matching(Selector),
}

/// One entry of `from` / `to`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Peer {
    /// `podSelector` and/or `namespaceSelector` (an absent `podSelector` is stored as the
    /// empty selector: all pods of the namespaces in scope).
    Pods {
        namespaces: NamespaceScope,
        pods: Selector,
    },
    Block(IpBlock),
}

/// Which ports of one protocol a rule port entry admits.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum PortSpec {
    /// No `port`: every port of the protocol.
    All,
    /// `port` (and `endPort`): an inclusive range, `first <= last`.
    Range(u16, u16),
    /// A named container port of the destination pod.
    Named(String),
}

/// One entry of `ports`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PortRule {
    pub protocol: Protocol,
    pub port: PortSpec,
}

/// `from`/`to` of a rule.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Peers {
    /// Absent or empty: every address.
    Any,
    /// A non-empty list: an address matching any of them.
    List(Vec<Peer>),
}

/// `ports` of a rule.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Ports {
    /// Absent or empty: every port of every protocol.
    Any,
    /// A non-empty list: traffic matching any of them.
    List(Vec<PortRule>),
}

/// One ingress or egress rule.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Rule {
    pub peers: Peers,
    pub ports: Ports,
}

impl Rule {
    /// `{}`: everything.
    pub fn allow_all() -> Self {
        Rule {
            peers: Peers::Any,
            ports: Ports::Any,
        }
    }
}

/// A validated NetworkPolicy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    pub namespace: String,
    pub name: String,
    pub pod_selector: Selector,
    pub types: PolicyTypes,
    /// Only meaningful when `types.ingress`.
    pub ingress: Vec<Rule>,
    /// Only meaningful when `types.egress`.
    pub egress: Vec<Rule>,
}

impl Policy {
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    pub fn rules(&self, d: Direction) -> &[Rule] {
        match d {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }
}

/// Everything the compiler needs: the cluster as known to this node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cluster {
    pub namespaces: Vec<Namespace>,
    pub pods: Vec<Pod>,
    pub policies: Vec<Policy>,
}
