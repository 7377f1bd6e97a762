//! The peer status model, its text rendering, and the local HTTP status API.
//!
//! The daemon publishes an [`Arc<Status>`] snapshot on a `tokio::sync::watch` channel whenever
//! something changes; the API serves the latest snapshot. A snapshot whose `name` is empty is
//! a placeholder ("not ready yet"): `/healthz` and the status routes answer 503 until the
//! daemon publishes a real one.
//!
//! Routes ([`api_router`]): `GET /status` (text), `GET /status.json`, `GET /status/peers`,
//! `GET /status/connections`, `GET /status/ipam` (text, or JSON with `?format=json` or
//! `Accept: application/json`), `GET /healthz` (liveness) and `GET /readyz` (readiness).
//! The JSON field names are a contract: tools outside this repo read them. Add fields; never
//! rename or drop one.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// Everything `weft status` shows about one router.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Status {
    /// weft version (`CARGO_PKG_VERSION`).
    pub version: String,
    /// Peer name, like `02:ab:cd:ef:01:07`. Empty in a placeholder snapshot.
    pub name: String,
    pub nickname: String,
    pub uid: String,
    /// True iff a network password is set.
    pub encryption: bool,
    /// Gossip protocol version.
    pub protocol: u8,
    /// Control (QUIC) listen address.
    pub listen: String,
    pub uptime_secs: u64,
    pub conn_limit: usize,
    pub discovery: bool,
    /// Configured `--peer` addresses.
    pub targets: Vec<String>,
    pub peers: Vec<PeerInfo>,
    pub connections: Vec<ConnInfo>,
    pub ipam: IpamInfo,
    /// The MTU a pod created now gets: `--mtu`, lowered (unless `--mtu` was given) to fit
    /// every confirmed path to a peer, sleeve and fastpath overheads included. 0 while the
    /// router is not running the mesh.
    #[serde(default)]
    pub pod_mtu: u32,
    /// The gossiped endpoint (MAC) table: every pod interface in the mesh.
    #[serde(default)]
    pub endpoints: Vec<EndpointInfo>,
    /// One line about NetworkPolicy enforcement (`GET /status/policy` has the details);
    /// absent when no policy source is configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// The Kubernetes side (`--kube`): API connection, Nodes, pod CIDR, reclaims; absent
    /// without `--kube`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kube: Option<crate::kube::KubeStatus>,
    /// Peer names used by two live routers, as this router sees them (the second one is
    /// refused); empty normally.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub identity_conflicts: Vec<IdentityConflict>,
    /// Peers refuse this router because another router with its name is connected to
    /// them: it hands out no pod addresses meanwhile. Absent normally.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused_as_duplicate: Option<RefusedAsDuplicate>,
    /// The pod guard (anti-spoofing, the router's ports shut to pods): whether it is in
    /// force, how many pod ports it guards, what it dropped. Absent while the router runs no
    /// mesh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_guard: Option<crate::pod_guard::GuardView>,
    /// Why this router is not ready (`GET /readyz` answers 503 with it); absent when ready.
    /// Not ready: waiting for the network password, the node's gateway not set up yet,
    /// Kubernetes caches not synced, or peers known but no connection established.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_ready: Option<String>,
}

/// Two routers with one peer name: which keeps it here, which is refused.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct IdentityConflict {
    pub name: String,
    /// The name is this router's own: another router uses it.
    pub ours: bool,
    pub kept_uid: String,
    pub refused_uid: String,
    /// Where the refused router's last connection came from.
    pub refused_address: String,
    pub refusals: u64,
    pub since_secs: u64,
}

/// This router is the duplicate of a live router with its name, as its peers see it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct RefusedAsDuplicate {
    pub name: String,
    pub refusals: u64,
    pub since_secs: u64,
    /// The peer that refused it last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_refused_by: Option<String>,
}

