//! The node side: the `weft` bridge, its gateway address, the sleeve's TAP, the sysctls pods
//! need, and `reset` to take it all down again.
//!
//! Everything here acts on the **calling thread's** network namespace (the host, for the
//! router; a test's "host" namespace when run through [`crate::netns::Netns::run`]) and is
//! idempotent: running it again converges on the same state and reports what it changed.
//!
//! Sysctls: `net.ipv4.ip_forward=1`, because pods reach their node's gateway address and, through
//! it (with masquerade, router side), everything outside the range. On the bridge,
//! `accept_ra=0` and no redirects either way (where `/proc/sys` is writable). `proxy_arp` on the bridge
//! stays **off**: the whole range is on-link on the bridge, so proxy ARP would never answer for
//! it anyway (the kernel only proxies for routes through *another* interface), and if it ever did
//! it would answer for remote pods with the node's MAC and hide the real owners that the
//! gossiped endpoint table exists to provide. `net.bridge.bridge-nf-call-iptables` is left as
//! it is: whether bridged traffic is filtered is the policy issue's decision.

use ipnet::Ipv4Net;
use rtnetlink::{LinkBridge, LinkUnspec};
use tracing::{debug, info, warn};

use crate::error::{Error, Result};
use crate::nl::{validate_ifname, Link, Netlink};
use crate::{sysctl, tap};

/// Default bridge name.
pub const DEFAULT_BRIDGE: &str = "weft";
/// Default TAP name.
pub const DEFAULT_TAP: &str = "weft-tap";
/// Default MTU of the bridge, TAP and pod interfaces until path MTU discovery says otherwise
/// (1500 less the sleeve's encapsulation and crypto overhead, with room to spare).
pub const DEFAULT_MTU: u32 = 1376;
/// Every host-side pod veth is named with this prefix (see [`crate::host_ifname_for`]);
/// [`reset`] removes all links that carry it.
pub const HOST_VETH_PREFIX: &str = "vethwe";

/// What the node's plumbing looks like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeConfig {
    /// Bridge name (default `weft`).
    pub bridge: String,
    /// TAP name (default `weft-tap`).
    pub tap: String,
    /// MTU of the bridge and the TAP.
    pub mtu: u32,
    /// MAC to give the bridge. `None` keeps the one the kernel picked at creation. Either way
    /// the address is set explicitly, which stops the kernel from changing the bridge's MAC to
    /// the lowest port MAC whenever ports come and go (pods would hold a stale gateway MAC).
    pub bridge_mac: Option<[u8; 6]>,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            bridge: DEFAULT_BRIDGE.into(),
            tap: DEFAULT_TAP.into(),
            mtu: DEFAULT_MTU,
            bridge_mac: None,
        }
    }
}

/// The result of [`setup_node`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeState {
    pub bridge_index: u32,
    pub bridge_mac: [u8; 6],
    pub tap_index: u32,
    /// The bridge did not exist and was created by this call.
    pub created_bridge: bool,
    /// The TAP did not exist and was created by this call.
    pub created_tap: bool,
    /// `net.ipv4.ip_forward` was off and was turned on by this call.
    pub enabled_ip_forward: bool,
}

/// What [`set_gateway`] changed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GatewayChange {
    pub added: bool,
    pub removed: Vec<Ipv4Net>,
}

pub(crate) fn validate_mtu(mtu: u32) -> Result<()> {
    if !(68..=65535).contains(&mtu) {
        return Err(Error::InvalidRequest(format!(
            "MTU {mtu} outside 68..=65535"
        )));
    }
    Ok(())
}

