//! A queue of the node's TAP device, opened for batching: every frame carries a
//! `virtio_net_hdr` and the kernel hands over unsegmented TCP frames of up to 64 KB.
//!
//! The router (weft-fastpath) creates the persistent, multi-queue TAP `weft-tap`; the sleeve
//! attaches one queue per worker with [`Tap::attach`]: open `/dev/net/tun`, `TUNSETIFF` with
//! `IFF_TAP | IFF_NO_PI | IFF_MULTI_QUEUE | IFF_VNET_HDR` (the kernel refuses an attach whose
//! multi-queue flag differs from the device's; if the device does not exist it is created,
//! non-persistent, in the namespace of the calling thread). Then:
//!
//! - `TUNSETVNETHDRSZ` = 10: the plain `virtio_net_hdr`, no `num_buffers`;
//! - `TUNSETVNETLE`: header fields little-endian on every host (see [`crate::offload`]);
//! - `TUNSETOFFLOAD`: checksum offload plus TSO for IPv4, IPv6 and ECN. This is what makes the
//!   kernel skip segmentation and checksumming before handing frames to us. If the kernel
//!   refuses the full set, smaller sets are tried down to none; [`Tap::offloads`] says what
//!   was granted.
//!
//! Note that the kernel keeps `IFF_VNET_HDR`, the header size and the offload set per
//! *device*, not per queue: every queue attached must use the same settings, which all
//! queues opened through this module do.
//!
//! UDP segmentation offload (`TUN_F_USO4/6`) is deliberately not requested: a USO frame can
//! only be written into a TAP on kernels 6.2 and later, and the sender cannot know the
//! receiving peer's kernel. Without it the local kernel segments UDP before the TAP.
//!
//! Writing accepts GSO frames whatever offloads this queue has: offloads only govern what the
//! kernel hands *to* us. The descriptor is non-blocking; reads of an empty queue return
//! `WouldBlock` (wait with [`super::wait_readable`]).

#![allow(unsafe_code)] // syscalls and FFI; each use has its SAFETY note

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// Size of the `virtio_net_hdr` that prefixes every frame read from or written to a [`Tap`].
pub const VNET_HDR_LEN: usize = crate::offload::LEN;

/// The largest frame (Ethernet header onwards) the kernel hands over: a 64 KB GSO packet
/// plus an Ethernet header and a VLAN tag.
pub const MAX_FRAME_LEN: usize = 65_535 + 14 + 4;

/// A read buffer of this size always holds a whole frame with its header (the kernel
/// truncates frames that do not fit; [`Tap::read`] reports those as errors).
pub const TAP_BUF_LEN: usize = VNET_HDR_LEN + MAX_FRAME_LEN;

/// Flags used to attach a queue of the TAP.
pub const TAP_ATTACH_FLAGS: libc::c_int =
    libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_MULTI_QUEUE | libc::IFF_VNET_HDR;

/// The offloads enabled on the TAP with `TUNSETOFFLOAD`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TapOffloads {
    /// Checksums may be left for us (`TUN_F_CSUM`); the precondition of every TSO flag.
    pub csum: bool,
    /// TCP over IPv4 arrives unsegmented (`TUN_F_TSO4`).
    pub tso4: bool,
    /// TCP over IPv6 arrives unsegmented (`TUN_F_TSO6`).
    pub tso6: bool,
    /// TCP with ECN (CWR) arrives unsegmented too (`TUN_F_TSO_ECN`).
    pub tso_ecn: bool,
}

impl TapOffloads {
    /// Everything [`Tap::attach`] asks for.
    pub const ALL: TapOffloads = TapOffloads {
        csum: true,
        tso4: true,
        tso6: true,
        tso_ecn: true,
    };
    /// No offloads: the kernel segments and checksums everything before the TAP.
    pub const NONE: TapOffloads = TapOffloads {
        csum: false,
        tso4: false,
        tso6: false,
        tso_ecn: false,
    };

