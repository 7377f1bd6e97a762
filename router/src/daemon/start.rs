//! The router's start: each subsystem brought up in order, then the event loop; and
//! `weft router --reset`.

use super::conns::{accept_loop, resolve_loop};
use super::*;

/// Runs the router until SIGINT/SIGTERM: starts each subsystem, then the event loop.
pub async fn run(cfg: RouterConfig) -> anyhow::Result<()> {
    let started = Instant::now();
    let (transport, node) = prepare_node(&cfg).await?;
    let dataplane = DataPlane::start(
        cfg.identity.name,
        &node.tap,
        cfg.sleeve_port,
        cfg.psk.is_some(),
    );
    apply_masquerade(cfg.ipalloc_range).await?;
    log_start(&cfg, &transport);

    let metrics = Metrics::new();
    if let Some(r) = dataplane.stats_reader() {
        metrics.watch_sleeve(r);
    }
    let mut kube = start_kube(&cfg).await?;
    let policy = start_policy(&cfg, &metrics, kube.as_mut()).await?;
    let fastpath = start_fastpath(&cfg, &node, &metrics).await;
    let (status_tx, status_rx) = watch::channel(Arc::new(base_status(&cfg, &transport)));
    let (api_tx, api_rx) = mpsc::channel::<ApiCommand>(256);
    serve_apis(&cfg, status_rx, api_tx, policy.as_ref(), &metrics).await?;

    let mut mesh = restore_mesh(&cfg, kube.as_mut())?;
    let pods = Pods::new(
        cfg.bridge.clone(),
        cfg.mtu,
        cfg.state_dir.clone(),
        state::load_endpoints(&cfg.state_dir)?,
    );
    let initial = mesh.set_local_endpoints(pods.core.gossip_endpoints(), Instant::now());
    let guard_node = guard_node_ports(&cfg);
    let guard = start_pod_guard(&guard_node, &pods).await;
    let (ev_tx, ev_rx) = mpsc::channel::<Event>(4096);
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
        transport,
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
        policy,
        guard,
        guard_node,
        ipam_conflicts_logged: Vec::new(),
        peers_resolved: false,
        accepting,
        status_tx,
    };
    lp.execute(initial);
    let ended = lp.run(mesh, ev_rx, api_rx).await;
    lp.shutdown().await;
    ended
}

/// The fastpath task (VXLAN, heartbeats, ESP; see crate::fastpath).
async fn start_fastpath(
    cfg: &RouterConfig,
    node: &weft_fastpath::NodeConfig,
    metrics: &Arc<Metrics>,
) -> crate::fastpath::Fastpath {
    crate::fastpath::Fastpath::start(
        crate::fastpath::FastpathConfig {
            me: cfg.identity.name,
            bridge: cfg.bridge.clone(),
            tap: node.tap.clone(),
            mtu: cfg.mtu,
            port: cfg.vxlan_port,
            encrypted: cfg.psk.is_some(),
            disabled: cfg.no_fastpath,
        },
        metrics.clone(),
    )
    .await
}

/// The pod guard, in force for the node's ports and the endpoints of the last run (a
/// failure is retried by the guard task; pods cannot be attached meanwhile).
async fn start_pod_guard(
    node: &weft_policy::guard::NodePorts,
    pods: &Pods,
) -> crate::pod_guard::PodGuard {
    let (guard, first) = crate::pod_guard::PodGuard::start(
        weft_policy::guard::Guard {
            node: node.clone(),
            ports: pods.core.guard_ports(),
        },
        weft_policy::Nft::new(),
    )
    .await;
    if let Err(e) = first {
        warn!(error = %e, "the pod guard is not in force: no pod can be attached until it is (retrying)");
    }
    guard
}

/// Binds the control port, readies the state directory and sets up the node bridge.
async fn prepare_node(
    cfg: &RouterConfig,
) -> anyhow::Result<(Arc<Transport>, weft_fastpath::NodeConfig)> {
    let me = &cfg.identity;
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
    Ok((transport, node))
}

/// Masquerades pod traffic that leaves the range; without it (an error is logged) pods
/// reach only the overlay.
async fn apply_masquerade(range: ipnet::Ipv4Net) -> anyhow::Result<()> {
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
    Ok(())
}

