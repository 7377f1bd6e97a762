//! What this kernel can do for weft, found by trying, for the router's status page.
//!
//! Module lists are no guide (`/proc/modules` is absent on a monolithic kernel, and
//! `/sys/module/X` exists for a built-in only when it has parameters), so each probe *does*
//! the thing, in a throwaway network namespace made for the purpose on a dedicated thread
//! (`unshare(CLONE_NEWNET)`): nothing is created where anyone could see it, and everything
//! vanishes with the thread. What each probe proves, exactly:
//!
//! - `bridge`, `veth`, `vxlan`: the kernel created a link of that type (the driver is built in
//!   or was auto-loaded). For VXLAN this says nothing about whether UDP 6785 gets through the
//!   underlay: that is the fastpath heartbeats' job.
//! - `tuntap`: `/dev/net/tun` opened and `TUNSETIFF` made a TAP device. The sleeve can work.
//! - `nftables`: an `NFT_MSG_GETTABLE` dump over `NETLINK_NETFILTER` was answered, so the
//!   nf_tables core is there. Individual expressions (masquerade, conntrack matches) load on
//!   first use and are not proven by this.
//! - `br_netfilter`: `/proc/sys/net/bridge/bridge-nf-call-iptables` exists in the caller's
//!   namespace, i.e. the module is loaded. (Whether it is enabled is the policy issue's concern.)
//! - `esp`: an ESP transport SA with the encrypted fastpath's exact parameters (AES-256-GCM,
//!   extended sequence numbers, replay window; see [`crate::xfrm`]) was installed over XFRM
//!   netlink, listed, and deleted. A kernel with XFRM but without ESP (or without that AEAD)
//!   refuses the SA: `Missing`, with the kernel's answer.
//!
//! Without the privilege to make a namespace (no `CAP_SYS_ADMIN`, as in the DaemonSet), the
//! link and TAP probes report `Unknown` with the reason rather than guessing or creating test
//! links where everyone sees them; the nftables and ESP probes, which leave nothing visible
//! behind, run in the caller's namespace. `Unknown` is not `Missing`: the router still tries
//! to create its VXLAN device and reports what the kernel said if that fails.

#![allow(unsafe_code)] // syscalls and FFI; each use has its SAFETY note

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use rtnetlink::packet_route::link::LinkMessage;
use rtnetlink::{LinkBridge, LinkVeth, LinkVxlan};
use serde::Serialize;

use crate::nl::Netlink;
use crate::tap;

/// The outcome of one probe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", content = "detail", rename_all = "snake_case")]
pub enum Probe {
    Available,
    /// The kernel said no; the detail says how.
    Missing(String),
    /// The probe could not run or gave no clear answer; the detail says why.
    Unknown(String),
}

impl Probe {
    pub fn is_available(&self) -> bool {
        matches!(self, Probe::Available)
    }
}

/// Kernel features weft uses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Capabilities {
    pub bridge: Probe,
    pub veth: Probe,
    pub tuntap: Probe,
    pub vxlan: Probe,
    pub nftables: Probe,
    pub br_netfilter: Probe,
    /// IPsec ESP (xfrm) with the AEAD the encrypted fastpath uses.
    pub esp: Probe,
}

/// Probe the kernel (a few milliseconds; blocking: from async code, call it through
/// `spawn_blocking`).
pub fn detect_capabilities() -> Capabilities {
    let br_netfilter =
        if std::path::Path::new("/proc/sys/net/bridge/bridge-nf-call-iptables").exists() {
            Probe::Available
        } else {
            Probe::Missing("/proc/sys/net/bridge absent: br_netfilter not loaded".into())
        };
    let probed = std::thread::Builder::new()
        .name("weft-caps".into())
        .spawn(probe_in_throwaway_netns)
        .map_err(|e| format!("cannot spawn probe thread: {e}"))
        .and_then(|h| h.join().map_err(|_| "probe thread panicked".to_string()));
    match probed {
        Ok(mut caps) => {
            caps.br_netfilter = br_netfilter;
            caps
        }
        Err(why) => Capabilities {
            bridge: Probe::Unknown(why.clone()),
            veth: Probe::Unknown(why.clone()),
            tuntap: Probe::Unknown(why.clone()),
            vxlan: Probe::Unknown(why.clone()),
            nftables: Probe::Unknown(why.clone()),
            br_netfilter,
            esp: Probe::Unknown(why),
        },
    }
}

