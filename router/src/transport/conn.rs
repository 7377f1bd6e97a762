//! An authenticated control connection: gossip messages framed on one unidirectional stream
//! per channel and direction.
//!
//! Stream format: one channel id byte (0 topology, 1 endpoints; 2 and up reserved, and a
//! receiver stops such streams unread), then frames of `u32` big-endian length +
//! [`Message::encode`] bytes, each at most [`MAX_MESSAGE_BYTES`]. Each incoming stream is read
//! by its own task, so a large record on one channel does not hold up the other. A stream that
//! ends in the middle of a frame (the sender cancelled a send) ends quietly; an oversized
//! frame, an undecodable message or a message on the wrong channel closes the connection
//! with [`CloseCode::PROTOCOL`].

use super::error::{truncate_reason, CloseCode, ConnectionEnd};
use super::handshake::SessionSecrets;
use super::link::{LinkMessage, LINK_STREAM, MAX_LINK_BYTES};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;
use weft_gossip::message::MAX_MESSAGE_BYTES;
use weft_gossip::{Channel, Identity, Message};

/// Decoded messages buffered per connection before the reader tasks wait (backpressure
/// then reaches the peer through QUIC flow control).
const RECV_QUEUE: usize = 64;

/// The wire id of a channel's stream.
pub fn channel_id(c: Channel) -> u8 {
    match c {
        Channel::Topology => 0,
        Channel::Endpoints => 1,
        Channel::Ipam => 2,
    }
}

/// The channel of a stream id; `None` for reserved ids.
pub fn channel_from_id(id: u8) -> Option<Channel> {
    match id {
        0 => Some(Channel::Topology),
        1 => Some(Channel::Endpoints),
        2 => Some(Channel::Ipam),
        _ => None,
    }
}

/// State shared by the handles and tasks of one connection.
struct Shared {
    conn: quinn::Connection,
    /// Why this side closed it, recorded before closing.
    local_end: Mutex<Option<ConnectionEnd>>,
}

impl Shared {
    fn close_with(&self, end: ConnectionEnd, code: CloseCode, reason: &str) {
        if self.conn.close_reason().is_some() {
            return;
        }
        {
            let mut slot = self.local_end.lock().unwrap_or_else(|p| p.into_inner());
            if slot.is_none() {
                *slot = Some(end);
            }
        }
        self.conn.close(code.varint(), truncate_reason(reason));
    }

    fn close(&self, code: CloseCode, reason: &str) {
        let end = ConnectionEnd::Local {
            code,
            reason: reason.to_string(),
        };
        self.close_with(end, code, reason);
    }

    fn protocol_error(&self, detail: String) {
        tracing::warn!(remote = %self.conn.remote_address(), %detail, "closing connection: protocol error");
        let reason = format!("protocol error: {detail}");
        self.close_with(
            ConnectionEnd::Protocol(detail),
            CloseCode::PROTOCOL,
            &reason,
        );
    }

    async fn closed(&self) -> ConnectionEnd {
        let e = self.conn.closed().await;
        let local = self
            .local_end
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        ConnectionEnd::from_quic(e, local)
    }
}

/// Why a send failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    #[error("message of {0} bytes exceeds the frame limit")]
    TooLarge(usize),
    #[error("connection closed")]
    Closed,
    #[error("the peer stopped the stream")]
    Stopped,
}

/// Sending half of a connection; cheap to clone. Keeps one stream per channel, opened on
/// the first send; sends on different channels do not wait for each other.
#[derive(Clone)]
pub struct ConnSender {
    shared: Arc<Shared>,
    streams: Arc<[tokio::sync::Mutex<Option<quinn::SendStream>>; Channel::ALL.len()]>,
    link: Arc<tokio::sync::Mutex<Option<quinn::SendStream>>>,
}

/// Finishes a stream whose frame write was interrupted, so the next send starts a new one.
struct WriteGuard<'a> {
    slot: tokio::sync::MutexGuard<'a, Option<quinn::SendStream>>,
    done: bool,
}

