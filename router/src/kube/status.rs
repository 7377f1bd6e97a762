//! What the Kubernetes side looks like, for `/status`: [`KubeStatus`], built from a shared
//! [`Board`] that the watch tasks update.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// How long after its last error a resource still counts as disconnected when nothing
/// happened since: longer than the longest retry interval plus a connect timeout, so a
/// resource that keeps failing never shows as connected between two tries.
pub const ERROR_WINDOW: Duration = Duration::from_secs(60);

/// The resources weft watches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Watched {
    Nodes,
    Pods,
    Namespaces,
    NetworkPolicies,
}

impl Watched {
    pub fn as_str(self) -> &'static str {
        match self {
            Watched::Nodes => "nodes",
            Watched::Pods => "pods",
            Watched::Namespaces => "namespaces",
            Watched::NetworkPolicies => "networkpolicies",
        }
    }
}

/// One watched resource.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceStatus {
    pub resource: String,
    /// The first complete list arrived; the cache is whole from then on (it is replaced only
    /// by another complete list).
    pub synced: bool,
    /// Objects in the cache.
    pub objects: usize,
    /// The last request for this resource succeeded (or its last error is over
    /// [`ERROR_WINDOW`] old and nothing failed since).
    pub connected: bool,
    /// The most recent error, kept after recovery for the record.
    pub last_error: Option<String>,
    /// Seconds since `last_error`.
    pub last_error_age_secs: Option<u64>,
    /// Errors since start.
    pub errors: u64,
    /// Complete lists since start: 1 after the first sync; more after `410 Gone` (the
    /// watch fell too far behind and had to list everything again).
    pub lists: u64,
}

/// The Kubernetes side of `/status.json` (`kube` key).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KubeStatus {
    /// This router's Node name (`NODE_NAME`).
    pub node: String,
    /// Every watched resource is connected.
    pub connected: bool,
    /// Every watched resource is synced.
    pub synced: bool,
    /// The most recent error of any resource or of the Node status patch.
    pub last_error: Option<String>,
    /// Nodes that are peers, skipped (no address), and whether this node's Node was found.
    pub peers: usize,
    pub skipped_nodes: BTreeMap<String, String>,
    pub this_node_found: bool,
    /// This node's `spec.podCIDRs`.
    pub pod_cidrs: Vec<String>,
    /// The peers come from the cache in the state directory (the API has not answered yet).
    pub peers_from_cache: bool,
    /// `NetworkUnavailable=False` was set on this node's Node (and is still False).
    pub network_available: bool,
    pub resources: Vec<ResourceStatus>,
    /// Where this node's pod addresses come from, and why (this Node's `spec.podCIDR`,
    /// weft's gossip IPAM, or waiting for the podCIDR).
    #[serde(default)]
    pub ipam_source: Option<String>,
    /// A problem with the pod address configuration (a podCIDR outside the range...).
    #[serde(default)]
    pub ipam_warning: Option<String>,
    /// IP space of gone Nodes' routers waiting to be reclaimed, one line each.
    #[serde(default)]
    pub reclaim_pending: Vec<String>,
    /// The most recent reclaims, oldest first.
    #[serde(default)]
    pub reclaimed: Vec<String>,
}

impl KubeStatus {
    /// One line for the text status page.
    pub fn summary(&self) -> String {
        let count = |r: &str| {
            self.resources
                .iter()
                .find(|s| s.resource == r)
                .map(|s| s.objects.to_string())
        };
        let mut s = format!(
            "{}, {}, node {}{}",
            if self.connected {
                "connected"
            } else {
                "NOT connected"
            },
            if self.synced { "synced" } else { "not synced" },
            self.node,
            if self.this_node_found {
                ""
            } else {
                " (no such Node)"
            },
        );
        if !self.pod_cidrs.is_empty() {
            s += &format!(" podCIDR {}", self.pod_cidrs.join(","));
        }
        s += &format!(", {} peer node(s)", self.peers);
        if !self.skipped_nodes.is_empty() {
            s += &format!(", {} without address", self.skipped_nodes.len());
        }
        for (r, label) in [
            ("pods", "pods"),
            ("namespaces", "namespaces"),
            ("networkpolicies", "policies"),
        ] {
            if let Some(n) = count(r) {
                s += &format!(", {n} {label}");
            }
        }
        if self.peers_from_cache {
            s += ", peers from cache";
        }
        if !self.reclaim_pending.is_empty() {
            s += &format!(", {} reclaim(s) pending", self.reclaim_pending.len());
        }
        if let Some(w) = &self.ipam_warning {
            s += &format!("; IPAM: {w}");
        }
        if let Some(e) = &self.last_error {
            s += &format!("; last error: {e}");
        }
        s
    }
}

#[derive(Default)]
struct Entry {
    synced: bool,
    objects: usize,
    errors: u64,
    lists: u64,
    /// The last outcome was an error.
    failing: bool,
    last_error: Option<(String, Instant)>,
}

#[derive(Default)]
struct Inner {
    resources: BTreeMap<Watched, Entry>,
    peers: usize,
    skipped: BTreeMap<String, String>,
    this_node_found: bool,
    pod_cidrs: Vec<String>,
    peers_from_cache: bool,
    network_available: bool,
    patch_error: Option<(String, Instant)>,
}

