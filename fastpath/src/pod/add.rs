//! ADD: create the pair, move, attach, configure the pod end, announce; undo on failure.

use std::net::Ipv4Addr;
use std::time::Duration;

use ipnet::Ipv4Net;
use rtnetlink::packet_route::address::AddressMessage;
use rtnetlink::{LinkUnspec, LinkVeth};
use tracing::{debug, info, warn};

use super::{host_alias, temp_peer_name, validate, PodIface, PodIfaceRequest, PodParams};
use crate::error::{Error, Result};
use crate::garp;
use crate::netns::Netns;
use crate::nl::{DefaultRoute, Link, Netlink};
use crate::node::require_bridge;

/// Create the pod's interface as requested; see the module docs for the steps. Retrying an ADD
/// that succeeded (the pod already has `ifname` with `addr`, peered with `host_ifname`) returns
/// the existing attachment, after re-applying the settings.
pub async fn add_pod_interface(req: &PodIfaceRequest) -> Result<PodIface> {
    validate(req)?;
    let ns = Netns::open(&req.netns)?;
    let host = Netlink::current()?;
    let bridge = require_bridge(&host, &req.bridge).await?;
    let params = PodParams::of(req);

    let ifname = req.ifname.clone();
    let existing = ns
        .run(move |nl| async move {
            match nl.link(&ifname).await? {
                Some(l) => {
                    let addrs = nl.ipv4_addrs(l.index, &l.name).await?;
                    Ok(Some((l, addrs)))
                }
                None => Ok(None),
            }
        })
        .await?;
    if let Some((link, addrs)) = existing {
        return readopt(&host, &ns, req, &bridge, &params, link, addrs).await;
    }

    // A host end with our name: a leftover of our own interrupted ADD (replace it), or not ours.
    let alias = host_alias(req);
    if let Some(l) = host.link(&req.host_ifname).await? {
        if l.is_kind("veth") && l.alias.as_deref() == Some(alias.as_str()) {
            warn!(host_ifname = %l.name, "removing leftover of an interrupted ADD");
            host.del_link(&l).await?;
        } else {
            return Err(Error::HostIfnameTaken {
                host_ifname: l.name.clone(),
                ns: host.ns().to_string(),
                owner: l
                    .alias
                    .clone()
                    .unwrap_or_else(|| format!("a {} link", l.kind_name())),
                wanted: alias,
            });
        }
    }

    let tmp = temp_peer_name(&req.host_ifname);
    let veth = LinkVeth::new(&req.host_ifname, &tmp).mtu(req.mtu).build();
    host.add_link(
        "creating veth pair",
        &format!("{}/{tmp}", req.host_ifname),
        veth,
    )
    .await?;

    match plumb(&host, &ns, req, &bridge, &params, tmp, alias).await {
        Ok(iface) => {
            info!(netns = %req.netns.display(), ifname = %req.ifname, host_ifname = %req.host_ifname,
                addr = %req.addr, mac = %weft_types::Mac(iface.mac), "pod interface added");
            Ok(iface)
        }
        Err(e) => {
            // Deleting the host end deletes the pod end too, in whichever namespace it is.
            match host.link(&req.host_ifname).await {
                Ok(Some(l)) => {
                    if let Err(cleanup) = host.del_link(&l).await {
                        warn!(host_ifname = %l.name, error = %cleanup, "cleanup after failed ADD failed");
                    }
                }
                Ok(None) => {}
                Err(cleanup) => warn!(error = %cleanup, "cleanup after failed ADD: lookup failed"),
            }
            Err(e)
        }
    }
}

