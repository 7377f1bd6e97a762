//! # weft-sleeve: the encrypted userspace transport
//!
//! Design note. The sleeve carries Ethernet frames between nodes over UDP 6784 whenever the
//! kernel fastpath cannot, and relays them hop by hop between nodes that share no network.
//! The wire format and key schedule are specified in `docs/sleeve.md`.
//!
//! Pure core (no sockets, no clock, no randomness; `now` is passed in):
//! - [`wire`]: the 16-byte packet header and the probe payloads;
//! - [`session`]: per-direction ChaCha20-Poly1305 keys derived from the control connection's
//!   Noise handshake, 64-bit counters, rekeying by time and volume with a key-phase bit;
//! - [`replay`]: the 4096-counter sliding window;
//! - [`offload`]: the Linux `virtio_net_hdr` (checksum and segmentation offload state) in
//!   its kernel and wire encodings, and the strict check before a peer's header reaches the
//!   kernel; the driver re-exports it;
//! - [`records`]: frames (or pieces of them) with source and destination node and the Linux
//!   offload header, several per datagram;
//! - [`reasm`]: bounded reassembly of pieces at the destination;
//! - [`pmtu`]: path-MTU discovery per neighbour, black-hole detection included;
//! - [`icmp`]: "fragmentation needed" answers and the MTU arithmetic.
//!
//! I/O:
//! - [`driver`]: the TAP (with `IFF_VNET_HDR` offloads) and the UDP socket (GSO, GRO,
//!   `sendmmsg`/`recvmmsg`), the batching that makes a userspace tunnel fast;
//! - [`engine`]: the two threads that join them, and the forwarding table the router feeds.

pub mod icmp;
pub mod offload;
pub mod pmtu;
pub mod reasm;
pub mod records;
pub mod replay;
pub mod session;
pub mod wire;

pub mod driver;
pub mod engine;