    /// The `TUNSETOFFLOAD` argument.
    pub fn bits(self) -> libc::c_uint {
        let mut b = 0;
        if self.csum {
            b |= libc::TUN_F_CSUM;
            // TSO without checksum offload is meaningless; the kernel ignores it.
            if self.tso4 {
                b |= libc::TUN_F_TSO4;
            }
            if self.tso6 {
                b |= libc::TUN_F_TSO6;
            }
            if self.tso_ecn && (self.tso4 || self.tso6) {
                b |= libc::TUN_F_TSO_ECN;
            }
        }
        b
    }

    fn from_bits(b: libc::c_uint) -> TapOffloads {
        TapOffloads {
            csum: b & libc::TUN_F_CSUM != 0,
            tso4: b & libc::TUN_F_TSO4 != 0,
            tso6: b & libc::TUN_F_TSO6 != 0,
            tso_ecn: b & libc::TUN_F_TSO_ECN != 0,
        }
    }

    /// Will the kernel hand over TCP frames larger than the MTU?
    pub fn any_tso(self) -> bool {
        self.csum && (self.tso4 || self.tso6)
    }
}

/// One attached queue of a TAP device, with `virtio_net_hdr` framing.
#[derive(Debug)]
pub struct Tap {
    fd: OwnedFd,
    name: String,
    offloads: TapOffloads,
}

impl Tap {
    /// Attach a queue of the TAP `name` in the calling thread's network namespace (creating a
    /// non-persistent device if there is none) with all offloads the kernel grants.
    pub fn attach(name: &str) -> io::Result<Tap> {
        Tap::attach_with(name, TapOffloads::ALL)
    }

    /// [`Tap::attach`] asking for at most `wanted` offloads (tests, or to turn them off).
    pub fn attach_with(name: &str, wanted: TapOffloads) -> io::Result<Tap> {
        let fd = open_queue(name)?;
        let raw = fd.as_raw_fd();
        let size: libc::c_int = VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads an int through the pointer, which points at `size`.
        if unsafe { libc::ioctl(raw, libc::TUNSETVNETHDRSZ, &size) } < 0 {
            return Err(annotate(io::Error::last_os_error(), "TUNSETVNETHDRSZ"));
        }
        let le: libc::c_int = 1;
        // SAFETY: TUNSETVNETLE reads an int through the pointer, which points at `le`.
        if unsafe { libc::ioctl(raw, libc::TUNSETVNETLE, &le) } < 0 {
            // Kernels built without cross-endian support refuse; on little-endian hosts (all
            // that weft targets today) the header is little-endian anyway.
            let e = io::Error::last_os_error();
            if cfg!(target_endian = "big") {
                return Err(annotate(e, "TUNSETVNETLE"));
            }
        }
        let offloads = set_offloads(raw, wanted)?;
        Ok(Tap {
            fd,
            name: name.to_string(),
            offloads,
        })
    }

    /// The offloads the kernel granted.
    pub fn offloads(&self) -> TapOffloads {
        self.offloads
    }

