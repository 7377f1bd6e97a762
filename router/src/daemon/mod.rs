//! The router's event loop: feeds [`Mesh`] with connection events and messages, executes its
//! actions on the QUIC transport, and publishes status and metrics.
//!
//! One task owns the mesh. Everything else (accepting, dialling, per-connection readers and
//! writers, resolving `--peer` names) runs in small tasks that report back over one channel,
//! so the mesh sees events strictly in order and never blocks on the network.

use crate::api::{self, ApiCommand};
use crate::cli::RouterArgs;
use crate::dataplane::DataPlane;
use crate::identity::{self, PeerSpec};
use crate::metrics::{HandshakeFailure, Metrics};
use crate::pods::{Gateway, Pods};
use crate::state;
use crate::status::{self, ConnInfo, ConnState, IpamInfo, IpamPeerInfo, PeerInfo, Status};
use crate::transport::{
    self, CloseCode, ConnSender, ConnectError, ConnectionEnd, Incoming, PeerConn, Transport,
    TransportConfig,
};
use anyhow::{bail, Context};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};
use weft_gossip::ipam::IpamConfig;
use weft_gossip::PeerName;
use weft_gossip::{
    Action, CloseReason, ConnId, Failure, Identity, Input, Mesh, Message, TargetSource, TargetState,
};
use weft_sleeve::engine::SessionInfo;

mod config;
mod conns;
mod start;
mod view;
pub use config::{parse_range, RouterConfig};
use conns::{Conn, Event};
pub use start::{reset, run};
use view::base_status;
pub(crate) use view::config_status;

/// Default overlay MTU: a 1500-byte underlay minus encapsulation headroom.
pub const DEFAULT_MTU: u32 = 1376;
/// Queue of outgoing gossip per connection; a peer this far behind is disconnected.
const SEND_QUEUE: usize = 1024;
/// How long a failed inbound handshake stays visible in status.
const INBOUND_FAILURE_TTL: Duration = Duration::from_secs(120);
/// Status rows of failed inbound handshakes (one per source address, the newest kept).
const MAX_INBOUND_ROWS: usize = 16;
/// How often `--peer` host names are resolved again.
const RESOLVE_INTERVAL: Duration = Duration::from_secs(60);
/// Status snapshots are published at most this often.
const STATUS_INTERVAL: Duration = Duration::from_millis(100);
/// Status snapshots are refreshed at least this often.
const STATUS_REFRESH: Duration = Duration::from_secs(1);

struct Loop {
    cfg: RouterConfig,
    transport: Arc<Transport>,
    ev_tx: mpsc::Sender<Event>,
    conns: HashMap<ConnId, Conn>,
    next_id: ConnId,
    /// Recent inbound handshake failures by remote address: (reason, when).
    inbound_failures: BTreeMap<SocketAddr, (String, Instant)>,
    /// Rate limit of the WARN lines about them.
    inbound_log: crate::transport::admission::LogLimiter,
    metrics: Arc<Metrics>,
    started: Instant,
    pods: Pods,
    /// IPAM state changed: write the snapshot.
    ipam_dirty: bool,
    dataplane: DataPlane,
    fastpath: crate::fastpath::Fastpath,
    /// Topology changed: recompute the data plane's routes.
    routes_dirty: bool,
    /// Endpoints or peers changed: rebuild the data plane's MAC table.
    macs_dirty: bool,
    /// `--kube`: the Kubernetes side (peers, pod CIDR, reclaims, policy inputs).
    kube: Option<crate::kube::driver::KubeDriver>,
    /// The policy enforcer, when NetworkPolicy has a source (--manifests or --kube).
    policy: Option<crate::enforcer::PolicyHandle>,
    /// What each pod may send from its port (see [`crate::pod_guard`]).
    guard: crate::pod_guard::PodGuard,
    guard_node: weft_policy::guard::NodePorts,
    /// The address conflicts last logged (each is logged once, when it appears).
    ipam_conflicts_logged: Vec<String>,
    /// `--peer` values have been resolved once (or there are none): until then the router
    /// does not know whom it should be connected to, and is not ready.
    peers_resolved: bool,
    /// Whether the accept loop takes new connections (the mesh's connection limit).
    accepting: Arc<AtomicBool>,
    /// Where the status snapshots go (the status API reads them).
    status_tx: watch::Sender<Arc<Status>>,
}

