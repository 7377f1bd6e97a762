//! weft-policy: Kubernetes NetworkPolicy semantics (pure core) and nftables rendering.
//!
//! Design note.
//!
//! - **Pure core.** [`model`] is the validated input (namespaces, pods, policies);
//!   [`k8s`] builds it from the Kubernetes API types with the API server's validation and
//!   defaulting, [`manifests`] from a directory's YAML. [`compile::Compiled`] is the
//!   whole cluster's policy, factored (one address set per rule, shared by every selected
//!   pod) and answers the reference query [`compile::Compiled::allowed`]. Nothing here does I/O.
//! - **Rendering.** [`render::Ruleset`] is the node's share of the compiled policy: one
//!   nftables table (`inet weft-policy`). Each isolated local pod's address leads, through a
//!   verdict map, to its group's chain; a chain looks the peer up in static sets (ipBlocks,
//!   rules without peers, port lists; shared by content) and in **shared** sets of pod
//!   addresses (one per distinct list of pod-selector peers, whatever the number of rules
//!   and groups using it). Per-packet work is bounded by the rules that select that one
//!   pod, never by the number of policies. The shapes of chains and sets depend only on the
//!   policies, so a pod coming or going anywhere changes set elements only. `script` writes
//!   the table as nft text, whole (delete + re-create in one batch) or as element
//!   differences.
//! - **Driver.** [`apply::Enforcer`] runs `nft -f -` (one atomic transaction per change; a
//!   failure leaves the previous rules in force and is reported), reads the drop counters back,
//!   and [`nflog`] turns the logged drops into events.
//! - **Status.** [`status::PolicyStatus`] is the serializable `/status/policy` summary.

pub mod addr;
pub mod apply;
pub mod compile;
pub mod guard;
pub mod k8s;
pub mod manifests;
pub mod model;
pub mod nflog;
mod rects;
pub mod render;
mod script;
pub mod selector;
pub mod status;

pub use addr::AddrSet;
pub use apply::{ApplyError, ApplyMode, ApplyReport, Enforcer, Nft};
pub use compile::Compiled;
pub use model::{Cluster, Direction, NamedPort, Namespace, Pod, Policy, Protocol};
pub use render::{LogSettings, Ruleset};
pub use status::PolicyStatus;
