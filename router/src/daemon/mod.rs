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

/// Default overlay MTU: a 1500-byte underlay minus encapsulation headroom.
mod view;
use view::base_status;
pub(crate) use view::config_status;

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

/// Everything `weft router` needs, resolved from flags and environment.
pub struct RouterConfig {
    pub identity: Identity,
    pub psk: Option<[u8; 32]>,
    pub listen: SocketAddr,
    pub status_addr: SocketAddr,
    pub metrics_addr: Option<SocketAddr>,
    pub api_socket: PathBuf,
    pub peers: Vec<PeerSpec>,
    pub mesh: weft_gossip::Config,
    pub mtu: u32,
    pub ipalloc_range: ipnet::Ipv4Net,
    pub state_dir: PathBuf,
    /// `--manifests DIR`: the policy enforcer's source.
    pub manifests: Option<PathBuf>,
    pub bridge: String,
    /// UDP port of the sleeve (the same on every node).
    pub sleeve_port: u16,
    /// Whether `--mtu` was given (then pods get exactly it).
    pub mtu_fixed: bool,
    /// `--no-fastpath`.
    pub no_fastpath: bool,
    /// UDP port of the VXLAN fastpath.
    pub vxlan_port: u16,
    /// `--kube`: this node's Node name.
    pub kube: Option<String>,
}

impl RouterConfig {
    /// Validates flags; reads the password (never logged). See [`crate::startup`] for the
    /// router's own start, which waits for a password file instead of failing on it.
    pub fn from_args(a: &RouterArgs) -> anyhow::Result<RouterConfig> {
        let mut cfg = Self::from_args_except_password(a)?;
        let password = transport::read_password(
            a.password_file.as_deref(),
            std::env::var(transport::PASSWORD_ENV).ok(),
        )
        .context("reading the network password")?;
        cfg.set_password(password.as_deref().map(Vec::as_slice), &a.cluster);
        Ok(cfg)
    }

    /// Sets the Noise PSK from the network password (`None`: no password, no encryption).
    pub fn set_password(&mut self, password: Option<&[u8]>, cluster: &str) {
        self.psk = password.map(|p| transport::derive_psk(p, cluster));
    }

    /// Validates every flag except the password; the result has no PSK yet.
    pub fn from_args_except_password(a: &RouterArgs) -> anyhow::Result<RouterConfig> {
        // --kube: the Node name gives the peer name and nickname unless flags say otherwise
        let kube = match (a.kube, &a.manifests) {
            (true, Some(_)) => bail!("--kube and --manifests both give NetworkPolicies: use one (--kube takes them from the API)"),
            (true, None) => Some(crate::kube::node_name_from_env()?),
            (false, _) => None,
        };
        let kube_name = kube
            .as_deref()
            .map(|n| crate::kube::peer_name_for_node(n).to_string());
        if let Some(d) = &a.manifests {
            if !d.is_dir() {
                bail!("--manifests {}: not a directory", d.display());
            }
        }
        let identity = identity::identity(
            a.name.as_deref().or(kube_name.as_deref()),
            a.nickname.as_deref().or(kube.as_deref()),
        )?;
        let metrics_addr = match a.metrics_addr.as_str() {
            "off" | "" => None,
            s => Some(
                s.parse()
                    .with_context(|| format!("--metrics-addr {s:?} is not HOST:PORT or \"off\""))?,
            ),
        };
        let range = parse_range(&a.ipalloc_range)?;
        let mtu = a.mtu.unwrap_or(DEFAULT_MTU);
        if !(576..=65_000).contains(&mtu) {
            bail!("--mtu {mtu} is out of range (576..=65000)");
        }
        if a.conn_limit == 0 {
            bail!("--conn-limit must be at least 1");
        }
        let peers = a
            .peers
            .iter()
            .map(|p| PeerSpec::parse(p))
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(RouterConfig {
            identity,
            psk: None,
            listen: a.listen,
            status_addr: a.status_addr,
            metrics_addr,
            api_socket: a.api_socket.clone(),
            peers,
            mesh: weft_gossip::Config {
                conn_limit: a.conn_limit,
                discovery: !a.no_discovery,
                ipam: Some(IpamConfig::new(range)),
                ..Default::default()
            },
            mtu,
            ipalloc_range: range,
            state_dir: a.state_dir.clone(),
            manifests: a.manifests.clone(),
            bridge: weft_fastpath::node::DEFAULT_BRIDGE.to_string(),
            sleeve_port: a.sleeve_port,
            no_fastpath: a.no_fastpath,
            vxlan_port: a.vxlan_port,
            mtu_fixed: a.mtu.is_some(),
            kube,
        })
    }
}