impl RefusedAsDuplicate {
    pub fn describe(&self) -> String {
        format!(
            "peers refuse this router: another router with its name {} is connected to them ({} refusals{}); it hands out no pod addresses until each router has its own --name (cloned machines share /etc/machine-id)",
            self.name,
            self.refusals,
            self.last_refused_by
                .as_deref()
                .map(|a| format!(", last by {a}"))
                .unwrap_or_default()
        )
    }
}

/// One pod interface of the mesh, from the gossiped endpoint table.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct EndpointInfo {
    /// Name of the peer the endpoint lives behind.
    pub owner: String,
    pub mac: String,
    pub ips: Vec<String>,
    pub pod: Option<String>,
}

/// One peer of the topology view.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct PeerInfo {
    pub name: String,
    pub nickname: String,
    pub uid: String,
    /// Established connections this peer reports.
    pub connections: usize,
    pub reachable: bool,
    /// Next hop towards this peer (itself when directly connected).
    pub next_hop: Option<String>,
}

/// State of one connection or connection target.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum ConnState {
    Established,
    Connecting,
    Failed,
}

impl ConnState {
    pub fn as_str(self) -> &'static str {
        match self {
            ConnState::Established => "established",
            ConnState::Connecting => "connecting",
            ConnState::Failed => "failed",
        }
    }
}

impl std::fmt::Display for ConnState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One connection (or target being dialled) of this router.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ConnInfo {
    /// Peer name, once known.
    pub peer: Option<String>,
    pub nickname: Option<String>,
    /// Remote address (`IP:port`).
    pub address: String,
    pub state: ConnState,
    pub outbound: bool,
    /// `"fastpath"`, `"sleeve"` or `"relay"`; `None` while no data path exists yet.
    pub path: Option<String>,
    pub encrypted: bool,
    pub mtu: u32,
    /// Why the connection is in this state (last failure, path choice...).
    pub reason: Option<String>,
    /// Consecutive failed attempts.
    pub attempts: u32,
    /// Time until the next attempt (failed targets).
    pub retry_in_ms: Option<u64>,
    /// `"configured"`, `"discovered"` or `"inbound"`.
    pub source: String,
}

/// IP address management.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct IpamInfo {
    /// The allocation range (CIDR); empty when IPAM is off.
    pub range: String,
    /// Why IPAM is not working, if it is not.
    #[serde(default)]
    pub error: Option<String>,
    /// This node's bridge address (`10.32.0.1/12`) once allocated.
    #[serde(default)]
    pub gateway: Option<String>,
    #[serde(default)]
    pub block_size: u32,
    #[serde(default)]
    pub blocks_total: u32,
    #[serde(default)]
    pub blocks_free: u32,
    /// Addresses allocated here / free in this node's blocks.
    #[serde(default)]
    pub used: u64,
    #[serde(default)]
    pub free: u64,
    /// Ranges per peer.
    #[serde(default)]
    pub peers: Vec<IpamPeerInfo>,
    /// Owners of blocks we cannot reach (down, partitioned, or gone: `weft rmpeer`).
    #[serde(default)]
    pub unreachable_owners: Vec<String>,
    /// Human-readable problems: conflicts after a partition, peers with another range.
    #[serde(default)]
    pub problems: Vec<String>,
    /// Pod addresses held twice after a partition (two sides settled the same block), as
    /// this router sees the mesh: `problems` says which pods to delete. 0 normally.
    #[serde(default)]
    pub conflicting_addresses: u64,
    /// The problem lines about addresses held twice (a subset of `problems`), for the
    /// headline of `weft status`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conflicts: Vec<String>,
    #[serde(default)]
    pub removed: Vec<String>,
}

/// One peer's address space.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct IpamPeerInfo {
    pub name: String,
    pub nickname: Option<String>,
    pub blocks: Vec<String>,
    pub pending: Vec<String>,
    pub addresses: u64,
    pub reachable: bool,
}

