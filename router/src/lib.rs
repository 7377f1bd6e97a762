//! # weft: the router daemon
//!
//! Design note. The binary is a thin async driver around pure cores: it owns sockets, clocks
//! and processes; [`weft_gossip::Mesh`] owns the protocol. Modules:
//! - `transport`: QUIC control connections (quinn) authenticated by a Noise XXpsk3 handshake
//!   bound to the QUIC session; framing of gossip messages on per-channel streams.
//! - `daemon`: the event loop that feeds the mesh and executes its actions.
//! - `dataplane`: starts the sleeve (weft-sleeve) and feeds it sessions, routes and MACs.
//! - `pods` / `pod_guard`: the CNI API's side in the loop (IPAM, endpoints) and what each
//!   pod may send from its port (anti-spoofing, `weft_policy::guard`).
//! - `status` / `metrics`: the peer status HTTP API (TCP and unix socket) and Prometheus metrics.
//! - `client`: `weft status`, reading that API.
//! - `lab`: `weft lab`, a local mesh in network namespaces.
//! - `kube`: `weft router --kube`: peers, the pod CIDR and policy inputs from the Kubernetes
//!   API (watches against the API server; the daemon's side in `kube::driver`).

pub mod api;
pub mod cli;
pub mod client;
pub mod daemon;
pub mod dataplane;
pub mod enforcer;
pub mod fastpath;
pub mod identity;
pub mod kube;
pub mod lab;
pub mod masq;
pub mod metrics;
mod nft_table;
pub mod pod_guard;
pub mod pods;
pub mod startup;
pub mod state;
pub mod status;
pub mod transport;
pub mod vxlan_guard;
