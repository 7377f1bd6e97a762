//! A thin layer over `rtnetlink`: one connection bound to one namespace, the handful of link,
//! address and route operations the crate needs, and errors that say where things failed.
//!
//! Lookups return `Ok(None)` for "no such link" (ENODEV) so callers can be idempotent without
//! matching on errnos; deletions of something already gone count as done.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use futures_util::TryStreamExt;
use ipnet::Ipv4Net;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    BridgePortState, InfoBridgePort, InfoData, InfoPortData, LinkAttribute, LinkFlags, LinkInfo,
    LinkMessage, State,
};
use netlink_packet_route::neighbour::{NeighbourFlags, NeighbourState};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteHeader, RouteMessage};
use rtnetlink::packet_core::Nla;
use rtnetlink::{Handle, LinkBridgePort, LinkUnspec, RouteMessageBuilder};

use crate::error::{nl_to_io, Error, Result};
use crate::netns::current_netns_label;

/// A netlink connection in one network namespace (the one its creating thread was in).
/// Clones share the connection, which keeps working from any thread as long as the runtime it
/// was opened on is running.
#[derive(Clone)]
pub struct Netlink {
    handle: Handle,
    ns: String,
}

/// What the crate needs to know about a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// `IFLA_INFO_KIND`: "bridge", "veth", "tun", "vxlan", ...; `None` for physical devices.
    pub kind: Option<String>,
    pub mac: Option<[u8; 6]>,
    pub mtu: Option<u32>,
    /// Administratively up (`IFF_UP`).
    pub admin_up: bool,
    /// Operationally up (carrier and `IF_OPER_UP`).
    pub oper_up: bool,
    /// Index of the bridge (or other master) this link is enslaved to.
    pub controller: Option<u32>,
    /// `IFLA_LINK`: for a veth, the peer's index (in the peer's namespace).
    pub peer_index: Option<u32>,
    pub alias: Option<String>,
    /// For `tun` links: their mode and flags as the kernel reports them.
    pub tun: Option<TunInfo>,
    /// For bridge ports: whether the port is in the forwarding state.
    pub port_forwarding: Option<bool>,
    /// For bridge ports: whether hairpin mode is on (`IFLA_BRPORT_MODE`), i.e. whether the
    /// bridge may send a frame back out of the port it came in on.
    pub port_hairpin: Option<bool>,
    /// For bridge ports: whether the bridge learns source MACs on it (`IFLA_BRPORT_LEARNING`).
    pub port_learning: Option<bool>,
    /// For bridge ports: whether unknown unicast is flooded to it (`IFLA_BRPORT_UNICAST_FLOOD`).
    pub port_flood: Option<bool>,
}

/// Flags of a tun/tap link (`IFLA_TUN_*`, kernel 4.15+).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TunInfo {
    pub tap: bool,
    pub persist: bool,
    pub multi_queue: bool,
}

// IFLA_TUN_* attribute numbers (linux/if_link.h) and the IFF_TAP mode value.
const IFLA_TUN_TYPE: u16 = 3;
const IFLA_TUN_PERSIST: u16 = 6;
const IFLA_TUN_MULTI_QUEUE: u16 = 7;
const TUN_TYPE_TAP: u8 = 0x0002;