impl Status {
    /// A placeholder snapshot has no name: the daemon has not published a status yet.
    pub fn is_placeholder(&self) -> bool {
        self.name.is_empty()
    }

    /// `name(nickname)` of a peer name as this status knows it.
    fn label_of(&self, name: &str) -> String {
        if name == self.name {
            return label(name, &self.nickname);
        }
        match self.peers.iter().find(|p| p.name == name) {
            Some(p) => label(&p.name, &p.nickname),
            None => name.to_string(),
        }
    }

    /// Count of this router's connections by state: (established, connecting, failed).
    pub fn connection_counts(&self) -> (usize, usize, usize) {
        let mut c = (0, 0, 0);
        for conn in &self.connections {
            match conn.state {
                ConnState::Established => c.0 += 1,
                ConnState::Connecting => c.1 += 1,
                ConnState::Failed => c.2 += 1,
            }
        }
        c
    }

    /// The summary block shown by `weft status`.
    pub fn render_text(&self) -> String {
        let (est, connecting, failed) = self.connection_counts();
        let topo_conns: usize = self.peers.iter().map(|p| p.connections).sum();
        let mut conn_summary = self.connections.len().to_string();
        let parts: Vec<String> = [
            (est, "established"),
            (connecting, "connecting"),
            (failed, "failed"),
        ]
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, what)| format!("{n} {what}"))
        .collect();
        if !parts.is_empty() {
            let _ = write!(conn_summary, " ({})", parts.join(", "));
        }
        let mut targets = self.targets.len().to_string();
        if !self.targets.is_empty() {
            const SHOWN: usize = 4;
            let mut list: Vec<&str> = self
                .targets
                .iter()
                .take(SHOWN)
                .map(String::as_str)
                .collect();
            let more;
            if self.targets.len() > SHOWN {
                more = format!("+{} more", self.targets.len() - SHOWN);
                list.push(&more);
            }
            let _ = write!(targets, " ({})", list.join(", "));
        }
        let enabled = |b: bool| if b { "enabled" } else { "disabled" };
        let mut rows: Vec<(&str, String)> = vec![
            (
                "Version",
                format!("{} (protocol {})", self.version, self.protocol),
            ),
            ("Name", label(&self.name, &self.nickname)),
            (
                "Ready",
                match &self.not_ready {
                    None => "yes".to_string(),
                    Some(why) => format!("no: {why}"),
                },
            ),
            ("UID", self.uid.clone()),
            ("Encryption", enabled(self.encryption).to_string()),
            ("Listen", self.listen.clone()),
            ("Uptime", human_duration(self.uptime_secs)),
            (
                "Peers",
                format!(
                    "{} (with {} established connections)",
                    self.peers.len(),
                    topo_conns
                ),
            ),
            ("Targets", targets),
            ("Connections", conn_summary),
            ("Conn limit", self.conn_limit.to_string()),
            (
                "Pod MTU",
                if self.pod_mtu == 0 {
                    "-".to_string()
                } else {
                    self.pod_mtu.to_string()
                },
            ),
            ("Discovery", enabled(self.discovery).to_string()),
            ("IPAM", ipam_summary(&self.ipam)),
            (
                "Endpoints",
                format!(
                    "{} ({} on this node)",
                    self.endpoints.len(),
                    self.endpoints
                        .iter()
                        .filter(|e| e.owner == self.name)
                        .count()
                ),
            ),
        ];
        if let Some(g) = &self.pod_guard {
            rows.push(("Pod guard", g.summary()));
        }
        if let Some(r) = &self.refused_as_duplicate {
            rows.push(("NAME CONFLICT", r.describe()));
        }
        for c in &self.ipam.conflicts {
            rows.push(("IPAM CONFLICT", c.clone()));
        }
        for c in &self.identity_conflicts {
            rows.push((
                "NAME CONFLICT",
                if c.ours {
                    format!(
                        "another router uses this router's name {} (uid {}, from {}): it is refused; give each router its own --name",
                        c.name, c.refused_uid, c.refused_address
                    )
                } else {
                    format!(
                        "two routers use the name {}: uid {} keeps it, uid {} from {} is refused ({} times)",
                        c.name, c.kept_uid, c.refused_uid, c.refused_address, c.refusals
                    )
                },
            ));
        }
        if let Some(k) = &self.kube {
            rows.push(("Kubernetes", k.summary()));
        }
        let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        let mut out = String::new();
        for (k, v) in rows {
            let _ = writeln!(out, "{k:>width$}: {v}");
        }
        out
    }

    /// One line per peer of the topology: connections, reachability, next hop.
    pub fn render_peers(&self) -> String {
        if self.peers.is_empty() {
            return "no peers\n".to_string();
        }
        let rows: Vec<Vec<String>> = self
            .peers
            .iter()
            .map(|p| {
                let is_self = p.name == self.name;
                let reach = if is_self {
                    "(this router)"
                } else if p.reachable {
                    "reachable"
                } else {
                    "unreachable"
                };
                let via = match &p.next_hop {
                    _ if is_self => String::new(),
                    Some(h) if *h == p.name => "direct".to_string(),
                    Some(h) => format!("via {}", self.label_of(h)),
                    None => String::new(),
                };
                let conns = match p.connections {
                    1 => "1 connection".to_string(),
                    n => format!("{n} connections"),
                };
                vec![label(&p.name, &p.nickname), reach.to_string(), conns, via]
            })
            .collect();
        table(&rows)
    }

    /// One line per connection:
    /// `-> 10.0.0.2:6783  established  n2(02:..)  fastpath  mtu=1376  encrypted  reason`.
    pub fn render_connections(&self) -> String {
        if self.connections.is_empty() {
            return "no connections\n".to_string();
        }
        let rows: Vec<Vec<String>> = self
            .connections
            .iter()
            .map(|c| {
                let dir = if c.outbound { "->" } else { "<-" };
                let who = match (&c.peer, &c.nickname) {
                    (Some(p), Some(n)) => format!("{n}({p})"),
                    (Some(p), None) => p.clone(),
                    (None, Some(n)) => n.clone(),
                    (None, None) => "-".to_string(),
                };
                let mtu = if c.mtu == 0 {
                    "mtu=-".to_string()
                } else {
                    format!("mtu={}", c.mtu)
                };
                let enc = if c.encrypted {
                    "encrypted"
                } else {
                    "unencrypted"
                };
                let mut reason = c.reason.clone().unwrap_or_default();
                if c.state == ConnState::Failed {
                    let mut extra = Vec::new();
                    if c.attempts > 0 {
                        extra.push(format!(
                            "{} attempt{}",
                            c.attempts,
                            if c.attempts == 1 { "" } else { "s" }
                        ));
                    }
                    if let Some(ms) = c.retry_in_ms {
                        extra.push(format!("retry in {:.1}s", ms as f64 / 1000.0));
                    }
                    if !extra.is_empty() {
                        if !reason.is_empty() {
                            reason.push_str("; ");
                        }
                        reason.push_str(&extra.join(", "));
                    }
                }
                vec![
                    format!("{dir} {}", c.address),
                    c.state.to_string(),
                    who,
                    c.path.clone().unwrap_or_else(|| "-".to_string()),
                    mtu,
                    enc.to_string(),
                    reason,
                ]
            })
            .collect();
        table(&rows)
    }

    /// IP address management.
    pub fn render_ipam(&self) -> String {
        let range = if self.ipam.range.is_empty() {
            "(none)"
        } else {
            &self.ipam.range
        };
        let i = &self.ipam;
        let mut out = format!("Range: {range}\n");
        if let Some(e) = &i.error {
            out += &format!("Error: {e}\n");
        }
        if i.range.is_empty() || i.error.is_some() {
            return out;
        }
        out += &format!(
            "Gateway: {}\nBlocks: {} of /{} ({} addresses each), {} free\nThis node: {} used, {} free\n",
            i.gateway.as_deref().unwrap_or("(not yet allocated)"),
            i.blocks_total,
            32 - i.block_size.max(1).trailing_zeros(),
            i.block_size,
            i.blocks_free,
            i.used,
            i.free
        );
        for p in &i.peers {
            let who = label(&p.name, p.nickname.as_deref().unwrap_or(""));
            let state = if p.reachable { "" } else { "  UNREACHABLE" };
            let pending = if p.pending.is_empty() {
                String::new()
            } else {
                format!("  claiming {}", p.pending.join(", "))
            };
            out += &format!(
                "{who:<32} {:>8} addresses  {}{pending}{state}\n",
                p.addresses,
                p.blocks.join(", ")
            );
        }
        for p in &i.problems {
            out += &format!("PROBLEM: {p}\n");
        }
        if !i.unreachable_owners.is_empty() {
            out += &format!(
                "Unreachable owners: {} (if gone for good: weft rmpeer NAME)\n",
                i.unreachable_owners.join(", ")
            );
        }
        out
    }
}

