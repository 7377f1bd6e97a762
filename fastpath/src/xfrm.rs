//! Encrypted fastpath: IPsec ESP in transport mode over the VXLAN packets (UDP to the VXLAN
//! port) between this node and one peer, through the kernel's XFRM netlink interface (the
//! maintained `xfrmnetlink` crate of the rust-netlink project).
//!
//! Per peer, four objects, all tagged with the caller's `reqid`:
//!
//! - an outbound SA (this node → peer, `spi_out`, `key_out`) and an inbound SA (peer → this
//!   node, `spi_in`, `key_in`), AEAD [`AEAD_ALG`] (AES-256-GCM, RFC 4106: 32-byte key + 4-byte
//!   salt = [`KEY_LEN`] bytes, 16-byte ICV), with extended sequence numbers and a replay window
//!   of [`REPLAY_WINDOW`] packets;
//! - an `out` policy for UDP from this node to the peer's VXLAN port, and an `in` policy for
//!   UDP from the peer to ours, each requiring that SA (not optional).
//!
//! The keys and SPIs come from the caller (the router derives them from the control
//! handshake); the two nodes must mirror each other: one node's `(spi_out, key_out)` is the
//! other's `(spi_in, key_in)`. [`install`] is idempotent: policies are added or updated, an SA
//! already present under the same SPI is replaced (the kernel cannot change an SA's keys in
//! place). To rekey without dropping packets, install SAs under new SPIs on both nodes, then
//! [`remove_sa`] the old ones. [`remove`] deletes all four and ignores what is already gone.
//!
//! Inbound plaintext: the `in` policy is enforced on the VXLAN device's UDP socket before the
//! packet is decapsulated, so plaintext VXLAN from an encrypted peer's address is dropped
//! (counted as `XfrmInTmplMismatch` in `/proc/net/xfrm_stat`); verified in the VM
//! (`tests/esp.rs`).

use std::net::{IpAddr, Ipv4Addr};

use futures_util::TryStreamExt;
use netlink_packet_xfrm::{
    Address, Id, UserTemplate, IPPROTO_ESP, XFRM_MODE_TRANSPORT, XFRM_POLICY_IN, XFRM_POLICY_OUT,
    XFRM_STATE_ESN,
};

use crate::error::{Error, Result};

/// AEAD used for the ESP SAs.
pub const AEAD_ALG: &str = "rfc4106(gcm(aes))";
/// Key material per direction: AES-256 key (32) + salt (4).
pub const KEY_LEN: usize = 36;
/// ICV length in bits.
pub const ICV_BITS: u32 = 128;
/// Anti-replay window (packets).
pub const REPLAY_WINDOW: u32 = 1024;
pub use weft_types::overhead::ESP_OVERHEAD;

const IPPROTO_UDP: u8 = 17;

/// ESP for the VXLAN traffic between this node and one peer.
#[derive(Clone, PartialEq, Eq)]
pub struct EspPeer {
    pub local: Ipv4Addr,
    pub remote: Ipv4Addr,
    /// The VXLAN UDP port (the same on both nodes).
    pub port: u16,
    pub reqid: u32,
    pub spi_out: u32,
    pub key_out: [u8; KEY_LEN],
    pub spi_in: u32,
    pub key_in: [u8; KEY_LEN],
}

impl std::fmt::Debug for EspPeer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EspPeer")
            .field("local", &self.local)
            .field("remote", &self.remote)
            .field("port", &self.port)
            .field("reqid", &self.reqid)
            .field("spi_out", &format_args!("{:#x}", self.spi_out))
            .field("spi_in", &format_args!("{:#x}", self.spi_in))
            .finish_non_exhaustive()
    }
}

fn xerr(op: &'static str, target: String, e: xfrmnetlink::Error) -> Error {
    let errno = match &e {
        xfrmnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    };
    let detail = match errno {
        Some(n) => std::io::Error::from_raw_os_error(n).to_string(),
        None => e.to_string(),
    };
    Error::Xfrm {
        op,
        target,
        detail,
        errno,
    }
}

fn connect() -> Result<xfrmnetlink::Handle> {
    let (conn, handle, _) = xfrmnetlink::new_connection().map_err(|e| Error::Xfrm {
        op: "opening",
        target: "the XFRM netlink socket".into(),
        detail: e.to_string(),
        errno: e.raw_os_error(),
    })?;
    tokio::spawn(conn);
    Ok(handle)
}

fn template(local: Ipv4Addr, remote: Ipv4Addr, reqid: u32, outbound: bool) -> UserTemplate {
    let (src, dst) = if outbound {
        (local, remote)
    } else {
        (remote, local)
    };
    UserTemplate {
        id: Id {
            daddr: Address::from_ipv4(&dst),
            spi: 0,
            proto: IPPROTO_ESP,
        },
        family: libc::AF_INET as u16,
        saddr: Address::from_ipv4(&src),
        reqid,
        mode: XFRM_MODE_TRANSPORT,
        ..UserTemplate::default()
    }
}

