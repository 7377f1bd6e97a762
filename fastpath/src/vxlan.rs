//! The fastpath's kernel VXLAN device, `weft-vxlan`, a port of the node bridge.
//!
//! Settings, and why:
//!
//! - **VNI** [`DEFAULT_VNI`] (6785, like the port; every node must use the same), **UDP
//!   destination port** [`DEFAULT_VXLAN_PORT`] (6785, configurable), optional **local
//!   address** (the outer source; the kernel picks by route otherwise).
//! - **`nolearning`**: the device never learns where a MAC lives from incoming packets; only
//!   the router's FDB entries send anything ([`crate::fdb`]). No remote or group is set, so
//!   there is no default (all-zeros) entry: a frame for a MAC without an entry is dropped by
//!   the device, never sprayed to every node (broadcasts cross the overlay through the sleeve).
//! - **DF set on the outer header** (`IFLA_VXLAN_DF`, Linux 5.0+): an encapsulated packet too
//!   big for the underlay is dropped instead of fragmented, so the full-MTU heartbeats prove
//!   the MTU. A kernel that ignores the attribute is detected by reading it back
//!   ([`VxlanState::df`] false, logged); one that refuses it gets a device without it.
//! - **MTU** = the configured pod MTU. The underlay needs MTU + [`VXLAN_OVERHEAD`] bytes.
//! - **Bridge port flags**: learning off (a MAC learned on this port without a VXLAN entry
//!   would be a black hole; unknown MACs must flood to the sleeve instead), and unicast,
//!   multicast and broadcast flooding off (the device would drop those frames anyway: it only
//!   carries MACs that have entries). The port only carries frames for MACs with a static
//!   bridge entry pointing at it.
//!
//! Create or adopt, idempotently: an existing VXLAN device with our name and the wanted VNI,
//! port, local address, learning and DF is adopted (MTU, master, up and port flags
//! re-applied); one with other settings is deleted and recreated (the VNI and port cannot be
//! changed in place; its FDB entries are restored by the next reconcile). A link of another
//! kind with our name is an error naming it. A kernel without VXLAN gives
//! [`Error::Unsupported`].

use std::net::Ipv4Addr;

use futures_util::TryStreamExt;
use netlink_packet_route::link::{
    InfoData, InfoVxlan, LinkAttribute, LinkInfo, LinkMessage, VxlanDf,
};
use rtnetlink::{LinkBridgePort, LinkVxlan};
use tracing::{info, warn};

use crate::error::{nl_to_io, Error, Result};
use crate::nl::{validate_ifname, Link, Netlink};
use crate::node::{require_bridge, validate_mtu};

/// Default name of the VXLAN device.
pub const DEFAULT_VXLAN: &str = "weft-vxlan";
/// Default UDP destination port.
pub const DEFAULT_VXLAN_PORT: u16 = 6785;
/// Default VXLAN network identifier (all nodes must agree).
pub const DEFAULT_VNI: u32 = 6785;
pub use weft_types::overhead::VXLAN_OVERHEAD;

/// The VXLAN device wanted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanConfig {
    pub name: String,
    /// The bridge it is a port of.
    pub bridge: String,
    pub vni: u32,
    pub port: u16,
    /// Outer source address; `None` lets the kernel pick by route.
    pub local: Option<Ipv4Addr>,
    /// Pod MTU (the device's MTU).
    pub mtu: u32,
}

impl Default for VxlanConfig {
    fn default() -> Self {
        VxlanConfig {
            name: DEFAULT_VXLAN.into(),
            bridge: crate::node::DEFAULT_BRIDGE.into(),
            vni: DEFAULT_VNI,
            port: DEFAULT_VXLAN_PORT,
            local: None,
            mtu: crate::node::DEFAULT_MTU,
        }
    }
}

/// The result of [`setup_vxlan`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanState {
    pub index: u32,
    pub bridge_index: u32,
    /// Created by this call.
    pub created: bool,
    /// An existing device with other settings was replaced; why.
    pub replaced: Option<String>,
    /// DF is set on the outer header (false: the kernel ignored or refused it; heartbeats
    /// then do not prove the MTU, packets too big for the underlay get fragmented).
    pub df: bool,
}

/// VXLAN settings as the kernel reports them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Current {
    vni: Option<u32>,
    port: Option<u16>,
    local: Option<Ipv4Addr>,
    learning: Option<bool>,
    df: Option<VxlanDf>,
    remote: bool,
}