fn label(name: &str, nickname: &str) -> String {
    if nickname.is_empty() {
        name.to_string()
    } else {
        format!("{name}({nickname})")
    }
}

fn ipam_summary(ipam: &IpamInfo) -> String {
    if ipam.range.is_empty() {
        "off".to_string()
    } else {
        format!("range {}", ipam.range)
    }
}

/// `3725` → `1h02m05s`.
pub fn human_duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    if d > 0 {
        format!("{d}d{h:02}h{m:02}m")
    } else if h > 0 {
        format!("{h}h{m:02}m{s:02}s")
    } else if m > 0 {
        format!("{m}m{s:02}s")
    } else {
        format!("{s}s")
    }
}

/// Left-aligned columns separated by two spaces; the last column is not padded.
pub(crate) fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut widths = vec![0usize; cols];
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<w$}  ", w = widths[i]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

// ---------------------------------------------------------------------------------------------
// HTTP API

/// The latest status snapshot, as the daemon publishes it.
pub type StatusRx = watch::Receiver<Arc<Status>>;

#[derive(Clone, Copy)]
enum Section {
    All,
    Peers,
    Connections,
    Ipam,
}

/// The status API. The returned router has no fallback and no state left to provide, so more
/// routes can be `.merge()`d into it.
pub fn api_router(status: StatusRx) -> Router {
    Router::new()
        .route("/status", get(status_all))
        .route("/status.json", get(status_json))
        .route("/status/peers", get(status_peers))
        .route("/status/connections", get(status_connections))
        .route("/status/ipam", get(status_ipam))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(status)
}