/// Install (or rekey) the SAs and policies for `p` in the calling thread's namespace.
pub async fn install(p: &EspPeer) -> Result<()> {
    let h = connect()?;
    let target = format!("{} <-> {}", p.local, p.remote);
    for (src, dst, spi, key) in [
        (p.local, p.remote, p.spi_out, &p.key_out),
        (p.remote, p.local, p.spi_in, &p.key_in),
    ] {
        // The kernel's SA update never changes keys, so an SA that exists under this SPI is
        // deleted and added again: what is installed is always what the caller passed.
        let mut result = Ok(());
        for attempt in 0..2 {
            if attempt == 1 {
                remove_sa(src, dst, spi).await?;
            }
            result = h
                .state()
                .add(IpAddr::V4(src), IpAddr::V4(dst))
                .protocol(IPPROTO_ESP)
                .spi(spi)
                .mode(XFRM_MODE_TRANSPORT)
                .reqid(p.reqid)
                .flags(XFRM_STATE_ESN)
                .replay_window(REPLAY_WINDOW, 0, 0, 0, 0)
                .encryption_aead(AEAD_ALG, &key.to_vec(), ICV_BITS)
                .map_err(|e| xerr("building ESP SA", target.clone(), e))?
                .execute()
                .await;
            let exists = matches!(&result, Err(xfrmnetlink::Error::NetlinkError(m))
                if m.code.is_some_and(|c| c.get() == -libc::EEXIST));
            if !exists {
                break;
            }
        }
        result.map_err(|e| {
            xerr(
                "installing ESP SA",
                format!("{src} -> {dst} spi {spi:#x}"),
                e,
            )
        })?;
    }
    for (src, dst, dir, outbound) in [
        (p.local, p.remote, XFRM_POLICY_OUT, true),
        (p.remote, p.local, XFRM_POLICY_IN, false),
    ] {
        h.policy()
            .update(IpAddr::V4(src), 32, IpAddr::V4(dst), 32)
            .direction(dir)
            .selector_protocol(IPPROTO_UDP)
            .selector_protocol_dst_port(p.port)
            .add_template(template(p.local, p.remote, p.reqid, outbound))
            .execute()
            .await
            .map_err(|e| {
                xerr(
                    "installing ESP policy",
                    format!("udp {src} -> {dst}:{}", p.port),
                    e,
                )
            })?;
    }
    Ok(())
}

/// Remove what [`install`] made for this peer. Already gone is fine.
pub async fn remove(p: &EspPeer) -> Result<()> {
    let h = connect()?;
    for (src, dst, dir) in [
        (p.local, p.remote, XFRM_POLICY_OUT),
        (p.remote, p.local, XFRM_POLICY_IN),
    ] {
        match h
            .policy()
            .delete(IpAddr::V4(src), 32, IpAddr::V4(dst), 32)
            .direction(dir)
            .selector_protocol(IPPROTO_UDP)
            .selector_protocol_dst_port(p.port)
            .execute()
            .await
        {
            Ok(()) => {}
            Err(e) if is_gone(&e) => {}
            Err(e) => {
                return Err(xerr(
                    "removing ESP policy",
                    format!("udp {src} -> {dst}:{}", p.port),
                    e,
                ))
            }
        }
    }
    remove_sa(p.local, p.remote, p.spi_out).await?;
    remove_sa(p.remote, p.local, p.spi_in).await
}

fn is_gone(e: &xfrmnetlink::Error) -> bool {
    matches!(e, xfrmnetlink::Error::NetlinkError(m)
        if m.code.is_some_and(|c| c.get() == -libc::ENOENT || c.get() == -libc::ESRCH))
}

/// Delete one ESP SA (`src` → `dst`, `spi`). Already gone is fine. With [`install`] under new
/// SPIs this is how to rekey without loss: install the new SAs on both nodes (the kernel
/// prefers the newest SA of a policy's reqid), then remove the old ones.
pub async fn remove_sa(src: Ipv4Addr, dst: Ipv4Addr, spi: u32) -> Result<()> {
    let h = connect()?;
    match h
        .state()
        .delete(IpAddr::V4(src), IpAddr::V4(dst))
        .protocol(IPPROTO_ESP)
        .spi(spi)
        .execute()
        .await
    {
        Ok(()) => Ok(()),
        Err(e) if is_gone(&e) => Ok(()),
        Err(e) => Err(xerr(
            "removing ESP SA",
            format!("{src} -> {dst} spi {spi:#x}"),
            e,
        )),
    }
}

/// Capability probe: install one ESP SA exactly as [`install`] would (same algorithm, ESN,
/// replay window), read it back, delete it. Best run in a throwaway namespace; in a live one
/// it is harmless: the SA is between two TEST-NET-1 addresses (RFC 5737) that never carry
/// traffic, has no policy, and exists for the few milliseconds of the probe.
pub(crate) async fn probe() -> Result<()> {
    let h = connect()?;
    let (src, dst) = (
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)),
    );
    let spi = 0x7765_6674;
    h.state()
        .add(src, dst)
        .protocol(IPPROTO_ESP)
        .spi(spi)
        .mode(XFRM_MODE_TRANSPORT)
        .reqid(1)
        .flags(XFRM_STATE_ESN)
        .replay_window(REPLAY_WINDOW, 0, 0, 0, 0)
        .encryption_aead(AEAD_ALG, &vec![0x42; KEY_LEN], ICV_BITS)
        .map_err(|e| xerr("building ESP SA", "probe".into(), e))?
        .execute()
        .await
        .map_err(|e| xerr("installing a test ESP SA", AEAD_ALG.into(), e))?;
    let found: Vec<_> = h
        .state()
        .get_dump()
        .execute()
        .try_collect()
        .await
        .map_err(|e| xerr("listing ESP SAs", "probe".into(), e))?;
    h.state()
        .delete(src, dst)
        .protocol(IPPROTO_ESP)
        .spi(spi)
        .execute()
        .await
        .map_err(|e| xerr("removing the test ESP SA", "probe".into(), e))?;
    if !found.iter().any(|m| m.user_sa_info.id.spi == spi) {
        return Err(Error::Xfrm {
            op: "reading back",
            target: "the test ESP SA".into(),
            detail: "the kernel accepted it but does not list it".into(),
            errno: None,
        });
    }
    Ok(())
}
