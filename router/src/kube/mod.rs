//! # Kubernetes sources (`weft router --kube`)
//!
//! Design note. The router learns three things from the Kubernetes API and tells it one:
//! - **Peers** ([`PeerView`]): every other Node's InternalIP (ExternalIP as fallback), this
//!   node's `spec.podCIDR`, and which Nodes were deleted (their routers' IP space can be
//!   reclaimed). The pure part is [`peers`] (Node objects → [`PeerSet`], [`PeerSet::diff`]);
//!   `nodes.rs` is the thin driver around it.
//! - **Policy inputs** ([`PolicySources`]): reflector caches of Pods, Namespaces and
//!   NetworkPolicies, pruned to the fields policy reads, with a change counter.
//! - **Status** ([`KubeStatus`]): connected, synced, counts, the last error.
//! - It sets the Node condition `NetworkUnavailable=False` (reason `WeftIsUp`) once the
//!   daemon says the node's network is up, and keeps it so.
//!
//! Every watch is kube-runtime's `watcher` (list, then watch from the last resourceVersion,
//! with bookmarks; it resumes after a dropped connection and lists again after `410 Gone`)
//! feeding a reflector cache, wrapped in one loop (`watch.rs`) that backs off between failed
//! attempts and reports on a shared status board. While the API server is unreachable the
//! caches keep the last known state; a relist replaces a cache only once it is complete.
//!
//! Tested against an in-process fake API server (`router/tests/kube_support`): no real API
//! server can run on the build machines.
//!
//! Use from the daemon: [`node_name_from_env`] and [`peer_name_for_node`] when building the
//! identity; then [`driver::KubeDriver`], which does the rest: [`client`] and
//! [`Kube::start`]; follows [`Kube::peers`] (dials [`PeerSet::targets`], sets the IPAM block
//! source from [`ThisNode::pod_cidr_v4`] by the rule in `source.rs`, reclaims the space of
//! gone Nodes' routers by the rule in `reclaim.rs`); calls
//! [`Kube::report_network_available`] once pods can be attached; adds [`Kube::status`] to
//! the status snapshot; feeds [`Kube::policy_sources`] to the policy enforcer.

pub mod condition;
pub mod driver;
pub mod nodes;
pub mod peers;
pub mod policy;
pub mod reclaim;
pub mod source;
pub mod status;
pub mod watch;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::runtime::reflector::store::Writer;
use kube::runtime::watcher;
use kube::{Api, Client};
use tokio::sync::watch as chan;
use tokio::task::JoinHandle;

pub use condition::{network_available_patch, set_network_available};
pub use nodes::{Origin, PeerView};
pub use peers::{peer_name_for_node, NodePeer, PeerSet, PeerSetDiff, ThisNode};
pub use policy::{PolicySnapshot, PolicySources};
pub use status::KubeStatus;
pub use watch::Backoff;

use status::{Board, Watched};
use watch::{drive, Drive};

/// The environment variable that names this node (the DaemonSet sets it from
/// `spec.nodeName` through the downward API).
pub const NODE_NAME_ENV: &str = "NODE_NAME";

/// Why the Kubernetes side could not start or a request failed.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("{NODE_NAME_ENV} is not set: with --kube the router must know its Node's name (the DaemonSet sets it from spec.nodeName; elsewhere, export {NODE_NAME_ENV}=<this node's name>)")]
    NoNodeName,
    #[error("no Kubernetes API configuration: --kube needs either to run in a pod with a service account (KUBERNETES_SERVICE_HOST and /var/run/secrets/kubernetes.io/serviceaccount) or a kubeconfig (KUBECONFIG or ~/.kube/config): {0}")]
    NoConfig(String),
    #[error("cannot set up the Kubernetes client: {0}")]
    Client(String),
    #[error("Node {0:?} does not exist (is NODE_NAME right?)")]
    NodeNotFound(String),
    #[error("Kubernetes API request failed: {0}")]
    Api(String),
}

/// This node's name from `NODE_NAME` (trimmed; empty counts as unset).
pub fn node_name_from_env() -> Result<String, KubeError> {
    node_name_from(std::env::var(NODE_NAME_ENV).ok())
}

