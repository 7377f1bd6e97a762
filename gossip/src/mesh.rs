//! The mesh state machine: one per router. Time and randomness come in, actions go out.
//!
//! CONTRACT (the router and the simulator drive exactly this API; keep it stable):
//! - The driver calls [`Mesh::handle`] with every [`Input`] and the current time, and executes
//!   the returned [`Action`]s in order. [`Mesh::poll_timeout`] says when to send the next
//!   [`Input::Tick`] at the latest (ticks may come earlier, or more often; that is harmless).
//! - Connection ids ([`ConnId`]) are chosen by the driver and never reused.
//! - A `Connect` action is answered by exactly one of `ConnectionEstablished` (same `addr`,
//!   `outbound: true`) or `ConnectFailed` (same `addr`). An established connection is
//!   eventually followed by exactly one `ConnectionClosed`, including after a `Close` action.

use crate::gossip::ChannelState;
use crate::message::{Channel, Endpoint, EndpointRecord, Message, PeerRecord};
use crate::peer::{Identity, PeerName, PeerUid};
use crate::store::Store;
use crate::targets::Targets;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// Driver-chosen identifier of one control connection.
pub type ConnId = u64;

/// Tunables. Defaults are the production values.
#[derive(Clone, Debug)]
pub struct Config {
    /// Maximum control connections (established and being set up), inbound and outbound.
    pub conn_limit: usize,
    /// Learn further peers' addresses from gossip and connect to them.
    pub discovery: bool,
    /// How often pending news is announced to ~log2(n) neighbours.
    pub gossip_interval: Duration,
    /// How often a full digest is exchanged with one random neighbour (anti-entropy).
    pub full_sync_interval: Duration,
    /// A peer unreachable from us for this long is forgotten.
    pub gc_grace: Duration,
    /// First retry delay after a failed connection; doubles per failure up to `backoff_max`.
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// IP address management; `None` (the default) disables it (IPAM records of other
    /// peers are still relayed).
    pub ipam: Option<crate::ipam::IpamConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            conn_limit: 200,
            discovery: true,
            gossip_interval: Duration::from_millis(100),
            full_sync_interval: Duration::from_secs(30),
            gc_grace: Duration::from_secs(10),
            backoff_initial: Duration::from_millis(500),
            backoff_max: Duration::from_secs(60),
            ipam: None,
        }
    }
}

/// Why a connection attempt failed; the driver classifies, the mesh records and backs off.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FailKind {
    /// No answer, network error, timeout.
    Unreachable,
    /// Authentication failed (wrong or missing password).
    Auth,
    /// The peer refused us (connection limit, protocol version...).
    Refused,
    /// The peer broke the protocol.
    Protocol,
    /// The peer refused us: another router with our name is connected there
    /// ([`crate::names`]).
    DuplicateName,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub kind: FailKind,
    /// Human-readable reason, shown in status and logs. Never contains secrets.
    pub detail: String,
}

/// Why the mesh asks the driver to close a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// Another connection to the same peer is kept (deterministic choice on both sides).
    Duplicate,
    /// The connection leads back to ourselves (a `--peer` naming this node).
    SelfConnection,
    /// Over `conn_limit`.
    ConnLimit,
    /// The peer sent something invalid.
    Protocol,
    /// Another router with the same name (and another uid) keeps it here
    /// ([`crate::names`]).
    DuplicateName,
    /// The peer has our own name and another uid: one of us is a clone. Not a refusal by a
    /// third party (which one is the clone cannot be told from here).
    SameNameAsUs,
}

impl CloseReason {
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::Duplicate => "duplicate connection",
            CloseReason::SelfConnection => "connection to self",
            CloseReason::ConnLimit => "connection limit reached",
            CloseReason::Protocol => "protocol violation",
            CloseReason::DuplicateName => "duplicate peer name: another router with this name is connected here; give every router its own --name (cloned machines share /etc/machine-id)",
            CloseReason::SameNameAsUs => "this router has the same peer name: give every router its own --name (cloned machines share /etc/machine-id)",
        }
    }
}

