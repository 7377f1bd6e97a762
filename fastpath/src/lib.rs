//! weft-fastpath: everything weft does to the kernel's network configuration.
//!
//! Design note.
//!
//! - **What it owns.** The node bridge (`weft`) and its gateway address, the persistent TAP the
//!   sleeve attaches to, the sysctls pods need, and pod attachments (a veth pair from the bridge
//!   into the pod's namespace, with address, routes, MTU and a gratuitous ARP), and the kernel
//!   VXLAN fastpath: the VXLAN device (`vxlan`), the FDB entries that send each remote MAC to
//!   the fastpath or the sleeve (`fdb`), heartbeats through the kernel path (`heartbeat`), the
//!   health state machine that judges them (`health`), and ESP transport SAs for an encrypted
//!   fastpath (`xfrm`). The router decides; this crate carries out, and reports what the
//!   kernel said.
//! - **Pure cores, thin drivers.** `health`, the heartbeat frame, `fdb::plan` and
//!   `fdb::reconcile::diff` take `now` and data and return decisions; they are unit-tested in
//!   virtual time. The drivers (netlink, packet sockets) only carry them out.
//! - **Netlink, not `ip`.** Everything goes through rtnetlink (TAP creation through the tun
//!   ioctls, the one thing netlink cannot do; ESP through XFRM netlink; heartbeats on packet
//!   sockets). No parsing of tool output, no dependency on which
//!   `ip` is installed, errors with the kernel's errno, and one code path the tests exercise.
//! - **Namespaces.** Every function acts on the calling thread's network namespace. Work inside
//!   a pod goes through [`netns::Netns::run`], which `setns`es a dedicated thread and never a
//!   tokio worker. Tests use the same mechanism to play "host" inside a throwaway namespace, so
//!   they never touch the machine's own network.
//! - **Idempotence.** Every operation may be repeated (a CNI runtime retries; a router restarts):
//!   existing objects of the right type are adopted, missing ones are created, objects that
//!   are already gone count as deleted. A name held by something of the wrong type is an error
//!   that names it; nothing that is not ours is deleted. A pod ADD that fails midway deletes
//!   what it created before returning the error.

pub mod caps;
pub mod error;
pub mod fdb;
pub mod garp;
pub mod health;
pub mod heartbeat;
pub mod netns;
pub mod nl;
pub mod node;
pub mod pod;
pub mod sysctl;
pub mod tap;
pub mod vxlan;
pub mod xfrm;

pub use caps::{detect_capabilities, Capabilities, Probe};
pub use error::{Error, Result};
pub use fdb::{plan, DesiredFdb, FdbPorts, PeerInput, Plan, PlanInput, ReconcileReport};
pub use health::{Health, HealthConfig};
pub use heartbeat::{AsyncHeartbeatSocket, HeartbeatSocket};
pub use ipnet::Ipv4Net;
pub use netns::{run_in_netns, Netns};
pub use nl::{Link, Netlink};
pub use node::{
    reset, set_gateway, setup_node, GatewayChange, NodeConfig, NodeState, DEFAULT_BRIDGE,
    DEFAULT_MTU, DEFAULT_TAP, HOST_VETH_PREFIX,
};
pub use pod::{
    add_pod_interface, announce_pod_interface, check_pod_interface, del_pod_interface,
    host_ifname_for, PodIface, PodIfaceRequest,
};
pub use vxlan::{
    remove_vxlan, setup_vxlan, VxlanConfig, VxlanState, DEFAULT_VNI, DEFAULT_VXLAN,
    DEFAULT_VXLAN_PORT, VXLAN_OVERHEAD,
};
