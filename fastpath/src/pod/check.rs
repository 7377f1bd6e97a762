//! CHECK: compare the attachment with the request and list every difference.

use super::{validate, PodIfaceRequest, PodParams};
use crate::error::{Error, Result};
use crate::netns::Netns;
use crate::nl::Netlink;
use crate::node::require_bridge;

/// Verify an attachment: the pod interface exists, is up, peered with the host end, has the
/// address, MTU and default route; the host end is up, on the bridge (hairpin mode on, no
/// learning, no flooding), with the MTU. Every mismatch is listed in one [`Error::CheckFailed`].
pub async fn check_pod_interface(req: &PodIfaceRequest) -> Result<()> {
    validate(req)?;
    let ns = Netns::open(&req.netns)?;
    let host = Netlink::current()?;
    let mut problems = Vec::new();
    let bridge = match require_bridge(&host, &req.bridge).await {
        Ok(b) => Some(b),
        Err(e) => {
            problems.push(e.to_string());
            None
        }
    };
    let host_end = host.link(&req.host_ifname).await?;
    match &host_end {
        None => problems.push(format!("host interface {} is missing", req.host_ifname)),
        Some(h) => {
            if !h.is_kind("veth") {
                problems.push(format!("host interface is a {}, not a veth", h.kind_name()));
            }
            if let Some(b) = &bridge {
                if h.controller != Some(b.index) {
                    problems.push(format!(
                        "host interface is not attached to bridge {}",
                        b.name
                    ));
                } else {
                    if h.port_hairpin != Some(true) {
                        problems
                            .push("hairpin mode is off on the host interface's bridge port".into());
                    }
                    if h.port_learning != Some(false) {
                        problems.push("the bridge learns MACs on the host interface's port".into());
                    }
                    if h.port_flood != Some(false) {
                        problems
                            .push("unknown unicast is flooded to the host interface's port".into());
                    }
                }
            }
            if h.mtu != Some(req.mtu) {
                problems.push(format!(
                    "host interface MTU is {:?}, want {}",
                    h.mtu, req.mtu
                ));
            }
            if !h.admin_up {
                problems.push("host interface is down".into());
            }
        }
    }
    let p = PodParams::of(req);
    let host_index = host_end.map(|h| h.index);
    let pod_problems = ns
        .run(move |nl| async move { check_pod_side(&nl, &p, host_index).await })
        .await?;
    problems.extend(pod_problems);
    if problems.is_empty() {
        return Ok(());
    }
    Err(Error::CheckFailed {
        ifname: req.ifname.clone(),
        host_ifname: req.host_ifname.clone(),
        netns: req.netns.clone(),
        detail: problems.join("; "),
    })
}

async fn check_pod_side(
    nl: &Netlink,
    p: &PodParams,
    host_index: Option<u32>,
) -> Result<Vec<String>> {
    let mut problems = Vec::new();
    let Some(l) = nl.link(&p.ifname).await? else {
        problems.push(format!("{} is missing in the pod", p.ifname));
        return Ok(problems);
    };
    if !l.is_kind("veth") {
        problems.push(format!("{} is a {}, not a veth", p.ifname, l.kind_name()));
    }
    if let (Some(want), Some(have)) = (host_index, l.peer_index) {
        if want != have {
            problems.push(format!(
                "{} is not peered with the host interface",
                p.ifname
            ));
        }
    }
    if !l.admin_up {
        problems.push(format!("{} is down", p.ifname));
    }
    if l.mtu != Some(p.mtu) {
        problems.push(format!("{} MTU is {:?}, want {}", p.ifname, l.mtu, p.mtu));
    }
    let addrs = nl.ipv4_addrs(l.index, &l.name).await?;
    if !addrs.iter().any(|(n, _)| *n == p.addr) {
        let have: Vec<String> = addrs.iter().map(|(n, _)| n.to_string()).collect();
        problems.push(format!(
            "{} lacks address {} (has [{}])",
            p.ifname,
            p.addr,
            have.join(", ")
        ));
    }
    let routes = nl.default_routes_v4().await?;
    if !routes
        .iter()
        .any(|r| r.gateway == Some(p.gateway) && r.oif == Some(l.index))
    {
        problems.push(format!(
            "no default route via {} dev {}",
            p.gateway, p.ifname
        ));
    }
    Ok(problems)
}
