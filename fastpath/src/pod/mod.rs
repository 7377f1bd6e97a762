//! Pod interfaces: a veth pair from the node bridge into the pod's network namespace.
//!
//! ADD creates the pair in the host namespace (host end `vethweXXXXXXXX`, pod end under a
//! temporary name), moves the pod end into the pod namespace, attaches the host end to the
//! bridge with hairpin mode on and the port locked to the pod's MAC (no learning, no
//! unknown-unicast flooding, a static sticky FDB entry), then inside the pod renames the pod
//! end to `ifname`, sets MTU, address, up (and `lo` up) and the default route via the node's
//! gateway. Once the router has guarded the port, [`announce_pod_interface`] announces the
//! address with one gratuitous ARP.
//!
//! Hairpin mode lets the bridge send a frame back out of the port it came in on. It is what
//! makes a pod reach itself through a service address when the node's DNAT runs on bridged
//! traffic (`br_netfilter`, `bridge-nf-call-iptables=1`, as kube-proxy requires): the
//! translated packet is handed back to the bridge as if it had arrived on the pod's port, and
//! its destination is behind that same port. Without `br_netfilter` such a packet is routed by
//! the node and sent by the bridge device itself, which needs no hairpin. `tests/pod.rs` shows
//! both. If any step fails, the host end is deleted (which deletes its peer wherever
//! it is) and the error returned: no half-made attachment is left behind.
//!
//! Both ends carry an `ifalias` naming the attachment (`weft:<ifname>@<netns>` on the host end,
//! `weft:<host_ifname>` on the pod end). That is how ADD tells a leftover of its own interrupted
//! attempt (safe to replace) from an interface that belongs to someone else (refused), and how
//! DEL avoids deleting a pod interface that is not ours. Operators see it in `ip link`.
//!
//! Files: `add.rs` (ADD and its retry), `del.rs` (DEL), `check.rs` (CHECK); this one holds the
//! types, the naming and the checks shared by all three.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use ipnet::Ipv4Net;

use crate::error::{Error, Result};
use crate::nl::{validate_ifname, Netlink};
use crate::node::{validate_mtu, HOST_VETH_PREFIX};

mod add;
mod check;
mod del;

pub use add::{add_pod_interface, announce_pod_interface};
pub use check::check_pod_interface;
pub use del::del_pod_interface;

/// Lock the host end `host_ifname` of a pod's veth to the pod's `mac` again (see
/// [`Netlink::lock_pod_port`]): what ADD did, repeated by the router to repair a port someone
/// changed. Only a veth that is a port of some bridge is touched.
pub async fn lock_host_port(host_ifname: &str, mac: [u8; 6]) -> Result<()> {
    validate_ifname(host_ifname)?;
    let nl = Netlink::current()?;
    let l = nl.require_link(host_ifname).await?;
    if !l.is_kind("veth") || l.controller.is_none() {
        return Err(Error::WrongLinkType {
            name: l.name.clone(),
            ns: nl.ns().to_string(),
            found: l.kind_name(),
            expected: "veth attached to the node bridge",
        });
    }
    nl.lock_pod_port(&l, mac).await
}

/// One pod attachment, as the router hands it to us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodIfaceRequest {
    /// The pod's network namespace (`/var/run/netns/NAME`, `/proc/PID/ns/net`).
    pub netns: PathBuf,
    /// Interface name inside the pod (CNI_IFNAME, usually `eth0`).
    pub ifname: String,
    /// Host-side veth name: [`host_ifname_for`]`(container_id, ifname)`.
    pub host_ifname: String,
    /// The node bridge to attach to.
    pub bridge: String,
    /// The pod's address with the prefix length of the whole range (e.g. `10.32.0.7/12`).
    pub addr: Ipv4Net,
    /// The node's gateway address on the bridge; the pod's default route points at it.
    pub gateway: Ipv4Addr,
    pub mtu: u32,
}

/// What ADD made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodIface {
    /// MAC of the pod's interface (what the router gossips as the endpoint's MAC).
    pub mac: [u8; 6],
    pub host_ifname: String,
    /// Index of the interface inside the pod's namespace.
    pub ifindex_in_pod: u32,
}

