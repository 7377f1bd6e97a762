//! Fastpath heartbeats: the frame (pure: build, checked view, parse) and a small `AF_PACKET`
//! driver that sends and receives them on the VXLAN device, so they travel exactly the path
//! pod traffic takes through the kernel (VXLAN FDB lookup, encapsulation, UDP 6785, the
//! underlay, decapsulation), padded to the full pod MTU to prove the MTU too.
//!
//! Frame (Ethernet, EtherType 0x88B5 = IEEE "local experimental"), all integers big-endian:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 6 | destination MAC: the receiver's bridge MAC |
//! | 6 | 6 | source MAC: the sender's bridge MAC |
//! | 12 | 2 | EtherType 0x88B5 |
//! | 14 | 4 | magic `wfhb` |
//! | 18 | 1 | version (1) |
//! | 19 | 1 | flags (0; ignored on receipt) |
//! | 20 | 2 | payload length as sent (Ethernet payload, = the pod MTU): truncation shows |
//! | 22 | 8 | sender peer name |
//! | 30 | 8 | receiver peer name |
//! | 38 | 8 | sequence number |
//! | 46 | 8 | token (echoed in the ack over the control connection) |
//! | 54 | … | zero padding up to 14 + payload length |
//!
//! Where it goes in the kernel. The sender writes the frame on a packet socket bound to its
//! VXLAN device: the bridge is bypassed, the VXLAN FDB entry for the receiver's bridge MAC
//! (which the router programs for every fastpath candidate, see [`crate::fdb`]) supplies the
//! underlay address. The receiver's VXLAN device decapsulates it; our packet socket there
//! (`ETH_P_ALL` bound to the VXLAN device, with a classic BPF filter for the EtherType, so other
//! traffic is not copied) sees it *before* the bridge does. The bridge then finds its own MAC
//! as destination (a local FDB entry), hands the frame to its own stack, which drops the
//! unknown EtherType: it is never forwarded to a pod port. (It could only be flooded to pods
//! if the sender used a MAC that is not the receiver's bridge MAC; the receiver drops such
//! frames from its report too.) `PACKET_IGNORE_OUTGOING` keeps our own transmissions, and
//! the clone the kernel would make of every transmitted frame for a tap, away from the socket.

#![allow(unsafe_code)] // syscalls and FFI; each use has its SAFETY note

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};

/// EtherType of heartbeat frames (IEEE 802 local experimental 1).
pub const ETHERTYPE: u16 = 0x88B5;
/// First bytes of the payload.
pub const MAGIC: [u8; 4] = *b"wfhb";
/// Frame format version.
pub const VERSION: u8 = 1;
/// Ethernet header length.
pub const ETH_HLEN: usize = 14;
/// Heartbeat header inside the Ethernet payload.
pub const PAYLOAD_HEADER_LEN: usize = 40;
/// Smallest Ethernet payload (frames shorter are padded by the sender anyway).
pub const MIN_PAYLOAD: usize = 46;

pub type Mac = [u8; 6];

/// Why a frame is not a heartbeat we can read. `Copy`, allocation-free: the receive path
/// drops and counts these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame shorter than a heartbeat header ({0} bytes)")]
    TooShort(usize),
    #[error("EtherType {0:#06x} is not a heartbeat")]
    NotHeartbeat(u16),
    #[error("bad magic")]
    BadMagic,
    #[error("unsupported heartbeat version {0}")]
    UnsupportedVersion(u8),
    #[error("claims a {claimed}-byte payload, {got} bytes arrived")]
    Truncated { claimed: usize, got: usize },
    #[error("payload length {0} below the minimum of {MIN_PAYLOAD}")]
    PayloadTooSmall(usize),
    #[error("buffer of {have} bytes cannot hold a {need}-byte frame")]
    BufferTooSmall { need: usize, have: usize },
}

/// A heartbeat, parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heartbeat {
    pub dst: Mac,
    pub src: Mac,
    pub sender: u64,
    pub receiver: u64,
    pub seq: u64,
    pub token: u64,
    /// Ethernet payload length as sent (the MTU being proven).
    pub payload_len: u16,
}

impl Heartbeat {
    /// Total frame length (Ethernet header included).
    pub fn frame_len(&self) -> usize {
        ETH_HLEN + usize::from(self.payload_len)
    }