/// `--ipalloc-range`: an IPv4 CIDR (host bits ignored) that IPAM can split into blocks.
pub fn parse_range(s: &str) -> anyhow::Result<ipnet::Ipv4Net> {
    let s = s.trim();
    let net: ipnet::Ipv4Net = s
        .parse()
        .with_context(|| format!("--ipalloc-range {s:?} is not an IPv4 CIDR like 10.32.0.0/12"))?;
    let net = net.trunc();
    IpamConfig::new(net)
        .space()
        .with_context(|| format!("--ipalloc-range {s:?}"))?;
    Ok(net)
}

/// `weft router --reset`: removes the node plumbing, the nftables table and the state files.
pub async fn reset(a: &RouterArgs) -> anyhow::Result<()> {
    let node = weft_fastpath::NodeConfig::default();
    let vxlan = weft_fastpath::vxlan::remove_vxlan(crate::fastpath::VXLAN_IFNAME)
        .await
        .context("removing the VXLAN device")?;
    let mut removed = weft_fastpath::node::reset(&node)
        .await
        .context("removing the node's interfaces")?;
    if vxlan {
        removed.push(crate::fastpath::VXLAN_IFNAME.to_string());
    }
    tokio::task::spawn_blocking(crate::masq::remove).await??;
    tokio::task::spawn_blocking(crate::vxlan_guard::remove).await??;
    tokio::task::spawn_blocking(crate::enforcer::remove_table).await??;
    tokio::task::spawn_blocking(|| {
        weft_policy::Nft::new().apply_script(&weft_policy::guard::Guard::removal())
    })
    .await?
    .context("removing the pod guard tables")?;
    for f in [
        state::IPAM_FILE,
        state::ENDPOINTS_FILE,
        crate::kube::nodes::CACHE_FILE,
    ] {
        match std::fs::remove_file(a.state_dir.join(f)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {f}")),
        }
    }
    println!(
        "weft reset: removed {} interface(s){}, the nftables tables {}, {}, inet weft-policy, bridge weft-pods and inet weft-node, and the state in {}",
        removed.len(),
        if removed.is_empty() {
            String::new()
        } else {
            format!(" ({})", removed.join(", "))
        },
        crate::masq::TABLE,
        crate::vxlan_guard::TABLE,
        a.state_dir.display()
    );
    Ok(())
}

/// What the helper tasks report to the loop.
enum Event {
    Established(Box<PeerConn>),
    DialFailed(SocketAddr, ConnectError),
    InboundFailed(SocketAddr, ConnectError),
    Message(ConnId, Message),
    Closed(ConnId, ConnectionEnd),
    Resolved(Vec<SocketAddr>),
    GatewaySet(ipnet::Ipv4Net, Result<(), String>),
}

/// What the loop keeps of a connection: its gossip queue and a handle to close it. The
/// connection itself is owned by its reader task.
struct Conn {
    queue: mpsc::Sender<Message>,
    handle: ConnSender,
}

