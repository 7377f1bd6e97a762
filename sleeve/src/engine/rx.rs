//! The rx thread: UDP -> sessions -> records -> TAP (or on to the next hop), plus timers.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddrV4;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::out::Meta;
use super::tx::Sender;
use super::{Session, Shared, KEEPALIVE};
use crate::driver::{poll_readable, RecvMeta, Tap, Udp, VNET_HDR_LEN};
use crate::offload::Offload;
use crate::reasm::Reassembler;
use crate::records::{RecordHeader, Records, BROADCAST};
use crate::session::OpenError;
use crate::wire::{self, PacketType, HEADER_LEN};

/// Datagram buffers per `recvmmsg`.
const RECV_BATCH: usize = 16;
/// Receive rounds before the relay queues are flushed and timers run.
const ROUNDS: usize = 8;
/// Datagrams per wake-up up to which the rx thread also drains the TAP.
const LOW_LOAD: usize = 4;
/// Timer granularity.
const TICK: Duration = Duration::from_millis(20);
/// Reassembly: frames in flight and how long a partial frame waits.
const REASM_ENTRIES: usize = 64;
const REASM_TIMEOUT: Duration = Duration::from_secs(1);
/// Most MACs kept from data-plane learning.
const MAX_LEARNED: usize = 16_384;

struct Receiver {
    shared: Arc<Shared>,
    tap: Arc<Tap>,
    udp: Arc<Udp>,
    relay: Sender,
    reasm: Reassembler,
    /// Source MACs already recorded as learned (avoids the shared lock per frame).
    learned: HashMap<[u8; 6], u64>,
    /// Frames written to the TAP since the last look at it (see [`run`]).
    tap_writes: usize,
}

