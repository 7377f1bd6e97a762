//! The sleeve's UDP socket, built for batching: UDP GSO on send, UDP GRO and `recvmmsg` on
//! receive, `sendmmsg` where GSO cannot help.
//!
//! Set-up ([`Udp::bind`]): an IPv4 datagram socket, non-blocking, with
//!
//! - `IP_MTU_DISCOVER = IP_PMTUDISC_PROBE`: DF on every packet, and the kernel's path-MTU
//!   cache is ignored (the sleeve discovers the path MTU itself with probes; an ICMP
//!   "fragmentation needed" from some router must not make the kernel refuse our probes).
//!   A datagram larger than the *local* interface MTU fails at once with `EMSGSIZE`; one larger
//!   than a hop further on is dropped there (black hole or ICMP we do not listen to);
//! - large socket buffers (`SO_SNDBUFFORCE`/`SO_RCVBUFFORCE` when privileged, else the
//!   ordinary options, which the kernel caps at `net.core.{w,r}mem_max`);
//! - `UDP_GRO` when the kernel has it: consecutive datagrams of one flow arrive as one buffer
//!   with the segment size in a control message ([`RecvMeta::segment`]);
//! - GSO detected with `getsockopt(UDP_SEGMENT)`.
//!
//! Sending ([`Udp::send_segments`]): a run of equal-size datagrams to one peer (the last may
//! be shorter) goes out as one `sendmsg` with a `UDP_SEGMENT` control message; without GSO
//! as one `sendmmsg` of the pieces. GSO can fail at run time although the option exists:
//! kernels before 6.11 answer `EIO` when the route's device cannot checksum (some tunnels, a
//! TAP without offloads), IPsec routes give `EIO`, `SO_NO_CHECK` gives `EINVAL`, and so does a
//! segment larger than the local device MTU. The same data is then
//! sent again as separate datagrams: if that works, GSO is broken on this host and is turned
//! off for good ([`Udp::gso`] becomes false, a warning is logged); if it fails too (e.g.
//! `EMSGSIZE`), the datagrams were too big and that error is returned, GSO staying on.
//!
//! A full send buffer (`EAGAIN`): `send_segments` waits for the socket to become writable,
//! at most [`SEND_WAIT_LIMIT`] in all, then returns `WouldBlock`. Data is never dropped
//! silently: an `Err` means some or all of the datagrams were not sent (with GSO none; with
//! pieces, a prefix may have been), `Ok` means all were handed to the kernel. `send_many`
//! does not wait: it returns how many it sent, `WouldBlock` if none.
//!
//! Receiving ([`Udp::recv_many`]): one `recvmmsg` into the caller's buffers. A datagram that
//! did not fit its buffer (`MSG_TRUNC`) is dropped and counted ([`Udp::truncated`]), never
//! handed over half; buffers of 65 535 bytes never truncate.

#![allow(unsafe_code)] // syscalls and FFI; each use has its SAFETY note

use std::io;
use std::mem::size_of;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::driver::poll::wait_writable;
use crate::driver::sys::{self, CmsgBuf};

/// The most datagrams one `sendmmsg`/`recvmmsg` call handles.
pub const MAX_BATCH: usize = 64;

/// The most segments one [`Udp::send_segments`] call takes (the kernel's UDP GSO limit on
/// every kernel that has GSO).
pub const MAX_SEGMENTS: usize = 64;

/// The most bytes one [`Udp::send_segments`] call takes (IPv4 total length limit, less
/// headers, with margin).
pub const MAX_SEND: usize = 65_000;

/// Receive buffers this large never truncate, with or without GRO.
pub const RECV_BUF_LEN: usize = 65_535;

/// Socket buffer size requested by default (the kernel doubles it for bookkeeping).
pub const SOCKET_BUFFER_BYTES: usize = 4 << 20;

/// How long [`Udp::send_segments`] waits in all for a full send buffer to drain.
pub const SEND_WAIT_LIMIT: Duration = Duration::from_millis(20);