impl Drop for WriteGuard<'_> {
    fn drop(&mut self) {
        if !self.done {
            if let Some(mut s) = self.slot.take() {
                let _ = s.finish();
            }
        }
    }
}

impl ConnSender {
    /// Sends one message on its channel's stream. Waits for QUIC flow control, so a peer
    /// that does not read slows the sender down: call it from a task per connection, not
    /// from a loop serving many. Cancel-safe in the sense that cancelling loses at most this
    /// message (the partly written stream is finished and a new one opened next time);
    /// messages sent earlier are still delivered. Messages of one channel arrive in order
    /// unless a send was cancelled.
    pub async fn send(&self, msg: &Message) -> Result<(), SendError> {
        let body = msg.encode();
        if body.len() > MAX_MESSAGE_BYTES {
            return Err(SendError::TooLarge(body.len()));
        }
        let id = channel_id(msg.channel());
        self.write_framed(&self.streams[usize::from(id)], id, &body)
            .await
    }

    /// Sends one message on the link stream (see [`super::link`]); same guarantees as
    /// [`ConnSender::send`].
    pub async fn send_link(&self, msg: &LinkMessage) -> Result<(), SendError> {
        self.write_framed(&self.link, LINK_STREAM, &msg.encode())
            .await
    }

    /// Writes one length-prefixed frame on the stream in `slot`, opening it (with its id
    /// byte first) if needed.
    async fn write_framed(
        &self,
        slot: &tokio::sync::Mutex<Option<quinn::SendStream>>,
        id: u8,
        body: &[u8],
    ) -> Result<(), SendError> {
        let mut slot = slot.lock().await;
        let mut buf = Vec::with_capacity(5 + body.len());
        if slot.is_none() {
            let s = self
                .shared
                .conn
                .open_uni()
                .await
                .map_err(|_| SendError::Closed)?;
            *slot = Some(s);
            buf.push(id);
        }
        buf.extend_from_slice(&(body.len() as u32).to_be_bytes());
        buf.extend_from_slice(body);
        let mut guard = WriteGuard { slot, done: false };
        let stream = guard.slot.as_mut().expect("stream opened above");
        let r = stream.write_all(&buf).await;
        guard.done = true;
        match r {
            Ok(()) => Ok(()),
            Err(e) => {
                guard.slot.take();
                Err(match e {
                    quinn::WriteError::Stopped(_) => SendError::Stopped,
                    _ => SendError::Closed,
                })
            }
        }
    }

    /// Closes the connection (see [`PeerConn::close`]).
    pub fn close(&self, code: CloseCode, reason: &str) {
        self.shared.close(code, reason);
    }

    /// Resolves when the connection has ended, with the reason.
    pub async fn closed(&self) -> ConnectionEnd {
        self.shared.closed().await
    }

    /// Whether the connection has ended.
    pub fn is_closed(&self) -> bool {
        self.shared.conn.close_reason().is_some()
    }
}

/// An authenticated control connection to one peer.
///
/// Dropping it closes the connection ([`CloseCode::NORMAL`]), even if [`ConnSender`]s remain.
pub struct PeerConn {
    /// Who the peer proved to be in the handshake.
    pub peer: Identity,
    /// The peer's address (for an outbound connection, the address dialled).
    pub remote: SocketAddr,
    /// Whether this side dialled.
    pub outbound: bool,
    /// Key material of the session, for the data plane.
    pub secrets: SessionSecrets,
    sender: ConnSender,
    shared: Arc<Shared>,
    rx: mpsc::Receiver<Message>,
    link_rx: Option<mpsc::Receiver<LinkMessage>>,
}

impl std::fmt::Debug for PeerConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerConn")
            .field("peer", &self.peer)
            .field("remote", &self.remote)
            .field("outbound", &self.outbound)
            .finish_non_exhaustive()
    }
}