fn log_start(cfg: &RouterConfig, transport: &Transport) {
    let me = &cfg.identity;
    info!(
        name = %me.name, nickname = %me.nickname, uid = %me.uid,
        listen = %transport.local_addr(),
        encryption = cfg.psk.is_some(),
        "weft router starting"
    );
    if cfg.psk.is_none() {
        warn!("no network password (--password-file or WEFT_PASSWORD): peers are not authenticated and traffic is not encrypted");
    }
}

/// `--kube`: peers, this node's pod CIDR and the policy inputs from the API (kube::driver).
async fn start_kube(cfg: &RouterConfig) -> anyhow::Result<Option<crate::kube::driver::KubeDriver>> {
    let Some(node) = &cfg.kube else {
        return Ok(None);
    };
    let driver = crate::kube::driver::KubeDriver::start(crate::kube::driver::DriverConfig {
        node: node.clone(),
        me: cfg.identity.name,
        listen: cfg.listen,
        range: cfg.ipalloc_range,
        state_dir: cfg.state_dir.clone(),
        has_peers: !cfg.peers.is_empty(),
        watch_policy: true,
    })
    .await?;
    Ok(Some(driver))
}

/// The policy enforcer: NetworkPolicy from --manifests, or fed by the Kubernetes driver;
/// without a source, a table left by an earlier run is removed.
async fn start_policy(
    cfg: &RouterConfig,
    metrics: &Metrics,
    kube: Option<&mut crate::kube::driver::KubeDriver>,
) -> anyhow::Result<Option<crate::enforcer::PolicyHandle>> {
    use crate::enforcer::{self, Source};
    if let Some(dir) = &cfg.manifests {
        return Ok(Some(enforcer::start(
            Source::Manifests(dir.clone()),
            metrics.policy.clone(),
        )?));
    }
    if let Some(k) = kube {
        let p = enforcer::start(Source::Fed, metrics.policy.clone())?;
        k.feed_policy(p.inputs());
        return Ok(Some(p));
    }
    if let Err(e) = tokio::task::spawn_blocking(enforcer::remove_table).await? {
        debug!(error = %format!("{e:#}"), "no policy table removed");
    }
    Ok(None)
}

/// Serves the status API on --status-addr, the full API (CNI, admin, metrics) on the unix
/// socket, and the metrics on --metrics-addr.
async fn serve_apis(
    cfg: &RouterConfig,
    status_rx: status::StatusRx,
    api_tx: mpsc::Sender<ApiCommand>,
    policy: Option<&crate::enforcer::PolicyHandle>,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<()> {
    let api = status::api_router(status_rx).merge(api::policy_router(policy.map(|p| p.view())));
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
        api.merge(api::cni_router(api_tx))
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
    Ok(())
}

/// The mesh, with the IPAM state of the last run and, with --kube, this node's pod CIDR.
fn restore_mesh(
    cfg: &RouterConfig,
    kube: Option<&mut crate::kube::driver::KubeDriver>,
) -> anyhow::Result<Mesh> {
    let seed = identity::os_random_u64();
    let mut mesh = Mesh::new(cfg.identity.clone(), cfg.mesh.clone(), seed, Instant::now());
    if let Some(snap) = state::read(&cfg.state_dir, state::IPAM_FILE)? {
        mesh.restore_ipam(&snap, Instant::now()).with_context(|| {
            format!(
                "restoring IPAM state from {} (move it away to start afresh: addresses in use by pods here may then be handed out twice)",
                cfg.state_dir.join(state::IPAM_FILE).display()
            )
        })?;
        info!("IPAM state restored");
    }
    if let Some(k) = kube {
        k.init_ipam(&mut mesh, Instant::now());
    }
    Ok(mesh)
}

/// The router's own ports, shut to everything arriving through the node bridge.
pub(super) fn guard_node_ports(cfg: &RouterConfig) -> weft_policy::guard::NodePorts {
    weft_policy::guard::NodePorts {
        bridge: cfg.bridge.clone(),
        udp: vec![cfg.listen.port(), cfg.sleeve_port, cfg.vxlan_port],
        tcp: std::iter::once(cfg.status_addr.port())
            .chain(cfg.metrics_addr.map(|a| a.port()))
            .collect(),
    }
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