/// [`node_name_from_env`] with the value passed in.
pub fn node_name_from(v: Option<String>) -> Result<String, KubeError> {
    match v.map(|s| s.trim().to_string()) {
        Some(s) if !s.is_empty() => Ok(s),
        _ => Err(KubeError::NoNodeName),
    }
}

/// A client from the kubeconfig (`KUBECONFIG` or `~/.kube/config`) if there is one, else
/// from the in-cluster service account (kube's `Config::infer` order). Does not
/// contact the server: an unreachable API server shows up later, in status and logs.
pub async fn client() -> Result<Client, KubeError> {
    let cfg = kube::Config::infer()
        .await
        .map_err(|e| KubeError::NoConfig(watch::chain(&e)))?;
    client_from_config(cfg)
}

/// A client from an explicit configuration (tests point one at a local fake server).
pub fn client_from_config(mut cfg: kube::Config) -> Result<Client, KubeError> {
    // A silent (black-holed) API server should fail a connection attempt well within the
    // status error window, not after kube's 30 s default.
    cfg.connect_timeout = Some(std::time::Duration::from_secs(10));
    // kube retries 429/503/504 inside each request (up to 15 times, for minutes); the watch
    // loops back off on their own and report every failure in status instead.
    cfg.default_retry = false;
    Client::try_from(cfg).map_err(|e| KubeError::Client(watch::chain(&e)))
}

/// How to run the Kubernetes side.
#[derive(Clone, Debug)]
pub struct KubeOptions {
    /// This node's Node name ([`node_name_from_env`]).
    pub node_name: String,
    /// Dial peers over IPv6 first (the control port listens on IPv6).
    pub prefer_ipv6: bool,
    /// Watch Pods, Namespaces and NetworkPolicies for the policy enforcer.
    pub watch_policy: bool,
    /// Where to keep the peer cache (`--state-dir`); `None`: no cache.
    pub state_dir: Option<PathBuf>,
    pub backoff: Backoff,
}

impl KubeOptions {
    pub fn new(node_name: impl Into<String>) -> KubeOptions {
        KubeOptions {
            node_name: node_name.into(),
            prefer_ipv6: false,
            watch_policy: true,
            state_dir: None,
            backoff: Backoff::default(),
        }
    }
}

/// What every watch loop shares.
struct Params<'a> {
    board: &'a Arc<Board>,
    backoff: Backoff,
}

impl Params<'_> {
    fn drive<K>(&self, what: Watched, writer: Writer<K>, prune: fn(&mut K)) -> Drive<K>
    where
        K: kube::Resource + Clone + 'static,
        K::DynamicType: Eq + std::hash::Hash + Clone,
    {
        Drive {
            what,
            // Paged (500 objects a page) most-recent lists: memory stays flat when a router
            // lists every Pod of a large cluster, and API servers from 1.31 on serve such
            // consistent lists from their watch cache, not from etcd.
            config: watcher::Config::default(),
            writer,
            prune,
            board: self.board.clone(),
            backoff: self.backoff,
        }
    }
}