/// The steps after the pair exists: move, attach the host end, set up the pod end.
async fn plumb(
    host: &Netlink,
    ns: &Netns,
    req: &PodIfaceRequest,
    bridge: &Link,
    params: &PodParams,
    tmp: String,
    alias: String,
) -> Result<PodIface> {
    // The kernel ignores IFLA_IFALIAS on creation; it takes it on a set.
    let host_end = host.require_link(&req.host_ifname).await?;
    let msg = LinkUnspec::new_with_index(host_end.index)
        .alias(alias)
        .build();
    host.set_link("labelling the host end (alias)", &req.host_ifname, msg)
        .await?;
    let peer = host.require_link(&tmp).await?;
    let pod_mac = peer
        .mac
        .ok_or_else(|| params.conflict("has no Ethernet address".into()))?;
    let mv = LinkUnspec::new_with_index(peer.index)
        .setns_by_fd(ns.raw_fd())
        .build();
    host.set_link("moving the pod end into the pod namespace", &tmp, mv)
        .await?;
    // Host end up before the pod end: the pair gets carrier the moment the pod end comes up,
    // so the announcement below is not dropped by a not-yet-active device.
    let host_end = host.require_link(&req.host_ifname).await?;
    host.enslave_up(&host_end, bridge.index, req.mtu).await?;
    ensure_hairpin(host, &host_end, bridge).await?;
    host.lock_pod_port(&host_end, pod_mac).await?;

    let p = params.clone();
    let index = ns
        .run(move |nl| async move {
            let l = nl.require_link(&tmp).await?;
            let rename = LinkUnspec::new_with_index(l.index)
                .name(p.ifname.clone())
                .alias(p.alias.clone())
                .mtu(p.mtu)
                .build();
            nl.set_link("renaming the pod end (name, alias, mtu)", &tmp, rename)
                .await?;
            let l = nl.require_link(&p.ifname).await?;
            ensure_pod_config(&nl, &l, &p).await?;
            Ok(l.index)
        })
        .await?;
    Ok(PodIface {
        mac: pod_mac,
        host_ifname: req.host_ifname.clone(),
        ifindex_in_pod: index,
    })
}

/// Hairpin mode on the host end's bridge port, so that traffic the node NATs back to the pod
/// it came from (a pod reaching itself through a service address) may leave by the port it
/// came in on. `host_end` is the link as read before `enslave_up`: when it was already a port
/// of this bridge with hairpin on, there is nothing to do; otherwise (a new port, or one
/// whose hairpin mode someone turned off) it is set.
async fn ensure_hairpin(host: &Netlink, host_end: &Link, bridge: &Link) -> Result<()> {
    if host_end.controller == Some(bridge.index) && host_end.port_hairpin == Some(true) {
        return Ok(());
    }
    host.enable_port_hairpin(host_end).await
}

/// Announce the pod's address with one gratuitous ARP, from inside the pod. Call it once the
/// router has put the pod's port guard in place (`POST /cni/v1/attached`): until then the
/// bridge drops every frame from the new port, the announcement included. Best effort: a
/// pod or host end that has gone, a timeout or a send failure is logged, not returned; only
/// an unusable request or namespace is an error.
pub async fn announce_pod_interface(req: &PodIfaceRequest) -> Result<()> {
    validate(req)?;
    let ns = Netns::open(&req.netns)?;
    let host = Netlink::current()?;
    let Some(host_end) = host.link(&req.host_ifname).await? else {
        warn!(host_ifname = %req.host_ifname, "no gratuitous ARP: the host end is gone");
        return Ok(());
    };
    let p = PodParams::of(req);
    let host_index = host_end.index;
    ns.run(move |nl| async move {
        match nl.link(&p.ifname).await? {
            Some(l) => announce(&nl, &l, &host, host_index, &p).await,
            None => warn!(ifname = %p.ifname, "no gratuitous ARP: the pod interface is gone"),
        }
        Ok(())
    })
    .await
}

/// Send the announcement once it can arrive: the pod end must be operationally up and the
/// host end a forwarding bridge port, both of which the kernel settles asynchronously (link
/// watch) after the pod end comes up; a frame sent before is dropped at the bridge. `host` is a
/// connection in the host namespace (usable from the pod thread). Best effort: a timeout or
/// a send failure is logged, not returned.
async fn announce(pod: &Netlink, l: &Link, host: &Netlink, host_index: u32, p: &PodParams) {
    let wait = Duration::from_secs(2);
    // The outer timeouts bound the waits even if a netlink answer never comes.
    let hard = wait + Duration::from_secs(1);
    let pod_up = tokio::time::timeout(hard, pod.wait_for(l.index, wait, |l| l.oper_up)).await;
    let port_fwd = tokio::time::timeout(
        hard,
        host.wait_for(host_index, wait, |h| h.port_forwarding == Some(true)),
    )
    .await;
    if !matches!((&pod_up, &port_fwd), (Ok(Ok(true)), Ok(Ok(true)))) {
        debug!(ifname = %p.ifname, ?pod_up, ?port_fwd, "pod link not ready after 2 s; announcing anyway");
    }
    let Some(mac) = l.mac else { return };
    if let Err(e) = garp::announce(l.index, mac, p.addr.addr()) {
        warn!(ifname = %p.ifname, netns = %p.netns.display(), error = %e, "gratuitous ARP failed");
    }
}

