//! # weft-gossip: the mesh control plane as a pure state machine
//!
//! Design note. Every weft router runs one [`Mesh`]. It knows who it is ([`Identity`]), which
//! addresses it should stay connected to, and the replicated view of the network: one
//! versioned record per peer and gossip channel (topology: who is connected to whom;
//! endpoints: which MACs and IPs live where). Records from one origin are ordered by
//! `(version, uid)` and merging keeps the larger, so merge is commutative, associative and
//! idempotent: any order of delivery converges. A restarted peer (new uid) that hears of its
//! old incarnation bumps its version past it.
//!
//! The crate does no I/O: it has no sockets, no clock and no entropy of its own. Every call
//! takes `now`; the random generator is seeded by the caller; outputs are [`Action`]s for the
//! driver (the `weft` router, or the deterministic simulator in [`sim`]) to execute. That is
//! what lets `cargo test` run a thousand peers with loss, partitions and restarts from a seed.
//!
//! Gossip is bounded: changes are *announced* as small summaries to ~log2(n) random
//! neighbours per interval (in two successive rounds) and records are *pulled* by whoever
//! lacks them, one neighbour at a time; a full digest is exchanged with one random neighbour
//! every `full_sync_interval` (anti-entropy) and on every new connection. Our own topology
//! record is republished when our connections change, at most once per
//! `gossip_interval * log2(n) / 2` while they keep changing. See `docs/control-protocol.md`.
//!
//! IP address management ([`ipam`]) rides on the same machinery: a third channel carries
//! each peer's claimed address blocks; allocation of addresses within them is local.
//!
//! Modules: [`handshake`] (plaintext wire types of the control handshake), `store` (per-origin records and their merge), `gossip` (news, wanted records,
//! tombstones, message sizes), `sync` (gossip message handling), `conns` (connections,
//! dialling, discovery, garbage collection), `targets` (addresses, backoff), `routes`
//! (unicast next hops, broadcast trees), [`ipam`] (address blocks and allocations),
//! [`mesh`] (the API tying them), [`sim`] (the simulator).

#![forbid(unsafe_code)]

mod conns;
mod gossip;
pub mod handshake;
pub mod ipam;
pub mod mesh;
pub mod message;
pub mod names;
pub mod peer;
mod routes;
pub mod sim;
mod store;
mod sync;
mod targets;

pub use ipam::{AllocKey, Allocation, IpamConfig, IpamError, IpamSpace, IpamStatus, RemoveOutcome};
pub use mesh::{
    Action, CloseReason, Config, ConnId, ConnectionStatus, FailKind, Failure, GossipStats, Input,
    Mesh, PeerStatus, Routes, TargetSource, TargetState,
};
pub use message::{
    Channel, ConnRecord, DecodeError, Dropped, Endpoint, EndpointRecord, IpamRecord, Message,
    PeerRecord, Removal, Summary, PROTOCOL_VERSION,
};
pub use peer::{Identity, ParseNameError, PeerName, PeerUid};
#[cfg(test)]
mod mesh_tests;

#[cfg(test)]
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<Mesh>();
};
