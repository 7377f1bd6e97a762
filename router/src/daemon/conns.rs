//! Connections: the helper tasks (accept, resolve, read, write) that report to the loop, and
//! how the loop handles their events and executes the mesh's actions on them.

use super::*;

/// What the helper tasks report to the loop.
pub(super) enum Event {
    Established(Box<PeerConn>),
    DialFailed(SocketAddr, ConnectError),
    InboundFailed(SocketAddr, ConnectError),
    Message(ConnId, Message),
    Closed(ConnId, ConnectionEnd),
    Resolved(Vec<SocketAddr>),
    GatewaySet(ipnet::Ipv4Net, Result<(), String>),
}

/// What the loop keeps of a connection: its gossip queue and a handle to close it. The
/// connection itself is owned by its reader task.
pub(super) struct Conn {
    pub(super) queue: mpsc::Sender<Message>,
    pub(super) handle: ConnSender,
}

impl Loop {
    pub(super) fn event(&mut self, mesh: &mut Mesh, ev: Event, now: Instant) -> Vec<Action> {
        match ev {
            Event::Established(pc) => self.established(mesh, pc, now),
            Event::DialFailed(addr, ConnectError::SelfConnection) => {
                debug!(%addr, "the address is this router's own; not dialled again");
                mesh.handle(Input::DialedSelf { addr }, now)
            }
            Event::DialFailed(addr, err) => {
                let failure = err.to_failure();
                self.count_failure(&err);
                info!(%addr, reason = %failure.detail, "connection attempt failed");
                mesh.handle(Input::ConnectFailed { addr, failure }, now)
            }
            Event::InboundFailed(addr, err) => {
                self.inbound_failed(addr, err, now);
                Vec::new()
            }
            Event::Message(id, msg) => {
                if self.conns.contains_key(&id) {
                    mesh.handle(Input::Message { conn: id, msg }, now)
                } else {
                    Vec::new()
                }
            }
            Event::Closed(id, end) => self.closed(mesh, id, end, now),
            Event::Resolved(addrs) => {
                self.peers_resolved = true;
                match self.kube.as_mut() {
                    Some(k) => k.set_resolved(mesh, addrs, now),
                    None => mesh.set_targets(&addrs, now),
                }
            }
            Event::GatewaySet(net, result) => {
                self.pods.core.gateway_set(net, result);
                Vec::new()
            }
        }
    }

    /// A connection is up: its reader and writer tasks, the data plane's session, the
    /// fastpath's peer, and the mesh told.
    fn established(&mut self, mesh: &mut Mesh, mut pc: Box<PeerConn>, now: Instant) -> Vec<Action> {
        let id = self.next_id;
        self.next_id += 1;
        let (addr, outbound, peer) = (pc.remote, pc.outbound, pc.peer.clone());
        info!(peer = %peer.name, nickname = %peer.nickname, %addr, outbound, "connection established");
        self.inbound_failures.remove(&addr);
        self.dataplane
            .connection_up(id, peer.name, addr, outbound, &pc.secrets);
        let (tx, rx) = mpsc::channel(SEND_QUEUE);
        let handle = pc.sender();
        if let Some(link) = pc.take_link_receiver() {
            self.fastpath.send(crate::fastpath::Cmd::PeerUp {
                conn: id,
                peer: peer.name,
                remote: addr,
                outbound,
                secrets: Box::new(pc.secrets.clone()),
                sender: handle.clone(),
                link,
            });
        }
        tokio::spawn(writer(handle.clone(), rx));
        tokio::spawn(reader(id, *pc, self.ev_tx.clone()));
        self.conns.insert(id, Conn { queue: tx, handle });
        mesh.handle(
            Input::ConnectionEstablished {
                conn: id,
                addr,
                outbound,
                peer,
            },
            now,
        )
    }