/// Create (or adopt) the bridge and the TAP, set MTUs, bring them up, enable forwarding.
pub async fn setup_node(cfg: &NodeConfig) -> Result<NodeState> {
    validate_ifname(&cfg.bridge)?;
    validate_ifname(&cfg.tap)?;
    validate_mtu(cfg.mtu)?;
    let enabled_ip_forward = sysctl::ensure("net/ipv4/ip_forward", "1")?;
    let nl = Netlink::current()?;
    let (bridge, created_bridge) = ensure_bridge(&nl, cfg).await?;
    let (tap, created_tap) = ensure_tap(&nl, cfg, &bridge).await?;
    harden_bridge(&cfg.bridge);
    let bridge_mac = bridge.mac.ok_or_else(|| Error::WrongLinkType {
        name: bridge.name.clone(),
        ns: nl.ns().to_string(),
        found: "bridge without an Ethernet address".into(),
        expected: "Ethernet bridge",
    })?;
    info!(bridge = %cfg.bridge, tap = %cfg.tap, mtu = cfg.mtu, created_bridge, created_tap, "node plumbing ready");
    Ok(NodeState {
        bridge_index: bridge.index,
        bridge_mac,
        tap_index: tap.index,
        created_bridge,
        created_tap,
        enabled_ip_forward,
    })
}

/// The node takes no router advertisement and no redirect on the bridge: pods are no
/// routers. The pod guard already drops those from pods (in nftables, which needs no writable
/// `/proc/sys`); this is the kernel's own second line where `/proc/sys` can be written (not
/// in an unprivileged container, where it is read-only: then it is logged and left).
fn harden_bridge(bridge: &str) {
    for (key, value) in [
        (format!("net/ipv6/conf/{bridge}/accept_ra"), "0"),
        (format!("net/ipv6/conf/{bridge}/accept_redirects"), "0"),
        (format!("net/ipv4/conf/{bridge}/accept_redirects"), "0"),
        (format!("net/ipv4/conf/{bridge}/send_redirects"), "0"),
    ] {
        match sysctl::ensure(&key, value) {
            Ok(true) => debug!(%key, value, "sysctl set"),
            Ok(false) => {}
            // No IPv6 in this kernel (or on this link): nothing to harden.
            Err(Error::Sysctl { op: "read", .. }) => {}
            Err(e) => info!(error = %e, "cannot harden the bridge (the pod guard still holds)"),
        }
    }
}

/// Find the bridge `name` or fail with a clear error (missing, or not a bridge).
pub(crate) async fn require_bridge(nl: &Netlink, name: &str) -> Result<Link> {
    let link = nl.require_link(name).await?;
    if !link.is_kind("bridge") {
        return Err(Error::WrongLinkType {
            name: name.to_string(),
            ns: nl.ns().to_string(),
            found: link.kind_name(),
            expected: "bridge",
        });
    }
    Ok(link)
}

async fn ensure_bridge(nl: &Netlink, cfg: &NodeConfig) -> Result<(Link, bool)> {
    let mut created = false;
    if nl.link(&cfg.bridge).await?.is_none() {
        let mut b = LinkBridge::new(&cfg.bridge).mtu(cfg.mtu);
        if let Some(mac) = cfg.bridge_mac {
            b = b.address(mac.to_vec());
        }
        match nl.add_link("creating bridge", &cfg.bridge, b.build()).await {
            Ok(()) => created = true,
            // Lost a race with another creator: adopt theirs below.
            Err(e) if e.errno() == Some(libc::EEXIST) => {}
            Err(e) => return Err(e),
        }
    }
    let link = require_bridge(nl, &cfg.bridge).await?;
    let mac = cfg.bridge_mac.or(link.mac);
    let mut msg = LinkUnspec::new_with_index(link.index).mtu(cfg.mtu).up();
    if let Some(mac) = mac {
        msg = msg.address(mac.to_vec());
    }
    nl.set_link(
        "configuring bridge (mtu, address, up)",
        &cfg.bridge,
        msg.build(),
    )
    .await?;
    let link = nl.require_link(&cfg.bridge).await?;
    Ok((link, created))
}

