//! Hand-made frames for attack tests, and a raw packet socket inside a namespace to send them
//! and to watch what arrives: what a pod with `NET_RAW` (a default container capability) can do.

#![allow(unsafe_code)] // syscalls and FFI; each use has its SAFETY note

use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use weft_fastpath::netns::Netns;

pub type Mac = [u8; 6];
pub const BROADCAST: Mac = [0xff; 6];
pub const ETH_IPV4: u16 = 0x0800;
pub const ETH_ARP: u16 = 0x0806;
pub const ETH_IPV6: u16 = 0x86dd;

pub fn parse_mac(s: &str) -> Mac {
    s.trim().parse::<weft_types::Mac>().expect("a MAC").octets()
}

pub fn fmt_mac(m: &Mac) -> String {
    weft_types::Mac(*m).to_string()
}

/// The MAC of `ifname` inside network namespace `ns` (a pod: `eth0`; a node: `weft`).
pub fn mac_in(ns: &str, ifname: &str) -> Mac {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", ns, "cat"])
        .arg(format!("/sys/class/net/{ifname}/address"))
        .output()
        .expect("running ip");
    assert!(out.status.success(), "no {ifname} in {ns}");
    parse_mac(&String::from_utf8_lossy(&out.stdout))
}

pub fn eth(dst: Mac, src: Mac, ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + payload.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An 802.1Q-tagged frame.
pub fn eth_vlan(dst: Mac, src: Mac, vid: u16, ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut inner = Vec::with_capacity(4 + payload.len());
    inner.extend_from_slice(&vid.to_be_bytes());
    inner.extend_from_slice(&ethertype.to_be_bytes());
    inner.extend_from_slice(payload);
    eth(dst, src, 0x8100, &inner)
}

fn checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    let mut odd: Option<u8> = None;
    for p in parts {
        for &b in p.iter() {
            match odd.take() {
                Some(hi) => sum += u32::from(u16::from_be_bytes([hi, b])),
                None => odd = Some(b),
            }
        }
    }
    if let Some(hi) = odd {
        sum += u32::from(u16::from_be_bytes([hi, 0]));
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

pub fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, payload: &[u8]) -> Vec<u8> {
    let len = (20 + payload.len()) as u16;
    let mut h = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, proto, 0, 0];
    h[2..4].copy_from_slice(&len.to_be_bytes());
    h.extend_from_slice(&src.octets());
    h.extend_from_slice(&dst.octets());
    let c = checksum(&[&h]);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h.extend_from_slice(payload);
    h
}

/// An IPv4 UDP packet (checksum 0: "none", allowed for IPv4).
pub fn udp4(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut u = Vec::with_capacity(8 + payload.len());
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(payload);
    ipv4(src, dst, 17, &u)
}

/// An ARP packet (Ethernet/IPv4): `op` 1 request, 2 reply.
pub fn arp(op: u16, sha: Mac, spa: Ipv4Addr, tha: Mac, tpa: Ipv4Addr) -> Vec<u8> {
    let mut a = vec![0, 1, 0x08, 0, 6, 4];
    a.extend_from_slice(&op.to_be_bytes());
    a.extend_from_slice(&sha);
    a.extend_from_slice(&spa.octets());
    a.extend_from_slice(&tha);
    a.extend_from_slice(&tpa.octets());
    a
}

/// An IPv6 packet carrying ICMPv6 `body` (type, code, checksum filled in, rest), hop limit 255
/// as neighbour discovery requires.
pub fn icmpv6(src: Ipv6Addr, dst: Ipv6Addr, typ: u8, code: u8, rest: &[u8]) -> Vec<u8> {
    let mut m = vec![typ, code, 0, 0];
    m.extend_from_slice(rest);
    let len = m.len() as u32;
    let pseudo_len = len.to_be_bytes();
    let c = checksum(&[
        &src.octets(),
        &dst.octets(),
        &pseudo_len,
        &[0, 0, 0, 58],
        &m,
    ]);
    m[2..4].copy_from_slice(&c.to_be_bytes());
    let mut p = vec![0x60, 0, 0, 0];
    p.extend_from_slice(&(m.len() as u16).to_be_bytes());
    p.extend_from_slice(&[58, 255]);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(&m);
    p
}

/// A router advertisement: default router for 1800 s, prefix `prefix`/64 on-link and for
/// autoconfiguration, from `mac`.
pub fn router_advert(src: Ipv6Addr, mac: Mac, prefix: Ipv6Addr) -> Vec<u8> {
    // cur hop limit, flags (high preference), router lifetime, reachable, retrans
    let mut r = vec![64, 0x08, 0x07, 0x08, 0, 0, 0, 0, 0, 0, 0, 0];
    // prefix information: type 3, length 4, /64, L+A, valid, preferred, reserved, prefix
    r.extend_from_slice(&[3, 4, 64, 0xc0]);
    r.extend_from_slice(&86_400u32.to_be_bytes());
    r.extend_from_slice(&14_400u32.to_be_bytes());
    r.extend_from_slice(&[0; 4]);
    r.extend_from_slice(&prefix.octets());
    // source link-layer address
    r.extend_from_slice(&[1, 1]);
    r.extend_from_slice(&mac);
    icmpv6(src, "ff02::1".parse().unwrap(), 134, 0, &r)
}