    /// Write the frame (header and zero padding) into `buf`; returns its length.
    pub fn encode(&self, buf: &mut [u8]) -> Result<usize, FrameError> {
        let plen = usize::from(self.payload_len);
        if plen < MIN_PAYLOAD {
            return Err(FrameError::PayloadTooSmall(plen));
        }
        let n = self.frame_len();
        if buf.len() < n {
            return Err(FrameError::BufferTooSmall {
                need: n,
                have: buf.len(),
            });
        }
        let f = &mut buf[..n];
        f[0..6].copy_from_slice(&self.dst);
        f[6..12].copy_from_slice(&self.src);
        f[12..14].copy_from_slice(&ETHERTYPE.to_be_bytes());
        f[14..18].copy_from_slice(&MAGIC);
        f[18] = VERSION;
        f[19] = 0;
        f[20..22].copy_from_slice(&self.payload_len.to_be_bytes());
        f[22..30].copy_from_slice(&self.sender.to_be_bytes());
        f[30..38].copy_from_slice(&self.receiver.to_be_bytes());
        f[38..46].copy_from_slice(&self.seq.to_be_bytes());
        f[46..54].copy_from_slice(&self.token.to_be_bytes());
        f[54..].fill(0);
        Ok(n)
    }

    /// The frame as a new vector.
    pub fn to_vec(&self) -> Result<Vec<u8>, FrameError> {
        let mut v = vec![0u8; self.frame_len()];
        self.encode(&mut v)?;
        Ok(v)
    }
}

/// A checked view of a heartbeat frame: constructing it validates everything the accessors
/// rely on.
#[derive(Debug, Clone, Copy)]
pub struct HeartbeatView<'a> {
    frame: &'a [u8],
}

fn be64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

impl<'a> HeartbeatView<'a> {
    pub fn new(frame: &'a [u8]) -> Result<Self, FrameError> {
        const HDR: usize = ETH_HLEN + PAYLOAD_HEADER_LEN;
        if frame.len() < HDR {
            return Err(FrameError::TooShort(frame.len()));
        }
        let et = u16::from_be_bytes([frame[12], frame[13]]);
        if et != ETHERTYPE {
            return Err(FrameError::NotHeartbeat(et));
        }
        if frame[14..18] != MAGIC {
            return Err(FrameError::BadMagic);
        }
        if frame[18] != VERSION {
            return Err(FrameError::UnsupportedVersion(frame[18]));
        }
        let claimed = usize::from(u16::from_be_bytes([frame[20], frame[21]]));
        if claimed < MIN_PAYLOAD {
            return Err(FrameError::PayloadTooSmall(claimed));
        }
        let got = frame.len() - ETH_HLEN;
        if got < claimed {
            return Err(FrameError::Truncated { claimed, got });
        }
        Ok(HeartbeatView { frame })
    }

    pub fn dst(&self) -> Mac {
        self.frame[0..6].try_into().expect("checked length")
    }
    pub fn src(&self) -> Mac {
        self.frame[6..12].try_into().expect("checked length")
    }
    pub fn payload_len(&self) -> u16 {
        u16::from_be_bytes([self.frame[20], self.frame[21]])
    }
    pub fn sender(&self) -> u64 {
        be64(&self.frame[22..])
    }
    pub fn receiver(&self) -> u64 {
        be64(&self.frame[30..])
    }
    pub fn seq(&self) -> u64 {
        be64(&self.frame[38..])
    }
    pub fn token(&self) -> u64 {
        be64(&self.frame[46..])
    }

    pub fn to_heartbeat(&self) -> Heartbeat {
        Heartbeat {
            dst: self.dst(),
            src: self.src(),
            sender: self.sender(),
            receiver: self.receiver(),
            seq: self.seq(),
            token: self.token(),
            payload_len: self.payload_len(),
        }
    }
}

/// Parse a heartbeat frame.
pub fn parse(frame: &[u8]) -> Result<Heartbeat, FrameError> {
    HeartbeatView::new(frame).map(|v| v.to_heartbeat())
}

// ---------------------------------------------------------------------------------------
// The AF_PACKET driver.

// linux/if_packet.h, linux/filter.h: named here so the code does not depend on which of them
// the libc crate exports for this target.
const PACKET_IGNORE_OUTGOING: libc::c_int = 23;
const PACKET_OUTGOING: u8 = 4;
const SO_ATTACH_FILTER: libc::c_int = 26;
const ETH_P_ALL: u16 = 0x0003;

/// A heartbeat that arrived through the kernel path, addressed to us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Received {
    /// Sender's peer name.
    pub from: u64,
    pub seq: u64,
    pub token: u64,
    /// Bytes that arrived (Ethernet header included): 14 + MTU when the MTU holds.
    pub frame_len: usize,
    /// Ethernet payload length the sender sent (its pod MTU).
    pub payload_len: u16,
}