/// Shared, updated by the watch tasks; read by [`Board::status`].
#[derive(Default)]
pub struct Board {
    node: String,
    inner: Mutex<Inner>,
}

impl Board {
    pub fn new(node: &str, resources: &[Watched]) -> Board {
        let inner = Inner {
            resources: resources.iter().map(|r| (*r, Entry::default())).collect(),
            ..Default::default()
        };
        Board {
            node: node.to_string(),
            inner: Mutex::new(inner),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut g)
    }

    /// A watch event arrived for `r`; `objects` is the cache size now.
    pub fn ok(&self, r: Watched, objects: usize, list_done: bool) {
        self.with(|i| {
            let e = i.resources.entry(r).or_default();
            e.failing = false;
            e.objects = objects;
            if list_done {
                e.synced = true;
                e.lists += 1;
            }
        })
    }

    /// A request for `r` failed.
    pub fn error(&self, r: Watched, msg: String, now: Instant) {
        self.with(|i| {
            let e = i.resources.entry(r).or_default();
            e.failing = true;
            e.errors += 1;
            e.last_error = Some((msg, now));
        })
    }

    pub fn is_synced(&self, r: Watched) -> bool {
        self.with(|i| i.resources.get(&r).is_some_and(|e| e.synced))
    }

    pub fn set_peers(&self, set: &super::PeerSet, from_cache: bool) {
        self.with(|i| {
            i.peers = set.peers.len();
            i.skipped = set.skipped.clone();
            i.this_node_found = set.this_node.is_some();
            i.pod_cidrs = set
                .this_node
                .iter()
                .flat_map(|t| t.pod_cidrs.iter().map(|c| c.to_string()))
                .collect();
            i.peers_from_cache = from_cache;
            i.network_available = set
                .this_node
                .as_ref()
                .is_some_and(|t| t.network_unavailable == Some(false));
        })
    }

    pub fn patch_result(&self, r: Result<(), String>, now: Instant) {
        self.with(|i| match r {
            Ok(()) => i.patch_error = None,
            Err(e) => i.patch_error = Some((e, now)),
        })
    }

    /// The status as of `now`.
    pub fn status(&self, now: Instant) -> KubeStatus {
        self.with(|i| {
            let resources: Vec<ResourceStatus> = i
                .resources
                .iter()
                .map(|(r, e)| {
                    let age = e
                        .last_error
                        .as_ref()
                        .map(|(_, at)| now.saturating_duration_since(*at));
                    ResourceStatus {
                        resource: r.as_str().to_string(),
                        synced: e.synced,
                        objects: e.objects,
                        connected: !e.failing || age.is_some_and(|a| a > ERROR_WINDOW),
                        last_error: e.last_error.as_ref().map(|(m, _)| m.clone()),
                        last_error_age_secs: age.map(|a| a.as_secs()),
                        errors: e.errors,
                        lists: e.lists,
                    }
                })
                .collect();
            let last_error = i
                .resources
                .iter()
                .filter_map(|(r, e)| {
                    e.last_error
                        .as_ref()
                        .map(|(m, at)| (*at, format!("{}: {m}", r.as_str())))
                })
                .chain(
                    i.patch_error
                        .as_ref()
                        .map(|(m, at)| (*at, format!("Node status: {m}"))),
                )
                .max_by_key(|(at, _)| *at)
                .map(|(_, m)| m);
            KubeStatus {
                node: self.node.clone(),
                connected: resources.iter().all(|r| r.connected),
                synced: resources.iter().all(|r| r.synced),
                last_error,
                peers: i.peers,
                skipped_nodes: i.skipped.clone(),
                this_node_found: i.this_node_found,
                pod_cidrs: i.pod_cidrs.clone(),
                peers_from_cache: i.peers_from_cache,
                network_available: i.network_available,
                resources,
                ..Default::default()
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connected_flips_with_errors_and_recovers() {
        let b = Board::new("n1", &[Watched::Nodes, Watched::Pods]);
        let t0 = Instant::now();
        let s = b.status(t0);
        assert!(s.connected && !s.synced);
        b.error(Watched::Nodes, "connection refused".into(), t0);
        let s = b.status(t0 + Duration::from_secs(1));
        assert!(!s.connected);
        assert_eq!(s.last_error.as_deref(), Some("nodes: connection refused"));
        assert_eq!(s.resources[0].last_error_age_secs, Some(1));
        // silence long after an error: no longer counted as down
        assert!(b.status(t0 + ERROR_WINDOW * 2).connected);
        b.ok(Watched::Nodes, 3, true);
        b.ok(Watched::Pods, 10, true);
        let s = b.status(t0 + Duration::from_secs(2));
        assert!(s.connected && s.synced);
        assert_eq!(s.resources[0].objects, 3);
        assert_eq!(s.resources[0].lists, 1);
        assert_eq!(s.resources[0].errors, 1);
        assert!(s
            .summary()
            .starts_with("connected, synced, node n1 (no such Node)"));
        assert!(s.summary().contains("10 pods"), "{}", s.summary());
        // JSON field names are what /status.json shows
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["resources"][0]["resource"], "nodes");
        assert_eq!(v["connected"], true);
    }
}