impl Link {
    fn from_message(msg: &LinkMessage) -> Link {
        let mut link = Link {
            index: msg.header.index,
            name: String::new(),
            kind: None,
            mac: None,
            mtu: None,
            admin_up: msg.header.flags.contains(LinkFlags::Up),
            oper_up: false,
            controller: None,
            peer_index: None,
            alias: None,
            tun: None,
            port_forwarding: None,
            port_hairpin: None,
            port_learning: None,
            port_flood: None,
        };
        for attr in &msg.attributes {
            match attr {
                LinkAttribute::IfName(n) => link.name = n.clone(),
                LinkAttribute::Address(a) if a.len() == 6 => {
                    link.mac = Some([a[0], a[1], a[2], a[3], a[4], a[5]])
                }
                LinkAttribute::Mtu(m) => link.mtu = Some(*m),
                LinkAttribute::OperState(s) => link.oper_up = *s == State::Up,
                LinkAttribute::Controller(c) => link.controller = Some(*c),
                LinkAttribute::Link(l) => link.peer_index = Some(*l),
                LinkAttribute::IfAlias(a) => link.alias = Some(a.clone()),
                LinkAttribute::LinkInfo(infos) => {
                    for info in infos {
                        match info {
                            LinkInfo::Kind(k) => link.kind = Some(k.to_string()),
                            LinkInfo::Data(InfoData::Tun(tun)) => {
                                link.tun = Some(parse_tun(tun));
                            }
                            LinkInfo::PortData(InfoPortData::BridgePort(port)) => {
                                for a in port {
                                    match a {
                                        InfoBridgePort::State(s) => {
                                            link.port_forwarding =
                                                Some(*s == BridgePortState::Forwarding)
                                        }
                                        InfoBridgePort::HairpinMode(on) => {
                                            link.port_hairpin = Some(*on)
                                        }
                                        InfoBridgePort::Learning(on) => {
                                            link.port_learning = Some(*on)
                                        }
                                        InfoBridgePort::UnicastFlood(on) => {
                                            link.port_flood = Some(*on)
                                        }
                                        _ => {}
                                    }
                                }
                            }
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        link
    }

    /// "a bridge", "a veth", "a device" (no kind): for error messages.
    pub fn kind_name(&self) -> String {
        self.kind.clone().unwrap_or_else(|| "plain device".into())
    }

    pub(crate) fn is_kind(&self, kind: &str) -> bool {
        self.kind.as_deref() == Some(kind)
    }
}

fn parse_tun(nlas: &[netlink_packet_route::link::InfoTun]) -> TunInfo {
    let mut info = TunInfo::default();
    for nla in nlas {
        let mut value = vec![0u8; nla.value_len()];
        nla.emit_value(&mut value);
        let first = value.first().copied().unwrap_or(0);
        match nla.kind() {
            IFLA_TUN_TYPE => info.tap = first == TUN_TYPE_TAP,
            IFLA_TUN_PERSIST => info.persist = first != 0,
            IFLA_TUN_MULTI_QUEUE => info.multi_queue = first != 0,
            _ => {}
        }
    }
    info
}

/// An IPv4 default route of the main table.
#[derive(Debug, Clone)]
pub(crate) struct DefaultRoute {
    pub gateway: Option<Ipv4Addr>,
    pub oif: Option<u32>,
}

fn is_enodev(e: &rtnetlink::Error) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if m.raw_code() == -libc::ENODEV)
}

impl Netlink {
    /// Open a connection in the calling thread's namespace; `ns` names it in errors. Must be
    /// called inside a tokio runtime (the connection is spawned on it).
    pub fn connect(ns: String) -> Result<Netlink> {
        let (conn, handle, _) =
            rtnetlink::new_connection().map_err(|source| Error::NetlinkSocket {
                ns: ns.clone(),
                source,
            })?;
        tokio::spawn(conn);
        Ok(Netlink { handle, ns })
    }

    /// Open a connection in the calling thread's namespace, named by its kernel identity.
    pub fn current() -> Result<Netlink> {
        Netlink::connect(current_netns_label())
    }

    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// How errors name this namespace.
    pub fn ns(&self) -> &str {
        &self.ns
    }

    pub(crate) fn err(&self, op: &'static str, target: &str, e: rtnetlink::Error) -> Error {
        Error::Netlink {
            op,
            target: target.to_string(),
            ns: self.ns.clone(),
            source: nl_to_io(e),
        }
    }

    /// The link called `name`, if any.
    pub async fn link(&self, name: &str) -> Result<Option<Link>> {
        let mut req = std::pin::pin!(self.handle.link().get().match_name(name).execute());
        match req.try_next().await {
            Ok(msg) => Ok(msg.as_ref().map(Link::from_message)),
            Err(e) if is_enodev(&e) => Ok(None),
            Err(e) => Err(self.err("looking up link", name, e)),
        }
    }

    /// The link with index `index`, if any.
    pub async fn link_by_index(&self, index: u32) -> Result<Option<Link>> {
        let mut req = std::pin::pin!(self.handle.link().get().match_index(index).execute());
        match req.try_next().await {
            Ok(msg) => Ok(msg.as_ref().map(Link::from_message)),
            Err(e) if is_enodev(&e) => Ok(None),
            Err(e) => Err(self.err("looking up link", &format!("#{index}"), e)),
        }
    }

    /// The link called `name`, or [`Error::LinkNotFound`].
    pub async fn require_link(&self, name: &str) -> Result<Link> {
        self.link(name).await?.ok_or_else(|| Error::LinkNotFound {
            name: name.to_string(),
            ns: self.ns.clone(),
        })
    }

    /// All links of the namespace.
    pub async fn links(&self) -> Result<Vec<Link>> {
        let msgs: Vec<LinkMessage> = self
            .handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|e| self.err("listing links", "", e))?;
        Ok(msgs.iter().map(Link::from_message).collect())
    }

    /// Send an `RTM_SETLINK` built by the caller; `op`/`name` describe it in errors.
    pub(crate) async fn set_link(
        &self,
        op: &'static str,
        name: &str,
        msg: LinkMessage,
    ) -> Result<()> {
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(|e| self.err(op, name, e))
    }

    /// Create a link from a fully built `RTM_NEWLINK` message.
    pub(crate) async fn add_link(
        &self,
        op: &'static str,
        name: &str,
        msg: LinkMessage,
    ) -> Result<()> {
        self.handle
            .link()
            .add(msg)
            .execute()
            .await
            .map_err(|e| self.err(op, name, e))
    }

    /// Set MTU, master and up on `link` in one request (what a port of the bridge needs).
    pub(crate) async fn enslave_up(&self, link: &Link, master: u32, mtu: u32) -> Result<()> {
        let msg = LinkUnspec::new_with_index(link.index)
            .mtu(mtu)
            .controller(master)
            .up()
            .build();
        self.set_link("attaching to the bridge (mtu, master, up)", &link.name, msg)
            .await
    }

    /// Turn hairpin mode on for bridge port `link` (which must already be a port: the kernel
    /// answers `EOPNOTSUPP` otherwise). Setting it when it is already on is harmless.
    ///
    /// Sent as `RTM_NEWLINK` on the existing link with `IFLA_LINKINFO` { `IFLA_INFO_SLAVE_KIND`
    /// "bridge", `IFLA_INFO_SLAVE_DATA` { `IFLA_BRPORT_MODE` } }, the bridge's port
    /// `changelink`: the same request as `ip link set dev X type bridge_slave hairpin on`.
    /// Netlink acts in this connection's namespace; sysfs (`brport/hairpin_mode`) would act in
    /// whichever namespace `/sys` was mounted for, wrong after a `setns`.
    pub(crate) async fn enable_port_hairpin(&self, link: &Link) -> Result<()> {
        let msg = LinkBridgePort::new(link.index).hairpin(true).build();
        self.handle
            .link()
            .set_port(msg)
            .execute()
            .await
            .map_err(|e| self.err("enabling hairpin mode on bridge port", &link.name, e))
    }

    /// Lock bridge port `link` to the one MAC `mac` may come from: no learning on the port (the
    /// bridge never takes a source MAC from a pod's frames), no unknown-unicast flooding to it
    /// (a pod never sees traffic that is not addressed to it), and a static, sticky FDB entry
    /// for `mac` on it (frames for the pod find it; no frame arriving elsewhere moves it).
    /// Idempotent.
    pub async fn lock_pod_port(&self, link: &Link, mac: [u8; 6]) -> Result<()> {
        let msg = LinkBridgePort::new(link.index)
            .learning(false)
            .flood(false)
            .build();
        self.handle
            .link()
            .set_port(msg)
            .execute()
            .await
            .map_err(|e| {
                self.err(
                    "setting pod port flags (learning, flood off)",
                    &link.name,
                    e,
                )
            })?;
        self.handle
            .neighbours()
            .add_bridge(link.index, &mac)
            .state(NeighbourState::Noarp)
            .flags(NeighbourFlags::Controller | NeighbourFlags::Sticky)
            .replace()
            .execute()
            .await
            .map_err(|e| self.err("pinning the pod's MAC on its bridge port", &link.name, e))
    }

    /// Delete a link; `Ok(false)` when it was already gone.
    pub(crate) async fn del_link(&self, link: &Link) -> Result<bool> {
        match self.handle.link().del(link.index).execute().await {
            Ok(()) => Ok(true),
            Err(e) if is_enodev(&e) => Ok(false),
            Err(e) => Err(self.err("deleting link", &link.name, e)),
        }
    }

    /// IPv4 addresses on link `index`, with the messages needed to delete them.
    pub(crate) async fn ipv4_addrs(
        &self,
        index: u32,
        name: &str,
    ) -> Result<Vec<(Ipv4Net, AddressMessage)>> {
        let msgs: Vec<AddressMessage> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await
            .map_err(|e| self.err("listing addresses of", name, e))?;
        let mut out = Vec::new();
        for msg in msgs {
            let local = msg.attributes.iter().find_map(|a| match a {
                AddressAttribute::Local(IpAddr::V4(ip)) => Some(*ip),
                _ => None,
            });
            let addr = local.or_else(|| {
                msg.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Address(IpAddr::V4(ip)) => Some(*ip),
                    _ => None,
                })
            });
            if let Some(ip) = addr {
                if let Ok(net) = Ipv4Net::new(ip, msg.header.prefix_len) {
                    out.push((net, msg));
                }
            }
        }
        Ok(out)
    }