/// Events the driver feeds in.
#[derive(Clone, Debug)]
pub enum Input {
    /// Time passed; do periodic work (gossip, GC, retries).
    Tick,
    /// A handshake completed (either direction). `peer` is what the peer proved in it.
    ConnectionEstablished {
        conn: ConnId,
        addr: SocketAddr,
        outbound: bool,
        peer: Identity,
    },
    /// A connection ended (after `Close`, or the peer went away). `reason` is for status.
    ConnectionClosed {
        conn: ConnId,
        reason: Option<Failure>,
    },
    /// An outbound attempt from a `Connect` action failed before being established.
    ConnectFailed { addr: SocketAddr, failure: Failure },
    /// An outbound attempt from a `Connect` action reached this router itself, as the
    /// handshake proved before it could complete (the other end of the connection is
    /// ours and closes it). The address is never dialled again; not a failure.
    DialedSelf { addr: SocketAddr },
    /// A decoded gossip message arrived on an established connection.
    Message { conn: ConnId, msg: Message },
}

/// What the mesh asks the driver to do.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Dial this address (QUIC + handshake), then report the outcome.
    Connect { addr: SocketAddr },
    /// Send this message on this connection.
    Send { conn: ConnId, msg: Message },
    /// Close this connection.
    Close { conn: ConnId, reason: CloseReason },
    /// The topology view changed (routes, peers): recompute what depends on it.
    TopologyChanged,
    /// The endpoint (MAC) table changed.
    EndpointsChanged,
    /// IPAM changed: our claims, allocations or removals (write [`Mesh::ipam_snapshot`]
    /// to the state directory), or the IPAM view (refresh IPAM status).
    IpamChanged,
}

/// Where a configured or discovered address stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetState {
    Connecting,
    Established,
    /// Waiting to retry after a failure.
    Failed,
    /// The address is ourselves; never dialled again.
    IsSelf,
    /// Not dialled because the connection limit is reached, or the peer is already connected.
    Idle,
}

/// One connection (or connection target) as status shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectionStatus {
    pub addr: SocketAddr,
    /// Known once established (or from an earlier run of the same target).
    pub peer: Option<PeerName>,
    pub nickname: Option<String>,
    pub state: TargetState,
    pub outbound: bool,
    /// Last failure, or the reason for the current state.
    pub reason: Option<String>,
    /// Consecutive failures of this target.
    pub attempts: u32,
    /// When the next attempt is due (failed targets).
    pub retry_in: Option<Duration>,
    /// How the target became known.
    pub source: TargetSource,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetSource {
    /// Given on the command line / by the orchestrator.
    Configured,
    /// Learned from gossip.
    Discovered,
    /// An inbound connection (no target of ours).
    Inbound,
}

/// One peer of the topology view.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerStatus {
    pub name: PeerName,
    pub nickname: String,
    pub uid: PeerUid,
    pub version: u64,
    /// Established connections this peer reports.
    pub connections: usize,
    /// Reachable from us over established symmetric connections.
    pub reachable: bool,
    /// Next hop towards it (itself when directly connected; `None` when unreachable or us).
    pub next_hop: Option<PeerName>,
}

/// Unicast next hops and broadcast fan-out, computed over established symmetric connections.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Routes {
    /// destination -> next hop (direct neighbours map to themselves).
    pub unicast: std::collections::BTreeMap<PeerName, PeerName>,
    /// origin -> the neighbours we forward a broadcast from `origin` to (origin = us included).
    pub broadcast: std::collections::BTreeMap<PeerName, Vec<PeerName>>,
}

/// Counters of gossip traffic (bytes as encoded on the wire).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GossipStats {
    pub messages_sent: u64,
    pub bytes_sent: u64,
    pub messages_received: u64,
    pub bytes_received: u64,
}

/// One established control connection.
#[derive(Clone, Debug)]
pub(crate) struct Conn {
    pub peer: Identity,
    pub addr: SocketAddr,
    pub outbound: bool,
}

