//! The Node source: watches Nodes, publishes the [`PeerView`], keeps a copy of it in the
//! state directory (so a router restarted while the API server is down still finds its
//! peers), and keeps this node's `NetworkUnavailable` condition False once asked to.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use k8s_openapi::api::core::v1::Node;
use kube::runtime::reflector::store::Writer;
use kube::runtime::reflector::Store;
use kube::Client;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::{info, warn};

use super::peers::PeerSet;
use super::status::Board;
use super::watch::{Backoff, Retry};

/// File in the state directory that holds the last peer set seen from the API.
pub const CACHE_FILE: &str = "kube-peers.json";

/// Where the current peer set came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Origin {
    /// Nothing yet: neither the API nor a cache has answered.
    Nothing,
    /// The cache in the state directory, written when the API last answered. Good enough
    /// to dial peers; not a basis for reclaiming anyone's IP space.
    Cache,
    /// A complete list from the API server (kept up to date by the watch).
    Api,
}

/// The desired peers and their origin: what the daemon follows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerView {
    pub set: Arc<PeerSet>,
    pub origin: Origin,
}

impl Default for PeerView {
    fn default() -> Self {
        PeerView {
            set: Arc::new(PeerSet::default()),
            origin: Origin::Nothing,
        }
    }
}

#[derive(Serialize, Deserialize)]
struct CacheFile {
    version: u32,
    node: String,
    peers: PeerSet,
}

/// Reads the cache for `node`; `None` when absent, unreadable or for another node name.
pub fn load_cache(dir: &Path, node: &str) -> Option<PeerSet> {
    let path = dir.join(CACHE_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            warn!(path = %path.display(), error = %e, "cannot read the peer cache; ignoring it");
            return None;
        }
    };
    match serde_json::from_slice::<CacheFile>(&bytes) {
        Ok(c) if c.version == 1 && c.node == node => Some(c.peers),
        Ok(c) => {
            warn!(path = %path.display(), cached_for = %c.node, "peer cache is for another node; ignoring it");
            None
        }
        Err(e) => {
            warn!(path = %path.display(), error = %e, "peer cache is malformed; ignoring it");
            None
        }
    }
}

/// Writes the cache atomically (temporary file, then rename).
pub fn store_cache(dir: &Path, node: &str, set: &PeerSet) -> std::io::Result<()> {
    let body = serde_json::to_vec_pretty(&CacheFile {
        version: 1,
        node: node.to_string(),
        peers: set.clone(),
    })
    .map_err(std::io::Error::other)?;
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{CACHE_FILE}.tmp"));
    std::fs::write(&tmp, body)?;
    std::fs::rename(&tmp, dir.join(CACHE_FILE))
}

/// Recomputes the peer set from the Node cache and publishes it when it changed.
pub(crate) struct Publisher {
    pub store: Store<Node>,
    pub node: String,
    pub prefer_v6: bool,
    pub tx: watch::Sender<PeerView>,
    pub board: Arc<Board>,
}

impl Publisher {
    pub(crate) fn publish(&self) {
        let nodes = self.store.state();
        let set = PeerSet::from_nodes(nodes.iter().map(|n| n.as_ref()), &self.node, self.prefer_v6);
        self.board.set_peers(&set, false);
        self.tx.send_if_modified(|v| {
            if v.origin == Origin::Api && *v.set == set {
                return false;
            }
            let d = set.diff(&v.set);
            for p in &d.added {
                info!(node = %p.node, address = %p.address, "peer Node added");
            }
            for (a, b) in &d.changed {
                info!(node = %b.node, from = %a.address, to = %b.address, "peer Node changed");
            }
            for p in &d.unaddressed {
                warn!(node = %p.node, reason = set.skipped.get(&p.node).map(String::as_str).unwrap_or(""), "peer Node lost its address; not dialling it");
            }
            for n in &d.removed {
                info!(node = %n, "Node deleted");
            }
            for (n, why) in &set.skipped {
                if !v.set.skipped.contains_key(n) {
                    warn!(node = %n, reason = %why, "Node skipped: no address to reach it");
                }
            }
            for w in set.warnings.iter().filter(|w| !v.set.warnings.contains(w)) {
                warn!("{w}");
            }
            if set.this_node.is_none() && (v.origin != Origin::Api || v.set.this_node.is_some()) {
                warn!(node = %self.node, "no Node named like this node (NODE_NAME): no pod CIDR, no NetworkUnavailable update");
            }
            *v = PeerView {
                set: Arc::new(set),
                origin: Origin::Api,
            };
            true
        });
    }
}

/// A new Node writer/reader pair.
pub(crate) fn node_cache() -> (Writer<Node>, Store<Node>) {
    let w = Writer::<Node>::default();
    let r = w.as_reader();
    (w, r)
}

/// Writes every peer set that came from the API to the cache file.
pub(crate) async fn cache_writer(dir: PathBuf, node: String, mut rx: watch::Receiver<PeerView>) {
    while rx.changed().await.is_ok() {
        let v = rx.borrow_and_update().clone();
        if v.origin != Origin::Api {
            continue;
        }
        let (dir2, node2) = (dir.clone(), node.clone());
        let r = tokio::task::spawn_blocking(move || store_cache(&dir2, &node2, &v.set)).await;
        if let Ok(Err(e)) = r {
            warn!(dir = %dir.display(), error = %e, "cannot write the peer cache");
        }
    }
}

/// Once `want` turns true: sets `NetworkUnavailable=False` on this node's Node, and again
/// whenever the Node shows it otherwise (re-registered Node, a cloud controller). Retries
/// with backoff while the API fails.
pub(crate) async fn keep_network_available(
    client: Client,
    node: String,
    mut peers: watch::Receiver<PeerView>,
    mut want: watch::Receiver<bool>,
    board: Arc<Board>,
    backoff: Backoff,
) {
    while !*want.borrow_and_update() {
        if want.changed().await.is_err() {
            return;
        }
    }
    let mut retry = Retry::new(backoff);
    loop {
        let needed = {
            let v = peers.borrow_and_update();
            v.origin == Origin::Api
                && v.set
                    .this_node
                    .as_ref()
                    .is_some_and(|t| t.network_unavailable != Some(false))
        };
        if needed {
            match super::condition::set_network_available(&client, &node).await {
                Ok(()) => {
                    info!(node = %node, "Node condition NetworkUnavailable=False set");
                    board.patch_result(Ok(()), Instant::now());
                    retry.reset();
                }
                Err(e) => {
                    warn!(node = %node, error = %e, "cannot set NetworkUnavailable=False; retrying");
                    board.patch_result(Err(e.to_string()), Instant::now());
                    tokio::time::sleep(retry.delay()).await;
                    continue;
                }
            }
        }
        if peers.changed().await.is_err() {
            return;
        }
    }
}