    /// The device name this queue belongs to.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Read one frame: [`VNET_HDR_LEN`] bytes of `virtio_net_hdr`, then the Ethernet frame.
    /// Returns the total length; `WouldBlock` when the queue is empty. `buf` should be
    /// [`TAP_BUF_LEN`] bytes: the kernel silently truncates a frame that does not fit, so a
    /// read that fills a smaller buffer is reported as `InvalidData` (the frame is gone).
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            // SAFETY: buf is a valid, exclusively borrowed region of buf.len() bytes.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n >= 0 {
                let n = n as usize;
                if n == buf.len() && n < TAP_BUF_LEN {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "TAP frame truncated: read buffer smaller than TAP_BUF_LEN",
                    ));
                }
                return Ok(n);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// Write one frame given as `virtio_net_hdr` + Ethernet frame. A GSO frame is written
    /// whole: the kernel segments it where it has to. `WouldBlock` is not expected (a TAP
    /// write does not block), but `EINVAL` is: the kernel refuses malformed headers.
    pub fn write(&self, buf: &[u8]) -> io::Result<usize> {
        loop {
            // SAFETY: buf is a valid region of buf.len() bytes for the duration of the call.
            let n = unsafe { libc::write(self.fd.as_raw_fd(), buf.as_ptr().cast(), buf.len()) };
            if n >= 0 {
                return Ok(n as usize);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// [`Tap::write`] with the header and the frame in separate buffers (one `writev`), so a
    /// frame reassembled in place need not be copied behind its header. `vnet` must be
    /// exactly [`VNET_HDR_LEN`] bytes. Returns the total written.
    pub fn write_parts(&self, vnet: &[u8], frame: &[u8]) -> io::Result<usize> {
        if vnet.len() != VNET_HDR_LEN {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "virtio_net_hdr must be 10 bytes",
            ));
        }
        let iov = [
            libc::iovec {
                iov_base: vnet.as_ptr() as *mut libc::c_void,
                iov_len: vnet.len(),
            },
            libc::iovec {
                iov_base: frame.as_ptr() as *mut libc::c_void,
                iov_len: frame.len(),
            },
        ];
        loop {
            // SAFETY: both iovecs describe live, borrowed buffers; writev only reads them.
            let n = unsafe { libc::writev(self.fd.as_raw_fd(), iov.as_ptr(), 2) };
            if n >= 0 {
                return Ok(n as usize);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// The descriptor, for [`super::wait_readable`].
    pub fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl AsFd for Tap {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Open `/dev/net/tun` (non-blocking) and attach a queue of `name` with [`TAP_ATTACH_FLAGS`].
fn open_queue(name: &str) -> io::Result<OwnedFd> {
    // SAFETY: a constant NUL-terminated path; the result is checked.
    let raw = unsafe {
        libc::open(
            c"/dev/net/tun".as_ptr(),
            libc::O_RDWR | libc::O_CLOEXEC | libc::O_NONBLOCK,
        )
    };
    if raw < 0 {
        return Err(annotate(io::Error::last_os_error(), "open /dev/net/tun"));
    }
    // SAFETY: raw is a freshly opened descriptor owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    if name.is_empty() || name.len() >= req.ifr_name.len() || name.contains('\0') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad interface name {name:?}"),
        ));
    }
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = TAP_ATTACH_FLAGS as libc::c_short;
    // SAFETY: TUNSETIFF reads and writes an ifreq, which `req` is.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut req) } < 0 {
        return Err(annotate(
            io::Error::last_os_error(),
            "TUNSETIFF (attach; EINVAL: device exists without IFF_MULTI_QUEUE)",
        ));
    }
    Ok(fd)
}

/// Ask for `wanted`, then for ever smaller sets; return what the kernel accepted.
fn set_offloads(raw: RawFd, wanted: TapOffloads) -> io::Result<TapOffloads> {
    let w = wanted.bits();
    let ladder = [
        w,
        w & !libc::TUN_F_TSO_ECN,
        w & (libc::TUN_F_CSUM | libc::TUN_F_TSO4),
        w & libc::TUN_F_CSUM,
        0,
    ];
    let mut last = None;
    for (i, &bits) in ladder.iter().enumerate() {
        if i > 0 && bits == ladder[i - 1] {
            continue;
        }
        // SAFETY: TUNSETOFFLOAD takes its argument by value (an unsigned long).
        if unsafe { libc::ioctl(raw, libc::TUNSETOFFLOAD, bits as libc::c_ulong) } == 0 {
            return Ok(TapOffloads::from_bits(bits));
        }
        last = Some(io::Error::last_os_error());
    }
    Err(annotate(
        last.unwrap_or_else(|| io::Error::from_raw_os_error(libc::EINVAL)),
        "TUNSETOFFLOAD",
    ))
}

/// Prefix an OS error with the step that failed, keeping its kind.
fn annotate(e: io::Error, what: &str) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offload_bits() {
        assert_eq!(
            TapOffloads::ALL.bits(),
            libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6 | libc::TUN_F_TSO_ECN
        );
        assert_eq!(TapOffloads::NONE.bits(), 0);
        let no_csum = TapOffloads {
            csum: false,
            ..TapOffloads::ALL
        };
        assert_eq!(no_csum.bits(), 0);
        assert!(!no_csum.any_tso());
        assert_eq!(
            TapOffloads::from_bits(TapOffloads::ALL.bits()),
            TapOffloads::ALL
        );
    }
}