/// FNV-1a, 64-bit: a tiny hash whose output is fixed by its definition, so names stay the
/// same across builds, versions and platforms (std's hasher makes no such promise).
fn fnv1a64(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            // A separator, so ("ab", "c") and ("a", "bc") differ.
            h ^= 0xff;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        for &b in *part {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

fn hex8(h: u64) -> String {
    format!("{:08x}", ((h >> 32) ^ h) as u32)
}

/// The host-side veth name for a container's interface: `vethwe` + 8 hex digits of a stable
/// hash of both. 14 characters (the kernel allows 15); the same inputs always give the same name.
pub fn host_ifname_for(container_id: &str, ifname: &str) -> String {
    format!(
        "{HOST_VETH_PREFIX}{}",
        hex8(fnv1a64(&[container_id.as_bytes(), ifname.as_bytes()]))
    )
}

/// Name of the pod end between creation and rename (unique per host end, never `vethwe*`).
pub(crate) fn temp_peer_name(host_ifname: &str) -> String {
    format!("weftp{}", hex8(fnv1a64(&[host_ifname.as_bytes()])))
}

fn truncate_alias(mut s: String) -> String {
    // IFALIASZ is 256 including the NUL.
    while s.len() > 255 {
        s.pop();
    }
    s
}

pub(crate) fn host_alias(req: &PodIfaceRequest) -> String {
    truncate_alias(format!("weft:{}@{}", req.ifname, req.netns.display()))
}

pub(crate) fn pod_alias(host_ifname: &str) -> String {
    format!("weft:{host_ifname}")
}

pub(crate) fn validate(req: &PodIfaceRequest) -> Result<()> {
    validate_ifname(&req.ifname)?;
    validate_ifname(&req.host_ifname)?;
    validate_ifname(&req.bridge)?;
    validate_mtu(req.mtu)?;
    if req.ifname == "lo" {
        return Err(Error::InvalidName {
            name: req.ifname.clone(),
            reason: "the pod's loopback cannot be the pod interface",
        });
    }
    if req.gateway == req.addr.addr() {
        return Err(Error::InvalidRequest(format!(
            "pod address {} equals the gateway",
            req.addr
        )));
    }
    Ok(())
}

/// The pod-side part of a request, owned, to move into the namespace thread.
#[derive(Debug, Clone)]
pub(crate) struct PodParams {
    pub(crate) ifname: String,
    pub(crate) addr: Ipv4Net,
    pub(crate) gateway: Ipv4Addr,
    pub(crate) mtu: u32,
    pub(crate) alias: String,
    pub(crate) netns: PathBuf,
}

impl PodParams {
    pub(crate) fn of(req: &PodIfaceRequest) -> PodParams {
        PodParams {
            ifname: req.ifname.clone(),
            addr: req.addr,
            gateway: req.gateway,
            mtu: req.mtu,
            alias: pod_alias(&req.host_ifname),
            netns: req.netns.clone(),
        }
    }

    pub(crate) fn conflict(&self, detail: String) -> Error {
        Error::PodIfaceConflict {
            ifname: self.ifname.clone(),
            netns: self.netns.clone(),
            detail,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_ifname_is_stable_short_and_distinct() {
        let a = host_ifname_for("0123456789abcdef", "eth0");
        assert_eq!(a, host_ifname_for("0123456789abcdef", "eth0"));
        assert!(a.starts_with(HOST_VETH_PREFIX));
        assert_eq!(a.len(), 14);
        assert!(validate_ifname(&a).is_ok());
        assert_ne!(a, host_ifname_for("0123456789abcdef", "eth1"));
        assert_ne!(a, host_ifname_for("0123456789abcdee", "eth0"));
        // The separator keeps the two fields apart.
        assert_ne!(host_ifname_for("ab", "c"), host_ifname_for("a", "bc"));
        // Pinned values: changing the hash would orphan every existing host veth on upgrade
        // (DEL computes the name again from the container ID).
        assert_eq!(host_ifname_for("abc", "eth0"), "vethwe5dff91b7");
        assert_eq!(fnv1a64(&[b"a"]), 0xaf63_dc4c_8601_ec8c); // the published FNV-1a test vector
    }

    /// The router drives these from a multi-threaded runtime: the futures must be `Send`.
    #[allow(dead_code)]
    fn futures_are_send(req: PodIfaceRequest) {
        fn is_send<T: Send>(_: T) {}
        is_send(add_pod_interface(&req));
        is_send(del_pod_interface(None, "a", "b"));
        is_send(check_pod_interface(&req));
        let cfg = crate::NodeConfig::default();
        is_send(crate::setup_node(&cfg));
        is_send(crate::reset(&cfg));
        is_send(crate::set_gateway("weft", req.addr));
    }

    #[test]
    fn temp_name_never_collides_with_host_prefix() {
        let t = temp_peer_name("vethwe01234567");
        assert!(!t.starts_with(HOST_VETH_PREFIX));
        assert!(validate_ifname(&t).is_ok());
    }

    #[test]
    fn alias_is_bounded() {
        let req = PodIfaceRequest {
            netns: PathBuf::from(format!("/var/run/netns/{}", "x".repeat(400))),
            ifname: "eth0".into(),
            host_ifname: "vethwe00000000".into(),
            bridge: "weft".into(),
            addr: "10.32.0.7/12".parse().unwrap(),
            gateway: Ipv4Addr::new(10, 32, 0, 1),
            mtu: 1376,
        };
        assert!(host_alias(&req).len() <= 255);
    }
}