fn probe_in_throwaway_netns() -> Capabilities {
    let unknown = |why: String| Capabilities {
        bridge: Probe::Unknown(why.clone()),
        veth: Probe::Unknown(why.clone()),
        tuntap: Probe::Unknown(why.clone()),
        vxlan: Probe::Unknown(why.clone()),
        nftables: Probe::Unknown(why.clone()),
        br_netfilter: Probe::Unknown(why.clone()),
        esp: Probe::Unknown(why),
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return unknown(format!("cannot build probe runtime: {e}")),
    };
    // SAFETY: unshare affects only this (dedicated, short-lived) thread's network namespace.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        // No CAP_SYS_ADMIN (the DaemonSet grants NET_ADMIN and NET_RAW only). Creating test
        // links here would be seen by everyone: leave them Unknown (the router then creates
        // its real devices and learns from that). The nftables dump only reads, and the ESP
        // SA is between documentation addresses: both are harmless in this namespace.
        let e = io::Error::last_os_error();
        let why = format!(
            "not probed: no throwaway namespace to create test links in ({e}; needs CAP_SYS_ADMIN)"
        );
        return Capabilities {
            bridge: Probe::Unknown(why.clone()),
            veth: Probe::Unknown(why.clone()),
            tuntap: Probe::Unknown(why.clone()),
            vxlan: Probe::Unknown(why),
            nftables: nft_probe(),
            br_netfilter: Probe::Unknown("set by the caller".into()),
            esp: rt.block_on(esp_probe()),
        };
    }
    let (bridge, veth, vxlan, esp) = rt.block_on(async {
        let esp = esp_probe().await;
        let nl = match Netlink::connect("throwaway probe netns".into()) {
            Ok(nl) => nl,
            Err(e) => {
                let u = Probe::Unknown(e.to_string());
                return (u.clone(), u.clone(), u, esp);
            }
        };
        (
            link_probe(&nl, LinkBridge::new("wprobe-br").build()).await,
            link_probe(&nl, LinkVeth::new("wprobe-v0", "wprobe-v1").build()).await,
            link_probe(&nl, LinkVxlan::new("wprobe-vx", 42).port(6785).build()).await,
            esp,
        )
    });
    let tuntap = match tap::probe("wprobe-tap") {
        Ok(()) => Probe::Available,
        Err(e) => classify(e),
    };
    Capabilities {
        bridge,
        veth,
        tuntap,
        vxlan,
        nftables: nft_probe(),
        br_netfilter: Probe::Unknown("set by the caller".into()),
        esp,
    }
}

async fn esp_probe() -> Probe {
    let Err(e) = crate::xfrm::probe().await else {
        return Probe::Available;
    };
    // The kernel checks the algorithm before the protocol: ENOSYS means the AEAD is not there
    // (it may still lack ESP itself), EPROTONOSUPPORT that ESP (or XFRM netlink) is not.
    let what = match e.errno() {
        Some(libc::ENOSYS | libc::ENOENT) => {
            format!("no {} AEAD for XFRM", crate::xfrm::AEAD_ALG)
        }
        Some(libc::EPROTONOSUPPORT | libc::EOPNOTSUPP) => "no ESP protocol in XFRM".to_string(),
        Some(libc::EINVAL) => "the kernel refused an ESP transport SA".to_string(),
        _ => return Probe::Unknown(e.to_string()),
    };
    Probe::Missing(format!("kernel lacks ESP: {what} ({e})"))
}

fn classify(e: io::Error) -> Probe {
    match e.raw_os_error() {
        Some(
            libc::EOPNOTSUPP | libc::ENOENT | libc::ENODEV | libc::ENXIO | libc::EPROTONOSUPPORT,
        ) => Probe::Missing(format!("kernel refused: {e}")),
        _ => Probe::Unknown(e.to_string()),
    }
}

async fn link_probe(nl: &Netlink, msg: LinkMessage) -> Probe {
    match nl.handle().link().add(msg).execute().await {
        Ok(()) => Probe::Available,
        Err(e) => classify(crate::error::nl_to_io(e)),
    }
}

/// Ask nf_tables for its tables (an empty dump in a fresh namespace).
fn nft_probe() -> Probe {
    const NFNL_SUBSYS_NFTABLES: u16 = 10;
    const NFT_MSG_GETTABLE: u16 = 1;
    const NLMSG_ERROR: u16 = 2;
    const NLMSG_DONE: u16 = 3;
    // SAFETY: plain socket(2); checked.
    let raw = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_NETFILTER,
        )
    };
    if raw < 0 {
        return classify(io::Error::last_os_error());
    }
    // SAFETY: new descriptor, owned here.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    let tv = libc::timeval {
        tv_sec: 1,
        tv_usec: 0,
    };
    // SAFETY: valid timeval for SO_RCVTIMEO.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    // nlmsghdr (16 bytes) + nfgenmsg (family, version, res_id).
    let mut req = [0u8; 20];
    req[0..4].copy_from_slice(&20u32.to_ne_bytes());
    req[4..6].copy_from_slice(&((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETTABLE).to_ne_bytes());
    let flags = (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16;
    req[6..8].copy_from_slice(&flags.to_ne_bytes());
    req[8..12].copy_from_slice(&1u32.to_ne_bytes());
    // SAFETY: req is valid for its length; a netlink socket needs no address to send to the kernel.
    if unsafe { libc::send(sock.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) } < 0 {
        return classify(io::Error::last_os_error());
    }
    let mut buf = [0u8; 8192];
    // SAFETY: buf is valid for its length.
    let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        return Probe::Unknown(format!(
            "no answer from nf_tables: {}",
            io::Error::last_os_error()
        ));
    }
    if (n as usize) < 16 {
        return Probe::Unknown("short netlink answer".into());
    }
    let kind = u16::from_ne_bytes([buf[4], buf[5]]);
    match kind {
        NLMSG_DONE => Probe::Available,
        NLMSG_ERROR if n >= 20 => {
            let code = i32::from_ne_bytes([buf[16], buf[17], buf[18], buf[19]]);
            if code == 0 {
                Probe::Available
            } else {
                classify(io::Error::from_raw_os_error(-code))
            }
        }
        k if k >> 8 == NFNL_SUBSYS_NFTABLES => Probe::Available,
        k => Probe::Unknown(format!("unexpected netlink message type {k:#x}")),
    }
}