impl Receiver {
    fn datagram(&mut self, pkt: &mut [u8], src: SocketAddrV4, now: Instant) {
        let c = &self.shared.counters;
        c.rx_packets.fetch_add(1, Ordering::Relaxed);
        c.rx_bytes.fetch_add(pkt.len() as u64, Ordering::Relaxed);
        let Some(index) = wire::peek_receiver(pkt) else {
            c.drop_malformed.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let Some(sess) = self.relay.table().by_index.get(&index).cloned() else {
            c.drop_unknown_session.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let (opened, newest_before) = {
            let mut rx = sess.rx.lock().unwrap_or_else(|e| e.into_inner());
            let before = rx.latest_counter();
            (rx.open(pkt, now), before)
        };
        let (hdr, range) = match opened {
            Ok(x) => x,
            Err(e) => {
                let counter = match e {
                    OpenError::Auth => &c.drop_auth,
                    OpenError::Replay | OpenError::TooOld | OpenError::StaleKey => &c.drop_replay,
                    OpenError::WrongIndex => &c.drop_unknown_session,
                    _ => &c.drop_malformed,
                };
                counter.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        sess.rx_packets.fetch_add(1, Ordering::Relaxed);
        sess.last_rx_ms
            .store(self.shared.now_ms(now), Ordering::Relaxed);
        // Only the newest packet moves the peer's address: a datagram with an older counter
        // (held back by someone on the path and sent again from elsewhere) must not.
        let newest = newest_before.is_none_or(|l| hdr.counter > l);
        if newest && sess.learn_endpoint(src) {
            c.endpoint_changes.fetch_add(1, Ordering::Relaxed);
            tracing::info!(peer = format_args!("{:012x}", sess.peer), endpoint = %src, "sleeve: peer's address changed; following it");
        }
        let payload = &pkt[range];
        match hdr.ptype {
            PacketType::Data => self.records(sess.peer, payload, now),
            PacketType::Probe => {
                if let Some(id) = wire::parse_probe(payload) {
                    // The IPv4 packet that carried the probe: its size is what got through.
                    let size = (pkt.len() + 28).min(usize::from(u16::MAX)) as u16;
                    let mut body = [0u8; wire::PROBE_ACK_LEN];
                    wire::write_probe_ack(&mut body, id, size);
                    send_control(
                        &self.shared,
                        &self.udp,
                        &sess,
                        PacketType::ProbeAck,
                        &body,
                        0,
                        now,
                    );
                }
            }
            PacketType::ProbeAck => {
                if let Some((id, size)) = wire::parse_probe_ack(payload) {
                    let mut p = sess.pmtu.lock().unwrap_or_else(|e| e.into_inner());
                    p.on_ack(id, size, now);
                    sess.path_mtu
                        .store(u32::from(p.current()), Ordering::Relaxed);
                    sess.confirmed.store(p.confirmed(), Ordering::Relaxed);
                }
            }
            PacketType::Keepalive => {}
        }
    }

    fn records(&mut self, from: u64, payload: &[u8], now: Instant) {
        let me = self.shared.me;
        for rec in Records::new(payload) {
            let (h, data) = match rec {
                Ok(x) => x,
                Err(_) => {
                    self.shared
                        .counters
                        .drop_bad_records
                        .fetch_add(1, Ordering::Relaxed);
                    return;
                }
            };
            if h.src == me {
                // Our own frame came back: a routing loop while routes change. Drop it.
                continue;
            }
            if h.dst == me {
                self.deliver(&h, data, now);
            } else if h.dst == BROADCAST {
                self.deliver(&h, data, now);
                let meta = meta_of(&h);
                for hop in self.relay.broadcast_children(h.src) {
                    if hop != from {
                        self.relay.queue(hop, now, &meta, h.offset, data);
                    }
                }
            } else {
                match self.relay.next_hop(h.dst) {
                    Some(hop) if hop != from => {
                        self.shared
                            .counters
                            .relayed_records
                            .fetch_add(1, Ordering::Relaxed);
                        self.relay.queue(hop, now, &meta_of(&h), h.offset, data);
                    }
                    _ => {
                        self.shared
                            .counters
                            .drop_no_route
                            .fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
    }

    fn deliver(&mut self, h: &RecordHeader, data: &[u8], now: Instant) {
        if h.is_whole() {
            self.write_tap(h.src, h.offload, data);
        } else if let Some(r) = self.reasm.push(h, data, now) {
            self.write_tap(r.src, r.offload, &r.frame);
            self.reasm.recycle(r.frame);
        }
    }

    fn write_tap(&mut self, src: u64, offload: Option<Offload>, frame: &[u8]) {
        if frame.len() < 14 {
            return;
        }
        // A source MAC that the gossiped table gives to another node (or to us) is not the
        // sender's to use: the frame never reaches the bridge, so no frame can move a pinned
        // MAC, whatever a peer's pods send.
        let mac: [u8; 6] = frame[6..12].try_into().expect("length checked");
        let pinned = self.relay.table().macs.get(&mac).copied();
        if pinned.is_some_and(|owner| owner != src) {
            self.shared
                .counters
                .drop_foreign_mac
                .fetch_add(1, Ordering::Relaxed);
            return;
        }
        let mut vnet = [0u8; VNET_HDR_LEN];
        if let Some(o) = offload {
            o.to_vnet(&mut vnet);
            // A header the kernel would refuse (or misuse) never reaches the TAP.
            if o.check(frame.len()).is_err() {
                self.shared
                    .counters
                    .drop_bad_records
                    .fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        match self.tap.write_parts(&vnet, frame) {
            Ok(_) => {
                self.tap_writes += 1;
                self.shared
                    .counters
                    .frames_out
                    .fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                self.shared
                    .counters
                    .drop_tap_write
                    .fetch_add(1, Ordering::Relaxed);
                tracing::debug!(error = %e, "sleeve: TAP write failed");
                return;
            }
        }
        // Learned only where the gossiped table is silent (it wins when sending anyway).
        if pinned.is_none() && mac[0] & 1 == 0 && self.learned.get(&mac) != Some(&src) {
            let mut shared = self
                .shared
                .learned
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            // Bounded: a peer sending from endless MACs cannot grow it without limit; the
            // gossiped table covers every real endpoint anyway.
            if shared.len() >= MAX_LEARNED {
                shared.clear();
                self.learned.clear();
            }
            self.learned.insert(mac, src);
            shared.insert(mac, src);
        }
    }

    /// Probes, keepalives, reassembly expiry.
    fn timers(&mut self, now: Instant) {
        let now_ms = self.shared.now_ms(now);
        let sessions: Vec<Arc<Session>> = self.relay.table().by_index.values().cloned().collect();
        for s in sessions {
            // A search round sends a dozen probes at once: take every one that is due.
            let mut probes = Vec::new();
            {
                let mut p = s.pmtu.lock().unwrap_or_else(|e| e.into_inner());
                while let Some(probe) = p.poll(now) {
                    probes.push(probe);
                    if probes.len() >= 64 {
                        break;
                    }
                }
                s.path_mtu.store(u32::from(p.current()), Ordering::Relaxed);
                s.confirmed.store(p.confirmed(), Ordering::Relaxed);
            }
            let overhead = 28 + s.tx.lock().unwrap_or_else(|e| e.into_inner()).overhead();
            for p in probes {
                let mut body = [0u8; wire::PROBE_LEN];
                wire::write_probe(&mut body, p.id);
                // Pad so the IPv4 packet is exactly the probed size.
                let pad = usize::from(p.size).saturating_sub(overhead + body.len());
                send_control(
                    &self.shared,
                    &self.udp,
                    &s,
                    PacketType::Probe,
                    &body,
                    pad,
                    now,
                );
            }
            let last = s.last_tx_ms.load(Ordering::Relaxed);
            if last == 0 || now_ms.saturating_sub(last) >= KEEPALIVE.as_millis() as u64 {
                send_control(
                    &self.shared,
                    &self.udp,
                    &s,
                    PacketType::Keepalive,
                    &[],
                    0,
                    now,
                );
            }
        }
        self.reasm.expire(now);
    }
}

fn meta_of(h: &RecordHeader) -> Meta {
    Meta {
        dst: h.dst,
        src: h.src,
        id: h.id,
        total: h.total,
        offload: h.offload,
    }
}

/// Seals and sends one control packet (`body` then `pad` zero bytes) to the session's peer.
fn send_control(
    shared: &Shared,
    udp: &Udp,
    s: &Session,
    ptype: PacketType,
    body: &[u8],
    pad: usize,
    now: Instant,
) {
    let mut buf = vec![0u8; HEADER_LEN + body.len() + pad + 32];
    buf[HEADER_LEN..HEADER_LEN + body.len()].copy_from_slice(body);
    let sealed =
        s.tx.lock()
            .unwrap_or_else(|e| e.into_inner())
            .seal(ptype, &mut buf, body.len() + pad, now);
    let Ok(n) = sealed else { return };
    let dst = s.endpoint();
    match udp.send_many(&[(dst, &buf[..n])]) {
        Ok(_) => {
            s.last_tx_ms.store(shared.now_ms(now), Ordering::Relaxed);
            s.tx_packets.fetch_add(1, Ordering::Relaxed);
            shared.counters.tx_packets.fetch_add(1, Ordering::Relaxed);
            shared
                .counters
                .tx_bytes
                .fetch_add(n as u64, Ordering::Relaxed);
        }
        // EMSGSIZE for a probe bigger than the interface: the probe is lost, as on the path.
        Err(e) => tracing::trace!(error = %e, ?ptype, "sleeve: control send failed"),
    }
}

/// The rx thread's state.
struct RxState {
    r: Receiver,
    tap_buf: Vec<u8>,
    bufs: Vec<Vec<u8>>,
    metas: Vec<RecvMeta>,
    next_tick: Instant,
}

impl RxState {
    fn new(shared: Arc<Shared>, tap: Arc<Tap>, udp: Arc<Udp>) -> RxState {
        RxState {
            r: Receiver {
                shared: shared.clone(),
                tap,
                udp: udp.clone(),
                relay: Sender::new(shared, udp),
                reasm: Reassembler::new(REASM_ENTRIES, REASM_TIMEOUT),
                learned: HashMap::new(),
                tap_writes: 0,
            },
            tap_buf: super::tx::tap_buffer(),
            bufs: (0..RECV_BATCH).map(|_| vec![0u8; 65_536]).collect(),
            metas: (0..RECV_BATCH).map(|_| RecvMeta::default()).collect(),
            next_tick: Instant::now(),
        }
    }

    /// Receives what is queued on the socket (without blocking), delivers and relays it.
    /// Returns the number of datagrams received.
    fn round(&mut self) -> usize {
        let r = &mut self.r;
        r.relay.refresh();
        let now = Instant::now();
        let mut received = 0;
        for _ in 0..ROUNDS {
            let n = match r.udp.recv_many(&mut self.bufs, &mut self.metas) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "sleeve: receiving failed");
                    break;
                }
            };
            received += n;
            for (buf, m) in self.bufs.iter_mut().zip(self.metas.iter()).take(n) {
                let seg = m.segment.max(1);
                for chunk in buf[..m.len].chunks_mut(seg) {
                    r.datagram(chunk, m.src, now);
                }
            }
            if n < RECV_BATCH {
                break;
            }
        }
        r.relay.flush(now);
        // At low load, what we just wrote to the TAP is often answered at once: the kernel
        // runs the pod's reply (an ICMP echo reply, a TCP ACK, a request/response) inside
        // our write, so it is already queued on the TAP. Sending it from here saves the tx
        // thread's wake-up, a large share of a round trip's added latency. Under load the
        // tx thread is awake anyway and this is skipped; `tap_reader` keeps the frames in
        // the order they were read when both threads try.
        if r.tap_writes > 0 && received <= LOW_LOAD {
            if let Ok(_reading) = r.shared.tap_reader.try_lock() {
                let tap = r.tap.clone();
                super::tx::drain_tap(&mut r.relay, &tap, &mut self.tap_buf, Instant::now());
            }
        }
        r.tap_writes = 0;
        received
    }

    /// Runs the timers if they are due; returns how long until they are due next.
    fn timers(&mut self) -> Duration {
        let now = Instant::now();
        if now >= self.next_tick {
            self.r.timers(now);
            self.r.relay.flush(now);
            self.next_tick = now + TICK;
        }
        self.next_tick.saturating_duration_since(now)
    }
}

pub(crate) fn run(shared: Arc<Shared>, tap: Arc<Tap>, udp: Arc<Udp>) {
    let mut st = RxState::new(shared.clone(), tap, udp.clone());
    let mut wait = Duration::ZERO;
    while !shared.stop.load(Ordering::Relaxed) {
        match poll_readable(&[udp.as_raw_fd()], wait) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::error!(error = %e, "sleeve: polling the UDP socket failed");
                std::thread::sleep(TICK);
            }
        }
        st.round();
        wait = st.timers();
    }
}