async fn status_all(State(rx): State<StatusRx>, uri: Uri, headers: HeaderMap) -> Response {
    respond(&rx, Section::All, wants_json(&uri, &headers))
}

async fn status_json(State(rx): State<StatusRx>) -> Response {
    respond(&rx, Section::All, true)
}

async fn status_peers(State(rx): State<StatusRx>, uri: Uri, headers: HeaderMap) -> Response {
    respond(&rx, Section::Peers, wants_json(&uri, &headers))
}

async fn status_connections(State(rx): State<StatusRx>, uri: Uri, headers: HeaderMap) -> Response {
    respond(&rx, Section::Connections, wants_json(&uri, &headers))
}

async fn status_ipam(State(rx): State<StatusRx>, uri: Uri, headers: HeaderMap) -> Response {
    respond(&rx, Section::Ipam, wants_json(&uri, &headers))
}

fn wants_json(uri: &Uri, headers: &HeaderMap) -> bool {
    if let Some(q) = uri.query() {
        for pair in q.split('&') {
            match pair.split_once('=') {
                Some(("format", "json")) => return true,
                Some(("format", _)) => return false,
                _ => {}
            }
        }
    }
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/json"))
}

fn not_ready() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        "weft router is starting: no status published yet\n",
    )
        .into_response()
}