async fn ensure_tap(nl: &Netlink, cfg: &NodeConfig, bridge: &Link) -> Result<(Link, bool)> {
    let mismatch = |detail: &str| Error::TapMismatch {
        name: cfg.tap.clone(),
        ns: nl.ns().to_string(),
        detail: detail.to_string(),
    };
    let created = match nl.link(&cfg.tap).await? {
        Some(l) if l.is_kind("tun") => {
            if let Some(t) = l.tun {
                if !t.tap {
                    return Err(mismatch("is a layer-3 TUN device, not a TAP"));
                }
                if !t.multi_queue {
                    return Err(mismatch(
                        "is single-queue (the sleeve attaches multi-queue)",
                    ));
                }
                if !t.persist {
                    warn!(tap = %cfg.tap, "TAP exists but is not persistent: it goes when its owner closes it");
                }
            }
            debug!(tap = %cfg.tap, "reusing existing TAP");
            false
        }
        Some(l) => {
            return Err(Error::WrongLinkType {
                name: cfg.tap.clone(),
                ns: nl.ns().to_string(),
                found: l.kind_name(),
                expected: "tap",
            })
        }
        None => {
            tap::create_persistent(&cfg.tap).map_err(|(op, source)| Error::Tap {
                name: cfg.tap.clone(),
                ns: nl.ns().to_string(),
                op,
                source,
            })?;
            true
        }
    };
    let link = nl.require_link(&cfg.tap).await?;
    nl.enslave_up(&link, bridge.index, cfg.mtu).await?;
    Ok((nl.require_link(&cfg.tap).await?, created))
}

/// Give the bridge its gateway address `addr` (the node's own address from the range, with the
/// range's prefix length). Idempotent: adds it if missing and removes any other IPv4 address
/// on the bridge that overlaps it (an old gateway of this range, or the same IP with another
/// prefix). Addresses that do not overlap the range are left alone.
pub async fn set_gateway(bridge: &str, addr: Ipv4Net) -> Result<GatewayChange> {
    validate_ifname(bridge)?;
    let nl = Netlink::current()?;
    let br = require_bridge(&nl, bridge).await?;
    let mut change = GatewayChange::default();
    let mut present = false;
    for (net, msg) in nl.ipv4_addrs(br.index, bridge).await? {
        if net == addr {
            present = true;
        } else if addr.trunc().contains(&net.addr()) || net.trunc().contains(&addr.addr()) {
            nl.del_addr(bridge, net, msg).await?;
            change.removed.push(net);
        }
    }
    if !present {
        nl.add_ipv4(&br, addr).await?;
        change.added = true;
    }
    if change.added || !change.removed.is_empty() {
        info!(%bridge, gateway = %addr, removed = ?change.removed, "gateway address set");
    }
    Ok(change)
}

/// Remove the node plumbing: every `vethwe*` veth, the TAP and the bridge. Idempotent: what is
/// not there is skipped. Links with our names but of another type are left (and logged), never
/// deleted. Returns the names removed.
pub async fn reset(cfg: &NodeConfig) -> Result<Vec<String>> {
    validate_ifname(&cfg.bridge)?;
    validate_ifname(&cfg.tap)?;
    let nl = Netlink::current()?;
    let links = nl.links().await?;
    let mut removed = Vec::new();
    let veths = links
        .iter()
        .filter(|l| l.name.starts_with(HOST_VETH_PREFIX) && l.is_kind("veth"));
    for l in veths {
        if nl.del_link(l).await? {
            removed.push(l.name.clone());
        }
    }
    for (name, kind) in [(&cfg.tap, "tun"), (&cfg.bridge, "bridge")] {
        let Some(l) = links.iter().find(|l| &l.name == name) else {
            continue;
        };
        if !l.is_kind(kind) {
            warn!(%name, found = %l.kind_name(), "reset: not ours (wrong link type), left alone");
            continue;
        }
        if nl.del_link(l).await? {
            removed.push(l.name.clone());
        }
    }
    info!(?removed, "node plumbing reset");
    Ok(removed)
}