/// The state machine. See the module docs for the driving contract.
pub struct Mesh {
    pub(crate) me: Identity,
    pub(crate) config: Config,
    pub(crate) rng: ChaCha8Rng,
    pub(crate) topo: Store<PeerRecord>,
    pub(crate) eps: Store<EndpointRecord>,
    /// Gossip state per channel, indexed by [`chan_index`].
    pub(crate) chan: [ChannelState; 3],
    pub(crate) conns: BTreeMap<ConnId, Conn>,
    /// The connection gossip uses for each connected peer (duplicates are not in here).
    pub(crate) primary: BTreeMap<PeerName, ConnId>,
    pub(crate) targets: Targets,
    /// Our next record of each channel gets a version above this (incarnation bumps).
    pub(crate) version_floor: [u64; 3],
    /// Our endpoints; `None` until first set (then an Endpoints record is published).
    pub(crate) local_endpoints: Option<Vec<Endpoint>>,
    pub(crate) topo_dirty: bool,
    /// Earliest time of our next topology version (publication is rate-limited).
    pub(crate) next_topo_publish: Instant,
    pub(crate) eps_dirty: bool,
    /// New connections that get both channels' digests.
    pub(crate) pending_digests: Vec<ConnId>,
    pub(crate) next_gossip: Instant,
    pub(crate) next_sync: Instant,
    pub(crate) next_gc: Instant,
    pub(crate) next_discovery: Instant,
    pub(crate) discovery_dirty: bool,
    pub(crate) unreachable_since: BTreeMap<PeerName, Instant>,
    /// How many topology records list each peer (a peer nobody lists is unreachable).
    pub(crate) inref: std::collections::HashMap<PeerName, u32>,
    /// The topology changed since the last garbage check.
    pub(crate) gc_dirty: bool,
    /// The topology changed since targets were last re-evaluated (peers filling up or
    /// getting room): re-run the dial pass at the next one-second check.
    pub(crate) retarget: bool,
    pub(crate) routes: OnceLock<Routes>,
    /// View changed during this call: emit the notification action.
    pub(crate) changed: [bool; 2],
    pub(crate) stats: GossipStats,
    pub(crate) out: Vec<Action>,
    /// IPAM records and our IPAM state (`crate::ipam`).
    pub(crate) ipam: crate::ipam::Ipam,
    /// Incarnations per peer name: restarts told from duplicates (`crate::names`).
    pub(crate) names: crate::names::Names,
}

pub(crate) fn chan_index(c: Channel) -> usize {
    match c {
        Channel::Topology => 0,
        Channel::Endpoints => 1,
        Channel::Ipam => 2,
    }
}

/// `d` scaled by a factor drawn uniformly from [0.8, 1.2).
pub(crate) fn jitter20(rng: &mut ChaCha8Rng, d: Duration) -> Duration {
    d.mul_f64(rng.random_range(0.8..1.2))
}