/// Runs the router until SIGINT/SIGTERM.
pub async fn run(cfg: RouterConfig) -> anyhow::Result<()> {
    let started = Instant::now();
    let me = cfg.identity.clone();
    let transport = Arc::new(
        Transport::bind(TransportConfig::new(cfg.listen, me.clone(), cfg.psk))
            .with_context(|| format!("binding the control port {}", cfg.listen))?,
    );
    std::fs::create_dir_all(&cfg.state_dir)
        .with_context(|| format!("creating the state directory {}", cfg.state_dir.display()))?;
    let leftovers = state::tidy(&cfg.state_dir);
    if !leftovers.is_empty() {
        info!(
            ?leftovers,
            "removed temporary files of an interrupted state write"
        );
    }
    let node = weft_fastpath::NodeConfig {
        bridge: cfg.bridge.clone(),
        mtu: cfg.mtu,
        // The peer name is a locally administered unicast MAC, stable across restarts: pods
        // keep a valid gateway MAC in their ARP caches when the router restarts.
        bridge_mac: Some(crate::dataplane::mac_of(me.name)),
        ..Default::default()
    };
    weft_fastpath::setup_node(&node)
        .await
        .with_context(|| format!("setting up the node bridge {}", cfg.bridge))?;
    let dataplane = DataPlane::start(me.name, &node.tap, cfg.sleeve_port, cfg.psk.is_some());
    let range = cfg.ipalloc_range;
    match tokio::task::spawn_blocking(move || {
        crate::masq::apply(range.network(), range.prefix_len())
    })
    .await?
    {
        Ok(()) => info!(%range, "masquerading pod traffic that leaves the range"),
        Err(e) => {
            warn!(error = %format!("{e:#}"), "no masquerade: pods cannot reach outside the range")
        }
    }
    info!(
        name = %me.name, nickname = %me.nickname, uid = %me.uid,
        listen = %transport.local_addr(),
        encryption = cfg.psk.is_some(),
        "weft router starting"
    );
    if cfg.psk.is_none() {
        warn!("no network password (--password-file or WEFT_PASSWORD): peers are not authenticated and traffic is not encrypted");
    }

    let metrics = Metrics::new();
    if let Some(r) = dataplane.stats_reader() {
        metrics.watch_sleeve(r);
    }
    // --kube: peers, this node's pod CIDR and the policy inputs from the API (kube::driver)
    let mut kube = match &cfg.kube {
        Some(node) => Some(
            crate::kube::driver::KubeDriver::start(crate::kube::driver::DriverConfig {
                node: node.clone(),
                me: me.name,
                listen: cfg.listen,
                range: cfg.ipalloc_range,
                state_dir: cfg.state_dir.clone(),
                has_peers: !cfg.peers.is_empty(),
                watch_policy: true,
            })
            .await?,
        ),
        None => None,
    };
    // Policy enforcer: NetworkPolicy from --manifests; without a source, no stale table.
    let policy = match &cfg.manifests {
        Some(dir) => Some(crate::enforcer::start(
            crate::enforcer::Source::Manifests(dir.clone()),
            metrics.policy.clone(),
        )?),
        None if kube.is_some() => {
            let p = crate::enforcer::start(crate::enforcer::Source::Fed, metrics.policy.clone())?;
            kube.iter_mut().for_each(|k| k.feed_policy(p.inputs()));
            Some(p)
        }
        None => {
            if let Err(e) = tokio::task::spawn_blocking(crate::enforcer::remove_table).await? {
                debug!(error = %format!("{e:#}"), "no policy table removed");
            }
            None
        }
    };
    let fastpath = crate::fastpath::Fastpath::start(
        crate::fastpath::FastpathConfig {
            me: me.name,
            bridge: cfg.bridge.clone(),
            tap: node.tap.clone(),
            mtu: cfg.mtu,
            port: cfg.vxlan_port,
            encrypted: cfg.psk.is_some(),
            disabled: cfg.no_fastpath,
        },
        metrics.clone(),
    )
    .await;
    let (status_tx, status_rx) = watch::channel(Arc::new(base_status(&cfg, &transport)));
    let (api_tx, mut api_rx) = mpsc::channel::<ApiCommand>(256);
    let api = status::api_router(status_rx.clone())
        .merge(api::policy_router(policy.as_ref().map(|p| p.view())));
    let status_listener = tokio::net::TcpListener::bind(cfg.status_addr)
        .await
        .with_context(|| format!("binding the status API on {}", cfg.status_addr))?;
    tokio::spawn(status::serve_tcp(
        status_listener,
        api.clone().merge(api::admin_refusal(&cfg.api_socket)),
    ));
    let api = api.merge(api::admin_router(api_tx.clone()));
    let unix = status::bind_unix(&cfg.api_socket)
        .with_context(|| format!("binding the API socket {}", cfg.api_socket.display()))?;
    // The unix socket also serves /metrics: local tools (and tests in namespaces) read
    // it there whatever --metrics-addr says.
    tokio::spawn(status::serve_unix_listener(
        unix,
        api.clone()
            .merge(api::cni_router(api_tx.clone()))
            .merge(crate::metrics::metrics_router(metrics.clone())),
    ));
    if let Some(addr) = cfg.metrics_addr {
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the metrics endpoint on {addr}"))?;
        tokio::spawn(status::serve_tcp(
            l,
            crate::metrics::metrics_router(metrics.clone()),
        ));
    }

    let seed = identity::os_random_u64();
    let mut mesh = Mesh::new(me.clone(), cfg.mesh.clone(), seed, Instant::now());
    if let Some(snap) = state::read(&cfg.state_dir, state::IPAM_FILE)? {
        mesh.restore_ipam(&snap, Instant::now()).with_context(|| {
            format!(
                "restoring IPAM state from {} (move it away to start afresh: addresses in use by pods here may then be handed out twice)",
                cfg.state_dir.join(state::IPAM_FILE).display()
            )
        })?;
        info!("IPAM state restored");
    }
    if let Some(k) = kube.as_mut() {
        k.init_ipam(&mut mesh, Instant::now());
    }
    let endpoints = state::load_endpoints(&cfg.state_dir)?;
    let pods = Pods::new(
        cfg.bridge.clone(),
        cfg.mtu,
        cfg.state_dir.clone(),
        endpoints,
    );
    let initial = mesh.set_local_endpoints(pods.core.gossip_endpoints(), Instant::now());
    let guard_node = guard_node_ports(&cfg);
    let (guard, first) = crate::pod_guard::PodGuard::start(
        weft_policy::guard::Guard {
            node: guard_node.clone(),
            ports: pods.core.guard_ports(),
        },
        weft_policy::Nft::new(),
    )
    .await;
    if let Err(e) = first {
        warn!(error = %e, "the pod guard is not in force: no pod can be attached until it is (retrying)");
    }
    let (ev_tx, mut ev_rx) = mpsc::channel::<Event>(4096);
    let accepting = Arc::new(AtomicBool::new(true));
    tokio::spawn(accept_loop(
        transport.clone(),
        ev_tx.clone(),
        accepting.clone(),
        metrics.clone(),
    ));
    tokio::spawn(resolve_loop(cfg.peers.clone(), ev_tx.clone()));

    let mut lp = Loop {
        cfg,
        transport: transport.clone(),
        ev_tx,
        conns: HashMap::new(),
        next_id: 1,
        inbound_failures: BTreeMap::new(),
        inbound_log: Default::default(),
        metrics,
        started,
        pods,
        ipam_dirty: false,
        dataplane,
        fastpath,
        routes_dirty: true,
        macs_dirty: true,
        kube,
        guard,
        guard_node,
        ipam_conflicts_logged: Vec::new(),
        peers_resolved: false,
    };
    use tokio::signal::unix::{signal, SignalKind};
    lp.execute(initial);
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    // The status snapshot is rebuilt after changes (at most every STATUS_INTERVAL) and at
    // least every STATUS_REFRESH (uptime, retry countdowns).
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
                let actions = lp.event(&mut mesh, ev, Instant::now());
                lp.execute(actions);
                dirty = true;
            }
            _ = tokio::time::sleep_until(deadline.min(status_due).into()) => {
                let now = Instant::now();
                if now >= deadline {
                    let actions = mesh.handle(Input::Tick, now);
                    dirty |= !actions.is_empty();
                    lp.execute(actions);
                }
            }
            Some(cmd) = api_rx.recv() => {
                let now = Instant::now();
                let mut actions = lp.pods.handle(&mut mesh, cmd, now);
                // IPAM calls outside `handle` leave their gossip for the next tick: flush it.
                actions.extend(mesh.handle(Input::Tick, now));
                lp.execute(actions);
                dirty = true;
            }
            _ = crate::kube::driver::next_view(&mut lp.kube) => {
                let now = Instant::now();
                let actions = lp.kube.as_mut().map(|k| k.on_view(&mut mesh, now));
                lp.execute(actions.unwrap_or_default());
                dirty = true;
            }
            _ = lp.fastpath.switched() => dirty = true,
            _ = sigint.recv() => { info!("interrupted, shutting down"); break }
            _ = sigterm.recv() => { info!("terminated, shutting down"); break }
        }
        accepting.store(mesh.accepts_inbound(), Ordering::Relaxed);
        let now = Instant::now();
        if let Some(gw) = lp.pods.gateway_step(&mut mesh, now) {
            let bridge = lp.cfg.bridge.clone();
            let tx = lp.ev_tx.clone();
            tokio::spawn(async move {
                let r = weft_fastpath::set_gateway(&bridge, gw)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string());
                let _ = tx.send(Event::GatewaySet(gw, r)).await;
            });
        }
        if let Some(k) = lp.kube.as_mut() {
            let ready = matches!(lp.pods.core.gateway, Gateway::Ready(_));
            let actions = k.tick(&mut mesh, ready, now);
            lp.execute(actions);
        }
        if std::mem::take(&mut lp.ipam_dirty) && lp.pods.save_ipam(&mesh).is_err() {
            // Written again on the next change; the ADDs that need it fail meanwhile.
            lp.ipam_dirty = true;
        }
        if std::mem::take(&mut lp.pods.core.guard_dirty) {
            lp.update_guard();
        }
        if std::mem::take(&mut lp.routes_dirty) {
            lp.dataplane.update_routes(&mut mesh);
        }
        if let Some(p) = policy.as_ref().filter(|_| lp.macs_dirty) {
            p.set_endpoints(me.name, &lp.pods.core.gossip_endpoints(), &mesh.endpoints());
        }
        if std::mem::take(&mut lp.macs_dirty) {
            lp.dataplane.update_macs(&mesh);
            lp.fastpath
                .send(crate::fastpath::Cmd::Claims(crate::dataplane::mac_claims(
                    &mesh,
                )));
        }
        if now >= status_due {
            lp.refresh_pod_mtu();
            let mut st = lp.status(&mut mesh, now);
            st.policy = policy.as_ref().and_then(|p| p.summary());
            st.kube = lp.kube.as_ref().map(|k| k.status());
            st.pod_guard = Some(lp.guard.view());
            st.not_ready = lp.not_ready(&st);
            lp.update_metrics(&mesh, &st);
            lp.log_ipam_conflicts(&st.ipam);
            status_tx.send_replace(Arc::new(st));
            last_status = now;
            dirty = false;
        }
    }
    for c in lp.conns.values() {
        c.handle.close(CloseCode::NORMAL, "router shutting down");
    }
    transport.shutdown().await;
    lp.dataplane.stop();
    let _ = std::fs::remove_file(&lp.cfg.api_socket);
    Ok(())
}

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
    /// What each pod may send from its port (see [`crate::pod_guard`]).
    guard: crate::pod_guard::PodGuard,
    guard_node: weft_policy::guard::NodePorts,
    /// The address conflicts last logged (each is logged once, when it appears).
    ipam_conflicts_logged: Vec<String>,
    /// `--peer` values have been resolved once (or there are none): until then the router
    /// does not know whom it should be connected to, and is not ready.
    peers_resolved: bool,
}

