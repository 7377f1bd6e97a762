//! The tx thread: TAP -> records -> datagrams -> UDP.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::out::{Meta, Out};
use super::{Shared, Table};
use crate::driver::{poll_readable, Tap, Udp, VNET_HDR_LEN};
use crate::icmp::{frag_needed, gso_segment_ip_len, inner_mtu, ipv4_df_len, ETH_HLEN};
use crate::offload::Offload;
use crate::records::BROADCAST;

/// Frames read before the queued datagrams are flushed.
const READ_BATCH: usize = 64;
/// How long a poll waits before checking the stop flag.
const POLL: Duration = Duration::from_millis(200);

/// Per-thread state of the sender.
pub(crate) struct Sender {
    shared: Arc<Shared>,
    udp: Arc<Udp>,
    table: Arc<Table>,
    seen: u64,
    outs: HashMap<u64, Out>,
    icmp: Vec<u8>,
    /// The last drain read at most one frame: traffic is sparse, so the next drain sends
    /// its first frame at once instead of after the read that finds the TAP empty.
    sparse: bool,
}

impl Sender {
    pub fn new(shared: Arc<Shared>, udp: Arc<Udp>) -> Sender {
        Sender {
            shared,
            udp,
            table: Arc::new(Table::default()),
            seen: 0,
            outs: HashMap::new(),
            icmp: Vec::with_capacity(256),
            sparse: true,
        }
    }

    /// Picks up a new table; drops batches for sessions that are gone.
    pub fn refresh(&mut self) {
        if let Some(t) = self.shared.table_if_changed(&mut self.seen) {
            self.table = t;
            let table = &self.table;
            self.outs.retain(|peer, o| {
                table
                    .by_peer
                    .get(peer)
                    .is_some_and(|s| Arc::ptr_eq(s, &o.session))
            });
        }
    }

