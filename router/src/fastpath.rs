//! The fastpath driver: runs the kernel VXLAN path of `weft-fastpath` for the router.
//!
//! One task owns the heartbeat socket, the per-peer [`Health`] state machine and the FDB.
//! The daemon tells it about control connections ([`Cmd::PeerUp`] / [`Cmd::PeerDown`]) and
//! the gossiped MAC table ([`Cmd::Claims`]); it sends heartbeats through the VXLAN device,
//! acknowledges the peers' heartbeats over the control connection's link stream, feeds the
//! acks it gets back into [`Health`], and keeps the kernel FDB equal to [`plan`]'s answer:
//! every remote MAC of a healthy direct peer on the VXLAN port, everything else on the TAP
//! (the sleeve). The FDB is reconciled after every change and every [`RECONCILE_EVERY`], so
//! entries someone else removed come back and stale ones go.
//!
//! With a network password the fastpath must not carry plaintext: without ESP in the kernel
//! there is no VXLAN device at all (it would accept plaintext frames from anyone); with ESP a
//! peer is a candidate only with ESP transport SAs keyed from the control handshake
//! ([`esp_keys`]). Status says why a peer stays on the sleeve.

use crate::metrics::Metrics;
use crate::transport::{ConnSender, LinkMessage, SessionSecrets};
use blake2::Blake2s256;
use hkdf::SimpleHkdf;
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};
use weft_fastpath::fdb::{self, FdbPorts, Finding, Mac, PeerInput, PlanInput};
use weft_fastpath::health::{Event, Health, HealthConfig, Path, PeerStatus};
use weft_fastpath::heartbeat::{AsyncHeartbeatSocket, HeartbeatSocket};
use weft_fastpath::xfrm::{self, EspPeer, KEY_LEN};
use weft_fastpath::{Netlink, VxlanConfig};
use weft_gossip::PeerName;

/// Name of the VXLAN device.
pub const VXLAN_IFNAME: &str = "weft-vxlan";
pub use weft_fastpath::xfrm::ESP_OVERHEAD;
pub use weft_fastpath::VXLAN_OVERHEAD;
/// What a pod frame grows by on the fastpath's wire.
pub fn wire_overhead(esp: bool) -> u32 {
    VXLAN_OVERHEAD + if esp { ESP_OVERHEAD } else { 0 }
}

/// The largest pod MTU the fastpath can carry over an underlay path of `path_mtu` bytes.
pub fn inner_mtu(path_mtu: u16, esp: bool) -> u32 {
    u32::from(path_mtu).saturating_sub(wire_overhead(esp))
}

/// Why a peer cannot use the fastpath on account of its path MTU, if that is the case: the
/// VXLAN device (and every heartbeat) carries frames of the pod MTU `mtu`, and with DF set
/// anything bigger than the path is dropped, so a path that is too small is refused rather
/// than allowed to black-hole full-size pod packets.
pub fn mtu_shortfall(view: &FastpathView, path_mtu: u16) -> Option<String> {
    let needed = view.mtu + view.overhead;
    (view.off.is_none() && view.mtu > 0 && u32::from(path_mtu) < needed).then(|| {
        format!(
            "path MTU {path_mtu} cannot carry fastpath frames for pod MTU {} ({needed} bytes with \
             encapsulation); --mtu {} or less would fit",
            view.mtu,
            inner_mtu(path_mtu, view.overhead > VXLAN_OVERHEAD)
        )
    })
}

/// Full reconcile even without a change (repairs entries changed under our feet).
pub const RECONCILE_EVERY: Duration = Duration::from_secs(10);

/// What the daemon tells the fastpath task.
pub enum Cmd {
    /// An authenticated control connection to `peer`, reached at `remote`.
    PeerUp {
        conn: u64,
        peer: PeerName,
        remote: SocketAddr,
        outbound: bool,
        secrets: Box<SessionSecrets>,
        sender: ConnSender,
        link: mpsc::Receiver<LinkMessage>,
    },
    PeerDown {
        conn: u64,
    },
    /// The gossiped MAC table: (MAC, owner), peers' bridge MACs included.
    Claims(Vec<(Mac, u64)>),
}

