//! Command-line interface: `weft router`, `weft status`, `weft lab`.
//!
//! Flag names are a contract: tools outside this repo drive them (docs/operations.md). Add
//! flags; never rename or drop one (keep an old spelling working beside a new one).

use clap::{Args, Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "weft",
    version,
    about = "weft: an encrypted mesh overlay network"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the mesh router on this host (or network namespace).
    Router(Box<RouterArgs>),
    /// Show the status of the router of this network namespace.
    Status(crate::client::StatusArgs),
    /// Give the address space of a peer that is gone for good to this router.
    Rmpeer(RmPeerArgs),
    /// A local mesh of routers in network namespaces (needs root).
    Lab {
        #[command(subcommand)]
        cmd: crate::lab::LabCmd,
    },
}

/// `weft router` flags.
#[derive(Args, Debug, Clone)]
pub struct RouterArgs {
    /// Stable peer name (six hex octets, like 02:00:00:00:00:01). Default: derived from
    /// /etc/machine-id (or the hostname when there is none).
    #[arg(long, env = "WEFT_NAME")]
    pub name: Option<String>,

    /// Human-friendly name shown in status. Default: the hostname.
    #[arg(long, env = "WEFT_NICKNAME")]
    pub nickname: Option<String>,

    /// A peer to connect to, HOST or HOST:PORT (port defaults to 6783). Repeatable. A peer
    /// that turns out to be this node itself is ignored.
    #[arg(long = "peer", value_name = "HOST[:PORT]")]
    pub peers: Vec<String>,

    /// File holding the network password (trailing newline ignored). Without it (and
    /// without WEFT_PASSWORD) the mesh runs unauthenticated and unencrypted.
    #[arg(long, value_name = "FILE", env = "WEFT_PASSWORD_FILE")]
    pub password_file: Option<PathBuf>,

    /// Name of this cluster: salts the password-derived key. All routers of a mesh must agree.
    #[arg(long, default_value = "weft", env = "WEFT_CLUSTER")]
    pub cluster: String,

    /// UDP address for control connections (QUIC).
    #[arg(long, default_value = "0.0.0.0:6783", env = "WEFT_LISTEN")]
    pub listen: SocketAddr,

    /// TCP address of the status API (local only by default).
    #[arg(long, default_value = "127.0.0.1:6784", env = "WEFT_STATUS_ADDR")]
    pub status_addr: SocketAddr,

    /// TCP address of the Prometheus metrics endpoint (`/metrics`); "off" disables it. The
    /// default is the node's loopback: give the node's internal address for a scraper
    /// elsewhere (pods never reach it through the bridge either way).
    #[arg(long, default_value = "127.0.0.1:6782", env = "WEFT_METRICS_ADDR")]
    pub metrics_addr: String,

    /// Unix socket of the local API (status now; the CNI plugin's way in).
    #[arg(long, default_value = "/run/weft/weft.sock", env = "WEFT_API_SOCKET")]
    pub api_socket: PathBuf,

    /// Address range for pod IPs (shown in status; allocation arrives with IPAM).
    #[arg(long, default_value = "10.32.0.0/12", env = "WEFT_IPALLOC_RANGE")]
    pub ipalloc_range: String,

    /// UDP port of the sleeve, the encrypted userspace data path (the same on every node).
    #[arg(long, default_value_t = 6784, env = "WEFT_SLEEVE_PORT")]
    pub sleeve_port: u16,

    /// Never use the in-kernel VXLAN fastpath.
    #[arg(long, env = "WEFT_NO_FASTPATH")]
    pub no_fastpath: bool,

    /// UDP port of the kernel VXLAN fastpath (the same on every node).
    #[arg(long, default_value_t = 6785, env = "WEFT_VXLAN_PORT")]
    pub vxlan_port: u16,

    /// Overlay MTU for pods (default: 1376, fits a 1500-byte underlay with encapsulation).
    #[arg(long, env = "WEFT_MTU")]
    pub mtu: Option<u32>,

    /// Directory for persistent state.
    #[arg(long, default_value = "/var/lib/weft", env = "WEFT_STATE_DIR")]
    pub state_dir: PathBuf,

    /// Directory of Kubernetes YAML (Namespaces, Pods, NetworkPolicies) for the policy enforcer.
    #[arg(long, value_name = "DIR", env = "WEFT_MANIFESTS")]
    pub manifests: Option<PathBuf>,

    /// Take peers and configuration from the Kubernetes API.
    #[arg(long, env = "WEFT_KUBE")]
    pub kube: bool,

    /// Do not connect to peers learned from gossip; only to --peer addresses.
    #[arg(long, env = "WEFT_NO_DISCOVERY")]
    pub no_discovery: bool,

    /// Maximum number of control connections.
    #[arg(long, default_value_t = 200, env = "WEFT_CONN_LIMIT")]
    pub conn_limit: usize,

    /// Remove what the router set up on this host (bridge, TAP, pod interfaces, nftables
    /// table) and its state in --state-dir, then exit. Run it only with no pods left.
    #[arg(long)]
    pub reset: bool,
}

/// `weft rmpeer` flags.
#[derive(Args, Debug, Clone)]
pub struct RmPeerArgs {
    /// The peer's name (02:..:07) or nickname.
    pub peer: String,
    /// Remove it even if it is reachable now (it will lose its address space).
    #[arg(long)]
    pub force: bool,
    /// The router's API socket (state-changing requests are served only there).
    #[arg(
        long,
        default_value = "unix:/run/weft/weft.sock",
        env = "WEFT_API_SOCKET"
    )]
    pub addr: String,
}