fn respond(rx: &StatusRx, which: Section, json: bool) -> Response {
    let st: Arc<Status> = rx.borrow().clone();
    if st.is_placeholder() {
        return not_ready();
    }
    if json {
        let body = match which {
            Section::All => serde_json::to_string(&*st),
            Section::Peers => serde_json::to_string(&st.peers),
            Section::Connections => serde_json::to_string(&st.connections),
            Section::Ipam => serde_json::to_string(&st.ipam),
        };
        return match body {
            Ok(mut b) => {
                b.push('\n');
                ([(header::CONTENT_TYPE, "application/json")], b).into_response()
            }
            Err(e) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("encoding status: {e}\n"),
            )
                .into_response(),
        };
    }
    let text = match which {
        Section::All => st.render_text(),
        Section::Peers => st.render_peers(),
        Section::Connections => st.render_connections(),
        Section::Ipam => st.render_ipam(),
    };
    text.into_response()
}

async fn healthz(State(rx): State<StatusRx>) -> Response {
    if rx.has_changed().is_err() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "weft router is shutting down\n",
        )
            .into_response();
    }
    if rx.borrow().is_placeholder() {
        return not_ready();
    }
    (StatusCode::OK, "ok").into_response()
}

/// Readiness (the DaemonSet's readinessProbe): 200 once the router is part of the mesh and
/// can set up pods, else 503 with the reason. Liveness stays on `/healthz`, which does not
/// depend on peers or on the Kubernetes API.
async fn readyz(State(rx): State<StatusRx>) -> Response {
    if rx.has_changed().is_err() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "weft router is shutting down\n",
        )
            .into_response();
    }
    let st = rx.borrow().clone();
    if st.is_placeholder() {
        return not_ready();
    }
    match &st.not_ready {
        None => (StatusCode::OK, "ready\n").into_response(),
        Some(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        )
            .into_response(),
    }
}

/// Serves `router` on a bound TCP listener until the listener fails.
pub async fn serve_tcp(listener: tokio::net::TcpListener, router: Router) -> anyhow::Result<()> {
    axum::serve(listener, router).await?;
    Ok(())
}

/// Binds the API unix socket at `path`: creates the parent directory, replaces a stale socket
/// file (refusing when another process still answers on it, or when the path is not a
/// socket), and sets the socket's mode to 0660.
pub fn bind_unix(path: &Path) -> anyhow::Result<tokio::net::UnixListener> {
    use anyhow::Context as _;
    use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};

    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating directory {} for the API socket", dir.display()))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(md) if md.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                anyhow::bail!(
                    "another process is already serving on the API socket {}: is another \
                     `weft router` running?",
                    path.display()
                );
            }
            std::fs::remove_file(path)
                .with_context(|| format!("removing stale API socket {}", path.display()))?;
        }
        Ok(_) => anyhow::bail!(
            "{} exists and is not a socket; refusing to replace it with the API socket",
            path.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("checking {}", path.display())),
    }
    let listener = tokio::net::UnixListener::bind(path)
        .with_context(|| format!("binding the API socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .with_context(|| format!("setting the mode of {}", path.display()))?;
    Ok(listener)
}

/// Serves `router` on a bound unix listener (see [`bind_unix`]).
pub async fn serve_unix_listener(
    listener: tokio::net::UnixListener,
    router: Router,
) -> anyhow::Result<()> {
    axum::serve(listener, router).await?;
    Ok(())
}

/// [`bind_unix`] then [`serve_unix_listener`]. Bind errors are returned at once; prefer
/// calling `bind_unix` yourself before spawning the server task if you want them early.
pub async fn serve_unix(path: &Path, router: Router) -> anyhow::Result<()> {
    let listener = bind_unix(path)?;
    serve_unix_listener(listener, router).await
}