/// An unsolicited neighbour advertisement (override) claiming `target` for `mac`.
pub fn neighbour_advert(src: Ipv6Addr, target: Ipv6Addr, mac: Mac) -> Vec<u8> {
    let mut r = vec![0x20, 0, 0, 0];
    r.extend_from_slice(&target.octets());
    r.extend_from_slice(&[2, 1]);
    r.extend_from_slice(&mac);
    icmpv6(src, "ff02::1".parse().unwrap(), 136, 0, &r)
}

/// The VXLAN payload carrying `inner` for VNI `vni`.
pub fn vxlan(vni: u32, inner: &[u8]) -> Vec<u8> {
    let mut v = vec![0x08, 0, 0, 0];
    v.extend_from_slice(&(vni << 8).to_be_bytes());
    v.extend_from_slice(inner);
    v
}

/// The EUI-64 link-local address of `mac`.
pub fn link_local(mac: Mac) -> Ipv6Addr {
    Ipv6Addr::new(
        0xfe80,
        0,
        0,
        0,
        u16::from_be_bytes([mac[0] ^ 2, mac[1]]),
        u16::from_be_bytes([mac[2], 0xff]),
        u16::from_be_bytes([0xfe, mac[3]]),
        u16::from_be_bytes([mac[4], mac[5]]),
    )
}

fn ifindex(name: &str) -> i32 {
    let c = std::ffi::CString::new(name).unwrap();
    // SAFETY: a valid NUL-terminated string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    assert!(i != 0, "no interface {name}");
    i as i32
}

fn packet_socket(ifname: &str) -> i32 {
    // SAFETY: plain socket calls on values we own; errors are checked.
    unsafe {
        let fd = libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW,
            (libc::ETH_P_ALL as u16).to_be() as i32,
        );
        assert!(
            fd >= 0,
            "packet socket: {}",
            std::io::Error::last_os_error()
        );
        let mut sll: libc::sockaddr_ll = std::mem::zeroed();
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
        sll.sll_ifindex = ifindex(ifname);
        let r = libc::bind(
            fd,
            &sll as *const libc::sockaddr_ll as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        );
        assert!(r == 0, "bind: {}", std::io::Error::last_os_error());
        fd
    }
}

/// Sends `frames` as they are out of `ifname` in namespace `ns` (a raw packet socket).
pub fn send_frames(ns: &str, ifname: &str, frames: &[Vec<u8>]) {
    let netns = Netns::open(format!("/var/run/netns/{ns}")).unwrap();
    let ifname = ifname.to_string();
    let frames = frames.to_vec();
    netns
        .run_blocking(move || {
            let fd = packet_socket(&ifname);
            for f in &frames {
                // SAFETY: the buffer is valid for its length.
                let n = unsafe { libc::send(fd, f.as_ptr().cast(), f.len(), 0) };
                assert!(
                    n == f.len() as isize,
                    "send: {}",
                    std::io::Error::last_os_error()
                );
            }
            // SAFETY: our descriptor.
            unsafe { libc::close(fd) };
        })
        .unwrap();
}

/// Watches `ifname` in `ns` for `dur` and returns every frame that arrived (not those sent)
/// for which `keep` is true. Start it on a thread before the traffic it should see.
pub fn capture(
    ns: &str,
    ifname: &str,
    dur: Duration,
    keep: impl Fn(&[u8]) -> bool + Send + 'static,
) -> Vec<Vec<u8>> {
    let netns = Netns::open(format!("/var/run/netns/{ns}")).unwrap();
    let ifname = ifname.to_string();
    netns
        .run_blocking(move || {
            let fd = packet_socket(&ifname);
            let tv = libc::timeval {
                tv_sec: 0,
                tv_usec: 50_000,
            };
            // SAFETY: setsockopt with a valid timeval.
            unsafe {
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    libc::SO_RCVTIMEO,
                    &tv as *const libc::timeval as *const libc::c_void,
                    std::mem::size_of::<libc::timeval>() as u32,
                )
            };
            let mut got = Vec::new();
            let end = Instant::now() + dur;
            let mut buf = vec![0u8; 65_536];
            while Instant::now() < end {
                // SAFETY: zeroed sockaddr_ll and a valid buffer, lengths given.
                let (n, outgoing) = unsafe {
                    let mut from: libc::sockaddr_ll = std::mem::zeroed();
                    let mut len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
                    let n = libc::recvfrom(
                        fd,
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                        0,
                        &mut from as *mut libc::sockaddr_ll as *mut libc::sockaddr,
                        &mut len,
                    );
                    (n, from.sll_pkttype == libc::PACKET_OUTGOING)
                };
                if n > 0 && !outgoing && keep(&buf[..n as usize]) {
                    got.push(buf[..n as usize].to_vec());
                }
            }
            // SAFETY: our descriptor.
            unsafe { libc::close(fd) };
            got
        })
        .unwrap()
}

/// Whether `frame` is IPv4 UDP to `port` carrying `payload`.
pub fn is_udp_with(frame: &[u8], port: u16, payload: &[u8]) -> bool {
    frame.len() >= 42
        && frame[12..14] == ETH_IPV4.to_be_bytes()
        && frame[23] == 17
        && frame[36..38] == port.to_be_bytes()
        && frame[42..].starts_with(payload)
}
