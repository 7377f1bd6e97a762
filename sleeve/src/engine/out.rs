//! Packing records into datagrams for one next hop, and sending them in GSO batches.
//!
//! A batch is one buffer of datagrams laid out back to back, each `seg` bytes (the path
//! MTU minus IPv4 and UDP headers) except possibly the last, which is exactly what one UDP
//! GSO `sendmsg` takes. Records are appended to the open datagram; a frame too big for the
//! room left is split into pieces that fill datagrams exactly (a 64 KB offload frame becomes
//! ~45 full datagrams and one send). A record that would fit a fresh datagram is not split:
//! the open datagram is closed short, which ends the batch. Datagrams are sealed at flush,
//! under one lock of the session's send side.

use std::net::SocketAddrV4;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use super::{Session, Shared};
use crate::driver::Udp;
use crate::offload::Offload;
use crate::records::{write_record, RecordHeader, OFFLOAD_LEN, RECORD_HEADER_LEN};
use crate::wire::{PacketType, HEADER_LEN};

/// Pieces smaller than this are not worth a record of their own at the end of a datagram.
const MIN_PIECE: usize = 256;
/// Largest UDP GSO batch (bytes of UDP payload in one send).
const MAX_BATCH: usize = 65_000;
/// Most datagrams in one GSO send.
const MAX_SEGS: usize = 64;

/// What a record carries, apart from its data.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Meta {
    pub dst: u64,
    pub src: u64,
    pub id: u32,
    pub total: u32,
    pub offload: Option<Offload>,
}

pub(crate) struct Out {
    pub session: Arc<Session>,
    buf: Vec<u8>,
    /// Datagram size of this batch (UDP payload bytes).
    seg: usize,
    /// Closed datagrams: payload length of each (all full except maybe the last).
    closed: Vec<usize>,
    /// Payload bytes in the open datagram, if one is open.
    open: Option<usize>,
    /// The batch ended with a short datagram: flush before opening another.
    ended: bool,
    overhead: usize,
}

impl Out {
    pub fn new(session: Arc<Session>) -> Out {
        let overhead = session
            .tx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .overhead();
        let mut o = Out {
            session,
            buf: vec![0u8; MAX_BATCH + 2048],
            seg: 0,
            closed: Vec::with_capacity(MAX_SEGS),
            open: None,
            ended: false,
            overhead,
        };
        o.seg = o.current_seg();
        o
    }

    fn current_seg(&self) -> usize {
        let pmtu = self.session.path_mtu.load(Ordering::Relaxed) as usize;
        pmtu.saturating_sub(28).clamp(548, MAX_BATCH)
    }

    /// Payload capacity of one datagram.
    pub fn room(&self) -> usize {
        self.seg - self.overhead
    }

    pub fn is_empty(&self) -> bool {
        self.closed.is_empty() && self.open.is_none()
    }

    fn start_of(&self, i: usize) -> usize {
        i * self.seg
    }

    fn close_open(&mut self) {
        if let Some(len) = self.open.take() {
            if len < self.room() {
                self.ended = true;
            }
            self.closed.push(len);
        }
    }

    /// Makes sure a datagram is open with at least `need` free bytes if possible; flushes
    /// when the batch is full or ended.
    fn ensure_open(&mut self, shared: &Shared, udp: &Udp, now: Instant) {
        if self.open.is_some() {
            return;
        }
        let next = self.closed.len() + 1;
        if self.ended || next > MAX_SEGS || next * self.seg > MAX_BATCH {
            self.flush(shared, udp, now);
        }
        self.open = Some(0);
    }

    fn free(&self) -> usize {
        self.open.map_or(0, |len| self.room() - len)
    }

    /// Appends `data` (bytes `offset..offset + data.len()` of frame `meta.id`) as one or more
    /// records. `data` may be empty only for an empty frame.
    pub fn push(
        &mut self,
        shared: &Shared,
        udp: &Udp,
        now: Instant,
        meta: &Meta,
        mut offset: u32,
        mut data: &[u8],
    ) {
        let hl = RECORD_HEADER_LEN
            + if meta.offload.is_some() {
                OFFLOAD_LEN
            } else {
                0
            };
        loop {
            let free = self.free();
            if hl + data.len() <= free {
                self.write(meta, offset, data);
                return;
            }
            if self.open.is_some() && hl + data.len() <= self.room() {
                // Fits a fresh datagram: do not split it.
                self.close_open();
                self.ensure_open(shared, udp, now);
                continue;
            }
            if self.open.is_some() && free >= hl + MIN_PIECE.min(data.len()) {
                let n = free - hl;
                self.write(meta, offset, &data[..n]);
                offset += n as u32;
                data = &data[n..];
                self.close_open();
                continue;
            }
            // Nothing open, or too little room left.
            self.close_open();
            self.ensure_open(shared, udp, now);
        }
    }

    fn write(&mut self, meta: &Meta, offset: u32, data: &[u8]) {
        let len = self.open.expect("a datagram is open");
        let at = self.start_of(self.closed.len()) + HEADER_LEN + len;
        let hdr = RecordHeader {
            dst: meta.dst,
            src: meta.src,
            id: meta.id,
            offset,
            total: meta.total,
            len: data.len() as u16,
            offload: meta.offload,
        };
        let n = write_record(&mut self.buf[at..], &hdr, data)
            .expect("the record fits: room was checked");
        self.open = Some(len + n);
    }

    /// Seals and sends everything queued.
    pub fn flush(&mut self, shared: &Shared, udp: &Udp, now: Instant) {
        self.close_open();
        if self.closed.is_empty() {
            self.ended = false;
            self.seg = self.current_seg();
            return;
        }
        let seg = self.seg;
        let mut end = 0;
        let sealed = {
            let session = self.session.clone();
            let mut tx = session.tx.lock().unwrap_or_else(|e| e.into_inner());
            let before = tx.rekeys();
            let mut ok = true;
            for (i, &len) in self.closed.iter().enumerate() {
                let start = i * seg;
                match tx.seal(
                    PacketType::Data,
                    &mut self.buf[start..start + seg],
                    len,
                    now,
                ) {
                    Ok(n) => end = start + n,
                    Err(_) => {
                        ok = false;
                        break;
                    }
                }
            }
            let after = tx.rekeys();
            if after != before {
                shared
                    .counters
                    .rekeys
                    .fetch_add(after - before, Ordering::Relaxed);
            }
            ok
        };
        if !sealed {
            // Cannot happen with the sizes used here; drop the batch rather than send
            // garbage.
            shared.counters.drop_send.fetch_add(1, Ordering::Relaxed);
            self.reset();
            return;
        }
        let count = self.closed.len() as u64;
        let dst: SocketAddrV4 = self.session.endpoint();
        match udp.send_segments(dst, &self.buf[..end], seg) {
            Ok(()) => {
                let c = &shared.counters;
                c.tx_packets.fetch_add(count, Ordering::Relaxed);
                c.tx_bytes.fetch_add(end as u64, Ordering::Relaxed);
                self.session.tx_packets.fetch_add(count, Ordering::Relaxed);
                self.session
                    .last_tx_ms
                    .store(shared.now_ms(now), Ordering::Relaxed);
            }
            Err(e) => {
                shared
                    .counters
                    .drop_send
                    .fetch_add(count, Ordering::Relaxed);
                tracing::debug!(peer = self.session.peer, %dst, error = %e, "sleeve send failed");
            }
        }
        self.reset();
    }

    fn reset(&mut self) {
        self.closed.clear();
        self.open = None;
        self.ended = false;
        self.seg = self.current_seg();
    }
}