/// The router's own ports, shut to everything arriving through the node bridge.
fn guard_node_ports(cfg: &RouterConfig) -> weft_policy::guard::NodePorts {
    weft_policy::guard::NodePorts {
        bridge: cfg.bridge.clone(),
        udp: vec![cfg.listen.port(), cfg.sleeve_port, cfg.vxlan_port],
        tcp: std::iter::once(cfg.status_addr.port())
            .chain(cfg.metrics_addr.map(|a| a.port()))
            .collect(),
    }
}

impl Loop {
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

    fn event(&mut self, mesh: &mut Mesh, ev: Event, now: Instant) -> Vec<Action> {
        match ev {
            Event::Established(mut pc) => {
                let id = self.next_id;
                self.next_id += 1;
                let (addr, outbound, peer) = (pc.remote, pc.outbound, pc.peer.clone());
                info!(peer = %peer.name, nickname = %peer.nickname, %addr, outbound, "connection established");
                self.inbound_failures.remove(&addr);
                self.dataplane
                    .connection_up(id, peer.name, addr, outbound, &pc.secrets);
                let (tx, rx) = mpsc::channel(SEND_QUEUE);
                let handle = pc.sender();
                if let Some(link) = pc.take_link_receiver() {
                    self.fastpath.send(crate::fastpath::Cmd::PeerUp {
                        conn: id,
                        peer: peer.name,
                        remote: addr,
                        outbound,
                        secrets: Box::new(pc.secrets.clone()),
                        sender: handle.clone(),
                        link,
                    });
                }
                tokio::spawn(writer(handle.clone(), rx));
                tokio::spawn(reader(id, *pc, self.ev_tx.clone()));
                self.conns.insert(id, Conn { queue: tx, handle });
                mesh.handle(
                    Input::ConnectionEstablished {
                        conn: id,
                        addr,
                        outbound,
                        peer,
                    },
                    now,
                )
            }
            Event::DialFailed(addr, ConnectError::SelfConnection) => {
                debug!(%addr, "the address is this router's own; not dialled again");
                mesh.handle(Input::DialedSelf { addr }, now)
            }
            Event::DialFailed(addr, err) => {
                let failure = err.to_failure();
                self.count_failure(&err);
                info!(%addr, reason = %failure.detail, "connection attempt failed");
                mesh.handle(Input::ConnectFailed { addr, failure }, now)
            }
            Event::InboundFailed(addr, err) => {
                self.count_failure(&err);
                let failure = err.to_failure();
                match self.inbound_log.allow(addr.ip(), now) {
                    Some(0) => warn!(%addr, reason = %failure.detail, "refused inbound connection"),
                    Some(n) => {
                        warn!(%addr, reason = %failure.detail, not_logged = n, "refused inbound connection (and {n} more not logged)")
                    }
                    None => debug!(%addr, reason = %failure.detail, "refused inbound connection"),
                }
                // One status row per source address, at most MAX_INBOUND_ROWS.
                self.inbound_failures.retain(|a, _| a.ip() != addr.ip());
                if self.inbound_failures.len() >= MAX_INBOUND_ROWS {
                    if let Some(oldest) = self
                        .inbound_failures
                        .iter()
                        .min_by_key(|(_, (_, t))| *t)
                        .map(|(a, _)| *a)
                    {
                        self.inbound_failures.remove(&oldest);
                    }
                }
                self.inbound_failures.insert(addr, (failure.detail, now));
                Vec::new()
            }
            Event::Message(id, msg) => {
                if self.conns.contains_key(&id) {
                    mesh.handle(Input::Message { conn: id, msg }, now)
                } else {
                    Vec::new()
                }
            }
            Event::Closed(id, end) => {
                if self.conns.remove(&id).is_none() {
                    return Vec::new();
                }
                self.dataplane.connection_down(id);
                self.fastpath
                    .send(crate::fastpath::Cmd::PeerDown { conn: id });
                let reason: Option<Failure> = end.to_failure();
                match &reason {
                    Some(f) => info!(conn = id, reason = %f.detail, "connection lost"),
                    None => debug!(conn = id, "connection closed"),
                }
                if matches!(end, ConnectionEnd::Protocol(_)) {
                    self.metrics.decode_error();
                }
                mesh.handle(Input::ConnectionClosed { conn: id, reason }, now)
            }
            Event::Resolved(addrs) => {
                self.peers_resolved = true;
                match self.kube.as_mut() {
                    Some(k) => k.set_resolved(mesh, addrs, now),
                    None => mesh.set_targets(&addrs, now),
                }
            }
            Event::GatewaySet(net, result) => {
                self.pods.core.gateway_set(net, result);
                Vec::new()
            }
        }
    }