fn current(msg: &LinkMessage) -> Option<Current> {
    let mut c = None;
    for attr in &msg.attributes {
        let LinkAttribute::LinkInfo(infos) = attr else {
            continue;
        };
        for info in infos {
            let LinkInfo::Data(InfoData::Vxlan(v)) = info else {
                continue;
            };
            let mut cur = Current::default();
            for a in v {
                match a {
                    InfoVxlan::Id(id) => cur.vni = Some(*id),
                    InfoVxlan::Port(p) => cur.port = Some(*p),
                    InfoVxlan::Local(l) => cur.local = Some(*l),
                    InfoVxlan::Learning(l) => cur.learning = Some(*l),
                    InfoVxlan::Df(d) => cur.df = Some(*d),
                    InfoVxlan::Group(g) if !g.is_unspecified() => cur.remote = true,
                    _ => {}
                }
            }
            c = Some(cur);
        }
    }
    c
}

async fn raw_link(nl: &Netlink, name: &str) -> Result<Option<LinkMessage>> {
    let mut req = std::pin::pin!(nl.handle().link().get().match_name(name).execute());
    match req.try_next().await {
        Ok(m) => Ok(m),
        Err(rtnetlink::Error::NetlinkError(m)) if m.raw_code() == -libc::ENODEV => Ok(None),
        Err(e) => Err(nl.err("looking up link", name, e)),
    }
}

/// What differs between the device and the config (empty: adopt it).
fn mismatch(cfg: &VxlanConfig, cur: &Current) -> Vec<String> {
    let mut why = Vec::new();
    if cur.vni != Some(cfg.vni) {
        why.push(format!("VNI {:?} (want {})", cur.vni, cfg.vni));
    }
    if cur.port != Some(cfg.port) {
        why.push(format!("port {:?} (want {})", cur.port, cfg.port));
    }
    let local = cur.local.filter(|l| !l.is_unspecified());
    if local != cfg.local {
        why.push(format!("local {local:?} (want {:?})", cfg.local));
    }
    if cur.learning != Some(false) {
        why.push("learning on".into());
    }
    if cur.remote {
        why.push("has a remote or group".into());
    }
    // DF: only a device that reports another DF value is replaced; one that reports none
    // comes from a kernel without the attribute (recreating would not help).
    if cur.df.is_some_and(|d| d != VxlanDf::Set) {
        why.push(format!("df {:?}", cur.df));
    }
    why
}

fn build(cfg: &VxlanConfig, df: bool) -> LinkMessage {
    let mut b = LinkVxlan::new(&cfg.name, cfg.vni)
        .port(cfg.port)
        .learning(false)
        .mtu(cfg.mtu);
    if let Some(l) = cfg.local {
        b = b.local(l);
    }
    if df {
        b = b.df(VxlanDf::Set);
    }
    b.build()
}

fn is_unsupported(errno: Option<i32>) -> bool {
    matches!(
        errno,
        Some(libc::EOPNOTSUPP | libc::ENODEV | libc::EPROTONOSUPPORT | libc::ENOENT)
    )
}