    /// Queues `data` (a piece of frame `meta`) to next hop `hop`.
    pub fn queue(&mut self, hop: u64, now: Instant, meta: &Meta, offset: u32, data: &[u8]) -> bool {
        // Disjoint field borrows: no reference counting per frame.
        let out = match self.outs.entry(hop) {
            std::collections::hash_map::Entry::Occupied(e) => Some(e.into_mut()),
            std::collections::hash_map::Entry::Vacant(e) => self
                .table
                .by_peer
                .get(&hop)
                .map(|s| e.insert(Out::new(s.clone()))),
        };
        match out {
            Some(o) => {
                o.push(&self.shared, &self.udp, now, meta, offset, data);
                true
            }
            None => {
                self.shared
                    .counters
                    .drop_no_route
                    .fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    pub fn flush(&mut self, now: Instant) {
        for o in self.outs.values_mut() {
            if !o.is_empty() {
                o.flush(&self.shared, &self.udp, now);
            }
        }
    }

    /// The owner of `mac`, from the gossiped table, else from data-plane learning.
    fn owner(&self, mac: &[u8; 6]) -> Option<u64> {
        if let Some(o) = self.table.macs.get(mac) {
            return Some(*o);
        }
        self.shared
            .learned
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(mac)
            .copied()
    }

    pub fn table(&self) -> &Arc<Table> {
        &self.table
    }

    /// The next hop towards `dst`: the route, else `dst` itself when it is a direct
    /// neighbour the routes do not list yet (a new connection before gossip confirms it).
    pub fn next_hop(&self, dst: u64) -> Option<u64> {
        match self.table.unicast.get(&dst) {
            Some(h) => Some(*h),
            None => self.table.by_peer.contains_key(&dst).then_some(dst),
        }
    }

    pub fn broadcast_children(&self, origin: u64) -> Vec<u64> {
        self.table
            .broadcast
            .get(&origin)
            .cloned()
            .unwrap_or_default()
    }

    /// Path MTU towards direct neighbour `hop` as an inner (pod) IP MTU.
    fn inner_mtu_to(&self, hop: u64) -> Option<u16> {
        let s = self.table.by_peer.get(&hop)?;
        Some(inner_mtu(
            s.path_mtu.load(Ordering::Relaxed) as u16,
            self.shared.mode,
        ))
    }

    /// Handles one frame read from the TAP: `buf` = vnet header + Ethernet frame.
    pub fn frame(&mut self, tap: &Tap, buf: &[u8], now: Instant) {
        if buf.len() < VNET_HDR_LEN + ETH_HLEN {
            return;
        }
        let off = Offload::from_vnet(&buf[..VNET_HDR_LEN]);
        let offload = (!off.is_none()).then_some(off);
        let frame = &buf[VNET_HDR_LEN..];
        self.shared
            .counters
            .frames_in
            .fetch_add(1, Ordering::Relaxed);
        let dst_mac: [u8; 6] = frame[..6].try_into().expect("length checked");
        let me = self.shared.me;
        let id = self.shared.frame_ids.fetch_add(1, Ordering::Relaxed);
        let multicast = dst_mac[0] & 1 == 1;
        let owner = if multicast {
            None
        } else {
            self.owner(&dst_mac)
        };
        match owner {
            Some(o) if o == me => {}
            Some(o) => {
                let Some(hop) = self.next_hop(o) else {
                    self.shared
                        .counters
                        .drop_no_route
                        .fetch_add(1, Ordering::Relaxed);
                    return;
                };
                if let Some(mtu) = self.inner_mtu_to(hop) {
                    if self.too_big(tap, frame, offload.as_ref(), mtu) {
                        return;
                    }
                }
                let meta = Meta {
                    dst: o,
                    src: me,
                    id,
                    total: frame.len() as u32,
                    offload,
                };
                self.queue(hop, now, &meta, 0, frame);
            }
            None => {
                // Broadcast, multicast, or a MAC nobody claims: flood along our tree.
                let meta = Meta {
                    dst: BROADCAST,
                    src: me,
                    id,
                    total: frame.len() as u32,
                    offload,
                };
                for hop in self.broadcast_children(me) {
                    self.queue(hop, now, &meta, 0, frame);
                }
            }
        }
    }

    /// An IPv4 packet with DF that cannot fit the path: answer ICMP "fragmentation needed"
    /// to the pod (true), so its TCP lowers the segment size.
    fn too_big(&mut self, tap: &Tap, frame: &[u8], offload: Option<&Offload>, mtu: u16) -> bool {
        let (df, len) = match offload.filter(|o| o.gso_size > 0) {
            Some(o) => match (ipv4_df_len(frame), gso_segment_ip_len(frame, o)) {
                (Some((df, _)), Some(seg)) => (df, seg),
                _ => return false,
            },
            None => match ipv4_df_len(frame) {
                Some(x) => x,
                None => return false,
            },
        };
        if !df || len <= mtu {
            return false;
        }
        self.icmp.clear();
        if frag_needed(frame, mtu, &mut self.icmp) {
            let vnet = [0u8; VNET_HDR_LEN];
            if tap.write_parts(&vnet, &self.icmp).is_ok() {
                self.shared
                    .counters
                    .icmp_frag_needed
                    .fetch_add(1, Ordering::Relaxed);
            }
            return true;
        }
        false
    }
}

/// Reads up to [`READ_BATCH`] frames from the TAP (without blocking) and sends them.
/// The caller holds `Shared::tap_reader`. Returns how many frames were read.
///
/// Under load the frames of one drain go out together (one GSO send per next hop). When
/// the previous drain found a single frame, the first frame is sent as soon as it is read:
/// at low load the read that finds the TAP empty would otherwise sit between a pod's packet
/// and the wire (one syscall, 8-18 µs on the benchmark VM, twice per round trip).
pub(crate) fn drain_tap(s: &mut Sender, tap: &Tap, buf: &mut [u8], now: Instant) -> usize {
    let mut n_read = 0;
    let send_first = s.sparse;
    while n_read < READ_BATCH {
        match tap.read(buf) {
            Ok(n) => {
                n_read += 1;
                s.frame(tap, &buf[..n], now);
                if send_first && n_read == 1 {
                    s.flush(now);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::warn!(error = %e, "sleeve: reading the TAP failed");
                break;
            }
        }
    }
    s.flush(now);
    s.sparse = n_read <= 1;
    n_read
}

/// A buffer for one TAP read: the vnet header and a 64 KiB offloaded frame.
pub(crate) fn tap_buffer() -> Vec<u8> {
    vec![0u8; 65_536 + VNET_HDR_LEN + 64]
}

pub(crate) fn run(shared: Arc<Shared>, tap: Arc<Tap>, udp: Arc<Udp>) {
    let mut s = Sender::new(shared.clone(), udp);
    let mut buf = tap_buffer();
    while !shared.stop.load(Ordering::Relaxed) {
        match poll_readable(&[tap.as_raw_fd()], POLL) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::error!(error = %e, "sleeve: polling the TAP failed");
                std::thread::sleep(POLL);
                continue;
            }
        }
        s.refresh();
        let _reading = shared.tap_reader.lock().unwrap_or_else(|e| e.into_inner());
        drain_tap(&mut s, &tap, &mut buf, Instant::now());
    }
}
