//! The daemon's side of `--kube`: follows the peer view and applies it to the mesh (targets,
//! IPAM block source, reclaiming gone Nodes' space), says when the node's network is up,
//! feeds the policy enforcer, and adds the Kubernetes section to the status.
//!
//! Everything here runs inside the daemon's event loop (it holds `&mut Mesh`) except the
//! policy feed, a task of its own. The decisions are the pure functions of `source.rs` and
//! `reclaim.rs`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};
use weft_gossip::ipam::{BlockSource, IpamError};
use weft_gossip::{Action, Input, Mesh, PeerName};

use super::nodes::PeerView;
use super::reclaim::{Outcome, Owner, Reclaimer};
use super::source::{decide, SourceDecision};
use super::status::{KubeStatus, Watched};
use super::{Kube, KubeError, KubeOptions, PolicySources};
use crate::enforcer::PolicyInput;

/// How often the reclaim conditions are checked (and the Node watch's health read).
const RECLAIM_CHECK: Duration = Duration::from_secs(1);
/// Policy changes arriving within this time of the first go into one snapshot.
const POLICY_SETTLE: Duration = Duration::from_millis(100);

/// What the driver needs from the router's configuration.
#[derive(Clone, Debug)]
pub struct DriverConfig {
    /// This node's Node name.
    pub node: String,
    /// This router's peer name.
    pub me: PeerName,
    /// The control port's listen address: its port is dialled on every Node, its family
    /// is tried first.
    pub listen: SocketAddr,
    /// `--ipalloc-range`.
    pub range: Ipv4Net,
    pub state_dir: PathBuf,
    /// `--peer` targets are configured (plain hosts may share the mesh).
    pub has_peers: bool,
    /// Watch Pods, Namespaces and NetworkPolicies.
    pub watch_policy: bool,
}

/// The running `--kube` side of the daemon.
pub struct KubeDriver {
    kube: Kube,
    rx: watch::Receiver<PeerView>,
    view: PeerView,
    cfg: DriverConfig,
    /// Resolved `--peer` addresses, dialled besides the Nodes.
    resolved: Vec<SocketAddr>,
    reclaimer: Reclaimer,
    decision: Option<SourceDecision>,
    reported: bool,
    next_check: Instant,
    policy: Option<JoinHandle<()>>,
}

impl Drop for KubeDriver {
    fn drop(&mut self) {
        if let Some(t) = &self.policy {
            t.abort();
        }
    }
}

/// Waits for the next peer view of `k`; never returns when there is no driver.
pub async fn next_view(k: &mut Option<KubeDriver>) {
    match k {
        Some(k) => k.changed().await,
        None => std::future::pending().await,
    }
}

impl KubeDriver {
    /// Builds the client (kubeconfig if present, else in-cluster) and starts the watches. Fails only
    /// without any configuration: an unreachable API server shows in status and logs.
    pub async fn start(cfg: DriverConfig) -> Result<KubeDriver, KubeError> {
        let client = super::client().await?;
        // The previous run's last complete list: Nodes missing from the first list are the
        // ones deleted while this router was down. Read before the watch starts (its first
        // list overwrites the cache).
        let mut reclaimer = Reclaimer::new(cfg.me, !cfg.has_peers);
        if let Some(set) = super::nodes::load_cache(&cfg.state_dir, &cfg.node) {
            let cached = PeerView {
                set: Arc::new(set),
                origin: super::nodes::Origin::Cache,
            };
            reclaimer.on_view(&cached, Instant::now());
        }
        let kube = Kube::start(
            client,
            KubeOptions {
                prefer_ipv6: cfg.listen.is_ipv6(),
                state_dir: Some(cfg.state_dir.clone()),
                watch_policy: cfg.watch_policy,
                ..KubeOptions::new(cfg.node.clone())
            },
        );
        let mut rx = kube.peers();
        // the view at hand (the cache's, if any) is applied by the first `on_view`
        rx.mark_changed();
        info!(node = %cfg.node, "Kubernetes: watching Nodes for peers and this node's pod CIDR");
        Ok(KubeDriver {
            reclaimer,
            view: PeerView::default(),
            kube,
            rx,
            cfg,
            resolved: Vec::new(),
            decision: None,
            reported: false,
            next_check: Instant::now(),
            policy: None,
        })
    }

    /// Holds IPAM until a view decides where addresses come from, then applies the view
    /// at hand. Call right after the IPAM state is restored, before the event loop.
    pub fn init_ipam(&mut self, mesh: &mut Mesh, now: Instant) {
        if let Err(e) = mesh.ipam_set_source(BlockSource::Undecided, now) {
            debug!(error = %e, "no IPAM to hold");
        }
        self.view = self.rx.borrow().clone();
        self.apply_source(mesh, now);
    }