/// Create or adopt the VXLAN device, attach it to the bridge, set its port flags, bring it up.
/// Acts on the calling thread's namespace; the bridge must exist ([`crate::setup_node`]).
pub async fn setup_vxlan(cfg: &VxlanConfig) -> Result<VxlanState> {
    validate_ifname(&cfg.name)?;
    validate_ifname(&cfg.bridge)?;
    validate_mtu(cfg.mtu)?;
    if cfg.vni == 0 || cfg.vni >= 1 << 24 {
        return Err(Error::InvalidRequest(format!(
            "VNI {} outside 1..=16777215",
            cfg.vni
        )));
    }
    if cfg.port == 0 {
        return Err(Error::InvalidRequest("VXLAN port 0".into()));
    }
    let nl = Netlink::current()?;
    let bridge = require_bridge(&nl, &cfg.bridge).await?;
    let mut replaced = None;
    if let Some(msg) = raw_link(&nl, &cfg.name).await? {
        let link = nl.require_link(&cfg.name).await?;
        if !link.is_kind("vxlan") {
            return Err(Error::WrongLinkType {
                name: cfg.name.clone(),
                ns: nl.ns().to_string(),
                found: link.kind_name(),
                expected: "vxlan",
            });
        }
        let why = mismatch(cfg, &current(&msg).unwrap_or_default());
        if !why.is_empty() {
            let why = why.join(", ");
            warn!(vxlan = %cfg.name, %why, "VXLAN device has other settings: replacing it");
            nl.del_link(&link).await?;
            replaced = Some(why);
        }
    }
    let mut created = false;
    if nl.link(&cfg.name).await?.is_none() {
        let mut res = nl
            .handle()
            .link()
            .add(build(cfg, true))
            .execute()
            .await
            .map_err(nl_to_io);
        if res
            .as_ref()
            .is_err_and(|e| e.raw_os_error() == Some(libc::EINVAL))
        {
            // An old kernel may refuse IFLA_VXLAN_DF outright: try without it.
            warn!(vxlan = %cfg.name, "kernel refused the VXLAN device with DF set; creating it without");
            res = nl
                .handle()
                .link()
                .add(build(cfg, false))
                .execute()
                .await
                .map_err(nl_to_io);
        }
        match res {
            Ok(()) => created = true,
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) if is_unsupported(e.raw_os_error()) => {
                return Err(Error::Unsupported {
                    what: "VXLAN",
                    ns: nl.ns().to_string(),
                    source: e,
                })
            }
            Err(source) => {
                return Err(Error::Netlink {
                    op: "creating VXLAN device",
                    target: format!("{} (vni {}, port {})", cfg.name, cfg.vni, cfg.port),
                    ns: nl.ns().to_string(),
                    source,
                })
            }
        }
    }
    let link: Link = nl.require_link(&cfg.name).await?;
    if !link.is_kind("vxlan") {
        return Err(Error::WrongLinkType {
            name: cfg.name.clone(),
            ns: nl.ns().to_string(),
            found: link.kind_name(),
            expected: "vxlan",
        });
    }
    nl.enslave_up(&link, bridge.index, cfg.mtu).await?;
    let port = LinkBridgePort::new(link.index)
        .learning(false)
        .flood(false)
        .mcast_flood(false)
        .bcast_flood(false)
        .build();
    nl.handle()
        .link()
        .set_port(port)
        .execute()
        .await
        .map_err(|e| {
            nl.err(
                "setting bridge port flags (learning, flood off)",
                &cfg.name,
                e,
            )
        })?;
    let df = raw_link(&nl, &cfg.name)
        .await?
        .and_then(|m| current(&m))
        .is_some_and(|c| c.df == Some(VxlanDf::Set));
    if !df {
        warn!(vxlan = %cfg.name, "DF is not set on the VXLAN outer header (kernel without IFLA_VXLAN_DF?): heartbeats do not prove the MTU");
    }
    info!(vxlan = %cfg.name, vni = cfg.vni, port = cfg.port, mtu = cfg.mtu, created, df, "VXLAN device ready");
    Ok(VxlanState {
        index: link.index,
        bridge_index: bridge.index,
        created,
        replaced,
        df,
    })
}

/// Delete the VXLAN device `name` (its FDB entries go with it). `Ok(false)` when there was
/// none; a link of another kind with that name is left alone (and logged).
pub async fn remove_vxlan(name: &str) -> Result<bool> {
    validate_ifname(name)?;
    let nl = Netlink::current()?;
    match nl.link(name).await? {
        Some(l) if l.is_kind("vxlan") => nl.del_link(&l).await,
        Some(l) => {
            warn!(%name, found = %l.kind_name(), "not removing: not a VXLAN device");
            Ok(false)
        }
        None => Ok(false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mismatch_lists_every_difference() {
        let cfg = VxlanConfig::default();
        let good = Current {
            vni: Some(DEFAULT_VNI),
            port: Some(DEFAULT_VXLAN_PORT),
            local: Some(Ipv4Addr::UNSPECIFIED),
            learning: Some(false),
            df: Some(VxlanDf::Set),
            remote: false,
        };
        assert!(mismatch(&cfg, &good).is_empty());
        let no_df_support = Current {
            df: None,
            ..good.clone()
        };
        assert!(mismatch(&cfg, &no_df_support).is_empty());
        let bad = Current {
            vni: Some(1),
            port: Some(4789),
            local: Some(Ipv4Addr::new(192, 0, 2, 1)),
            learning: Some(true),
            df: Some(VxlanDf::Unset),
            remote: true,
        };
        assert_eq!(mismatch(&cfg, &bad).len(), 6);
    }
}
