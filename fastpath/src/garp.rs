//! Gratuitous ARP: one ARP announcement (RFC 5227 §2.3) for a new pod address, so neighbours
//! that cached the address under an earlier owner's MAC (a restarted pod that got its IP back,
//! a recycled address) update at once instead of after their ARP entries expire.
//!
//! The frame is built by hand and sent on a raw `AF_PACKET` socket bound to nothing: a socket
//! with protocol 0 receives nothing, and `sendto` names the interface. Like any frame on the
//! wire it is best effort: the caller logs a failure but does not undo the attachment for it.

#![allow(unsafe_code)] // syscalls and FFI; each use has its SAFETY note

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// Length of an ARP-over-Ethernet frame without padding (the kernel pads to 60).
pub const ARP_FRAME_LEN: usize = 42;

const ETH_P_ARP: u16 = 0x0806;
const ARPOP_REQUEST: u16 = 1;

/// The announcement for `ip` owned by `mac`: a broadcast ARP request whose sender and target
/// protocol addresses are both `ip` and whose target hardware address is zero.
pub fn arp_announcement(mac: [u8; 6], ip: Ipv4Addr) -> [u8; ARP_FRAME_LEN] {
    let mut f = [0u8; ARP_FRAME_LEN];
    f[0..6].copy_from_slice(&[0xff; 6]); // destination: broadcast
    f[6..12].copy_from_slice(&mac); // source
    f[12..14].copy_from_slice(&ETH_P_ARP.to_be_bytes());
    f[14..16].copy_from_slice(&1u16.to_be_bytes()); // hardware type: Ethernet
    f[16..18].copy_from_slice(&0x0800u16.to_be_bytes()); // protocol type: IPv4
    f[18] = 6; // hardware address length
    f[19] = 4; // protocol address length
    f[20..22].copy_from_slice(&ARPOP_REQUEST.to_be_bytes());
    f[22..28].copy_from_slice(&mac); // sender hardware address
    f[28..32].copy_from_slice(&ip.octets()); // sender protocol address
                                             // f[32..38]: target hardware address, zero
    f[38..42].copy_from_slice(&ip.octets()); // target protocol address
    f
}

/// If `frame` is an ARP announcement (sender IP == target IP), its sender MAC and IP.
pub fn parse_announcement(frame: &[u8]) -> Option<([u8; 6], Ipv4Addr)> {
    if frame.len() < ARP_FRAME_LEN || frame[12..14] != ETH_P_ARP.to_be_bytes() {
        return None;
    }
    let spa: [u8; 4] = frame[28..32].try_into().ok()?;
    let tpa: [u8; 4] = frame[38..42].try_into().ok()?;
    if spa != tpa {
        return None;
    }
    let sha: [u8; 6] = frame[22..28].try_into().ok()?;
    Some((sha, Ipv4Addr::from(spa)))
}

/// Send one announcement for `ip` from `mac` out of interface `ifindex` (in the calling
/// thread's namespace).
pub(crate) fn announce(ifindex: u32, mac: [u8; 6], ip: Ipv4Addr) -> io::Result<()> {
    // SAFETY: plain socket(2) call; the result is checked.
    let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: raw is a new descriptor owned by nobody else.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    let frame = arp_announcement(mac, ip);
    // SAFETY: sockaddr_ll is plain old data; zero is valid.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = ETH_P_ARP.to_be();
    sll.sll_ifindex = ifindex as i32;
    sll.sll_halen = 6;
    sll.sll_addr[..6].copy_from_slice(&[0xff; 6]);
    // SAFETY: frame and sll are valid for the lengths given.
    let sent = unsafe {
        libc::sendto(
            sock.as_raw_fd(),
            frame.as_ptr().cast(),
            frame.len(),
            0,
            (&sll as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announcement_layout() {
        let mac = [0x02, 0x11, 0x22, 0x33, 0x44, 0x55];
        let ip = Ipv4Addr::new(10, 32, 0, 7);
        let f = arp_announcement(mac, ip);
        assert_eq!(&f[0..6], &[0xff; 6]);
        assert_eq!(&f[6..12], &mac);
        assert_eq!(&f[12..14], &[0x08, 0x06]);
        assert_eq!(&f[14..22], &[0, 1, 8, 0, 6, 4, 0, 1]);
        assert_eq!(&f[32..38], &[0; 6]);
        assert_eq!(parse_announcement(&f), Some((mac, ip)));
        let mut reply = f;
        reply[41] = 1; // target IP differs: not an announcement
        assert_eq!(parse_announcement(&reply), None);
        assert_eq!(parse_announcement(&f[..40]), None);
    }
}