impl PeerConn {
    /// Wraps an authenticated connection and starts reading its streams. Must run inside a
    /// tokio runtime.
    pub(crate) fn start(
        conn: quinn::Connection,
        peer: Identity,
        remote: SocketAddr,
        outbound: bool,
        secrets: SessionSecrets,
    ) -> PeerConn {
        // The authentication stream is done; no further bidirectional streams.
        conn.set_max_concurrent_bi_streams(0u8.into());
        let shared = Arc::new(Shared {
            conn,
            local_end: Mutex::new(None),
        });
        let (tx, rx) = mpsc::channel(RECV_QUEUE);
        let (link_tx, link_rx) = mpsc::channel(RECV_QUEUE);
        tokio::spawn(accept_streams(shared.clone(), tx, link_tx));
        PeerConn {
            peer,
            remote,
            outbound,
            secrets,
            sender: ConnSender {
                shared: shared.clone(),
                streams: Arc::new(std::array::from_fn(|_| tokio::sync::Mutex::new(None))),
                link: Arc::new(tokio::sync::Mutex::new(None)),
            },
            shared,
            rx,
            link_rx: Some(link_rx),
        }
    }

    /// A handle for sending (and closing) from other tasks.
    pub fn sender(&self) -> ConnSender {
        self.sender.clone()
    }

    /// Sends one message (see [`ConnSender::send`]).
    pub async fn send(&self, msg: &Message) -> Result<(), SendError> {
        self.sender.send(msg).await
    }

    /// The receiver of the peer's link messages (see [`super::link`]); `None` after the
    /// first call. Messages that arrive while nobody holds it are dropped once its queue
    /// is full (the link carries nothing that must be delivered).
    pub fn take_link_receiver(&mut self) -> Option<mpsc::Receiver<LinkMessage>> {
        self.link_rx.take()
    }

    /// The next decoded message from the peer, from any channel; after the connection has
    /// ended (and queued messages are drained), why it ended. Cancel-safe.
    pub async fn recv(&mut self) -> Result<Message, ConnectionEnd> {
        match self.rx.recv().await {
            Some(m) => Ok(m),
            None => Err(self.shared.closed().await),
        }
    }

    /// Closes the connection with `code` and `reason` (sent to the peer; keep it short and
    /// free of secrets). Use [`CloseCode::NORMAL`] for an orderly close, [`CloseCode::REFUSED`]
    /// to turn a peer away. Idempotent: the first close wins.
    pub fn close(&self, code: CloseCode, reason: &str) {
        self.shared.close(code, reason);
    }

    /// Resolves when the connection has ended, with the reason.
    pub async fn closed(&self) -> ConnectionEnd {
        self.shared.closed().await
    }

    /// The underlying QUIC connection (statistics: RTT, path MTU, bytes).
    pub fn quic(&self) -> &quinn::Connection {
        &self.shared.conn
    }
}

impl Drop for PeerConn {
    fn drop(&mut self) {
        self.shared.close(CloseCode::NORMAL, "connection dropped");
    }
}

/// Accepts the peer's unidirectional streams, one reader task each.
async fn accept_streams(
    shared: Arc<Shared>,
    tx: mpsc::Sender<Message>,
    link_tx: mpsc::Sender<LinkMessage>,
) {
    while let Ok(s) = shared.conn.accept_uni().await {
        tokio::spawn(read_stream(s, shared.clone(), tx.clone(), link_tx.clone()));
    }
}

enum Frame {
    Body(Vec<u8>),
    /// The stream ended (cleanly, mid-frame, or reset) or the connection is gone.
    End,
    TooLarge(usize),
}

