//! Blocked-connection events from NFLOG: the group chains log (rate-limited) to an NFLOG
//! group with the prefix `weft-policy drop <direction> <namespace>: `; this reads that group
//! over a `NETLINK_NETFILTER` socket and turns each packet into a [`Blocked`] event
//! (source, destination, protocol, port, direction, namespace).
//!
//! [`parse_message`] is pure (tested on crafted bytes); [`NflogReader`] is the socket.

#![allow(unsafe_code)] // syscalls and FFI; each use has its SAFETY note

use crate::model::Direction;
use crate::render::LOG_PREFIX;
use serde::Serialize;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

const NFNL_SUBSYS_ULOG: u16 = 4;
const NFULNL_MSG_PACKET: u16 = 0;
const NFULNL_MSG_CONFIG: u16 = 1;
const NFULA_CFG_CMD: u16 = 1;
const NFULA_CFG_MODE: u16 = 2;
const NFULNL_CFG_CMD_BIND: u8 = 1;
const NFULNL_COPY_PACKET: u8 = 2;
const NFULA_PAYLOAD: u16 = 9;
const NFULA_PREFIX: u16 = 10;
const NLMSG_HDRLEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
/// Bytes of each packet copied to us: enough for IPv6 + the port fields.
const COPY_RANGE: u32 = 64;

/// One blocked packet, as logged.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Blocked {
    pub direction: Direction,
    /// The namespace of the policies that blocked it.
    pub namespace: String,
    pub src: IpAddr,
    pub dst: IpAddr,
    /// IP protocol number.
    pub protocol: u8,
    /// Destination port (TCP, UDP, SCTP).
    pub port: Option<u16>,
}

fn attrs(mut b: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if b.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([b[0], b[1]]) as usize;
        let ty = u16::from_ne_bytes([b[2], b[3]]) & 0x3fff;
        if len < 4 || len > b.len() {
            return None;
        }
        let val = &b[4..len];
        b = &b[((len + 3) & !3).min(b.len())..];
        Some((ty, val))
    })
}

/// Parses the prefix the renderer writes.
pub fn parse_prefix(p: &str) -> Option<(Direction, String)> {
    let rest = p.strip_prefix(LOG_PREFIX)?.trim_start();
    let (dir, ns) = rest.split_once(' ')?;
    let d = match dir {
        "ingress" => Direction::Ingress,
        "egress" => Direction::Egress,
        _ => return None,
    };
    Some((d, ns.trim_end().trim_end_matches(':').to_string()))
}

/// Source, destination, protocol and destination port of an IP packet's first bytes.
pub fn parse_ip(p: &[u8]) -> Option<(IpAddr, IpAddr, u8, Option<u16>)> {
    let (src, dst, proto, l4): (IpAddr, IpAddr, u8, &[u8]) = match p.first()? >> 4 {
        4 if p.len() >= 20 => {
            let ihl = usize::from(p[0] & 0x0f) * 4;
            let frag_offset = u16::from_be_bytes([p[6], p[7]]) & 0x1fff;
            let l4 = if frag_offset == 0 {
                p.get(ihl..).unwrap_or(&[])
            } else {
                &[]
            };
            (
                IpAddr::V4(Ipv4Addr::new(p[12], p[13], p[14], p[15])),
                IpAddr::V4(Ipv4Addr::new(p[16], p[17], p[18], p[19])),
                p[9],
                l4,
            )
        }
        6 if p.len() >= 40 => {
            let a: [u8; 16] = p[8..24].try_into().ok()?;
            let b: [u8; 16] = p[24..40].try_into().ok()?;
            (
                IpAddr::V6(Ipv6Addr::from(a)),
                IpAddr::V6(Ipv6Addr::from(b)),
                p[6],
                &p[40..],
            )
        }
        _ => return None,
    };
    let port = match proto {
        6 | 17 | 132 if l4.len() >= 4 => Some(u16::from_be_bytes([l4[2], l4[3]])),
        _ => None,
    };
    Some((src, dst, proto, port))
}