/// Options for [`Udp::bind_with`]; [`Default`] is what [`Udp::bind`] uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UdpConfig {
    /// Use UDP GSO when the kernel supports it.
    pub gso: bool,
    /// Enable UDP GRO when the kernel supports it.
    pub gro: bool,
    /// Requested `SO_SNDBUF`/`SO_RCVBUF` (0: leave the kernel's default).
    pub buffer_bytes: usize,
    /// Set `SO_REUSEPORT`, so several workers can each bind a socket to the same port (the
    /// kernel spreads flows between them by hash).
    pub reuse_port: bool,
}

impl Default for UdpConfig {
    fn default() -> Self {
        UdpConfig {
            gso: true,
            gro: true,
            buffer_bytes: SOCKET_BUFFER_BYTES,
            reuse_port: false,
        }
    }
}

/// One received buffer: `len` bytes from `src`, holding datagrams of `segment` bytes each
/// (the last may be shorter). `segment == len` when GRO did not coalesce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecvMeta {
    pub len: usize,
    pub src: SocketAddrV4,
    pub segment: usize,
}

impl Default for RecvMeta {
    fn default() -> Self {
        RecvMeta {
            len: 0,
            src: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0),
            segment: 0,
        }
    }
}

impl RecvMeta {
    /// The datagrams in `buf[..len]`, split at `segment`.
    pub fn datagrams<'a>(&self, buf: &'a [u8]) -> impl Iterator<Item = &'a [u8]> {
        buf[..self.len].chunks(self.segment.max(1))
    }
}

/// The sleeve's UDP socket.
#[derive(Debug)]
pub struct Udp {
    fd: OwnedFd,
    gso: AtomicBool,
    gro: bool,
    truncated: AtomicU64,
}

impl Udp {
    /// Bind with the default [`UdpConfig`] (GSO and GRO when available, large buffers).
    pub fn bind(addr: SocketAddrV4) -> io::Result<Udp> {
        Udp::bind_with(addr, UdpConfig::default())
    }