    fn count_failure(&self, err: &ConnectError) {
        let reason = match err {
            ConnectError::PasswordMismatch(_) => HandshakeFailure::PasswordMismatch,
            e => HandshakeFailure::from(&e.to_failure().kind),
        };
        self.metrics.handshake_failure(reason);
    }

    fn execute(&mut self, actions: Vec<Action>) {
        for a in actions {
            match a {
                Action::Connect { addr } => {
                    let t = self.transport.clone();
                    let tx = self.ev_tx.clone();
                    tokio::spawn(async move {
                        let ev = match t.dial(addr).await {
                            Ok(pc) => Event::Established(Box::new(pc)),
                            Err(e) => Event::DialFailed(addr, e),
                        };
                        let _ = tx.send(ev).await;
                    });
                }
                Action::Send { conn, msg } => {
                    tracing::trace!(conn, ?msg, "gossip send");
                    if let Some(c) = self.conns.get(&conn) {
                        match c.queue.try_send(msg) {
                            Ok(()) => {}
                            Err(mpsc::error::TrySendError::Full(_)) => {
                                warn!(conn, "peer is not keeping up with gossip; disconnecting");
                                c.handle
                                    .close(CloseCode::PROTOCOL, "gossip send queue overflow");
                            }
                            // The writer ended (connection closing): the reader reports it.
                            Err(mpsc::error::TrySendError::Closed(_)) => {}
                        }
                    }
                }
                Action::Close { conn, reason } => {
                    if let Some(c) = self.conns.get(&conn) {
                        let code = match reason {
                            CloseReason::ConnLimit | CloseReason::SameNameAsUs => {
                                CloseCode::REFUSED
                            }
                            CloseReason::DuplicateName => CloseCode::DUPLICATE_NAME,
                            CloseReason::Protocol => CloseCode::PROTOCOL,
                            CloseReason::Duplicate | CloseReason::SelfConnection => {
                                CloseCode::NORMAL
                            }
                        };
                        if matches!(
                            reason,
                            CloseReason::DuplicateName | CloseReason::SameNameAsUs
                        ) {
                            warn!(conn, "refusing a router that uses a peer name already in use here (see status: identity conflicts)");
                        } else {
                            debug!(conn, reason = reason.as_str(), "closing connection");
                        }
                        c.handle.close(code, reason.as_str());
                    }
                }
                Action::IpamChanged => self.ipam_dirty = true,
                Action::TopologyChanged => {
                    self.routes_dirty = true;
                    self.macs_dirty = true;
                }
                Action::EndpointsChanged => self.macs_dirty = true,
            }
        }
    }
}