/// The running Kubernetes side. Dropping it stops its tasks.
pub struct Kube {
    client: Client,
    node: String,
    board: Arc<Board>,
    peers: chan::Receiver<PeerView>,
    policy: Option<PolicySources>,
    want_available: chan::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Kube {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Kube {
    /// Starts the watches (needs a tokio runtime). Returns at once: the first complete Node
    /// list shows up on [`peers`](Self::peers) with [`Origin::Api`]; until then the view holds
    /// the cached peers ([`Origin::Cache`]) if the state directory has them.
    pub fn start(client: Client, opts: KubeOptions) -> Kube {
        let mut watched = vec![Watched::Nodes];
        if opts.watch_policy {
            watched.extend([Watched::Pods, Watched::Namespaces, Watched::NetworkPolicies]);
        }
        let board = Arc::new(Board::new(&opts.node_name, &watched));
        let mut initial = PeerView::default();
        if let Some(set) = opts
            .state_dir
            .as_deref()
            .and_then(|d| nodes::load_cache(d, &opts.node_name))
        {
            tracing::info!(
                peers = set.peers.len(),
                "using the cached peer set until the API server answers"
            );
            board.set_peers(&set, true);
            initial = PeerView {
                set: Arc::new(set),
                origin: Origin::Cache,
            };
        }
        let (peers_tx, peers_rx) = chan::channel(initial);
        let mut tasks = Vec::new();

        let (writer, store) = nodes::node_cache();
        let publisher = nodes::Publisher {
            store,
            node: opts.node_name.clone(),
            prefer_v6: opts.prefer_ipv6,
            tx: peers_tx,
            board: board.clone(),
        };
        let d = Params {
            board: &board,
            backoff: opts.backoff,
        };
        tasks.push(tokio::spawn(drive(
            Api::<Node>::all(client.clone()),
            d.drive(Watched::Nodes, writer, peers::prune_node),
            move || publisher.publish(),
        )));
        if let Some(dir) = opts.state_dir.clone() {
            tasks.push(tokio::spawn(nodes::cache_writer(
                dir,
                opts.node_name.clone(),
                peers_rx.clone(),
            )));
        }

        let policy = opts.watch_policy.then(|| {
            let (changes_tx, changes_rx) = chan::channel(0u64);
            let changes_tx = Arc::new(changes_tx);
            let bump = move |tx: &Arc<chan::Sender<u64>>| {
                let tx = tx.clone();
                move || {
                    tx.send_modify(|c| *c += 1);
                }
            };
            let pods = Writer::<Pod>::default();
            let namespaces = Writer::<Namespace>::default();
            let policies = Writer::<NetworkPolicy>::default();
            let sources = PolicySources {
                pods: pods.as_reader(),
                namespaces: namespaces.as_reader(),
                policies: policies.as_reader(),
                changes: changes_rx,
                board: board.clone(),
            };
            let d = Params {
                board: &board,
                backoff: opts.backoff,
            };
            tasks.push(tokio::spawn(drive(
                Api::<Pod>::all(client.clone()),
                d.drive(Watched::Pods, pods, policy::prune_pod),
                bump(&changes_tx),
            )));
            tasks.push(tokio::spawn(drive(
                Api::<Namespace>::all(client.clone()),
                d.drive(Watched::Namespaces, namespaces, policy::prune_namespace),
                bump(&changes_tx),
            )));
            tasks.push(tokio::spawn(drive(
                Api::<NetworkPolicy>::all(client.clone()),
                d.drive(Watched::NetworkPolicies, policies, policy::prune_policy),
                bump(&changes_tx),
            )));
            sources
        });

        let (want_tx, want_rx) = chan::channel(false);
        tasks.push(tokio::spawn(nodes::keep_network_available(
            client.clone(),
            opts.node_name.clone(),
            peers_rx.clone(),
            want_rx,
            board.clone(),
            opts.backoff,
        )));
        Kube {
            client,
            node: opts.node_name,
            board,
            peers: peers_rx,
            policy,
            want_available: want_tx,
            tasks,
        }
    }

    /// The desired peers; changes whenever the Node list does (or the cache is replaced by
    /// the API's answer). Compare successive values with [`PeerSet::diff`].
    pub fn peers(&self) -> chan::Receiver<PeerView> {
        self.peers.clone()
    }

    /// The policy enforcer's inputs; `None` unless [`KubeOptions::watch_policy`].
    pub fn policy_sources(&self) -> Option<PolicySources> {
        self.policy.clone()
    }

    /// Says that this node's pod network is up: from now on the Node condition
    /// `NetworkUnavailable` is set to False (and set again whenever it reads otherwise).
    pub fn report_network_available(&self) {
        self.want_available.send_replace(true);
    }

    /// For `/status.json` (`kube`) and the text status.
    pub fn status(&self) -> KubeStatus {
        self.board.status(Instant::now())
    }

    pub fn node_name(&self) -> &str {
        &self.node
    }

    pub fn client(&self) -> &Client {
        &self.client
    }
}
