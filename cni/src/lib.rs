//! # weft-cni: `weft-net`, the CNI plugin
//!
//! Design note. Container runtimes run `weft-net` once per operation, with `CNI_*` variables
//! in the environment and the network configuration on stdin (CNI spec 1.0.0: ADD, DEL, CHECK,
//! VERSION; 1.1.0: STATUS, GC; results also in the 0.3.x/0.4.0 format). The plugin keeps no
//! state of its own: the router owns addresses and the endpoint table (asked over HTTP/1.1 JSON
//! on its unix socket, `/cni/v1/*`, docs/pods.md, types in `weft-api`), and `weft-fastpath`
//! does the netlink work. The crate links no QUIC, Kubernetes client or HTTP server.
//! - [`spec`]: pure protocol: versions, environment, `CNI_ARGS`, configuration, `prevResult`,
//!   result and error JSON.
//! - [`plugin`]: the commands and their order (nothing half-created), the router client.
//! - `plumbing`: [`NetlinkPlumbing`], the [`plugin::Plumbing`] backed by `weft_fastpath::pod`.
//!
//! Success: exit 0, the result JSON on stdout for ADD (and VERSION), nothing for the others.
//! Failure: exit 1, `{"cniVersion","code","msg","details"}` on stdout, in the configuration's
//! version when it is readable and supported. Logs go to stderr (and to the file named by
//! `WEFT_CNI_LOG`, set up by the binary).
//!
//! | code | when |
//! |---|---|
//! | 1 | `cniVersion` absent or not one of 0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0; a command the version lacks (CHECK < 0.4.0, STATUS/GC < 1.1.0) |
//! | 2 | `ipam.type` set (weft allocates; no delegated IPAM) |
//! | 3 | `CNI_NETNS` does not exist (ADD, CHECK) |
//! | 4 | `CNI_COMMAND` missing/unknown; `CNI_CONTAINERID`, `CNI_IFNAME` (and `CNI_NETNS` but for DEL) missing or invalid; `CNI_NETNS` not a netns; `CNI_ARGS` malformed or with unknown keys and no `IgnoreUnknown=1` |
//! | 5 | stdin unreadable |
//! | 6 | stdin empty or not a JSON object; `prevResult` unreadable |
//! | 7 | invalid `name`, `type`, `socket` (absolute path), `dns`, valid-attachments; GC without them; CHECK without `prevResult` |
//! | 11 | router unreachable (message names the socket), or the router says so (IPAM not ready) |
//! | 50 / 51 | STATUS: router unreachable or not ready (51 only when the router says so) |
//! | 100 | range exhausted (from the router) |
//! | 101 | router error, or an answer the plugin cannot use |
//! | 102 | interface plumbing failed; ADD found `CNI_IFNAME` already in the netns |
//! | 103 | CHECK: router, `prevResult` and the interface disagree |

#![forbid(unsafe_code)]

pub mod plugin;
mod plumbing;
pub mod spec;

pub use plugin::{run, Outcome, Plumbing};
pub use plumbing::NetlinkPlumbing;
pub use spec::{CniError, CniVersion, Command};