/// Accepts inbound connections. Refuses them while the mesh is at its connection limit;
/// validates the dialer's address with a stateless Retry before keeping anything, and bounds
/// the unauthenticated handshakes running at once, per source and in all (each holds memory
/// for up to the handshake timeout): see [`crate::transport::admission`].
async fn accept_loop(
    t: Arc<Transport>,
    tx: mpsc::Sender<Event>,
    accepting: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
) {
    use crate::transport::admission::{Admission, Verdict};
    let admission = Arc::new(std::sync::Mutex::new(Admission::default()));
    while let Some(inc) = t.accept().await {
        if !accepting.load(Ordering::Relaxed) {
            debug!(remote = %inc.remote(), "connection limit reached; refusing");
            inc.refuse();
            continue;
        }
        let remote = inc.remote();
        let verdict = admission
            .lock()
            .expect("admission lock")
            .on_incoming(remote.ip(), inc.validated());
        match verdict {
            Verdict::Retry => {
                metrics.inbound_attempt("retry");
                inc.retry();
                continue;
            }
            Verdict::Refuse(why) => {
                metrics.inbound_attempt("refused");
                debug!(%remote, why, "refusing a connection attempt");
                inc.refuse();
                continue;
            }
            Verdict::Admit => metrics.inbound_attempt("admitted"),
        }
        metrics.inbound_handshakes.inc();
        let tx = tx.clone();
        let admission = admission.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let ev = match Incoming::complete(inc).await {
                Ok(pc) => Event::Established(Box::new(pc)),
                Err(e) => Event::InboundFailed(remote, e),
            };
            admission.lock().expect("admission lock").done(remote.ip());
            metrics.inbound_handshakes.dec();
            let _ = tx.send(ev).await;
        });
    }
}