    pub(crate) async fn add_ipv4(&self, link: &Link, net: Ipv4Net) -> Result<()> {
        self.handle
            .address()
            .add(link.index, IpAddr::V4(net.addr()), net.prefix_len())
            .execute()
            .await
            .map_err(|e| self.err("adding address", &format!("{net} to {}", link.name), e))
    }

    pub(crate) async fn del_addr(
        &self,
        name: &str,
        net: Ipv4Net,
        msg: AddressMessage,
    ) -> Result<()> {
        match self.handle.address().del(msg).execute().await {
            Ok(()) => Ok(()),
            // Already gone (EADDRNOTAVAIL): fine.
            Err(rtnetlink::Error::NetlinkError(m)) if m.raw_code() == -libc::EADDRNOTAVAIL => {
                Ok(())
            }
            Err(e) => Err(self.err("removing address", &format!("{net} from {name}"), e)),
        }
    }

    /// IPv4 default routes of the main table.
    pub(crate) async fn default_routes_v4(&self) -> Result<Vec<DefaultRoute>> {
        let msgs: Vec<RouteMessage> = self
            .handle
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute()
            .try_collect()
            .await
            .map_err(|e| self.err("listing routes", "", e))?;
        let mut out = Vec::new();
        for msg in msgs {
            let table = msg
                .attributes
                .iter()
                .find_map(|a| match a {
                    RouteAttribute::Table(t) => Some(*t),
                    _ => None,
                })
                .unwrap_or(u32::from(msg.header.table));
            if table != u32::from(RouteHeader::RT_TABLE_MAIN)
                || msg.header.destination_prefix_length != 0
            {
                continue;
            }
            let mut route = DefaultRoute {
                gateway: None,
                oif: None,
            };
            for a in &msg.attributes {
                match a {
                    RouteAttribute::Gateway(RouteAddress::Inet(gw)) => route.gateway = Some(*gw),
                    RouteAttribute::Oif(i) => route.oif = Some(*i),
                    _ => {}
                }
            }
            out.push(route);
        }
        Ok(out)
    }