/// Parses one netlink datagram (possibly several messages) from the NFLOG socket. Packets
/// whose prefix is not ours are skipped.
pub fn parse_message(buf: &[u8]) -> Vec<Blocked> {
    let mut out = Vec::new();
    let mut b = buf;
    while b.len() >= NLMSG_HDRLEN {
        let len = u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize;
        let ty = u16::from_ne_bytes([b[4], b[5]]);
        if len < NLMSG_HDRLEN || len > b.len() {
            break;
        }
        if ty == (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET && len >= NLMSG_HDRLEN + 4 {
            let mut prefix = None;
            let mut payload = None;
            for (t, v) in attrs(&b[NLMSG_HDRLEN + 4..len]) {
                match t {
                    NFULA_PREFIX => {
                        prefix = Some(
                            String::from_utf8_lossy(v.split(|&c| c == 0).next().unwrap_or(&[]))
                                .into_owned(),
                        )
                    }
                    NFULA_PAYLOAD => payload = Some(v),
                    _ => {}
                }
            }
            if let (Some((direction, namespace)), Some((src, dst, protocol, port))) = (
                prefix.as_deref().and_then(parse_prefix),
                payload.and_then(parse_ip),
            ) {
                out.push(Blocked {
                    direction,
                    namespace,
                    src,
                    dst,
                    protocol,
                    port,
                });
            }
        }
        b = &b[((len + 3) & !3).min(b.len())..];
    }
    out
}

fn config_msg(group: u16, seq: u32, attr_ty: u16, val: &[u8]) -> Vec<u8> {
    let alen = 4 + val.len();
    let total = NLMSG_HDRLEN + 4 + ((alen + 3) & !3);
    let mut m = Vec::with_capacity(total);
    m.extend_from_slice(&(total as u32).to_ne_bytes());
    m.extend_from_slice(&((NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_CONFIG).to_ne_bytes());
    m.extend_from_slice(&((libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16).to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    // nfgenmsg: family, version, res_id (the group, big-endian)
    m.extend_from_slice(&[libc::AF_UNSPEC as u8, 0]);
    m.extend_from_slice(&group.to_be_bytes());
    m.extend_from_slice(&(alen as u16).to_ne_bytes());
    m.extend_from_slice(&attr_ty.to_ne_bytes());
    m.extend_from_slice(val);
    m.resize(total, 0);
    m
}

/// A socket bound to one NFLOG group, in the network namespace of the thread that opened it.
#[derive(Debug)]
pub struct NflogReader {
    fd: OwnedFd,
    buf: Vec<u8>,
}

impl NflogReader {
    /// Binds `group` (copying the first bytes of each packet).
    pub fn open(group: u16) -> io::Result<Self> {
        // SAFETY: plain socket(2); the fd is owned right away.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_NETFILTER,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh, valid fd nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: a zeroed sockaddr_nl is valid; bind with our size.
        let rc = unsafe {
            let mut sa: libc::sockaddr_nl = std::mem::zeroed();
            sa.nl_family = libc::AF_NETLINK as u16;
            libc::bind(
                fd.as_raw_fd(),
                &sa as *const libc::sockaddr_nl as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut r = NflogReader {
            fd,
            buf: vec![0; 65536],
        };
        r.request(&config_msg(group, 1, NFULA_CFG_CMD, &[NFULNL_CFG_CMD_BIND]))?;
        let mut mode = COPY_RANGE.to_be_bytes().to_vec();
        mode.extend_from_slice(&[NFULNL_COPY_PACKET, 0]);
        r.request(&config_msg(group, 2, NFULA_CFG_MODE, &mode))?;
        Ok(r)
    }

    fn request(&mut self, msg: &[u8]) -> io::Result<()> {
        // SAFETY: sending our own buffer.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = self.recv_raw()?;
        let b = &self.buf[..n];
        if n >= NLMSG_HDRLEN + 4 && u16::from_ne_bytes([b[4], b[5]]) == NLMSG_ERROR {
            let errno = i32::from_ne_bytes([b[16], b[17], b[18], b[19]]);
            if errno != 0 {
                return Err(io::Error::from_raw_os_error(-errno));
            }
        }
        Ok(())
    }

    fn recv_raw(&mut self) -> io::Result<usize> {
        // SAFETY: receiving into our own buffer.
        let n = unsafe {
            libc::recv(
                self.fd.as_raw_fd(),
                self.buf.as_mut_ptr().cast(),
                self.buf.len(),
                0,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    /// Sets how long [`NflogReader::recv`] waits (`None`: forever).
    pub fn set_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        let tv = match t {
            Some(d) => libc::timeval {
                tv_sec: d.as_secs() as libc::time_t,
                tv_usec: d.subsec_micros() as libc::suseconds_t,
            },
            None => libc::timeval {
                tv_sec: 0,
                tv_usec: 0,
            },
        };
        // SAFETY: setsockopt with a timeval of the right size.
        let rc = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                &tv as *const libc::timeval as *const libc::c_void,
                std::mem::size_of::<libc::timeval>() as u32,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Waits for the next datagram and returns the events in it (possibly none). A timeout
    /// is `ErrorKind::WouldBlock`.
    pub fn recv(&mut self) -> io::Result<Vec<Blocked>> {
        let n = self.recv_raw()?;
        Ok(parse_message(&self.buf[..n]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(ty: u16, val: &[u8]) -> Vec<u8> {
        let mut a = Vec::new();
        a.extend_from_slice(&((4 + val.len()) as u16).to_ne_bytes());
        a.extend_from_slice(&ty.to_ne_bytes());
        a.extend_from_slice(val);
        while a.len() % 4 != 0 {
            a.push(0);
        }
        a
    }

    fn packet_msg(prefix: &str, payload: &[u8]) -> Vec<u8> {
        let mut body = vec![libc::AF_INET as u8, 0, 0, 0];
        body.extend(attr(1, &[0x08, 0x00, 3, 0])); // packet header: ignored
        let mut p = prefix.as_bytes().to_vec();
        p.push(0);
        body.extend(attr(NFULA_PREFIX, &p));
        body.extend(attr(NFULA_PAYLOAD, payload));
        let mut m = Vec::new();
        m.extend_from_slice(&((NLMSG_HDRLEN + body.len()) as u32).to_ne_bytes());
        m.extend_from_slice(&(NFNL_SUBSYS_ULOG << 8).to_ne_bytes());
        m.extend_from_slice(&[0; 10]);
        m.extend(body);
        m
    }

    fn ipv4_tcp(dport: u16) -> Vec<u8> {
        let mut p = vec![
            0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0, 10, 32, 0, 1, 10, 32, 0, 2,
        ];
        p.extend_from_slice(&40000u16.to_be_bytes());
        p.extend_from_slice(&dport.to_be_bytes());
        p
    }

    #[test]
    fn parses_logged_packets() {
        let mut dgram = packet_msg("weft-policy drop ingress shop: ", &ipv4_tcp(8080));
        dgram.extend(packet_msg("somebody else ", &ipv4_tcp(1)));
        dgram.extend(packet_msg(
            "weft-policy drop egress kube-system: ",
            &ipv4_tcp(53),
        ));
        let ev = parse_message(&dgram);
        assert_eq!(ev.len(), 2);
        assert_eq!(
            ev[0],
            Blocked {
                direction: Direction::Ingress,
                namespace: "shop".into(),
                src: "10.32.0.1".parse().unwrap(),
                dst: "10.32.0.2".parse().unwrap(),
                protocol: 6,
                port: Some(8080),
            }
        );
        assert_eq!(ev[1].namespace, "kube-system");
        assert_eq!(ev[1].direction, Direction::Egress);
        // Truncated input yields nothing rather than garbage.
        assert!(parse_message(&dgram[..10]).is_empty());
        assert_eq!(parse_ip(&[0x45, 0, 0]), None);
    }

    #[test]
    fn ipv6_and_non_port_protocols() {
        let mut p = vec![0x60, 0, 0, 0, 0, 8, 17, 64];
        p.extend_from_slice(&"fd00::1".parse::<Ipv6Addr>().unwrap().octets());
        p.extend_from_slice(&"fd00::2".parse::<Ipv6Addr>().unwrap().octets());
        p.extend_from_slice(&[0x9c, 0x40, 0, 53]);
        assert_eq!(
            parse_ip(&p),
            Some((
                "fd00::1".parse().unwrap(),
                "fd00::2".parse().unwrap(),
                17,
                Some(53)
            ))
        );
        let mut icmp = ipv4_tcp(0);
        icmp[9] = 1;
        assert_eq!(parse_ip(&icmp).unwrap().3, None);
    }
}