    /// An inbound handshake failed: counted, logged (rate-limited per source) and shown in
    /// status (one row per source address, at most MAX_INBOUND_ROWS).
    fn inbound_failed(&mut self, addr: SocketAddr, err: ConnectError, now: Instant) {
        self.count_failure(&err);
        let failure = err.to_failure();
        match self.inbound_log.allow(addr.ip(), now) {
            Some(0) => warn!(%addr, reason = %failure.detail, "refused inbound connection"),
            Some(n) => {
                warn!(%addr, reason = %failure.detail, not_logged = n, "refused inbound connection (and {n} more not logged)")
            }
            None => debug!(%addr, reason = %failure.detail, "refused inbound connection"),
        }
        self.inbound_failures.retain(|a, _| a.ip() != addr.ip());
        if self.inbound_failures.len() >= MAX_INBOUND_ROWS {
            if let Some(oldest) = self
                .inbound_failures
                .iter()
                .min_by_key(|(_, (_, t))| *t)
                .map(|(a, _)| *a)
            {
                self.inbound_failures.remove(&oldest);
            }
        }
        self.inbound_failures.insert(addr, (failure.detail, now));
    }

    /// A connection ended: its session and fastpath peer go, and the mesh is told why.
    fn closed(
        &mut self,
        mesh: &mut Mesh,
        id: ConnId,
        end: ConnectionEnd,
        now: Instant,
    ) -> Vec<Action> {
        if self.conns.remove(&id).is_none() {
            return Vec::new();
        }
        self.dataplane.connection_down(id);
        self.fastpath
            .send(crate::fastpath::Cmd::PeerDown { conn: id });
        let reason: Option<Failure> = end.to_failure();
        match &reason {
            Some(f) => info!(conn = id, reason = %f.detail, "connection lost"),
            None => debug!(conn = id, "connection closed"),
        }
        if matches!(end, ConnectionEnd::Protocol(_)) {
            self.metrics.decode_error();
        }
        mesh.handle(Input::ConnectionClosed { conn: id, reason }, now)
    }

    fn count_failure(&self, err: &ConnectError) {
        let reason = match err {
            ConnectError::PasswordMismatch(_) => HandshakeFailure::PasswordMismatch,
            e => HandshakeFailure::from(&e.to_failure().kind),
        };
        self.metrics.handshake_failure(reason);
    }

    pub(super) fn execute(&mut self, actions: Vec<Action>) {
        for a in actions {
            match a {
                Action::Connect { addr } => {
                    let t = self.transport.clone();
                    let tx = self.ev_tx.clone();
                    tokio::spawn(async move {
                        let ev = match t.dial(addr).await {
                            Ok(pc) => Event::Established(Box::new(pc)),
                            Err(e) => Event::DialFailed(addr, e),
                        };
                        let _ = tx.send(ev).await;
                    });
                }
                Action::Send { conn, msg } => {
                    tracing::trace!(conn, ?msg, "gossip send");
                    if let Some(c) = self.conns.get(&conn) {
                        match c.queue.try_send(msg) {
                            Ok(()) => {}
                            Err(mpsc::error::TrySendError::Full(_)) => {
                                warn!(conn, "peer is not keeping up with gossip; disconnecting");
                                c.handle
                                    .close(CloseCode::PROTOCOL, "gossip send queue overflow");
                            }
                            // The writer ended (connection closing): the reader reports it.
                            Err(mpsc::error::TrySendError::Closed(_)) => {}
                        }
                    }
                }
                Action::Close { conn, reason } => {
                    if let Some(c) = self.conns.get(&conn) {
                        let code = match reason {
                            CloseReason::ConnLimit | CloseReason::SameNameAsUs => {
                                CloseCode::REFUSED
                            }
                            CloseReason::DuplicateName => CloseCode::DUPLICATE_NAME,
                            CloseReason::Protocol => CloseCode::PROTOCOL,
                            CloseReason::Duplicate | CloseReason::SelfConnection => {
                                CloseCode::NORMAL
                            }
                        };
                        if matches!(
                            reason,
                            CloseReason::DuplicateName | CloseReason::SameNameAsUs
                        ) {
                            warn!(conn, "refusing a router that uses a peer name already in use here (see status: identity conflicts)");
                        } else {
                            debug!(conn, reason = reason.as_str(), "closing connection");
                        }
                        c.handle.close(code, reason.as_str());
                    }
                }
                Action::IpamChanged => self.ipam_dirty = true,
                Action::TopologyChanged => {
                    self.routes_dirty = true;
                    self.macs_dirty = true;
                }
                Action::EndpointsChanged => self.macs_dirty = true,
            }
        }
    }
}