async fn read_frame(s: &mut quinn::RecvStream) -> Frame {
    let mut len = [0u8; 4];
    if s.read_exact(&mut len).await.is_err() {
        return Frame::End;
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_MESSAGE_BYTES {
        return Frame::TooLarge(len);
    }
    // Grow with the data actually received, not with the length the peer claims.
    let mut body = Vec::with_capacity(len.min(64 << 10));
    while body.len() < len {
        match s.read_chunk(len - body.len(), true).await {
            Ok(Some(c)) => body.extend_from_slice(&c.bytes),
            _ => return Frame::End,
        }
    }
    Frame::Body(body)
}

async fn read_stream(
    mut s: quinn::RecvStream,
    shared: Arc<Shared>,
    tx: mpsc::Sender<Message>,
    link_tx: mpsc::Sender<LinkMessage>,
) {
    let mut id = [0u8];
    if s.read_exact(&mut id).await.is_err() {
        return;
    }
    if id[0] == LINK_STREAM {
        return read_link_stream(s, shared, link_tx).await;
    }
    let Some(channel) = channel_from_id(id[0]) else {
        tracing::debug!(id = id[0], "ignoring stream of unknown channel");
        let _ = s.stop(0u8.into());
        return;
    };
    loop {
        let body = match read_frame(&mut s).await {
            Frame::Body(b) => b,
            Frame::End => return,
            Frame::TooLarge(n) => {
                shared.protocol_error(format!(
                    "{} frame of {n} bytes exceeds the limit of {MAX_MESSAGE_BYTES}",
                    channel.as_str()
                ));
                return;
            }
        };
        match Message::decode_counted(&body) {
            Ok((msg, dropped)) if msg.channel() == channel => {
                if !dropped.is_empty() {
                    note_dropped(&shared, channel, dropped);
                }
                if tx.send(msg).await.is_err() {
                    return;
                }
            }
            Ok((msg, _)) => {
                shared.protocol_error(format!(
                    "{} message on the {} stream",
                    msg.channel().as_str(),
                    channel.as_str()
                ));
                return;
            }
            Err(e) => {
                shared.protocol_error(format!("{} message: {e}", channel.as_str()));
                return;
            }
        }
    }
}

/// Records and endpoints dropped from peers' gossip since the process started (they broke a
/// bound; see [`Message::decode_counted`]): `weft_gossip_dropped_records_total`.
static DROPPED_RECORDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// See [`DROPPED_RECORDS`].
pub fn dropped_records() -> u64 {
    DROPPED_RECORDS.load(std::sync::atomic::Ordering::Relaxed)
}

fn note_dropped(shared: &Shared, channel: weft_gossip::Channel, d: weft_gossip::Dropped) {
    use std::sync::atomic::Ordering;
    let n = (d.records + d.endpoints) as u64;
    let before = DROPPED_RECORDS.fetch_add(n, Ordering::Relaxed);
    // A warning for the first few, then only the counter: a peer that keeps sending them
    // cannot flood the log.
    let fmt = |level_warn: bool| {
        let remote = shared.conn.remote_address();
        let reason = d.reason.unwrap_or("invalid");
        if level_warn {
            tracing::warn!(%remote, channel = channel.as_str(), records = d.records, endpoints = d.endpoints, reason, "dropped invalid gossip records (the connection stays)");
        } else {
            tracing::debug!(%remote, channel = channel.as_str(), records = d.records, endpoints = d.endpoints, reason, "dropped invalid gossip records");
        }
    };
    fmt(before < 20);
}

/// Reads the link stream. Undecodable messages are skipped (logged at debug); a frame over
/// the size limit is a protocol error, as on the gossip streams.
async fn read_link_stream(
    mut s: quinn::RecvStream,
    shared: Arc<Shared>,
    tx: mpsc::Sender<LinkMessage>,
) {
    loop {
        let body = match read_frame(&mut s).await {
            Frame::Body(b) if b.len() <= MAX_LINK_BYTES => b,
            Frame::Body(b) => {
                shared.protocol_error(format!(
                    "link frame of {} bytes exceeds the limit of {MAX_LINK_BYTES}",
                    b.len()
                ));
                return;
            }
            Frame::End => return,
            Frame::TooLarge(n) => {
                shared.protocol_error(format!("link frame of {n} bytes exceeds the limit"));
                return;
            }
        };
        match LinkMessage::decode(&body) {
            // A full queue (nobody reading, or far behind) drops it: the link tolerates loss.
            Ok(msg) => {
                let _ = tx.try_send(msg);
            }
            Err(e) => tracing::debug!(error = %e, "ignoring a link message"),
        }
    }
}