impl Loop {
    /// The event loop: one input at a time (a helper task's event, a timer, an API command,
    /// a Kubernetes view, a fastpath switch), then what follows from it, until a signal.
    async fn run(
        &mut self,
        mut mesh: Mesh,
        mut ev_rx: mpsc::Receiver<Event>,
        mut api_rx: mpsc::Receiver<ApiCommand>,
    ) -> anyhow::Result<()> {
        use tokio::signal::unix::{signal, SignalKind};
        let mut sigterm = signal(SignalKind::terminate())?;
        let mut sigint = signal(SignalKind::interrupt())?;
        // The status snapshot is rebuilt after changes (at most every STATUS_INTERVAL) and
        // at least every STATUS_REFRESH (uptime, retry countdowns).
        let mut last_status = Instant::now() - STATUS_REFRESH;
        let mut dirty = true;
        loop {
            let deadline = mesh.poll_timeout();
            let status_due = last_status
                + if dirty {
                    STATUS_INTERVAL
                } else {
                    STATUS_REFRESH
                };
            tokio::select! {
                ev = ev_rx.recv() => {
                    let Some(ev) = ev else { break };
                    let actions = self.event(&mut mesh, ev, Instant::now());
                    self.execute(actions);
                    dirty = true;
                }
                _ = tokio::time::sleep_until(deadline.min(status_due).into()) => {
                    let now = Instant::now();
                    if now >= deadline {
                        let actions = mesh.handle(Input::Tick, now);
                        dirty |= !actions.is_empty();
                        self.execute(actions);
                    }
                }
                Some(cmd) = api_rx.recv() => {
                    let now = Instant::now();
                    let mut actions = self.pods.handle(&mut mesh, cmd, now);
                    // IPAM calls outside `handle` leave their gossip for the next tick: flush it.
                    actions.extend(mesh.handle(Input::Tick, now));
                    self.execute(actions);
                    dirty = true;
                }
                _ = crate::kube::driver::next_view(&mut self.kube) => {
                    let now = Instant::now();
                    let actions = self.kube.as_mut().map(|k| k.on_view(&mut mesh, now));
                    self.execute(actions.unwrap_or_default());
                    dirty = true;
                }
                _ = self.fastpath.switched() => dirty = true,
                _ = sigint.recv() => { info!("interrupted, shutting down"); break }
                _ = sigterm.recv() => { info!("terminated, shutting down"); break }
            }
            self.accepting
                .store(mesh.accepts_inbound(), Ordering::Relaxed);
            let now = Instant::now();
            self.follow_up(&mut mesh, now);
            if now >= status_due {
                self.publish_status(&mut mesh, now);
                last_status = now;
                dirty = false;
            }
        }
        Ok(())
    }

    /// What follows any input: the gateway, the Kubernetes side, the IPAM file, the pod
    /// guard, and the data plane's routes and MAC table, each when it changed.
    fn follow_up(&mut self, mesh: &mut Mesh, now: Instant) {
        if let Some(gw) = self.pods.gateway_step(mesh, now) {
            let bridge = self.cfg.bridge.clone();
            let tx = self.ev_tx.clone();
            tokio::spawn(async move {
                let r = weft_fastpath::set_gateway(&bridge, gw)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string());
                let _ = tx.send(Event::GatewaySet(gw, r)).await;
            });
        }
        if let Some(k) = self.kube.as_mut() {
            let ready = matches!(self.pods.core.gateway, Gateway::Ready(_));
            let actions = k.tick(mesh, ready, now);
            self.execute(actions);
        }
        if std::mem::take(&mut self.ipam_dirty) && self.pods.save_ipam(mesh).is_err() {
            // Written again on the next change; the ADDs that need it fail meanwhile.
            self.ipam_dirty = true;
        }
        if std::mem::take(&mut self.pods.core.guard_dirty) {
            self.update_guard();
        }
        if std::mem::take(&mut self.routes_dirty) {
            self.dataplane.update_routes(mesh);
        }
        if let Some(p) = self.policy.as_ref().filter(|_| self.macs_dirty) {
            p.set_endpoints(
                self.cfg.identity.name,
                &self.pods.core.gossip_endpoints(),
                &mesh.endpoints(),
            );
        }
        if std::mem::take(&mut self.macs_dirty) {
            self.dataplane.update_macs(mesh);
            self.fastpath
                .send(crate::fastpath::Cmd::Claims(crate::dataplane::mac_claims(
                    mesh,
                )));
        }
    }

    /// Builds the status snapshot, updates the metrics that follow from it and publishes it.
    fn publish_status(&mut self, mesh: &mut Mesh, now: Instant) {
        self.refresh_pod_mtu();
        let mut st = self.status(mesh, now);
        st.policy = self.policy.as_ref().and_then(|p| p.summary());
        st.kube = self.kube.as_ref().map(|k| k.status());
        st.pod_guard = Some(self.guard.view());
        st.not_ready = self.not_ready(&st);
        self.update_metrics(mesh, &st);
        self.log_ipam_conflicts(&st.ipam);
        self.status_tx.send_replace(Arc::new(st));
    }

    /// Closes every connection, then the transport and the data plane; removes the socket.
    async fn shutdown(&mut self) {
        for c in self.conns.values() {
            c.handle.close(CloseCode::NORMAL, "router shutting down");
        }
        self.transport.shutdown().await;
        self.dataplane.stop();
        let _ = std::fs::remove_file(&self.cfg.api_socket);
    }

    /// Logs address conflicts after a partition once each, when they appear, and once when
    /// they are all gone.
    fn log_ipam_conflicts(&mut self, ipam: &crate::status::IpamInfo) {
        if ipam.conflicts == self.ipam_conflicts_logged {
            return;
        }
        for c in ipam
            .conflicts
            .iter()
            .filter(|c| !self.ipam_conflicts_logged.contains(c))
        {
            warn!(conflict = %c, "IPAM: pod addresses held twice after a partition");
        }
        if ipam.conflicts.is_empty() {
            info!("IPAM: no address is held twice any more");
        }
        self.ipam_conflicts_logged = ipam.conflicts.clone();
    }

    /// Hands the guard task the ports of the current endpoints; attachments waiting for it are
    /// answered once it is in force.
    fn update_guard(&mut self) {
        let done = std::mem::take(&mut self.pods.guard_waiters)
            .into_iter()
            .map(|reply| -> crate::pod_guard::Done {
                Box::new(move |r: Result<(), String>| {
                    let _ = reply.send(r.map_err(|e| {
                        api::ApiError::new(
                            api::code::TRY_AGAIN_LATER,
                            format!("cannot guard the pod's port: {e}"),
                        )
                    }));
                })
            })
            .collect();
        self.guard.set(
            weft_policy::guard::Guard {
                node: self.guard_node.clone(),
                ports: self.pods.core.guard_ports(),
            },
            done,
        );
    }
}