    /// Bind an IPv4 UDP socket in the calling thread's network namespace.
    pub fn bind_with(addr: SocketAddrV4, cfg: UdpConfig) -> io::Result<Udp> {
        // SAFETY: plain socket(2) call; the result is checked.
        let raw = unsafe {
            libc::socket(
                libc::AF_INET,
                libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: raw is a freshly created socket owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        sys::set_int(
            raw,
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            libc::IP_PMTUDISC_PROBE,
        )?;
        if cfg.buffer_bytes > 0 {
            let size = cfg.buffer_bytes.min(libc::c_int::MAX as usize / 2) as libc::c_int;
            for (force, plain) in [
                (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
                (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
            ] {
                if sys::set_int(raw, libc::SOL_SOCKET, force, size).is_err() {
                    // Not privileged: the kernel caps this at net.core.{w,r}mem_max.
                    let _ = sys::set_int(raw, libc::SOL_SOCKET, plain, size);
                }
            }
        }
        if cfg.reuse_port {
            sys::set_int(raw, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)?;
        }
        let sa = sys::to_sockaddr(addr);
        // SAFETY: sa is a valid sockaddr_in and its exact size is passed.
        let r = unsafe {
            libc::bind(
                raw,
                (&sa as *const libc::sockaddr_in).cast(),
                size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        let gro = cfg.gro && sys::set_int(raw, libc::SOL_UDP, libc::UDP_GRO, 1).is_ok();
        let gso = cfg.gso && sys::get_int(raw, libc::SOL_UDP, libc::UDP_SEGMENT).is_ok();
        Ok(Udp {
            fd,
            gso: AtomicBool::new(gso),
            gro,
            truncated: AtomicU64::new(0),
        })
    }

    /// The bound address (with the port the kernel chose, if 0 was asked).
    pub fn local_addr(&self) -> io::Result<SocketAddrV4> {
        let mut sa = sys::to_sockaddr(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0));
        let mut len = size_of::<libc::sockaddr_in>() as libc::socklen_t;
        // SAFETY: sa and len are live and writable; len holds sa's size.
        let r = unsafe {
            libc::getsockname(
                self.fd.as_raw_fd(),
                (&mut sa as *mut libc::sockaddr_in).cast(),
                &mut len,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(sys::from_sockaddr(&sa))
    }

    /// Is UDP GSO in use? (It may turn off at run time, see the module notes.)
    pub fn gso(&self) -> bool {
        self.gso.load(Ordering::Relaxed)
    }

    /// Is UDP GRO enabled?
    pub fn gro(&self) -> bool {
        self.gro
    }

    /// The effective (kernel-doubled) send and receive buffer sizes.
    pub fn buffer_sizes(&self) -> io::Result<(usize, usize)> {
        let fd = self.fd.as_raw_fd();
        let snd = sys::get_int(fd, libc::SOL_SOCKET, libc::SO_SNDBUF)?;
        let rcv = sys::get_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUF)?;
        Ok((snd as usize, rcv as usize))
    }

    /// Datagrams dropped by [`Udp::recv_many`] because they did not fit their buffer.
    pub fn truncated(&self) -> u64 {
        self.truncated.load(Ordering::Relaxed)
    }

    /// Send one datagram (waiting briefly on a full buffer, like [`Udp::send_segments`]).
    pub fn send_to(&self, dst: SocketAddrV4, buf: &[u8]) -> io::Result<()> {
        self.send_segments(dst, buf, buf.len().max(1))
    }

    /// Send `buf` to `dst` as datagrams of `segment` bytes (the last may be shorter): one
    /// GSO `sendmsg` when possible, else a `sendmmsg` of the pieces. At most
    /// [`MAX_SEGMENTS`] segments and [`MAX_SEND`] bytes. See the module notes for `EAGAIN`
    /// and run-time GSO failures. `Ok` means every datagram was handed to the kernel.
    pub fn send_segments(&self, dst: SocketAddrV4, buf: &[u8], segment: usize) -> io::Result<()> {
        if segment == 0 || buf.len() > MAX_SEND || buf.len().div_ceil(segment) > MAX_SEGMENTS {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "send_segments: segment 0, more than 64 segments or more than 65000 bytes",
            ));
        }
        let mut deadline = None;
        let pieces = buf.len().div_ceil(segment);
        let mut gso_failed = None;
        if pieces > 1 && self.gso() {
            loop {
                match self.send_gso(dst, buf, segment) {
                    Ok(()) => return Ok(()),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        self.wait_out(&mut deadline)?
                    }
                    Err(e) if is_gso_refusal(&e) => {
                        gso_failed = Some(e);
                        break;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        let r = self.send_pieces(dst, buf, segment, &mut deadline);
        if let (Some(e), Ok(())) = (&gso_failed, &r) {
            // The same datagrams went out one by one: GSO itself is what fails here.
            self.gso.store(false, Ordering::Relaxed);
            tracing::warn!(
                error = %e,
                %dst,
                segment,
                "UDP GSO refused by the kernel; sending datagrams separately from now on"
            );
        }
        r
    }

    /// Send each `(dst, payload)` as one datagram, in order, with `sendmmsg`. Returns how many
    /// were sent: fewer than `msgs.len()` when the send buffer filled up or a datagram was
    /// refused (send the rest again to see its error); `Err` only if none was sent
    /// (`WouldBlock` on a full buffer). Does not wait.
    pub fn send_many(&self, msgs: &[(SocketAddrV4, &[u8])]) -> io::Result<usize> {
        let mut sent = 0;
        for chunk in msgs.chunks(MAX_BATCH) {
            let mut names =
                [sys::to_sockaddr(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)); MAX_BATCH];
            let mut iovs = [EMPTY_IOV; MAX_BATCH];
            for (i, (dst, payload)) in chunk.iter().enumerate() {
                names[i] = sys::to_sockaddr(*dst);
                iovs[i] = const_iov(payload);
            }
            let n = self.sendmmsg(&mut names[..chunk.len()], &mut iovs[..chunk.len()]);
            match n {
                Ok(k) => {
                    sent += k;
                    if k < chunk.len() {
                        break;
                    }
                }
                Err(e) if sent == 0 => return Err(e),
                Err(_) => break,
            }
        }
        Ok(sent)
    }

    /// Receive up to `min(bufs.len(), metas.len(), MAX_BATCH)` buffers with one `recvmmsg`:
    /// buffer `i` is `bufs[i][..metas[i].len]`. Each buffer's `len()` (not capacity) is the
    /// space offered; [`RECV_BUF_LEN`] never truncates. Returns the count, `WouldBlock` when
    /// nothing is queued. Truncated datagrams are dropped (buffers may be reordered by that).
    pub fn recv_many(&self, bufs: &mut [Vec<u8>], metas: &mut [RecvMeta]) -> io::Result<usize> {
        let n = bufs.len().min(metas.len()).min(MAX_BATCH);
        if n == 0 {
            return Ok(0);
        }
        loop {
            let mut names =
                [sys::to_sockaddr(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)); MAX_BATCH];
            let mut iovs = [EMPTY_IOV; MAX_BATCH];
            let mut cmsgs = [CmsgBuf::new(); MAX_BATCH];
            // SAFETY: mmsghdr is plain old data; all-zero (null pointers, zero lengths) is valid.
            let mut hdrs: [libc::mmsghdr; MAX_BATCH] = unsafe { std::mem::zeroed() };
            for i in 0..n {
                iovs[i] = libc::iovec {
                    iov_base: bufs[i].as_mut_ptr().cast(),
                    iov_len: bufs[i].len(),
                };
                let h = &mut hdrs[i].msg_hdr;
                h.msg_name = (&mut names[i] as *mut libc::sockaddr_in).cast();
                h.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
                h.msg_iov = &mut iovs[i];
                h.msg_iovlen = 1;
                h.msg_control = cmsgs[i].0.as_mut_ptr().cast();
                h.msg_controllen = cmsgs[i].0.len() as _;
            }
            // SAFETY: the first n headers point at live, exclusively borrowed names, iovecs
            // (into the caller's buffers, with their lengths) and control buffers, all of
            // which outlive the call.
            let r = unsafe {
                libc::recvmmsg(
                    self.fd.as_raw_fd(),
                    hdrs.as_mut_ptr(),
                    n as libc::c_uint,
                    libc::MSG_DONTWAIT,
                    std::ptr::null_mut(),
                )
            };
            if r < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let got = r as usize;
            let mut out = 0;
            for i in 0..got {
                let h = &hdrs[i].msg_hdr;
                if h.msg_flags & libc::MSG_TRUNC != 0 {
                    self.truncated.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let len = hdrs[i].msg_len as usize;
                let gro = sys::find_cmsg(
                    &cmsgs[i].0,
                    h.msg_controllen as usize,
                    libc::SOL_UDP,
                    libc::UDP_GRO,
                )
                .and_then(|d| d.get(..size_of::<libc::c_int>()))
                .map(|d| libc::c_int::from_ne_bytes(d.try_into().unwrap_or_default()))
                .unwrap_or(0);
                let segment = if gro > 0 && (gro as usize) < len {
                    gro as usize
                } else {
                    len
                };
                if i != out {
                    bufs.swap(i, out);
                }
                metas[out] = RecvMeta {
                    len,
                    src: sys::from_sockaddr(&names[i]),
                    segment,
                };
                out += 1;
            }
            if out > 0 || got == 0 {
                return Ok(out);
            }
            // Everything received was truncated and dropped: look for more.
        }
    }

    /// The descriptor, for [`super::wait_readable`].
    pub fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// One `sendmsg` of `buf` with a `UDP_SEGMENT` control message.
    fn send_gso(&self, dst: SocketAddrV4, buf: &[u8], segment: usize) -> io::Result<()> {
        let mut name = sys::to_sockaddr(dst);
        let mut iov = const_iov(buf);
        let mut cmsg = CmsgBuf::new();
        let clen = cmsg.put(
            libc::SOL_UDP,
            libc::UDP_SEGMENT,
            &(segment as u16).to_ne_bytes(),
        );
        // SAFETY: msghdr is plain old data; all-zero is valid (fields are set below).
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_name = (&mut name as *mut libc::sockaddr_in).cast();
        msg.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cmsg.0.as_mut_ptr().cast();
        msg.msg_controllen = clen as _;
        loop {
            // SAFETY: msg points at live name, iovec (over `buf`, read only) and control data.
            let r = unsafe { libc::sendmsg(self.fd.as_raw_fd(), &msg, 0) };
            if r >= 0 {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// `buf` as separate datagrams of `segment` bytes, waiting on a full buffer.
    fn send_pieces(
        &self,
        dst: SocketAddrV4,
        buf: &[u8],
        segment: usize,
        deadline: &mut Option<Instant>,
    ) -> io::Result<()> {
        let mut names = [sys::to_sockaddr(dst); MAX_BATCH];
        let mut iovs = [EMPTY_IOV; MAX_BATCH];
        let mut count = 0;
        for (i, piece) in buf.chunks(segment).enumerate() {
            iovs[i] = const_iov(piece);
            count += 1;
        }
        if buf.is_empty() {
            count = 1;
        }
        let mut done = 0;
        while done < count {
            match self.sendmmsg(&mut names[done..count], &mut iovs[done..count]) {
                Ok(k) => done += k,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.wait_out(deadline)?,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// One `sendmmsg` of `iovs[i]` to `names[i]`; `Ok(k)` with `k >= 1`, or the error.
    fn sendmmsg(
        &self,
        names: &mut [libc::sockaddr_in],
        iovs: &mut [libc::iovec],
    ) -> io::Result<usize> {
        let n = names.len().min(iovs.len()).min(MAX_BATCH);
        // SAFETY: mmsghdr is plain old data; all-zero (null pointers, zero lengths) is valid.
        let mut hdrs: [libc::mmsghdr; MAX_BATCH] = unsafe { std::mem::zeroed() };
        for i in 0..n {
            let h = &mut hdrs[i].msg_hdr;
            h.msg_name = (&mut names[i] as *mut libc::sockaddr_in).cast();
            h.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
            h.msg_iov = &mut iovs[i];
            h.msg_iovlen = 1;
        }
        loop {
            // SAFETY: the first n headers point at live names and iovecs (over buffers the
            // caller borrows for the call; the kernel only reads them).
            let r = unsafe {
                libc::sendmmsg(self.fd.as_raw_fd(), hdrs.as_mut_ptr(), n as libc::c_uint, 0)
            };
            if r > 0 {
                return Ok(r as usize);
            }
            if r == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// Wait for POLLOUT, within the call's overall [`SEND_WAIT_LIMIT`]; `WouldBlock` after it.
    fn wait_out(&self, deadline: &mut Option<Instant>) -> io::Result<()> {
        let d = *deadline.get_or_insert_with(|| Instant::now() + SEND_WAIT_LIMIT);
        let left = d.saturating_duration_since(Instant::now());
        if left.is_zero() || !wait_writable(self.fd.as_raw_fd(), left)? {
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                "UDP send buffer stayed full",
            ));
        }
        Ok(())
    }
}

impl AsRawFd for Udp {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl AsFd for Udp {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

const EMPTY_IOV: libc::iovec = libc::iovec {
    iov_base: std::ptr::null_mut(),
    iov_len: 0,
};

/// An iovec over a shared buffer, for sending (the kernel only reads it).
fn const_iov(b: &[u8]) -> libc::iovec {
    libc::iovec {
        iov_base: b.as_ptr() as *mut libc::c_void,
        iov_len: b.len(),
    }
}

/// Errors with which the kernel refuses a GSO send it would accept as separate datagrams.
fn is_gso_refusal(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EIO | libc::EINVAL | libc::EOPNOTSUPP | libc::ENOPROTOOPT)
    )
}
