//! [`Plumbing`] by `weft_fastpath::pod` (rtnetlink), with its errors turned into CNI errors.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use weft_fastpath::{
    add_pod_interface, announce_pod_interface, check_pod_interface, del_pod_interface,
    host_ifname_for, Error, Ipv4Net, Netlink, Netns, PodIfaceRequest,
};

use super::plugin::{Plumbing, PodLinks, PodSpec};
use super::spec::{code, CniError};

/// The real plumbing: veth pair, pod namespace, bridge, address, routes, MTU, gratuitous ARP.
#[derive(Clone, Copy, Debug, Default)]
pub struct NetlinkPlumbing;

fn to_cni(e: Error) -> CniError {
    let code = match &e {
        Error::NetnsOpen { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
            code::UNKNOWN_CONTAINER
        }
        Error::NotANetns { .. } => code::INVALID_ENV,
        Error::CheckFailed { .. } => code::CHECK_FAILED,
        _ => code::INTERFACE,
    };
    let msg = match &e {
        Error::NotANetns { .. } => format!("invalid CNI_NETNS: {e}"),
        _ => e.to_string(),
    };
    CniError::new(code, msg)
}

fn request(spec: &PodSpec) -> Result<PodIfaceRequest, CniError> {
    let bad = |what: String| {
        CniError::new(
            code::ROUTER_ERROR,
            "the weft router answered an unusable ADD",
        )
        .with_details(what)
    };
    let addr: Ipv4Net = spec
        .ip
        .parse()
        .map_err(|_| bad(format!("ip {:?} is not an IPv4 address/prefix", spec.ip)))?;
    let gateway: Ipv4Addr = spec
        .gateway
        .parse()
        .map_err(|_| bad(format!("gateway {:?} is not an IPv4 address", spec.gateway)))?;
    Ok(PodIfaceRequest {
        netns: PathBuf::from(&spec.netns),
        ifname: spec.ifname.clone(),
        host_ifname: host_ifname_for(&spec.container_id, &spec.ifname),
        bridge: spec.bridge.clone(),
        addr,
        gateway,
        mtu: spec.mtu,
    })
}

/// Whether `path` is the network namespace this thread is in (same nsfs inode).
fn is_current_netns(path: &str) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    match (
        std::fs::metadata(path),
        std::fs::metadata("/proc/thread-self/ns/net"),
    ) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// A pod is never the node: `CNI_NETNS` naming the namespace the plugin runs in (the host's,
/// where the runtime runs it) would put the pod's address and default route on the node.
fn refuse_own_netns(netns: &str) -> Result<(), CniError> {
    if is_current_netns(netns) {
        return Err(CniError::new(
            code::INVALID_ENV,
            format!("invalid CNI_NETNS {netns}: it is the node's own network namespace"),
        )
        .with_details("a pod's interface goes into the pod's namespace, never the host's"));
    }
    Ok(())
}

/// MAC of `name` in the namespace `netns` (the calling one when `None`); empty if unknown.
async fn mac_of(netns: Option<&str>, name: &str) -> Result<String, CniError> {
    let name = name.to_string();
    let link = match netns {
        None => Netlink::current().map_err(to_cni)?.link(&name).await,
        Some(p) => {
            let ns = Netns::open(p).map_err(to_cni)?;
            ns.run(move |nl| async move { nl.link(&name).await }).await
        }
    }
    .map_err(to_cni)?;
    Ok(link
        .and_then(|l| l.mac)
        .map(|m| weft_types::Mac(m).to_string())
        .unwrap_or_default())
}

impl Plumbing for NetlinkPlumbing {
    async fn exists(&self, netns: &str, ifname: &str) -> Result<bool, CniError> {
        let ns = Netns::open(netns).map_err(to_cni)?;
        refuse_own_netns(netns)?;
        let ifname = ifname.to_string();
        ns.run(move |nl| async move { nl.link(&ifname).await })
            .await
            .map(|l| l.is_some())
            .map_err(to_cni)
    }

    async fn add(&self, spec: &PodSpec) -> Result<PodLinks, CniError> {
        refuse_own_netns(&spec.netns)?;
        let req = request(spec)?;
        let iface = add_pod_interface(&req).await.map_err(to_cni)?;
        // The host end's MAC is for the result only: a failure to read it is not worth
        // undoing the attachment.
        let host_mac = mac_of(None, &iface.host_ifname).await.unwrap_or_else(|e| {
            tracing::warn!("reading the MAC of {}: {e}", iface.host_ifname);
            String::new()
        });
        Ok(PodLinks {
            host_ifname: iface.host_ifname,
            host_mac,
            pod_mac: weft_types::Mac(iface.mac).to_string(),
        })
    }

    async fn del(
        &self,
        container_id: &str,
        ifname: &str,
        netns: Option<&str>,
    ) -> Result<(), CniError> {
        let host_ifname = host_ifname_for(container_id, ifname);
        del_pod_interface(netns.map(Path::new), &host_ifname, ifname)
            .await
            .map_err(to_cni)
    }

    async fn announce(&self, spec: &PodSpec) {
        let r = match request(spec) {
            Ok(req) => announce_pod_interface(&req).await.map_err(to_cni),
            Err(e) => Err(e),
        };
        if let Err(e) = r {
            tracing::warn!("no gratuitous ARP for {}: {e}", spec.ifname);
        }
    }

    async fn check(&self, spec: &PodSpec) -> Result<PodLinks, CniError> {
        refuse_own_netns(&spec.netns)?;
        let req = request(spec)?;
        check_pod_interface(&req).await.map_err(to_cni)?;
        let host_mac = mac_of(None, &req.host_ifname).await?;
        let pod_mac = mac_of(Some(&spec.netns), &spec.ifname).await?;
        Ok(PodLinks {
            host_ifname: req.host_ifname,
            host_mac,
            pod_mac,
        })
    }
}