    pub(crate) async fn add_default_route(&self, link: &Link, gateway: Ipv4Addr) -> Result<()> {
        let msg = RouteMessageBuilder::<Ipv4Addr>::new()
            .gateway(gateway)
            .output_interface(link.index)
            .build();
        self.handle.route().add(msg).execute().await.map_err(|e| {
            self.err(
                "adding default route",
                &format!("via {gateway} dev {}", link.name),
                e,
            )
        })
    }

    /// Wait (polling every 5 ms, at most `timeout`) until link `index` satisfies `ready`.
    /// Returns whether it did; timing out is not an error here.
    pub(crate) async fn wait_for(
        &self,
        index: u32,
        timeout: Duration,
        ready: impl Fn(&Link) -> bool,
    ) -> Result<bool> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self.link_by_index(index).await? {
                if ready(&l) {
                    return Ok(true);
                }
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// Check a name the way the kernel's `dev_valid_name` does, so a bad name fails before
/// anything is created, with a message that names it.
pub fn validate_ifname(name: &str) -> Result<()> {
    let bad = |reason| {
        Err(Error::InvalidName {
            name: name.to_string(),
            reason,
        })
    };
    if name.is_empty() {
        return bad("empty");
    }
    if name.len() > 15 {
        return bad("longer than 15 bytes (IFNAMSIZ)");
    }
    if name == "." || name == ".." {
        return bad("reserved");
    }
    if name.contains(['/', ':']) || name.chars().any(char::is_whitespace) {
        return bad("contains '/', ':' or whitespace");
    }
    Ok(())
}