/// Accepts inbound connections. Refuses them while the mesh is at its connection limit;
/// validates the dialer's address with a stateless Retry before keeping anything, and bounds
/// the unauthenticated handshakes running at once, per source and in all (each holds memory
/// for up to the handshake timeout): see [`crate::transport::admission`].
pub(super) async fn accept_loop(
    t: Arc<Transport>,
    tx: mpsc::Sender<Event>,
    accepting: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
) {
    use crate::transport::admission::{Admission, Verdict};
    let admission = Arc::new(std::sync::Mutex::new(Admission::default()));
    while let Some(inc) = t.accept().await {
        if !accepting.load(Ordering::Relaxed) {
            debug!(remote = %inc.remote(), "connection limit reached; refusing");
            inc.refuse();
            continue;
        }
        let remote = inc.remote();
        let verdict = admission
            .lock()
            .expect("admission lock")
            .on_incoming(remote.ip(), inc.validated());
        match verdict {
            Verdict::Retry => {
                metrics.inbound_attempt("retry");
                inc.retry();
                continue;
            }
            Verdict::Refuse(why) => {
                metrics.inbound_attempt("refused");
                debug!(%remote, why, "refusing a connection attempt");
                inc.refuse();
                continue;
            }
            Verdict::Admit => metrics.inbound_attempt("admitted"),
        }
        metrics.inbound_handshakes.inc();
        let tx = tx.clone();
        let admission = admission.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let ev = match Incoming::complete(inc).await {
                Ok(pc) => Event::Established(Box::new(pc)),
                Err(e) => Event::InboundFailed(remote, e),
            };
            admission.lock().expect("admission lock").done(remote.ip());
            metrics.inbound_handshakes.dec();
            let _ = tx.send(ev).await;
        });
    }
}

/// Resolves `--peer` values now and every [`RESOLVE_INTERVAL`]; sends the set when it changes.
pub(super) async fn resolve_loop(peers: Vec<PeerSpec>, tx: mpsc::Sender<Event>) {
    let mut last: Option<Vec<SocketAddr>> = None;
    loop {
        let mut addrs = Vec::new();
        let mut unresolved = false;
        for p in &peers {
            match p.resolve().await {
                Ok(a) => addrs.extend(a),
                Err(e) => {
                    unresolved = true;
                    warn!(peer = %p.host, error = %e, "cannot resolve peer");
                }
            }
        }
        addrs.sort();
        addrs.dedup();
        if last.as_ref() != Some(&addrs) {
            if tx.send(Event::Resolved(addrs.clone())).await.is_err() {
                return;
            }
            last = Some(addrs);
        }
        let wait = if unresolved {
            Duration::from_secs(5)
        } else {
            RESOLVE_INTERVAL
        };
        tokio::time::sleep(wait).await;
    }
}

async fn reader(id: ConnId, mut pc: PeerConn, tx: mpsc::Sender<Event>) {
    loop {
        match pc.recv().await {
            Ok(msg) => {
                if tx.send(Event::Message(id, msg)).await.is_err() {
                    return;
                }
            }
            Err(end) => {
                let _ = tx.send(Event::Closed(id, end)).await;
                return;
            }
        }
    }
}

async fn writer(sender: ConnSender, mut rx: mpsc::Receiver<Message>) {
    while let Some(msg) = rx.recv().await {
        if let Err(e) = sender.send(&msg).await {
            debug!(error = %e, "gossip send failed");
            return;
        }
    }
}
