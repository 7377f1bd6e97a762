//! The sleeve's Linux I/O: a queue of the node's TAP device and the UDP socket, both set up
//! for batching, because a userspace tunnel is bound by system calls per packet, not by
//! crypto (ChaCha20-Poly1305 runs at ~12 Gbit/s per core; one syscall per 1500-byte packet
//! caps a tunnel at well under 1 Gbit/s).
//!
//! - [`Tap`] (TAP with `IFF_VNET_HDR` and TSO/checksum offloads): one read yields a whole TCP
//!   send of up to 64 KB with its `virtio_net_hdr` (an [`Offload`]); one write hands such a
//!   frame to the receiving kernel unsegmented. Neither side segments TCP or computes
//!   checksums in userspace.
//! - [`Udp`] (UDP GSO, GRO, `sendmmsg`/`recvmmsg`): the encrypted datagrams that carry such a
//!   frame leave in one `sendmsg` and usually arrive in one `recvmmsg` slot.
//! - [`wait_readable`]/[`wait_writable`]: `poll(2)` over the few descriptors of a worker.
//!
//! Descriptors are non-blocking: reads and receives return `WouldBlock` when empty, and the
//! worker loop waits with [`wait_readable`]. All types are `Send + Sync`; the kernel
//! serialises concurrent calls on one descriptor. Everything acts in the network namespace of
//! the thread that creates it (a TAP queue attaches to the device of that namespace; a socket
//! belongs to it for life).
//!
//! `EMSGSIZE`: the socket sends with DF and ignores the kernel's path-MTU cache
//! (`IP_PMTUDISC_PROBE`), so `EMSGSIZE` (or `EINVAL` with GSO, handled inside
//! [`Udp::send_segments`]) only ever means "larger than the local interface MTU": a caller
//! bug or an MTU change on the underlay; the path-MTU logic must treat that size as failed.
//! Larger-than-path datagrams are silently dropped on the way, which is what the probes
//! detect. A TAP write answers `EINVAL` for a frame whose header the kernel refuses; check
//! headers from peers with [`Offload::check`] first.

mod poll;
mod sys;
mod tap;
mod udp;

// The `virtio_net_hdr` on every TAP frame: the pure core's type, re-exported.
pub use crate::offload::{
    Offload, OffloadError, F_DATA_VALID, F_NEEDS_CSUM, GSO_ECN, GSO_NONE, GSO_TCPV4, GSO_TCPV6,
    GSO_UDP, GSO_UDP_L4,
};
pub use poll::{poll_readable, wait_readable, wait_writable, Ready, MAX_POLL_FDS};
pub use tap::{Tap, TapOffloads, MAX_FRAME_LEN, TAP_ATTACH_FLAGS, TAP_BUF_LEN, VNET_HDR_LEN};
pub use udp::{
    RecvMeta, Udp, UdpConfig, MAX_BATCH, MAX_SEGMENTS, MAX_SEND, RECV_BUF_LEN, SEND_WAIT_LIMIT,
    SOCKET_BUFFER_BYTES,
};