impl Mesh {
    /// `seed` feeds the mesh's own deterministic RNG (peer selection, jitter).
    pub fn new(me: Identity, config: Config, seed: u64, now: Instant) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let next_gossip = now + jitter20(&mut rng, config.gossip_interval);
        let next_sync = now + jitter20(&mut rng, config.full_sync_interval);
        let mut m = Mesh {
            me,
            rng,
            topo: Store::default(),
            eps: Store::default(),
            chan: Default::default(),
            conns: BTreeMap::new(),
            primary: BTreeMap::new(),
            targets: Targets::new(),
            version_floor: [0; 3],
            local_endpoints: None,
            topo_dirty: true,
            next_topo_publish: now,
            eps_dirty: false,
            pending_digests: Vec::new(),
            next_gossip,
            next_sync,
            next_gc: now + Duration::from_secs(1),
            next_discovery: now,
            discovery_dirty: true,
            unreachable_since: BTreeMap::new(),
            inref: Default::default(),
            gc_dirty: true,
            retarget: false,
            routes: OnceLock::new(),
            changed: [false; 2],
            stats: GossipStats::default(),
            out: Vec::new(),
            ipam: crate::ipam::Ipam::new(config.ipam.as_ref(), now),
            names: Default::default(),
            config,
        };
        m.publish_own(now);
        m.next_topo_publish = now;
        m.out.clear();
        m.changed = [false; 2];
        m
    }

    pub fn identity(&self) -> &Identity {
        &self.me
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Addresses to keep connected to (the `--peer` list, or Kubernetes Nodes). Replaces
    /// the previous configured set; discovered targets are kept.
    pub fn set_targets(&mut self, addrs: &[SocketAddr], now: Instant) -> Vec<Action> {
        self.targets.set_configured(addrs, now);
        self.finish(now)
    }

    /// Whether a new inbound connection would be accepted (driver may refuse early).
    pub fn accepts_inbound(&self) -> bool {
        self.conn_count() < self.config.conn_limit || self.evictable().is_some()
    }

    /// Feeds one event; returns actions to execute in order.
    pub fn handle(&mut self, input: Input, now: Instant) -> Vec<Action> {
        match input {
            Input::Tick => {}
            Input::ConnectionEstablished {
                conn,
                addr,
                outbound,
                peer,
            } => self.on_established(conn, addr, outbound, peer, now),
            Input::ConnectionClosed { conn, reason } => self.on_closed(conn, reason, now),
            Input::ConnectFailed { addr, failure } => self.on_connect_failed(addr, failure, now),
            Input::DialedSelf { addr } => self.targets.mark_self(addr),
            Input::Message { conn, msg } => self.on_message(conn, msg, now),
        }
        self.finish(now)
    }

    /// The latest time by which the driver must deliver an `Input::Tick`.
    pub fn poll_timeout(&self) -> Instant {
        let mut t = self.next_gossip.min(self.next_sync).min(self.next_gc);
        for c in &self.chan {
            if let Some(d) = c.next_deadline() {
                t = t.min(d);
            }
        }
        if let Some(d) = self.targets.next_due() {
            t = t.min(d);
        }
        if self.discovery_wanted() {
            t = t.min(self.next_discovery);
        }
        if self.topo_dirty {
            t = t.min(self.next_topo_publish);
        }
        if let Some(d) = self.ipam.deadline() {
            t = t.min(d);
        }
        t
    }

    /// Replaces our own endpoint set (gossiped on the Endpoints channel).
    pub fn set_local_endpoints(
        &mut self,
        mut endpoints: Vec<Endpoint>,
        now: Instant,
    ) -> Vec<Action> {
        endpoints.sort_by_key(|a| a.mac);
        endpoints.dedup_by(|a, b| a.mac == b.mac);
        if self.local_endpoints.as_ref() != Some(&endpoints) {
            self.local_endpoints = Some(endpoints);
            self.eps_dirty = true;
        }
        self.finish(now)
    }

    /// All known endpoints with their owner, MAC conflicts resolved deterministically
    /// (the claim with the larger `(version, uid, owner name)` wins).
    pub fn endpoints(&self) -> Vec<(PeerName, Endpoint)> {
        type Rank = (u64, PeerUid, PeerName);
        let mut best: BTreeMap<[u8; 6], (Rank, &Endpoint)> = BTreeMap::new();
        for (owner, slot) in self.eps.iter() {
            let s = slot.rec.summary;
            let rank = (s.version, s.uid, *owner);
            for e in &slot.rec.endpoints {
                match best.get(&e.mac) {
                    Some((r, _)) if *r >= rank => {}
                    _ => {
                        best.insert(e.mac, (rank, e));
                    }
                }
            }
        }
        best.into_values()
            .map(|((_, _, owner), e)| (owner, e.clone()))
            .collect()
    }

    /// Current topology view, us included, sorted by name.
    pub fn peers(&self) -> Vec<PeerStatus> {
        let routes = self.routes_ref();
        self.topo
            .iter()
            .map(|(name, slot)| {
                let r = &slot.rec;
                let next_hop = routes.unicast.get(name).copied();
                PeerStatus {
                    name: *name,
                    nickname: r.nickname.clone(),
                    uid: r.summary.uid,
                    version: r.summary.version,
                    connections: r.connections.len(),
                    reachable: *name == self.me.name || next_hop.is_some(),
                    next_hop,
                }
            })
            .collect()
    }

    /// Connections and connection targets, for status.
    pub fn connections(&self, now: Instant) -> Vec<ConnectionStatus> {
        let mut out = Vec::new();
        let mut shown = std::collections::BTreeSet::new();
        for (addr, t) in self.targets.iter() {
            let conn = t.conn.and_then(|c| self.conns.get(&c));
            if let Some(c) = t.conn {
                shown.insert(c);
            }
            out.push(ConnectionStatus {
                addr: *addr,
                peer: t.peer,
                nickname: conn
                    .map(|c| c.peer.nickname.clone())
                    .or_else(|| t.nickname.clone()),
                state: t.state,
                outbound: true,
                reason: t.reason.clone(),
                attempts: t.attempts,
                retry_in: (t.state == TargetState::Failed)
                    .then(|| t.next_attempt.saturating_duration_since(now)),
                source: if t.configured {
                    TargetSource::Configured
                } else {
                    TargetSource::Discovered
                },
            });
        }
        for (id, c) in &self.conns {
            if shown.contains(id) {
                continue;
            }
            out.push(ConnectionStatus {
                addr: c.addr,
                peer: Some(c.peer.name),
                nickname: Some(c.peer.nickname.clone()),
                state: TargetState::Established,
                outbound: c.outbound,
                reason: (self.primary.get(&c.peer.name) != Some(id))
                    .then(|| "duplicate, closing".to_string()),
                attempts: 0,
                retry_in: None,
                source: if c.outbound {
                    TargetSource::Discovered
                } else {
                    TargetSource::Inbound
                },
            });
        }
        out
    }

    /// Routes over the current view (computed lazily, cached until the view changes).
    pub fn routes(&mut self) -> &Routes {
        self.routes_ref()
    }

    pub(crate) fn routes_ref(&self) -> &Routes {
        self.routes.get_or_init(|| {
            let mine: Vec<PeerName> = self.primary.keys().copied().collect();
            crate::routes::compute(self.me.name, &mine, &self.topo)
        })
    }

    /// A digest of the view of `channel`: every origin's (uid, version), sorted by origin.
    /// Two meshes have the same view of a channel exactly when these are equal.
    pub fn view(&self, channel: Channel) -> Vec<crate::message::Summary> {
        match channel {
            Channel::Topology => self.topo.summaries(),
            Channel::Endpoints => self.eps.summaries(),
            Channel::Ipam => self.ipam.store.summaries(),
        }
    }

    pub fn stats(&self) -> GossipStats {
        self.stats
    }

    /// Peer names that two live routers use, as seen here (see [`crate::names`]); our own
    /// name included when a router with it (and another uid) connected to us.
    pub fn name_conflicts(&self, now: Instant) -> Vec<crate::names::NameConflict> {
        self.names.conflicts(now)
    }

    /// Peers refuse this router: another router with its name is connected to them
    /// ([`crate::names`]). While so, IPAM hands out nothing and claims nothing.
    pub fn refused_as_duplicate(&self, now: Instant) -> Option<crate::names::RefusedHere> {
        self.names.refused(now).cloned()
    }

    /// Established plus in-progress connections (what `conn_limit` bounds).
    pub(crate) fn conn_count(&self) -> usize {
        self.conns.len() + self.targets.connecting()
    }

    /// Periodic work and deferred effects of the call; returns the actions.
    fn finish(&mut self, now: Instant) -> Vec<Action> {
        self.ipam_step(now);
        self.publish_own(now);
        self.send_pending_digests();
        self.request_retries(now);
        if now >= self.next_gossip {
            self.next_gossip = now + jitter20(&mut self.rng, self.config.gossip_interval);
            self.gossip_round();
        }
        if now >= self.next_sync {
            self.next_sync = now + jitter20(&mut self.rng, self.config.full_sync_interval);
            self.full_sync();
        }
        if now >= self.next_gc {
            self.next_gc = now + Duration::from_secs(1);
            self.collect_garbage(now);
            if std::mem::take(&mut self.retarget) {
                self.targets.dirty = true;
            }
        }
        if self.discovery_wanted() && now >= self.next_discovery {
            self.discover(now);
        }
        self.dial(now);
        // our own record may have changed through GC or closes above
        self.publish_own(now);
        self.send_pending_digests();
        if self.changed[0] {
            self.out.push(Action::TopologyChanged);
        }
        if self.changed[1] {
            self.out.push(Action::EndpointsChanged);
        }
        if self.ipam.take_notify() {
            self.out.push(Action::IpamChanged);
        }
        self.changed = [false; 2];
        std::mem::take(&mut self.out)
    }

    /// The topology view (or our connection set) changed: drop derived state.
    pub(crate) fn topology_touched(&mut self) {
        self.routes = OnceLock::new();
        self.discovery_dirty = true;
        self.gc_dirty = true;
        self.retarget = true;
        self.changed[0] = true;
    }

    pub(crate) fn send(&mut self, conn: ConnId, msg: Message, len: usize) {
        debug_assert_eq!(len, msg.encoded_len(), "size accounting of {msg:?}");
        self.stats.messages_sent += 1;
        self.stats.bytes_sent += len as u64;
        self.out.push(Action::Send { conn, msg });
    }

    /// Minimum time between two versions of our topology record: half a gossip interval
    /// per log2(n). A change after a quiet period is published at once; while connections
    /// keep changing (a mesh forming), versions are batched, since every version is pulled
    /// by every peer.
    fn publish_gap(&self) -> Duration {
        let n = self.topo.len().max(2);
        let log = (usize::BITS - (n - 1).leading_zeros()).max(2);
        self.config.gossip_interval * log / 2
    }

    /// Publishes new versions of our own records if they changed.
    fn publish_own(&mut self, now: Instant) {
        let me = self.me.name;
        if self.topo_dirty && now >= self.next_topo_publish {
            self.topo_dirty = false;
            self.next_topo_publish = now + self.publish_gap();
            let version = self
                .topo
                .key(&me)
                .map_or(0, |k| k.0)
                .max(self.version_floor[0])
                + 1;
            let connections = self
                .primary
                .iter()
                .map(|(p, c)| {
                    let c = &self.conns[c];
                    crate::message::ConnRecord {
                        peer: *p,
                        addr: c.addr,
                        outbound: c.outbound,
                    }
                })
                .collect();
            let rec = PeerRecord {
                summary: crate::message::Summary {
                    origin: me,
                    uid: self.me.uid,
                    version,
                },
                nickname: self.me.nickname.clone(),
                connections,
            };
            let summary = rec.summary;
            let rec = Arc::new(rec);
            let old = self.topo.get(&me).cloned();
            self.reindex(
                old.as_ref().map_or(&[], |o| &o.connections),
                &rec.connections,
            );
            self.topo.put(rec);
            self.chan[0].add_news(summary, None);
            self.topology_touched();
        }
        if self.eps_dirty {
            self.eps_dirty = false;
            let version = self
                .eps
                .key(&me)
                .map_or(0, |k| k.0)
                .max(self.version_floor[1])
                + 1;
            let rec = EndpointRecord {
                summary: crate::message::Summary {
                    origin: me,
                    uid: self.me.uid,
                    version,
                },
                endpoints: self.local_endpoints.clone().unwrap_or_default(),
            };
            let summary = rec.summary;
            self.eps.put(Arc::new(rec));
            self.chan[1].add_news(summary, None);
            self.changed[1] = true;
        }
    }
}