/// The fastpath as status shows it.
#[derive(Clone, Debug, Default)]
pub struct FastpathView {
    /// Why the fastpath is off for every peer (`--no-fastpath`, no VXLAN, setup failed).
    pub off: Option<String>,
    /// Inner (pod) MTU the VXLAN path carries.
    pub mtu: u32,
    /// Bytes each pod frame grows by on the wire: VXLAN, plus ESP when encrypted.
    pub overhead: u32,
    pub peers: HashMap<u64, PeerStatus>,
    /// Problems found in the gossiped input (bogus addresses, MAC conflicts), for humans.
    pub findings: Vec<String>,
}

/// The daemon's handle on the fastpath task.
pub struct Fastpath {
    tx: Option<mpsc::Sender<Cmd>>,
    view: Arc<Mutex<FastpathView>>,
    /// Signalled when a peer switches path (status should show it now).
    switched: Arc<tokio::sync::Notify>,
}

/// Settings of the fastpath.
pub struct FastpathConfig {
    pub me: PeerName,
    pub bridge: String,
    pub tap: String,
    /// Pod MTU (heartbeats are this big, so they prove it).
    pub mtu: u32,
    pub port: u16,
    pub encrypted: bool,
    /// `--no-fastpath`.
    pub disabled: bool,
}

impl Fastpath {
    /// Sets up the VXLAN device and starts the task, or returns a handle that reports why
    /// there is no fastpath (every peer then uses the sleeve).
    pub async fn start(cfg: FastpathConfig, metrics: Arc<Metrics>) -> Fastpath {
        let off = |why: String| {
            info!(reason = %why, "fastpath off: all traffic uses the sleeve");
            Fastpath {
                tx: None,
                view: Arc::new(Mutex::new(FastpathView {
                    off: Some(why),
                    ..Default::default()
                })),
                switched: Arc::new(tokio::sync::Notify::new()),
            }
        };
        if cfg.disabled {
            remove_stale_device().await;
            return off("disabled (--no-fastpath)".into());
        }
        let caps = match tokio::task::spawn_blocking(weft_fastpath::detect_capabilities).await {
            Ok(c) => c,
            Err(e) => return off(format!("capability probe failed: {e}")),
        };
        // Missing: the kernel refused a VXLAN link. Unknown (typically: no CAP_SYS_ADMIN for
        // the probe's throwaway namespace): creating the real device below is the test.
        if let weft_fastpath::Probe::Missing(_) = caps.vxlan {
            remove_stale_device().await;
            return off(format!("kernel lacks VXLAN: {}", probe_detail(&caps.vxlan)));
        }
        let esp = caps.esp.is_available();
        if cfg.encrypted && !esp {
            // No device at all: a VXLAN port would take plaintext frames from anyone who
            // can send UDP to it, straight onto the pods' bridge.
            remove_stale_device().await;
            return off(format!(
                "encryption required (ESP, IPsec): {}",
                probe_detail(&caps.esp)
            ));
        }
        let mtu = cfg.mtu;
        let vx = VxlanConfig {
            name: VXLAN_IFNAME.into(),
            bridge: cfg.bridge.clone(),
            port: cfg.port,
            mtu,
            ..Default::default()
        };
        let state = match weft_fastpath::setup_vxlan(&vx).await {
            Ok(s) => s,
            Err(e @ weft_fastpath::Error::Unsupported { .. }) => {
                remove_stale_device().await;
                return off(format!("kernel lacks VXLAN: {e}"));
            }
            Err(e) => {
                remove_stale_device().await;
                return off(format!("VXLAN device setup failed: {e}"));
            }
        };
        let started = async {
            let nl = Netlink::current().map_err(|e| e.to_string())?;
            let ports = FdbPorts::lookup(&nl, &cfg.bridge, VXLAN_IFNAME, &cfg.tap)
                .await
                .map_err(|e| e.to_string())?;
            let hb = HeartbeatSocket::open(
                VXLAN_IFNAME,
                cfg.me.as_u64(),
                crate::dataplane::mac_of(cfg.me),
                mtu,
            )
            .map_err(|e| format!("opening the heartbeat socket: {e}"))?;
            let hb = AsyncHeartbeatSocket::new(hb)
                .map_err(|e| format!("registering the heartbeat socket: {e}"))?;
            Ok::<_, String>((nl, ports, hb))
        }
        .await;
        let (nl, ports, hb) = match started {
            Ok(x) => x,
            Err(e) => {
                remove_stale_device().await;
                return off(format!("fastpath setup failed: {e}"));
            }
        };
        // The port takes only what the peers sent, and when encrypted only what ESP
        // decrypted (crate::vxlan_guard); no peer is known yet. Without the guard, VXLAN from
        // any address (a host on the underlay, a pod through its gateway) would reach the pods'
        // bridge: stay off.
        let guard = crate::vxlan_guard::Guard {
            port: cfg.port,
            esp: cfg.encrypted && esp,
            peers: Some(Vec::new()),
        };
        let g = guard.clone();
        let applied = tokio::task::spawn_blocking(move || crate::vxlan_guard::apply_guard(&g))
            .await
            .map_err(anyhow::Error::from)
            .and_then(|r| r);
        if let Err(e) = applied {
            remove_stale_device().await;
            return off(format!(
                "cannot restrict the VXLAN port to the peers{}: {e:#}",
                if guard.esp { " and to ESP" } else { "" }
            ));
        }
        info!(
            device = VXLAN_IFNAME, port = cfg.port, mtu, df = ?state.df, esp,
            "fastpath ready: kernel VXLAN, switched per peer by heartbeats"
        );
        let view = Arc::new(Mutex::new(FastpathView {
            off: None,
            mtu,
            overhead: wire_overhead(esp && cfg.encrypted),
            ..Default::default()
        }));
        let (tx, rx) = mpsc::channel(1024);
        let switched = Arc::new(tokio::sync::Notify::new());
        let task = Task {
            vx: vx.clone(),
            switched: switched.clone(),
            health: Health::new(HealthConfig::default(), crate::identity::os_random_u64()),
            cfg,
            esp,
            nl,
            ports,
            hb: Arc::new(hb),
            conns: HashMap::new(),
            claims: Vec::new(),
            view: view.clone(),
            metrics,
            findings: Vec::new(),
            esp_installed: HashMap::new(),
            esp_retiring: Vec::new(),
            guard,
        };
        tokio::spawn(task.run(rx));
        Fastpath {
            tx: Some(tx),
            view,
            switched,
        }
    }

