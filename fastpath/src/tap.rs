//! The node's TAP device, through which the sleeve (`weft-sleeve`) moves frames between the bridge
//! and its encrypted UDP transport.
//!
//! rtnetlink cannot create a usable tun/tap device, so this is the one place with ioctls:
//! open `/dev/net/tun`, `TUNSETIFF` with [`TAP_CREATE_FLAGS`] (which creates the device in the
//! opening thread's namespace), then `TUNSETPERSIST` so the device outlives our descriptor. The
//! sleeve attaches later by opening `/dev/net/tun` and calling `TUNSETIFF` with the same name.
//!
//! Contract with the sleeve: the device is created **multi-queue** (`IFF_MULTI_QUEUE`), so the
//! sleeve can attach one queue per core; the kernel refuses (`EINVAL`) an attach whose
//! `IFF_MULTI_QUEUE` differs from the device's, so the sleeve must set it too. `IFF_VNET_HDR`
//! is per attach and is the sleeve's choice; `IFF_NO_PI` is set here and must be kept.

#![allow(unsafe_code)] // syscalls and FFI; each use has its SAFETY note

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// Flags the TAP is created with: a layer-2 device, no packet-info prefix, multi-queue.
pub const TAP_CREATE_FLAGS: libc::c_int = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_MULTI_QUEUE;

/// Open `/dev/net/tun` and attach a queue of the TAP `name` with `flags`, creating the device
/// if it does not exist. Closing the descriptor detaches; a non-persistent device then goes.
fn attach(name: &str, flags: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: a constant NUL-terminated path; the result is checked.
    let raw = unsafe {
        libc::open(
            c"/dev/net/tun".as_ptr(),
            libc::O_RDWR | libc::O_CLOEXEC | libc::O_NONBLOCK,
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: raw is a freshly opened descriptor owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    if name.len() >= req.ifr_name.len() {
        return Err(io::Error::from_raw_os_error(libc::ENAMETOOLONG));
    }
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = flags as libc::c_short;
    // SAFETY: TUNSETIFF reads and writes an ifreq, which `req` is.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// Create the persistent TAP `name` in the calling thread's namespace. `op` in the error says
/// which step failed (open, TUNSETIFF, TUNSETPERSIST).
pub(crate) fn create_persistent(name: &str) -> Result<(), (&'static str, io::Error)> {
    let fd = attach(name, TAP_CREATE_FLAGS).map_err(|e| ("creating it (TUNSETIFF)", e))?;
    // SAFETY: TUNSETPERSIST takes an integer argument by value.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETPERSIST, 1 as libc::c_ulong) } < 0 {
        return Err((
            "making it persistent (TUNSETPERSIST)",
            io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// Create a throwaway, non-persistent TAP and drop it (capability probe).
pub(crate) fn probe(name: &str) -> io::Result<()> {
    attach(name, libc::IFF_TAP | libc::IFF_NO_PI).map(drop)
}