/// MTU, address, up, `lo` up, default route: each applied only if missing (safe to repeat).
async fn ensure_pod_config(nl: &Netlink, l: &Link, p: &PodParams) -> Result<()> {
    if l.mtu != Some(p.mtu) {
        let msg = LinkUnspec::new_with_index(l.index).mtu(p.mtu).build();
        nl.set_link("setting MTU", &l.name, msg).await?;
    }
    let addrs = nl.ipv4_addrs(l.index, &l.name).await?;
    if !addrs.iter().any(|(net, _)| *net == p.addr) {
        nl.add_ipv4(l, p.addr).await?;
    }
    let lo = nl.require_link("lo").await?;
    if !lo.admin_up {
        let msg = LinkUnspec::new_with_index(lo.index).up().build();
        nl.set_link("bringing up", "lo", msg).await?;
    }
    if !l.admin_up {
        let msg = LinkUnspec::new_with_index(l.index).up().build();
        nl.set_link("bringing up", &l.name, msg).await?;
    }
    let routes = nl.default_routes_v4().await?;
    let ours = |r: &DefaultRoute| r.gateway == Some(p.gateway) && r.oif == Some(l.index);
    if !routes.iter().any(ours) {
        if let Some(other) = routes.first() {
            return Err(p.conflict(format!(
                "the pod already has a default route ({}); not replacing it",
                describe_route(other.gateway, other.oif)
            )));
        }
        nl.add_default_route(l, p.gateway).await?;
    }
    Ok(())
}

fn describe_route(gw: Option<Ipv4Addr>, oif: Option<u32>) -> String {
    let gw = gw.map_or("no gateway".to_string(), |g| format!("via {g}"));
    let oif = oif.map_or(String::new(), |i| format!(" dev #{i}"));
    format!("{gw}{oif}")
}

/// ADD found `ifname` already in the pod: accept it if it is this attachment, refuse otherwise.
async fn readopt(
    host: &Netlink,
    ns: &Netns,
    req: &PodIfaceRequest,
    bridge: &Link,
    params: &PodParams,
    pod_link: Link,
    addrs: Vec<(Ipv4Net, AddressMessage)>,
) -> Result<PodIface> {
    if !pod_link.is_kind("veth") {
        return Err(params.conflict(format!("it is a {} link, not a veth", pod_link.kind_name())));
    }
    if !addrs.iter().any(|(net, _)| *net == req.addr) {
        let have: Vec<String> = addrs.iter().map(|(n, _)| n.to_string()).collect();
        return Err(params.conflict(format!(
            "it has address(es) [{}], not {}",
            have.join(", "),
            req.addr
        )));
    }
    let host_end = host.link(&req.host_ifname).await?;
    let host_end = match host_end {
        Some(h) if h.is_kind("veth") && pod_link.peer_index == Some(h.index) => h,
        _ => {
            return Err(params.conflict(format!(
                "it has the address but is not peered with host interface {}",
                req.host_ifname
            )))
        }
    };
    host.enslave_up(&host_end, bridge.index, req.mtu).await?;
    ensure_hairpin(host, &host_end, bridge).await?;
    let mac = pod_link
        .mac
        .ok_or_else(|| params.conflict("has no Ethernet address".into()))?;
    host.lock_pod_port(&host_end, mac).await?;
    let p = params.clone();
    let index = ns
        .run(move |nl| async move {
            let l = nl.require_link(&p.ifname).await?;
            ensure_pod_config(&nl, &l, &p).await?;
            Ok(l.index)
        })
        .await?;
    debug!(ifname = %req.ifname, netns = %req.netns.display(), "ADD retried: attachment already in place");
    Ok(PodIface {
        mac,
        host_ifname: req.host_ifname.clone(),
        ifindex_in_pod: index,
    })
}