/// Counters of what the receive path dropped.
#[derive(Debug, Default)]
pub struct RxDrops {
    /// Not a heartbeat, or malformed.
    pub malformed: AtomicU64,
    /// A heartbeat, but not for us (another receiver name or MAC, or our own).
    pub not_ours: AtomicU64,
}

/// A packet socket on the VXLAN device for sending and receiving heartbeats. Created in the
/// calling thread's network namespace; usable from any thread afterwards. Non-blocking.
#[derive(Debug)]
pub struct HeartbeatSocket {
    fd: OwnedFd,
    ifindex: u32,
    ifname: String,
    me: u64,
    mac: Mac,
    payload_len: u16,
    drops: RxDrops,
}

fn setsockopt<T>(fd: RawFd, level: libc::c_int, name: libc::c_int, val: &T) -> io::Result<()> {
    // SAFETY: `val` is valid for its size for the duration of the call.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (val as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

impl HeartbeatSocket {
    /// Open on VXLAN device `ifname`, as peer `me` with bridge MAC `mac`, sending heartbeats
    /// padded to `mtu` bytes of Ethernet payload (the pod MTU, which is the VXLAN device's MTU:
    /// a larger value makes every send fail with `EMSGSIZE`).
    pub fn open(ifname: &str, me: u64, mac: Mac, mtu: u32) -> io::Result<HeartbeatSocket> {
        let payload_len = u16::try_from(mtu)
            .ok()
            .filter(|&m| usize::from(m) >= MIN_PAYLOAD)
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("heartbeat MTU {mtu} outside {MIN_PAYLOAD}..=65535"),
                )
            })?;
        let cname = std::ffi::CString::new(ifname)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in interface name"))?;
        // SAFETY: valid C string.
        let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) };
        if ifindex == 0 {
            return Err(io::Error::last_os_error());
        }
        // Protocol 0: receives nothing until bound, so nothing slips in before the filter.
        // SAFETY: plain socket(2); checked.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                0,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: new descriptor owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // ldh [12]; jeq #0x88b5, accept, drop; accept: ret #65535; drop: ret #0
        let mut prog = [
            libc::sock_filter {
                code: 0x28,
                jt: 0,
                jf: 0,
                k: 12,
            },
            libc::sock_filter {
                code: 0x15,
                jt: 0,
                jf: 1,
                k: u32::from(ETHERTYPE),
            },
            libc::sock_filter {
                code: 0x06,
                jt: 0,
                jf: 0,
                k: 0xffff,
            },
            libc::sock_filter {
                code: 0x06,
                jt: 0,
                jf: 0,
                k: 0,
            },
        ];
        let fprog = libc::sock_fprog {
            len: prog.len() as u16,
            filter: prog.as_mut_ptr(),
        };
        setsockopt(fd.as_raw_fd(), libc::SOL_SOCKET, SO_ATTACH_FILTER, &fprog)?;
        // Best effort (Linux 4.20+): without it our own frames are filtered by packet type.
        let _ = setsockopt(
            fd.as_raw_fd(),
            libc::SOL_PACKET,
            PACKET_IGNORE_OUTGOING,
            &1 as &libc::c_int,
        );
        // SAFETY: sockaddr_ll is plain old data.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = ETH_P_ALL.to_be();
        sll.sll_ifindex = ifindex as i32;
        // SAFETY: sll is valid for its size.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(HeartbeatSocket {
            fd,
            ifindex,
            ifname: ifname.to_string(),
            me,
            mac,
            payload_len,
            drops: RxDrops::default(),
        })
    }

    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    pub fn drops(&self) -> &RxDrops {
        &self.drops
    }

    /// Send heartbeat `(seq, token)` to peer `to`, whose bridge MAC is `to_mac`.
    pub fn send(&self, to: u64, to_mac: Mac, seq: u64, token: u64) -> io::Result<()> {
        let frame = Heartbeat {
            dst: to_mac,
            src: self.mac,
            sender: self.me,
            receiver: to,
            seq,
            token,
            payload_len: self.payload_len,
        }
        .to_vec()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        // SAFETY: frame is valid for its length; the socket is bound to the device.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// The next heartbeat addressed to us, `Ok(None)` when none is queued. Frames that are
    /// malformed or not ours are dropped (and counted in [`HeartbeatSocket::drops`]).
    pub fn try_recv(&self) -> io::Result<Option<Received>> {
        let mut buf = vec![0u8; 65536];
        loop {
            // SAFETY: sockaddr_ll is plain old data.
            let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut alen = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            // SAFETY: buf and sll are valid for the lengths given.
            let n = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    0,
                    (&mut sll as *mut libc::sockaddr_ll).cast(),
                    &mut alen,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                return match e.kind() {
                    io::ErrorKind::WouldBlock => Ok(None),
                    io::ErrorKind::Interrupted => continue,
                    _ => Err(e),
                };
            }
            if sll.sll_pkttype == PACKET_OUTGOING {
                continue;
            }
            let frame = &buf[..n as usize];
            let hb = match parse(frame) {
                Ok(hb) => hb,
                Err(_) => {
                    self.drops.malformed.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
            };
            if hb.receiver != self.me || hb.dst != self.mac || hb.sender == self.me {
                self.drops.not_ours.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            return Ok(Some(Received {
                from: hb.sender,
                seq: hb.seq,
                token: hb.token,
                frame_len: frame.len(),
                payload_len: hb.payload_len,
            }));
        }
    }
}

impl AsFd for HeartbeatSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for HeartbeatSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// [`HeartbeatSocket`] for tokio: `recv().await` waits for the next heartbeat addressed to
/// us. Create it inside a runtime.
#[derive(Debug)]
pub struct AsyncHeartbeatSocket {
    inner: tokio::io::unix::AsyncFd<HeartbeatSocket>,
}

impl AsyncHeartbeatSocket {
    pub fn new(sock: HeartbeatSocket) -> io::Result<Self> {
        // SAFETY: the socket owns its descriptor and neither closes nor replaces it while the
        // AsyncFd holds it.
        let inner = unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(sock, tokio::io::Interest::READABLE)?
        };
        Ok(AsyncHeartbeatSocket { inner })
    }

    pub fn get_ref(&self) -> &HeartbeatSocket {
        self.inner.get_ref()
    }

    /// Send (never blocks for long: a packet socket queues or drops).
    pub fn send(&self, to: u64, to_mac: Mac, seq: u64, token: u64) -> io::Result<()> {
        self.inner.get_ref().send(to, to_mac, seq, token)
    }

    /// The next heartbeat addressed to us.
    pub async fn recv(&self) -> io::Result<Received> {
        loop {
            let mut guard = self.inner.readable().await?;
            match guard.get_inner().try_recv()? {
                Some(r) => return Ok(r),
                None => guard.clear_ready(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hb(payload_len: u16) -> Heartbeat {
        Heartbeat {
            dst: [2, 0, 0, 0, 0, 2],
            src: [2, 0, 0, 0, 0, 1],
            sender: 0x0000_0200_0000_0001,
            receiver: 0x0000_0200_0000_0002,
            seq: 77,
            token: 0xdead_beef_0123_4567,
            payload_len,
        }
    }

    #[test]
    fn roundtrip_and_layout() {
        let h = hb(1376);
        let f = h.to_vec().unwrap();
        assert_eq!(f.len(), 14 + 1376);
        assert_eq!(&f[12..14], &[0x88, 0xb5]);
        assert_eq!(&f[14..18], b"wfhb");
        assert_eq!(f[18], 1);
        assert!(f[54..].iter().all(|&b| b == 0));
        assert_eq!(parse(&f), Ok(h));
        // Trailing bytes beyond the claimed length are tolerated (link padding).
        let mut longer = f.clone();
        longer.extend_from_slice(&[0; 8]);
        assert_eq!(parse(&longer), Ok(h));
    }

    #[test]
    fn rejects() {
        let f = hb(100).to_vec().unwrap();
        assert_eq!(parse(&f[..53]), Err(FrameError::TooShort(53)));
        assert_eq!(
            parse(&f[..100]),
            Err(FrameError::Truncated {
                claimed: 100,
                got: 86
            })
        );
        let mut g = f.clone();
        g[12] = 0x08;
        assert!(matches!(parse(&g), Err(FrameError::NotHeartbeat(0x08b5))));
        let mut g = f.clone();
        g[15] ^= 1;
        assert_eq!(parse(&g), Err(FrameError::BadMagic));
        let mut g = f.clone();
        g[18] = 2;
        assert_eq!(parse(&g), Err(FrameError::UnsupportedVersion(2)));
        let mut g = f.clone();
        g[20..22].copy_from_slice(&10u16.to_be_bytes());
        assert_eq!(parse(&g), Err(FrameError::PayloadTooSmall(10)));
        assert_eq!(
            hb(20).to_vec().unwrap_err(),
            FrameError::PayloadTooSmall(20)
        );
        let mut small = [0u8; 50];
        assert!(matches!(
            hb(46).encode(&mut small),
            Err(FrameError::BufferTooSmall { need: 60, have: 50 })
        ));
    }
}
