//! Small, safe helpers around the socket API for the UDP driver: integer socket options,
//! `sockaddr_in` conversion, and control messages (cmsg) encoded and parsed by hand.
//!
//! Control messages are built and read as plain bytes (the `cmsghdr` layout: `cmsg_len` as a
//! `size_t`, level, type, then the data at the next `size_t` boundary) rather than through the
//! `CMSG_*` pointer macros, so no pointer arithmetic on kernel-filled buffers is needed; a unit
//! test checks the arithmetic against libc's macros.

#![allow(unsafe_code)] // syscalls and FFI; each use has its SAFETY note

use std::io;
use std::mem::size_of;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::RawFd;

/// Alignment of control-message headers and data (`size_t`).
const CMSG_ALIGN: usize = size_of::<usize>();

/// Size of `struct cmsghdr`, aligned: where a control message's data starts.
pub(crate) const CMSG_HDR: usize = cmsg_align(size_of::<libc::cmsghdr>());

pub(crate) const fn cmsg_align(n: usize) -> usize {
    (n + CMSG_ALIGN - 1) & !(CMSG_ALIGN - 1)
}

/// `CMSG_LEN(n)`: the `cmsg_len` of a message with `n` data bytes.
pub(crate) const fn cmsg_len(n: usize) -> usize {
    CMSG_HDR + n
}

/// `CMSG_SPACE(n)`: the bytes a message with `n` data bytes occupies in a control buffer.
pub(crate) const fn cmsg_space(n: usize) -> usize {
    CMSG_HDR + cmsg_align(n)
}

/// A control-message buffer with the alignment the kernel expects.
#[derive(Clone, Copy)]
#[repr(C, align(8))]
pub(crate) struct CmsgBuf(pub [u8; 64]);

impl CmsgBuf {
    pub(crate) const fn new() -> CmsgBuf {
        CmsgBuf([0; 64])
    }

    /// Write one control message (`level`, `ty`, `data`) at the start; returns the
    /// `msg_controllen` to use.
    pub(crate) fn put(&mut self, level: libc::c_int, ty: libc::c_int, data: &[u8]) -> usize {
        let space = cmsg_space(data.len());
        assert!(space <= self.0.len(), "control message too large");
        self.0[..space].fill(0);
        let b = &mut self.0;
        b[..CMSG_ALIGN].copy_from_slice(&cmsg_len(data.len()).to_ne_bytes());
        b[CMSG_ALIGN..CMSG_ALIGN + 4].copy_from_slice(&level.to_ne_bytes());
        b[CMSG_ALIGN + 4..CMSG_ALIGN + 8].copy_from_slice(&ty.to_ne_bytes());
        b[CMSG_HDR..CMSG_HDR + data.len()].copy_from_slice(data);
        space
    }
}

/// Find the control message (`level`, `ty`) in the first `len` bytes of `buf` and return its
/// data. Malformed input ends the search (returns `None`) rather than panicking.
pub(crate) fn find_cmsg(
    buf: &[u8],
    len: usize,
    level: libc::c_int,
    ty: libc::c_int,
) -> Option<&[u8]> {
    let buf = buf.get(..len)?;
    let mut off = 0;
    while off + CMSG_HDR <= buf.len() {
        let h = &buf[off..];
        let clen = usize::from_ne_bytes(h[..CMSG_ALIGN].try_into().ok()?);
        let lvl = libc::c_int::from_ne_bytes(h[CMSG_ALIGN..CMSG_ALIGN + 4].try_into().ok()?);
        let t = libc::c_int::from_ne_bytes(h[CMSG_ALIGN + 4..CMSG_ALIGN + 8].try_into().ok()?);
        if clen < CMSG_HDR || off + clen > buf.len() {
            return None;
        }
        if lvl == level && t == ty {
            return Some(&buf[off + CMSG_HDR..off + clen]);
        }
        off += cmsg_align(clen);
    }
    None
}

pub(crate) fn to_sockaddr(a: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*a.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

pub(crate) fn from_sockaddr(s: &libc::sockaddr_in) -> SocketAddrV4 {
    SocketAddrV4::new(
        Ipv4Addr::from(u32::from_be(s.sin_addr.s_addr)),
        u16::from_be(s.sin_port),
    )
}

/// `setsockopt` with an `int` value.
pub(crate) fn set_int(
    fd: RawFd,
    level: libc::c_int,
    opt: libc::c_int,
    v: libc::c_int,
) -> io::Result<()> {
    // SAFETY: the option value is a live int of the size passed.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            opt,
            (&v as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `getsockopt` of an `int` value.
pub(crate) fn get_int(fd: RawFd, level: libc::c_int, opt: libc::c_int) -> io::Result<libc::c_int> {
    let mut v: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: v and len are live and writable; len holds v's size.
    let r = unsafe {
        libc::getsockopt(
            fd,
            level,
            opt,
            (&mut v as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmsg_arithmetic_matches_libc() {
        for n in [0usize, 1, 2, 4, 7, 8, 9] {
            // SAFETY: CMSG_LEN and CMSG_SPACE are pure arithmetic.
            let (l, s) = unsafe { (libc::CMSG_LEN(n as u32), libc::CMSG_SPACE(n as u32)) };
            assert_eq!(cmsg_len(n), l as usize);
            assert_eq!(cmsg_space(n), s as usize);
        }
    }

    #[test]
    fn cmsg_round_trip() {
        let mut b = CmsgBuf::new();
        let len = b.put(libc::SOL_UDP, libc::UDP_SEGMENT, &1400u16.to_ne_bytes());
        assert_eq!(len, cmsg_space(2));
        let d = find_cmsg(&b.0, len, libc::SOL_UDP, libc::UDP_SEGMENT).unwrap();
        assert_eq!(d, 1400u16.to_ne_bytes());
        assert!(find_cmsg(&b.0, len, libc::SOL_UDP, libc::UDP_GRO).is_none());
        assert!(find_cmsg(&b.0, 3, libc::SOL_UDP, libc::UDP_SEGMENT).is_none());
        // A corrupt length ends the search instead of reading past the buffer.
        let mut bad = b;
        bad.0[..CMSG_ALIGN].copy_from_slice(&1000usize.to_ne_bytes());
        assert!(find_cmsg(&bad.0, len, libc::SOL_UDP, libc::UDP_SEGMENT).is_none());
    }

    #[test]
    fn sockaddr_round_trip() {
        let a: SocketAddrV4 = "10.1.2.3:6784".parse().unwrap();
        let s = to_sockaddr(a);
        assert_eq!(s.sin_port, 6784u16.to_be());
        assert_eq!(from_sockaddr(&s), a);
    }
}
