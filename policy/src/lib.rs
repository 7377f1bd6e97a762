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
//!   nftables table (`inet weft-policy`) whose per-packet work is two verdict-map lookups and
//!   one concatenated interval-set lookup per direction, however many policies exist. It is
//!   written as nft text, either whole (delete + re-create in one batch) or as the element
//!   differences against the previous ruleset.
//! - **Driver.** [`apply::Enforcer`] runs `nft -f -` (one atomic transaction per change; a
//!   failure leaves the previous rules in force and is reported), reads the drop counters back,
//!   and [`nflog`] turns the logged drops into events.
//! - **Status.** [`status::PolicyStatus`] is the serializable `/status/policy` summary.

pub mod addr;
pub mod apply;
pub mod compile;
pub mod k8s;
pub mod manifests;
pub mod model;
pub mod nflog;
pub mod render;
pub mod selector;
pub mod status;

pub use addr::AddrSet;
pub use apply::{ApplyError, ApplyMode, ApplyReport, Enforcer, Nft};
pub use compile::Compiled;
pub use model::{Cluster, Direction, NamedPort, Namespace, Pod, Policy, Protocol};
pub use render::{LogSettings, Ruleset};
pub use status::PolicyStatus;