    async fn changed(&mut self) {
        if self.rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Applies the latest peer view: targets, the IPAM source, evidence for reclaims.
    pub fn on_view(&mut self, mesh: &mut Mesh, now: Instant) -> Vec<Action> {
        self.view = self.rx.borrow_and_update().clone();
        self.reclaimer.on_view(&self.view, now);
        self.next_check = now;
        self.apply_source(mesh, now);
        mesh.set_targets(&self.targets(), now)
    }

    /// The `--peer` addresses were (re)resolved.
    pub fn set_resolved(
        &mut self,
        mesh: &mut Mesh,
        addrs: Vec<SocketAddr>,
        now: Instant,
    ) -> Vec<Action> {
        self.resolved = addrs;
        mesh.set_targets(&self.targets(), now)
    }

    /// Every Node's address on the control port, and the `--peer` addresses.
    fn targets(&self) -> Vec<SocketAddr> {
        let mut t = self.view.set.targets(self.cfg.listen.port());
        t.extend(&self.resolved);
        t.sort();
        t.dedup();
        t
    }

    fn apply_source(&mut self, mesh: &mut Mesh, now: Instant) {
        let Some(current) = mesh.ipam_source().cloned() else {
            return;
        };
        let d = decide(&self.view, self.cfg.range, &current);
        let old = self.decision.as_ref();
        if let Some(w) = d
            .warning
            .as_ref()
            .filter(|w| old.and_then(|o| o.warning.as_ref()) != Some(*w))
        {
            warn!("IPAM: {w}");
        }
        if d.source != current {
            match mesh.ipam_set_source(d.source.clone(), now) {
                Ok(_) => info!(source = %d.source, reason = %d.reason, "IPAM block source"),
                Err(e) => {
                    warn!(error = %e, source = %d.source, "cannot use this IPAM block source")
                }
            }
        } else if old.is_none_or(|o| o.reason != d.reason) {
            info!(source = %d.source, reason = %d.reason, "IPAM block source");
        }
        self.decision = Some(d);
    }

    /// Periodic work: reports the node's network as available once pods can be attached
    /// (`gateway_ready`), and reclaims the space of gone Nodes' routers when due.
    pub fn tick(&mut self, mesh: &mut Mesh, gateway_ready: bool, now: Instant) -> Vec<Action> {
        if gateway_ready && !self.reported {
            self.reported = true;
            info!("pods can be attached: reporting NetworkUnavailable=False for this Node");
            self.kube.report_network_available();
        }
        if now < self.next_check {
            return Vec::new();
        }
        self.next_check = now + RECLAIM_CHECK;
        let st = self.kube.status();
        let nodes_ok = st
            .resources
            .iter()
            .any(|r| r.resource == Watched::Nodes.as_str() && r.connected);
        self.reclaimer.set_connected(nodes_ok);
        if !self.reclaimer.wants_owners(now) {
            return Vec::new();
        }
        let Ok(ipam) = mesh.ipam_status(now) else {
            return Vec::new();
        };
        let owners: Vec<Owner> = ipam
            .peers
            .iter()
            .filter(|p| !p.is_self && (!p.blocks.is_empty() || !p.pending.is_empty()))
            .map(|p| Owner {
                name: p.name,
                nickname: p.nickname.clone(),
                reachable: p.reachable,
            })
            .collect();
        let mut changed = false;
        for (peer, why) in self.reclaimer.due(&owners, now) {
            let outcome = match mesh.remove_peer(peer, false, now) {
                Ok(o) => {
                    changed = true;
                    let show = |v: &[Ipv4Net]| {
                        v.iter()
                            .map(|n| n.to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    };
                    let what = if o.blocks.is_empty() {
                        format!("freed {}", show(&o.freed))
                    } else {
                        format!("took over {}", show(&o.blocks))
                    };
                    info!(%peer, reason = %why, "reclaimed the IP space of a gone Node's router: {what}");
                    Outcome::Done(what)
                }
                Err(IpamError::UnknownPeer(_) | IpamError::AlreadyRemoved(_)) => Outcome::Nothing,
                Err(IpamError::Disabled | IpamError::Config(_)) => Outcome::Nothing,
                Err(e) => {
                    debug!(%peer, error = %e, "cannot reclaim yet");
                    Outcome::Retry(e.to_string())
                }
            };
            self.reclaimer.outcome(peer, outcome);
        }
        if changed {
            // gossip the removal now
            mesh.handle(Input::Tick, now)
        } else {
            Vec::new()
        }
    }

    /// Feeds complete (synced) policy snapshots to the enforcer.
    pub fn feed_policy(&mut self, inputs: watch::Sender<Option<Arc<PolicyInput>>>) {
        if let Some(src) = self.kube.policy_sources() {
            self.policy = Some(tokio::spawn(feed_policy(src, inputs)));
        }
    }

    /// The `kube` section of the status.
    pub fn status(&self) -> KubeStatus {
        let mut st = self.kube.status();
        if let Some(d) = &self.decision {
            st.ipam_source = Some(d.reason.clone());
            st.ipam_warning = d.warning.clone();
        }
        st.reclaim_pending = self.reclaimer.pending();
        st.reclaimed = self.reclaimer.history();
        st
    }
}

/// Publishes a [`PolicyInput`] built from the caches whenever they change, once all three
/// are synced (a partial view could cut traffic a complete one allows).
async fn feed_policy(src: PolicySources, tx: watch::Sender<Option<Arc<PolicyInput>>>) {
    let mut changes = src.changes();
    loop {
        let snap = src.snapshot();
        if snap.synced {
            let built = tokio::task::spawn_blocking(move || {
                PolicyInput::from_objects(
                    "kubernetes",
                    snap.namespaces.iter().map(|n| n.as_ref()),
                    snap.pods.iter().map(|p| p.as_ref()),
                    snap.policies.iter().map(|p| p.as_ref()),
                )
            })
            .await;
            let Ok(input) = built else { return };
            tx.send_if_modified(|cur| {
                if cur.as_deref() == Some(&input) {
                    return false;
                }
                *cur = Some(Arc::new(input));
                true
            });
        }
        if changes.changed().await.is_err() {
            return;
        }
        tokio::time::sleep(POLICY_SETTLE).await;
    }
}
