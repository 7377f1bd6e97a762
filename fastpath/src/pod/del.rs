//! DEL: remove the attachment, tolerating anything already gone.

use std::path::Path;

use tracing::{debug, warn};

use super::pod_alias;
use crate::error::{Error, Result};
use crate::netns::Netns;
use crate::nl::{validate_ifname, Netlink};

/// Remove a pod attachment. Idempotent: a missing host end, a missing pod interface, a pod
/// namespace that no longer exists (path gone, or no longer a namespace) are all fine. Only
/// veths are deleted, and in the pod only the one carrying our alias.
pub async fn del_pod_interface(
    netns: Option<&Path>,
    host_ifname: &str,
    ifname: &str,
) -> Result<()> {
    validate_ifname(host_ifname)?;
    validate_ifname(ifname)?;
    let host = Netlink::current()?;
    if let Some(l) = host.link(host_ifname).await? {
        if l.is_kind("veth") {
            host.del_link(&l).await?;
        } else {
            warn!(%host_ifname, kind = %l.kind_name(), "DEL: host interface is not a veth; left alone");
        }
    }
    let Some(path) = netns else { return Ok(()) };
    let ns = match Netns::open(path) {
        Ok(ns) => ns,
        Err(Error::NetnsOpen { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            debug!(netns = %path.display(), "DEL: pod namespace already gone");
            return Ok(());
        }
        Err(Error::NotANetns { .. }) => {
            debug!(netns = %path.display(), "DEL: path is no longer a network namespace");
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    let ifname = ifname.to_string();
    let alias = pod_alias(host_ifname);
    ns.run(move |nl| async move {
        if let Some(l) = nl.link(&ifname).await? {
            if l.is_kind("veth") && l.alias.as_deref() == Some(alias.as_str()) {
                nl.del_link(&l).await?;
            } else {
                debug!(%ifname, "DEL: pod interface is not ours; left alone");
            }
        }
        Ok(())
    })
    .await
}