/// Resolves `--peer` values now and every [`RESOLVE_INTERVAL`]; sends the set when it changes.
async fn resolve_loop(peers: Vec<PeerSpec>, tx: mpsc::Sender<Event>) {
    let mut last: Option<Vec<SocketAddr>> = None;
    loop {
        let mut addrs = Vec::new();
        let mut unresolved = false;
        for p in &peers {
            match p.resolve().await {
                Ok(a) => addrs.extend(a),
                Err(e) => {
                    unresolved = true;
                    warn!(peer = %p.host, error = %e, "cannot resolve peer");
                }
            }
        }
        addrs.sort();
        addrs.dedup();
        if last.as_ref() != Some(&addrs) {
            if tx.send(Event::Resolved(addrs.clone())).await.is_err() {
                return;
            }
            last = Some(addrs);
        }
        let wait = if unresolved {
            Duration::from_secs(5)
        } else {
            RESOLVE_INTERVAL
        };
        tokio::time::sleep(wait).await;
    }
}

async fn reader(id: ConnId, mut pc: PeerConn, tx: mpsc::Sender<Event>) {
    loop {
        match pc.recv().await {
            Ok(msg) => {
                if tx.send(Event::Message(id, msg)).await.is_err() {
                    return;
                }
            }
            Err(end) => {
                let _ = tx.send(Event::Closed(id, end)).await;
                return;
            }
        }
    }
}

async fn writer(sender: ConnSender, mut rx: mpsc::Receiver<Message>) {
    while let Some(msg) = rx.recv().await {
        if let Err(e) = sender.send(&msg).await {
            debug!(error = %e, "gossip send failed");
            return;
        }
    }
}