    /// Sends a command; dropped (with a debug line) when the task is gone or behind.
    pub fn send(&self, cmd: Cmd) {
        if let Some(tx) = &self.tx {
            if let Err(e) = tx.try_send(cmd) {
                debug!(error = %e, "fastpath task not taking commands");
            }
        }
    }

    /// Resolves when a peer has switched path since the last call.
    pub async fn switched(&self) {
        self.switched.notified().await
    }

    pub fn view(&self) -> FastpathView {
        self.view.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// One control connection as the fastpath sees it.
struct ConnEntry {
    peer: u64,
    addr: Option<Ipv4Addr>,
    sender: ConnSender,
    esp: Option<EspPeer>,
    since: Instant,
}

struct Task {
    cfg: FastpathConfig,
    /// The device's settings, to make it again if it disappears.
    vx: VxlanConfig,
    esp: bool,
    health: Health,
    nl: Netlink,
    ports: FdbPorts,
    hb: Arc<AsyncHeartbeatSocket>,
    conns: HashMap<u64, ConnEntry>,
    claims: Vec<(Mac, u64)>,
    view: Arc<Mutex<FastpathView>>,
    switched: Arc<tokio::sync::Notify>,
    metrics: Arc<Metrics>,
    findings: Vec<String>,
    /// ESP SAs installed, by peer: the connection whose keys they carry.
    esp_installed: HashMap<u64, (u64, EspPeer)>,
    /// SAs and policies of peers that lost their last connection, removed only after an FDB
    /// reconcile has taken the peer's MACs off VXLAN: removing the ESP policy first would
    /// let frames still directed at the peer leave as plaintext VXLAN.
    esp_retiring: Vec<(u64, EspPeer)>,
    /// The VXLAN guard in force (its peer list follows the candidates' addresses).
    guard: crate::vxlan_guard::Guard,
}

impl Task {
    async fn run(mut self, mut rx: mpsc::Receiver<Cmd>) {
        let (ack_tx, mut ack_rx) = mpsc::channel::<(u64, LinkMessage)>(4096);
        let mut reconcile_at = Instant::now();
        let mut dirty = true;
        loop {
            let deadline = self
                .health
                .next_deadline()
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(1))
                .min(reconcile_at);
            tokio::select! {
                cmd = rx.recv() => {
                    let Some(cmd) = cmd else { break };
                    dirty |= self.command(cmd, &ack_tx).await;
                }
                Some((peer, msg)) = ack_rx.recv() => {
                    let LinkMessage::FastpathAck { seq, token } = msg;
                    self.health.on_ack(peer, seq, token, Instant::now());
                }
                got = self.hb.recv() => match got {
                    Ok(r) => self.acknowledge(r.from, r.seq, r.token),
                    Err(e) => {
                        warn!(error = %e, "fastpath: heartbeat socket failed");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                },
                _ = tokio::time::sleep_until(deadline.into()) => {}
            }
            let now = Instant::now();
            for d in self.health.poll(now) {
                let mac = mac_of_u64(d.peer);
                if let Err(e) = self.hb.send(d.peer, mac, d.seq, d.token) {
                    debug!(peer = format_args!("{:012x}", d.peer), error = %e, "fastpath: heartbeat not sent");
                }
            }
            for e in self.health.drain_events() {
                let Event::Switched { peer, to, reason } = e;
                self.metrics.fastpath_switch(matches!(to, Path::Fastpath));
                info!(peer = %pname(peer), to = ?to, %reason, "fastpath: peer switched path");
                dirty = true;
            }
            if now >= reconcile_at {
                dirty = true;
                reconcile_at = now + RECONCILE_EVERY;
            }
            let switched = dirty;
            if dirty {
                self.reconcile(now).await;
                dirty = false;
            }
            self.publish(now);
            if switched {
                self.switched.notify_one();
            }
        }
        debug!("fastpath task ends");
    }

    /// Handles a command; true when the FDB must be recomputed.
    async fn command(&mut self, cmd: Cmd, ack_tx: &mpsc::Sender<(u64, LinkMessage)>) -> bool {
        let now = Instant::now();
        match cmd {
            Cmd::PeerUp {
                conn,
                peer,
                remote,
                outbound,
                secrets,
                sender,
                mut link,
            } => {
                let name = peer.as_u64();
                let tx = ack_tx.clone();
                tokio::spawn(async move {
                    while let Some(m) = link.recv().await {
                        if tx.send((name, m)).await.is_err() {
                            return;
                        }
                    }
                });
                let addr = match remote.ip() {
                    IpAddr::V4(a) => Some(a),
                    IpAddr::V6(_) => None,
                };
                let esp = match addr {
                    Some(a) if self.cfg.encrypted && self.esp => local_addr_towards(a)
                        .map(|local| esp_peer(local, a, self.cfg.port, name, outbound, &secrets)),
                    _ => None,
                };
                self.conns.insert(
                    conn,
                    ConnEntry {
                        peer: name,
                        addr,
                        sender,
                        esp,
                        since: now,
                    },
                );
                self.refresh_peer(name, now).await;
                true
            }
            Cmd::PeerDown { conn } => {
                let Some(c) = self.conns.remove(&conn) else {
                    return false;
                };
                self.refresh_peer(c.peer, now).await;
                true
            }
            Cmd::Claims(c) => {
                let changed = c != self.claims;
                self.claims = c;
                changed
            }
        }
    }

    /// The newest connection to `peer`, if any.
    fn conn_of(&self, peer: u64) -> Option<(&u64, &ConnEntry)> {
        self.conns
            .iter()
            .filter(|(_, c)| c.peer == peer)
            .max_by_key(|(id, c)| (c.since, **id))
    }

    /// Brings the peer's candidacy (and its ESP SAs) in line with its connections.
    async fn refresh_peer(&mut self, peer: u64, now: Instant) {
        let current = self
            .conn_of(peer)
            .map(|(id, c)| (*id, c.addr, c.esp.clone()));
        let Some((conn, addr, esp)) = current else {
            self.health.remove_peer(peer);
            if let Some((_, sa)) = self.esp_installed.remove(&peer) {
                self.esp_retiring.push((peer, sa));
            }
            return;
        };
        if !self.health.peers().any(|p| p == peer) {
            self.health.add_peer(peer, now);
        }
        let unavailable = if addr.is_none() {
            Some("IPv6 peer address: the fastpath is IPv4 only".to_string())
        } else if self.cfg.encrypted && !self.esp {
            Some("encryption required and the kernel lacks ESP (IPsec): using the sleeve".into())
        } else if self.cfg.encrypted {
            match esp {
                None => {
                    Some("encryption required: no local address towards the peer for ESP".into())
                }
                Some(sa) => self.install_esp(peer, conn, sa).await.err(),
            }
        } else {
            None
        };
        self.health.set_unavailable(peer, unavailable, now);
    }

    async fn install_esp(&mut self, peer: u64, conn: u64, sa: EspPeer) -> Result<(), String> {
        if self
            .esp_installed
            .get(&peer)
            .is_some_and(|(c, old)| *c == conn && *old == sa)
        {
            return Ok(());
        }
        xfrm::install(&sa)
            .await
            .map_err(|e| format!("encryption required: installing ESP SAs failed: {e}"))?;
        if let Some((_, old)) = self.esp_installed.insert(peer, (conn, sa.clone())) {
            // The old connection's SAs: new SPIs are in place, so drop the old SAs only.
            if old.spi_out != sa.spi_out {
                let _ = xfrm::remove_sa(old.local, old.remote, old.spi_out).await;
            }
            if old.spi_in != sa.spi_in {
                let _ = xfrm::remove_sa(old.remote, old.local, old.spi_in).await;
            }
        }
        info!(peer = %pname(peer), "fastpath: ESP SAs installed");
        Ok(())
    }

    /// A heartbeat from `from` came through our VXLAN device: ack it on its connection.
    fn acknowledge(&self, from: u64, seq: u64, token: u64) {
        let Some((_, c)) = self.conn_of(from) else {
            return;
        };
        let sender = c.sender.clone();
        tokio::spawn(async move {
            let _ = sender
                .send_link(&LinkMessage::FastpathAck { seq, token })
                .await;
        });
    }

    /// Makes the VXLAN device again when it was deleted or replaced under us: its ports'
    /// indexes and the heartbeat socket bound to it would otherwise be dead for good, and
    /// every peer stuck on the sleeve. Heartbeats then bring the peers back (within 10 s).
    async fn ensure_device(&mut self) {
        match self.nl.link(VXLAN_IFNAME).await {
            Ok(Some(l)) if l.index == self.ports.vxlan => return,
            Ok(found) => warn!(
                device = VXLAN_IFNAME,
                now = ?found.map(|l| l.index),
                was = self.ports.vxlan,
                "fastpath: the VXLAN device was removed or replaced; making it again"
            ),
            Err(e) => {
                warn!(error = %e, "fastpath: cannot look up the VXLAN device");
                return;
            }
        }
        let rebuilt = async {
            weft_fastpath::setup_vxlan(&self.vx)
                .await
                .map_err(|e| e.to_string())?;
            let ports = FdbPorts::lookup(&self.nl, &self.cfg.bridge, VXLAN_IFNAME, &self.cfg.tap)
                .await
                .map_err(|e| e.to_string())?;
            let hb = HeartbeatSocket::open(
                VXLAN_IFNAME,
                self.cfg.me.as_u64(),
                crate::dataplane::mac_of(self.cfg.me),
                self.vx.mtu,
            )
            .and_then(AsyncHeartbeatSocket::new)
            .map_err(|e| format!("heartbeat socket: {e}"))?;
            Ok::<_, String>((ports, hb))
        }
        .await;
        match rebuilt {
            Ok((ports, hb)) => {
                self.ports = ports;
                self.hb = Arc::new(hb);
                info!(device = VXLAN_IFNAME, "fastpath: VXLAN device made again");
            }
            Err(e) => warn!(error = %e, "fastpath: making the VXLAN device again failed; retrying"),
        }
    }

    async fn reconcile(&mut self, _now: Instant) {
        self.ensure_device().await;
        let me = self.cfg.me.as_u64();
        let mut peers: BTreeMap<u64, PeerInput> = BTreeMap::new();
        for p in self.health.peers().collect::<Vec<_>>() {
            let addr = self.conn_of(p).and_then(|(_, c)| c.addr);
            peers.insert(
                p,
                PeerInput {
                    bridge_mac: mac_of_u64(p),
                    vxlan_addr: addr,
                    healthy: self.health.use_fastpath(p),
                },
            );
        }
        self.update_guard(&peers).await;
        let local = local_ipv4_addrs();
        let plan = fdb::plan(&PlanInput {
            me,
            local_addrs: &local,
            peers: &peers,
            claims: &self.claims,
        });
        let now = Instant::now();
        for (peer, why) in &plan.refused {
            self.health.set_unavailable(*peer, Some(why.clone()), now);
        }
        let findings: Vec<String> = plan.findings.iter().map(describe).collect();
        if findings != self.findings {
            for f in findings.iter().filter(|f| !self.findings.contains(f)) {
                warn!(finding = %f, "fastpath: bad input resolved");
            }
            self.findings = findings;
        }
        match fdb::reconcile(&self.nl, &self.ports, &plan.desired).await {
            Ok(r) if r.failed.is_empty() => {
                if r.total_changes() > 0 {
                    debug!(report = ?r, "fastpath: FDB reconciled");
                }
                self.retire_esp().await;
            }
            Ok(r) => warn!(report = ?r, "fastpath: the kernel refused FDB changes; retrying"),
            Err(e) => warn!(error = %e, "fastpath: FDB reconcile failed"),
        }
    }

    /// Puts the candidates' addresses into the VXLAN guard when they changed. Done before the
    /// FDB moves anyone to the fastpath; a failure keeps the old list (a new peer's heartbeats
    /// are then dropped, so it stays on the sleeve) and is retried on the next reconcile.
    async fn update_guard(&mut self, peers: &BTreeMap<u64, PeerInput>) {
        let mut addrs: Vec<Ipv4Addr> = peers.values().filter_map(|p| p.vxlan_addr).collect();
        addrs.sort_unstable();
        addrs.dedup();
        if self.guard.peers.as_ref() == Some(&addrs) {
            return;
        }
        let mut g = self.guard.clone();
        g.peers = Some(addrs);
        let want = g.clone();
        match tokio::task::spawn_blocking(move || crate::vxlan_guard::apply_guard(&want)).await {
            Ok(Ok(())) => {
                debug!(peers = ?g.peers, "fastpath: VXLAN guard follows the peers");
                self.guard = g;
            }
            Ok(Err(e)) => {
                warn!(error = %format!("{e:#}"), "fastpath: cannot update the VXLAN guard; retrying")
            }
            Err(e) => warn!(error = %e, "fastpath: the VXLAN guard task failed"),
        }
    }

    /// Removes the ESP state of departed peers (see `esp_retiring`). A peer that has come back
    /// since has new SAs under the same policies: then only its old SAs go.
    async fn retire_esp(&mut self) {
        for (peer, old) in std::mem::take(&mut self.esp_retiring) {
            let r = match self.esp_installed.get(&peer) {
                None => xfrm::remove(&old).await,
                Some((_, new)) => {
                    let mut r = Ok(());
                    if old.spi_out != new.spi_out {
                        r = r.and(xfrm::remove_sa(old.local, old.remote, old.spi_out).await);
                    }
                    if old.spi_in != new.spi_in {
                        r = r.and(xfrm::remove_sa(old.remote, old.local, old.spi_in).await);
                    }
                    r
                }
            };
            match r {
                Ok(()) => {
                    info!(peer = %pname(peer), "fastpath: ESP state of a departed peer removed")
                }
                Err(e) => {
                    warn!(peer = %pname(peer), error = %e, "fastpath: removing ESP SAs failed")
                }
            }
        }
    }

    fn publish(&self, now: Instant) {
        let mut v = self.view.lock().unwrap_or_else(|e| e.into_inner());
        v.peers = self
            .health
            .peers()
            .filter_map(|p| Some((p, self.health.status(p, now)?)))
            .collect();
        v.findings = self.findings.clone();
    }
}

fn describe(f: &Finding) -> String {
    match f {
        Finding::BogusAddress { peer, addr, why } => {
            format!(
                "peer {} advertises fastpath address {addr}: {why}",
                pname(*peer)
            )
        }
        Finding::MacConflict {
            mac,
            winner,
            losers,
        } => format!(
            "MAC {} claimed by several peers: {} keeps it, not {}",
            weft_types::Mac(*mac),
            pname(*winner),
            losers
                .iter()
                .map(|l| pname(*l).to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Finding::BadMac { mac, owner } => format!(
            "peer {} claims non-unicast MAC {}: ignored",
            pname(*owner),
            weft_types::Mac(*mac)
        ),
    }
}

/// What a capability probe found, for status.
/// With the fastpath off nothing manages a `weft-vxlan` device, so one left by an earlier run
/// (with its sticky bridge entries and VXLAN destinations) would keep sending pod frames over
/// an unwatched kernel path, unencrypted. Deleting the device removes its entries with it.
async fn remove_stale_device() {
    match weft_fastpath::remove_vxlan(VXLAN_IFNAME).await {
        Ok(true) => info!(
            device = VXLAN_IFNAME,
            "removed the VXLAN device of an earlier run"
        ),
        Ok(false) => {}
        Err(e) => warn!(error = %e, "removing a VXLAN device left by an earlier run failed"),
    }
    // With no device there is no port to guard.
    if let Ok(Err(e)) = tokio::task::spawn_blocking(crate::vxlan_guard::remove).await {
        debug!(error = %format!("{e:#}"), "no VXLAN guard table removed");
    }
}

fn probe_detail(p: &weft_fastpath::Probe) -> String {
    match p {
        weft_fastpath::Probe::Available => "available".into(),
        weft_fastpath::Probe::Missing(d) | weft_fastpath::Probe::Unknown(d) => d.clone(),
    }
}

/// A peer name for logs and status.
fn pname(v: u64) -> String {
    PeerName::new(v).map_or_else(|| format!("{v:#x}"), |p| p.to_string())
}

/// The bridge MAC of the peer named `v` (see [`crate::dataplane::mac_of`]).
fn mac_of_u64(v: u64) -> Mac {
    let b = v.to_be_bytes();
    [b[2], b[3], b[4], b[5], b[6], b[7]]
}

/// This host's IPv4 addresses (a peer advertising one of them is refused).
#[allow(unsafe_code)] // getifaddrs
fn local_ipv4_addrs() -> Vec<Ipv4Addr> {
    let mut out = Vec::new();
    // SAFETY: getifaddrs/freeifaddrs pair; every pointer read is checked for null and
    // points into the list the kernel filled.
    unsafe {
        let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
        if libc::getifaddrs(&mut head) != 0 {
            return out;
        }
        let mut p = head;
        while !p.is_null() {
            let a = (*p).ifa_addr;
            if !a.is_null() && i32::from((*a).sa_family) == libc::AF_INET {
                let sin = &*(a as *const libc::sockaddr_in);
                out.push(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)));
            }
            p = (*p).ifa_next;
        }
        libc::freeifaddrs(head);
    }
    out
}

/// The source address the kernel would use towards `dst`.
fn local_addr_towards(dst: Ipv4Addr) -> Option<Ipv4Addr> {
    let s = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    s.connect((dst, 9)).ok()?;
    match s.local_addr().ok()?.ip() {
        IpAddr::V4(a) if !a.is_unspecified() => Some(a),
        _ => None,
    }
}

/// ESP keys and SPIs for one direction, from the control handshake:
///
/// ```text
/// key(dir) = HKDF-BLAKE2s(salt = h, ikm = k_dir, info = "weft esp v1 key")      (36 bytes)
/// spi(dir) = HKDF-BLAKE2s(salt = h, ikm = h,     info = "weft esp v1 spi i|r")  (4 bytes)
/// ```
///
/// `dir` is the direction whose sender is the initiator (`i`) or the responder (`r`), so both
/// ends derive mirrored SAs. SPIs below 256 are reserved and moved up.
pub fn esp_keys(h: &[u8; 32], k_dir: &[u8; 32], initiator: bool) -> (u32, [u8; KEY_LEN]) {
    let mut key = [0u8; KEY_LEN];
    SimpleHkdf::<Blake2s256>::new(Some(h), k_dir)
        .expand(b"weft esp v1 key", &mut key)
        .expect("36 bytes is a valid HKDF length");
    let mut spi = [0u8; 4];
    let info: &[u8] = if initiator {
        b"weft esp v1 spi i"
    } else {
        b"weft esp v1 spi r"
    };
    SimpleHkdf::<Blake2s256>::new(Some(h), h)
        .expand(info, &mut spi)
        .expect("4 bytes is a valid HKDF length");
    let mut spi = u32::from_be_bytes(spi);
    if spi < 256 {
        spi += 256;
    }
    (spi, key)
}

fn esp_peer(
    local: Ipv4Addr,
    remote: Ipv4Addr,
    port: u16,
    peer: u64,
    outbound: bool,
    s: &SessionSecrets,
) -> EspPeer {
    let (spi_i, key_i) = esp_keys(&s.handshake_hash, &s.initiator_key, true);
    let (spi_r, key_r) = esp_keys(&s.handshake_hash, &s.responder_key, false);
    let ((spi_out, key_out), (spi_in, key_in)) = if outbound {
        ((spi_i, key_i), (spi_r, key_r))
    } else {
        ((spi_r, key_r), (spi_i, key_i))
    };
    EspPeer {
        local,
        remote,
        port,
        // Unique per peer on this node, never 0.
        reqid: ((peer ^ (peer >> 32)) as u32) | 1,
        spi_out,
        key_out,
        spi_in,
        key_in,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mtu_arithmetic_and_the_shortfall_reason() {
        assert_eq!(inner_mtu(1500, false), 1450);
        assert_eq!(inner_mtu(1500, true), 1413);
        assert_eq!(inner_mtu(40, true), 0);
        let mut v = FastpathView {
            mtu: 1376,
            overhead: wire_overhead(true),
            ..Default::default()
        };
        // 1376 + 87 = 1463 fits a 1500 path, exactly fits 1463, not 1462.
        assert_eq!(mtu_shortfall(&v, 1500), None);
        assert_eq!(mtu_shortfall(&v, 1463), None);
        let why = mtu_shortfall(&v, 1450).expect("1450 is too small");
        assert!(why.contains("path MTU 1450"), "{why}");
        assert!(why.contains("--mtu 1363 or less"), "{why}");
        // Plain VXLAN needs only 50 bytes.
        v.overhead = wire_overhead(false);
        assert_eq!(mtu_shortfall(&v, 1450), None);
        // With the fastpath off, the MTU is not the reason.
        v.off = Some("disabled (--no-fastpath)".into());
        assert_eq!(mtu_shortfall(&v, 1000), None);
    }

    fn secrets() -> SessionSecrets {
        SessionSecrets {
            handshake_hash: [7; 32],
            initiator_key: [1; 32],
            responder_key: [2; 32],
            psk: true,
        }
    }

    #[test]
    fn esp_sas_mirror_each_other() {
        let s = secrets();
        let a = esp_peer(
            Ipv4Addr::new(10, 0, 0, 1),
            Ipv4Addr::new(10, 0, 0, 2),
            6785,
            2,
            true,
            &s,
        );
        let b = esp_peer(
            Ipv4Addr::new(10, 0, 0, 2),
            Ipv4Addr::new(10, 0, 0, 1),
            6785,
            1,
            false,
            &s,
        );
        assert_eq!((a.spi_out, a.key_out), (b.spi_in, b.key_in));
        assert_eq!((a.spi_in, a.key_in), (b.spi_out, b.key_out));
        assert_ne!(a.key_out, a.key_in);
        assert_ne!(a.spi_out, a.spi_in);
        assert!(a.spi_out >= 256 && a.spi_in >= 256);
        assert_ne!(a.reqid, 0);
    }

    #[test]
    fn esp_keys_depend_on_the_handshake() {
        let (spi1, k1) = esp_keys(&[7; 32], &[1; 32], true);
        let (spi2, k2) = esp_keys(&[8; 32], &[1; 32], true);
        let (_, k3) = esp_keys(&[7; 32], &[3; 32], true);
        assert_ne!(spi1, spi2);
        assert_ne!(k1, k2);
        assert_ne!(k1, k3);
    }
}
