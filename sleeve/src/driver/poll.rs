//! Blocking until descriptors are ready, with `poll(2)`.
//!
//! The sleeve's I/O loop is small: one TAP queue and one UDP socket (maybe a wake-up pipe or
//! an eventfd) per worker thread. `poll` over a handful of descriptors costs about as much as
//! epoll would and needs no registration state, so this module is a thin, allocation-free
//! wrapper: [`wait_readable`] (or [`poll_readable`]) for the loop, [`wait_writable`] for the short back-off when a
//! UDP send buffer is full.
//!
//! Both retry on `EINTR` with the time that is left, so a signal never cuts a wait short and
//! never extends it either. A descriptor in error or hung up counts as ready: the following
//! read reports what went wrong instead of the loop sleeping on it forever.

#![allow(unsafe_code)] // syscalls and FFI; each use has its SAFETY note

use std::io;
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

/// The most descriptors one [`wait_readable`] call takes.
pub const MAX_POLL_FDS: usize = 16;

/// Which of the descriptors given to [`wait_readable`] are ready (bit `i` = `fds[i]`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ready(u32);

impl Ready {
    /// Is `fds[i]` ready?
    pub fn is_ready(self, i: usize) -> bool {
        i < 32 && self.0 & (1 << i) != 0
    }

    /// Is any descriptor ready? `false` means the timeout passed.
    pub fn any(self) -> bool {
        self.0 != 0
    }
}

/// Block until at least one of `fds` is readable (or in error), or `timeout` passes
/// (`None`: wait indefinitely). Returns which are ready; empty on timeout.
pub fn wait_readable(fds: &[RawFd], timeout: Option<Duration>) -> io::Result<Ready> {
    if fds.len() > MAX_POLL_FDS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "too many descriptors for wait_readable",
        ));
    }
    let mut pfds = [libc::pollfd {
        fd: -1,
        events: 0,
        revents: 0,
    }; MAX_POLL_FDS];
    for (p, &fd) in pfds.iter_mut().zip(fds) {
        p.fd = fd;
        p.events = libc::POLLIN;
    }
    poll_loop(&mut pfds[..fds.len()], timeout)?;
    let mut ready = 0u32;
    for (i, p) in pfds[..fds.len()].iter().enumerate() {
        if p.revents & (libc::POLLIN | libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0 {
            ready |= 1 << i;
        }
    }
    Ok(Ready(ready))
}

/// [`wait_readable`] with a finite timeout.
pub fn poll_readable(fds: &[RawFd], timeout: Duration) -> io::Result<Ready> {
    wait_readable(fds, Some(timeout))
}

/// Block until `fd` is writable (or in error), or `timeout` passes. `Ok(false)` on timeout.
pub fn wait_writable(fd: RawFd, timeout: Duration) -> io::Result<bool> {
    let mut pfd = [libc::pollfd {
        fd,
        events: libc::POLLOUT,
        revents: 0,
    }];
    Ok(poll_loop(&mut pfd, Some(timeout))? > 0)
}

/// `poll` until something is ready or the deadline passes, retrying on `EINTR`.
fn poll_loop(pfds: &mut [libc::pollfd], timeout: Option<Duration>) -> io::Result<usize> {
    let deadline = timeout.map(|t| Instant::now() + t);
    loop {
        let ms: libc::c_int = match deadline {
            None => -1,
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                // Round up so a sub-millisecond wait does not turn into a busy loop.
                let ms = left.as_micros().div_ceil(1000);
                ms.min(libc::c_int::MAX as u128) as libc::c_int
            }
        };
        // SAFETY: pfds is a valid, exclusively borrowed slice of pollfd of the given length.
        let n = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, ms) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Ok(0);
        }
    }
}
