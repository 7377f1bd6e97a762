//! A deterministic discrete-event simulator of a weft mesh.
//!
//! N [`Mesh`] instances, virtual time, one event queue ordered by `(time, sequence)`; all
//! randomness from one seed. The network model:
//! - every pair of peers has a fixed one-way latency drawn from `latency` (by a hash of the
//!   seed and the pair), connections are reliable ordered streams (QUIC): a "lost" message
//!   (probability `loss`) arrives one `rto` later, and later messages wait behind it;
//! - a dial takes one round trip; it fails with `Unreachable` after `connect_timeout` when
//!   the target is down or in another partition group, with `Auth` when the two peers'
//!   passwords differ, with `Refused` when the target's mesh does not accept inbound
//!   connections (the driver's early check);
//! - partitions: messages across groups are held; a connection across groups dies after
//!   `idle_timeout` unless the partition heals first (then held messages are delivered);
//! - [`Sim::stop`] with `clean = true` closes the peer's connections (the other ends see a
//!   close one latency later); with `clean = false` (a crash) the other ends find out after
//!   `idle_timeout`. [`Sim::restart`] crashes a peer and starts a new incarnation (new
//!   uid, same name and address, same configured targets) at once.
//!
//! IPAM (when `SimConfig::mesh.ipam` is set): each peer has a simulated state directory
//! holding its IPAM snapshot, written on every `IpamChanged` and after every allocation
//! through the simulator ([`Sim::ipam_allocate`]), and restored when the peer starts
//! again (helpers and checks in `ipam.rs`).
//!
//! Messages are shared as typed values (fast mode) or sent through
//! [`Message::encode`]/[`Message::decode`] (`wire: true`). Traffic is counted by the
//! meshes themselves ([`Mesh::stats`]); in wire mode the simulator also counts the bytes
//! it carried, which must agree.

mod check;
mod ipam;

use crate::mesh::{Action, Config, ConnId, FailKind, Failure, Input, Mesh};
use crate::message::{Endpoint, Message};
use crate::peer::{Identity, PeerName, PeerUid};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::cmp::Ordering;
use std::collections::{BTreeSet, BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Index of a simulated peer (stable across restarts).
pub type PeerId = usize;

/// Parameters of a simulation.
#[derive(Clone, Debug)]
pub struct SimConfig {
    pub seed: u64,
    /// Mesh configuration of every peer.
    pub mesh: Config,
    /// One-way latency range of a pair of peers.
    pub latency: (Duration, Duration),
    /// Probability that a message needs one retransmission.
    pub loss: f64,
    /// Retransmission delay of a lost message.
    pub rto: Duration,
    /// A connection that cannot deliver anything dies after this long.
    pub idle_timeout: Duration,
    /// A dial to an unreachable address fails after this long.
    pub connect_timeout: Duration,
    /// Send every message through `encode`/`decode`.
    pub wire: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            seed: 1,
            mesh: Config::default(),
            latency: (Duration::from_millis(1), Duration::from_millis(40)),
            loss: 0.0,
            rto: Duration::from_millis(200),
            idle_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(3),
            wire: false,
        }
    }
}

/// Options of a joining peer.
#[derive(Clone, Debug, Default)]
pub struct PeerOptions {
    /// Peers whose addresses are its configured targets.
    pub targets: Vec<PeerId>,
    /// Extra configured addresses (e.g. its own, or nobody's).
    pub extra_targets: Vec<SocketAddr>,
    /// Peers with different passwords fail each other's handshakes.
    pub password: u32,
    /// Local endpoints it publishes.
    pub endpoints: Vec<Endpoint>,
    /// IPAM configuration replacing the simulation's (e.g. another range).
    pub ipam: Option<crate::ipam::IpamConfig>,
    /// Another peer's name instead of its own (a cloned machine).
    pub name: Option<PeerName>,
}

struct Peer {
    name: PeerName,
    addr: SocketAddr,
    mesh: Option<Mesh>,
    identity: Identity,
    /// Incremented on every stop/restart: events of an older incarnation are void.
    inc: u32,
    group: u32,
    opts: PeerOptions,
    /// The `Tick` event currently scheduled.
    next_tick: Option<Instant>,
    /// Open links of this incarnation.
    links: BTreeSet<usize>,
    /// The simulated state directory: the latest IPAM snapshot.
    ipam_state: Option<Vec<u8>>,
}

#[derive(PartialEq, Eq, Clone, Copy, Debug)]
enum LinkState {
    Handshaking,
    Open,
    Closed,
}

/// One connection: side 0 dialled side 1. Side `s` has `ConnId` `2 * index + s`.
struct Link {
    ends: [(PeerId, u32); 2],
    state: LinkState,
    started: Instant,
    /// Arrival time of the last message per sending side (streams are ordered).
    last_arrival: [Instant; 2],
    /// Messages held by a partition: (sending side, message).
    held: Vec<(usize, Payload)>,
    /// One end crashed: the other one hears nothing more.
    dead: bool,
}

enum Payload {
    Typed(Message),
    Wire(Vec<u8>),
}

enum Ev {
    Tick {
        peer: PeerId,
    },
    Handshake {
        link: usize,
    },
    Deliver {
        link: usize,
        from: usize,
        payload: Payload,
    },
    Input {
        peer: PeerId,
        inc: u32,
        input: Input,
    },
    IdleTimeout {
        link: usize,
        epoch: u64,
    },
}

struct Queued {
    at: Instant,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Queued {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Queued {
    fn cmp(&self, o: &Self) -> Ordering {
        // BinaryHeap is a max-heap: reverse for earliest first
        (o.at, o.seq).cmp(&(self.at, self.seq))
    }
}

/// The simulator. See the module docs.
pub struct Sim {
    cfg: SimConfig,
    base: Instant,
    now: Instant,
    rng: ChaCha8Rng,
    queue: BinaryHeap<Queued>,
    seq: u64,
    peers: Vec<Peer>,
    by_addr: HashMap<SocketAddr, PeerId>,
    links: Vec<Link>,
    partition_epoch: u64,
    partitioned: bool,
    last_view_change: Instant,
    last_join: Instant,
    events: u64,
    wire_bytes: u64,
    /// Traffic counters of stopped incarnations.
    retired: crate::mesh::GossipStats,
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

impl Sim {
    pub fn new(cfg: SimConfig) -> Self {
        // An arbitrary origin for virtual time: meshes only ever use differences.
        let base = Instant::now();
        Sim {
            rng: ChaCha8Rng::seed_from_u64(cfg.seed),
            cfg,
            base,
            now: base,
            queue: BinaryHeap::new(),
            seq: 0,
            peers: Vec::new(),
            by_addr: HashMap::new(),
            links: Vec::new(),
            partition_epoch: 0,
            partitioned: false,
            last_view_change: base,
            last_join: base,
            events: 0,
            wire_bytes: 0,
            retired: Default::default(),
        }
    }

    pub fn config(&self) -> &SimConfig {
        &self.cfg
    }

    /// Virtual time since the start.
    pub fn elapsed(&self) -> Duration {
        self.now - self.base
    }

    /// The virtual `Instant` now (for calls on meshes).
    pub fn now(&self) -> Instant {
        self.now
    }

    pub fn len(&self) -> usize {
        self.peers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    /// Events processed so far.
    pub fn events(&self) -> u64 {
        self.events
    }

    /// Bytes carried in wire mode (0 in fast mode).
    pub fn wire_bytes(&self) -> u64 {
        self.wire_bytes
    }

    /// The address of peer `i`: 10.x.y.z:6783.
    pub fn addr_of(i: PeerId) -> SocketAddr {
        let v = i as u32 + 1;
        SocketAddr::from(([10, (v >> 16) as u8, (v >> 8) as u8, v as u8], 6783))
    }

    pub fn name_of(&self, i: PeerId) -> PeerName {
        self.peers[i].name
    }

    pub fn mesh(&self, i: PeerId) -> Option<&Mesh> {
        self.peers[i].mesh.as_ref()
    }

    pub fn mesh_mut(&mut self, i: PeerId) -> Option<&mut Mesh> {
        self.peers[i].mesh.as_mut()
    }

    pub fn is_up(&self, i: PeerId) -> bool {
        self.peers[i].mesh.is_some()
    }

    /// Peers that are running.
    pub fn live(&self) -> Vec<PeerId> {
        (0..self.peers.len()).filter(|&i| self.is_up(i)).collect()
    }

    /// Virtual time of the last view change of any peer (since the start).
    pub fn last_view_change(&self) -> Duration {
        self.last_view_change - self.base
    }

    /// Virtual time of the last join (since the start).
    pub fn last_join(&self) -> Duration {
        self.last_join - self.base
    }

    fn push(&mut self, at: Instant, ev: Ev) {
        self.seq += 1;
        self.queue.push(Queued {
            at,
            seq: self.seq,
            ev,
        });
    }

    fn latency(&self, a: PeerId, b: PeerId) -> Duration {
        let (lo, hi) = self.cfg.latency;
        let (x, y) = (a.min(b) as u64, a.max(b) as u64);
        let h = splitmix(self.cfg.seed ^ splitmix(x << 32 | y));
        let span = hi.saturating_sub(lo).as_micros() as u64;
        lo + Duration::from_micros(if span == 0 { 0 } else { h % (span + 1) })
    }

    /// Adds a peer now; it dials its targets at once.
    pub fn add_peer(&mut self, opts: PeerOptions) -> PeerId {
        let i = self.peers.len();
        let addr = Self::addr_of(i);
        let name = opts
            .name
            .unwrap_or_else(|| PeerName::derive(&format!("sim-peer-{}-{i}", self.cfg.seed)));
        let identity = Identity {
            name,
            nickname: format!("p{i}"),
            uid: PeerUid(0),
        };
        self.peers.push(Peer {
            name,
            addr,
            mesh: None,
            identity,
            inc: 0,
            group: 0,
            opts,
            next_tick: None,
            links: BTreeSet::new(),
            ipam_state: None,
        });
        self.by_addr.insert(addr, i);
        self.start(i);
        self.last_join = self.now;
        i
    }

    fn start(&mut self, i: PeerId) {
        let uid = PeerUid(self.rng.random());
        let seed = self.rng.random();
        let p = &mut self.peers[i];
        p.identity.uid = uid;
        let mut cfg = self.cfg.mesh.clone();
        if let Some(ipam) = &p.opts.ipam {
            cfg.ipam = Some(ipam.clone());
        }
        let mut mesh = Mesh::new(p.identity.clone(), cfg, seed, self.now);
        if let Some(state) = &p.ipam_state {
            if let Err(e) = mesh.restore_ipam(state, self.now) {
                panic!("peer {i}: restoring its IPAM state: {e}");
            }
        }
        let mut addrs: Vec<SocketAddr> = p.opts.targets.iter().map(|&t| Self::addr_of(t)).collect();
        addrs.extend(p.opts.extra_targets.iter().copied());
        let eps = p.opts.endpoints.clone();
        let mut actions = mesh.set_targets(&addrs, self.now);
        if !eps.is_empty() {
            actions.extend(mesh.set_local_endpoints(eps, self.now));
        }
        p.mesh = Some(mesh);
        self.last_view_change = self.now;
        self.apply(i, actions);
    }

    /// Stops peer `i` (see the module docs for `clean`).
    pub fn stop(&mut self, i: PeerId, clean: bool) {
        if self.peers[i].mesh.is_none() {
            return;
        }
        let links = std::mem::take(&mut self.peers[i].links);
        for l in links {
            let side = usize::from(self.links[l].ends[1].0 == i && self.links[l].ends[0].0 != i);
            let other = 1 - side;
            let (op, oinc) = self.links[l].ends[other];
            let state = self.links[l].state;
            if state == LinkState::Closed || op == i {
                self.links[l].state = LinkState::Closed;
                continue;
            }
            if state == LinkState::Handshaking {
                // the dial (if ours) dies with us; theirs fails when the handshake runs
                continue;
            }
            if clean {
                self.links[l].state = LinkState::Closed;
                let at = self.now + self.latency(i, op);
                let input = Input::ConnectionClosed {
                    conn: (2 * l + other) as ConnId,
                    reason: None,
                };
                self.push(
                    at,
                    Ev::Input {
                        peer: op,
                        inc: oinc,
                        input,
                    },
                );
                self.peers[op].links.remove(&l);
            } else {
                self.links[l].dead = true;
                let at = self.now + self.cfg.idle_timeout;
                self.push(
                    at,
                    Ev::IdleTimeout {
                        link: l,
                        epoch: u64::MAX,
                    },
                );
            }
        }
        let p = &mut self.peers[i];
        if let Some(m) = p.mesh.take() {
            let s = m.stats();
            self.retired.messages_sent += s.messages_sent;
            self.retired.bytes_sent += s.bytes_sent;
            self.retired.messages_received += s.messages_received;
            self.retired.bytes_received += s.bytes_received;
        }
        p.inc += 1;
        p.next_tick = None;
        self.last_view_change = self.now;
    }

    /// Starts a stopped peer again (new uid, same name and address).
    pub fn start_again(&mut self, i: PeerId) {
        if self.peers[i].mesh.is_none() {
            self.start(i);
        }
    }

    /// Crash and immediate restart with a new uid.
    pub fn restart(&mut self, i: PeerId) {
        self.stop(i, false);
        self.start(i);
    }

    /// Splits the peers into groups (unlisted peers form group 0).
    pub fn partition(&mut self, groups: &[Vec<PeerId>]) {
        for p in &mut self.peers {
            p.group = 0;
        }
        for (g, members) in groups.iter().enumerate() {
            for &i in members {
                self.peers[i].group = g as u32 + 1;
            }
        }
        self.partition_epoch += 1;
        self.partitioned = true;
        let epoch = self.partition_epoch;
        for l in 0..self.links.len() {
            if self.links[l].state == LinkState::Open && self.crosses(l) {
                let at = self.now + self.cfg.idle_timeout;
                self.push(at, Ev::IdleTimeout { link: l, epoch });
            }
        }
    }

    /// Ends the partition; held messages are delivered.
    pub fn heal(&mut self) {
        for p in &mut self.peers {
            p.group = 0;
        }
        self.partition_epoch += 1;
        self.partitioned = false;
        for l in 0..self.links.len() {
            if self.links[l].held.is_empty() {
                continue;
            }
            for (from, payload) in std::mem::take(&mut self.links[l].held) {
                self.transmit(l, from, payload);
            }
        }
    }

    fn crosses(&self, l: usize) -> bool {
        let [(a, _), (b, _)] = self.links[l].ends;
        self.peers[a].group != self.peers[b].group
    }

    /// Runs until virtual time `elapsed()` reaches `t`.
    pub fn run_until(&mut self, t: Duration) {
        let end = self.base + t;
        while let Some(q) = self.queue.peek() {
            if q.at > end {
                break;
            }
            let q = self.queue.pop().expect("peeked");
            self.now = q.at;
            self.events += 1;
            self.dispatch(q.at, q.ev);
        }
        self.now = self.now.max(end);
    }

    pub fn run_for(&mut self, d: Duration) {
        let t = self.elapsed() + d;
        self.run_until(t);
    }

    fn dispatch(&mut self, at: Instant, ev: Ev) {
        match ev {
            Ev::Tick { peer } => {
                if self.peers[peer].next_tick != Some(at) {
                    return; // superseded
                }
                self.peers[peer].next_tick = None;
                self.input(peer, Input::Tick);
            }
            Ev::Input { peer, inc, input } => {
                if self.peers[peer].inc == inc {
                    self.input(peer, input);
                }
            }
            Ev::Handshake { link } => self.handshake(link),
            Ev::Deliver {
                link,
                from,
                payload,
            } => {
                let to = 1 - from;
                let (peer, inc) = self.links[link].ends[to];
                if self.links[link].state != LinkState::Open
                    || self.links[link].dead
                    || self.peers[peer].inc != inc
                {
                    return;
                }
                let msg = match payload {
                    Payload::Typed(m) => m,
                    Payload::Wire(bytes) => match Message::decode(&bytes) {
                        Ok(m) => m,
                        Err(e) => panic!("simulated peer sent an undecodable message: {e}"),
                    },
                };
                self.input(
                    peer,
                    Input::Message {
                        conn: (2 * link + to) as ConnId,
                        msg,
                    },
                );
            }
            Ev::IdleTimeout { link, epoch } => {
                let l = &self.links[link];
                let applies = if epoch == u64::MAX {
                    l.dead
                } else {
                    epoch == self.partition_epoch
                };
                if l.state != LinkState::Open
                    || !applies
                    || (epoch != u64::MAX && !self.crosses(link))
                {
                    return;
                }
                self.links[link].state = LinkState::Closed;
                let failure = Failure {
                    kind: FailKind::Unreachable,
                    detail: "idle timeout".into(),
                };
                for side in 0..2 {
                    let (peer, inc) = self.links[link].ends[side];
                    if self.peers[peer].inc == inc {
                        self.peers[peer].links.remove(&link);
                        let input = Input::ConnectionClosed {
                            conn: (2 * link + side) as ConnId,
                            reason: Some(failure.clone()),
                        };
                        self.input(peer, input);
                    }
                }
            }
        }
    }

    fn input(&mut self, i: PeerId, input: Input) {
        let now = self.now;
        let Some(mesh) = self.peers[i].mesh.as_mut() else {
            return;
        };
        let actions = mesh.handle(input, now);
        self.apply(i, actions);
    }

    /// Executes a peer's actions and reschedules its tick.
    fn apply(&mut self, i: PeerId, actions: Vec<Action>) {
        for a in actions {
            match a {
                Action::Connect { addr } => self.connect(i, addr),
                Action::Send { conn, msg } => {
                    let (l, side) = ((conn / 2) as usize, (conn % 2) as usize);
                    let payload = if self.cfg.wire {
                        let bytes = msg.encode();
                        assert_eq!(bytes.len(), msg.encoded_len());
                        self.wire_bytes += bytes.len() as u64;
                        Payload::Wire(bytes)
                    } else {
                        Payload::Typed(msg)
                    };
                    if l >= self.links.len() || self.links[l].state != LinkState::Open {
                        continue;
                    }
                    self.transmit(l, side, payload);
                }
                Action::Close { conn, reason } => {
                    let (l, side) = ((conn / 2) as usize, (conn % 2) as usize);
                    if l >= self.links.len() || self.links[l].state != LinkState::Open {
                        continue;
                    }
                    self.links[l].state = LinkState::Closed;
                    let other = 1 - side;
                    let (op, oinc) = self.links[l].ends[other];
                    let (me, minc) = self.links[l].ends[side];
                    self.peers[me].links.remove(&l);
                    self.peers[op].links.remove(&l);
                    let closed = Input::ConnectionClosed { conn, reason: None };
                    self.push(
                        self.now,
                        Ev::Input {
                            peer: me,
                            inc: minc,
                            input: closed,
                        },
                    );
                    if !self.links[l].dead {
                        let kind = if reason == crate::CloseReason::DuplicateName {
                            FailKind::DuplicateName
                        } else {
                            FailKind::Refused
                        };
                        let failure = Failure {
                            kind,
                            detail: format!("closed by peer: {}", reason.as_str()),
                        };
                        let input = Input::ConnectionClosed {
                            conn: (2 * l + other) as ConnId,
                            reason: Some(failure),
                        };
                        let at = self.now + self.latency(me, op);
                        self.push(
                            at,
                            Ev::Input {
                                peer: op,
                                inc: oinc,
                                input,
                            },
                        );
                    }
                }
                Action::TopologyChanged | Action::EndpointsChanged => {
                    self.last_view_change = self.now;
                }
                Action::IpamChanged => {
                    self.last_view_change = self.now;
                    self.save_ipam(i);
                }
            }
        }
        let p = &self.peers[i];
        if let Some(m) = &p.mesh {
            let t = m.poll_timeout().max(self.now);
            if p.next_tick.is_none_or(|s| t < s) {
                self.peers[i].next_tick = Some(t);
                self.push(t, Ev::Tick { peer: i });
            }
        }
    }

    fn connect(&mut self, i: PeerId, addr: SocketAddr) {
        let inc = self.peers[i].inc;
        match self.by_addr.get(&addr).copied() {
            Some(j) => {
                let l = self.links.len();
                self.links.push(Link {
                    ends: [(i, inc), (j, self.peers[j].inc)],
                    state: LinkState::Handshaking,
                    started: self.now,
                    last_arrival: [self.now; 2],
                    held: Vec::new(),
                    dead: false,
                });
                let at = self.now + self.latency(i, j) * 2;
                self.push(at, Ev::Handshake { link: l });
            }
            None => {
                let failure = Failure {
                    kind: FailKind::Unreachable,
                    detail: "no route to host".into(),
                };
                let at = self.now + self.cfg.connect_timeout;
                self.push(
                    at,
                    Ev::Input {
                        peer: i,
                        inc,
                        input: Input::ConnectFailed { addr, failure },
                    },
                );
            }
        }
    }

    fn handshake(&mut self, l: usize) {
        let [(a, ainc), (b, _)] = self.links[l].ends;
        if self.peers[a].inc != ainc {
            self.links[l].state = LinkState::Closed;
            return;
        }
        let addr = self.peers[b].addr;
        let fail = |kind, detail: &str| Failure {
            kind,
            detail: detail.to_string(),
        };
        let failure = if self.peers[b].mesh.is_none() || self.peers[a].group != self.peers[b].group
        {
            Some((fail(FailKind::Unreachable, "handshake timed out"), true))
        } else if self.peers[a].opts.password != self.peers[b].opts.password {
            Some((
                fail(FailKind::Auth, "authentication failed: wrong password"),
                false,
            ))
        } else if a != b
            && !self.peers[b]
                .mesh
                .as_ref()
                .is_some_and(|m| m.accepts_inbound())
        {
            Some((
                fail(FailKind::Refused, "refused: connection limit reached"),
                false,
            ))
        } else {
            None
        };
        if let Some((failure, timeout)) = failure {
            self.links[l].state = LinkState::Closed;
            let at = if timeout {
                self.links[l].started + self.cfg.connect_timeout
            } else {
                self.now
            };
            let input = Input::ConnectFailed { addr, failure };
            self.push(
                at.max(self.now),
                Ev::Input {
                    peer: a,
                    inc: ainc,
                    input,
                },
            );
            return;
        }
        self.links[l].state = LinkState::Open;
        self.links[l].ends[1].1 = self.peers[b].inc;
        self.peers[a].links.insert(l);
        self.peers[b].links.insert(l);
        let (ida, idb) = (
            self.peers[a].identity.clone(),
            self.peers[b].identity.clone(),
        );
        let a_addr = self.peers[a].addr;
        self.input(
            a,
            Input::ConnectionEstablished {
                conn: (2 * l) as ConnId,
                addr,
                outbound: true,
                peer: idb,
            },
        );
        if self.links[l].state == LinkState::Open {
            let input = Input::ConnectionEstablished {
                conn: (2 * l + 1) as ConnId,
                addr: a_addr,
                outbound: false,
                peer: ida,
            };
            self.input(b, input);
        }
    }

    /// Sends `payload` from side `from` of link `l`.
    fn transmit(&mut self, l: usize, from: usize, payload: Payload) {
        if self.links[l].dead {
            return;
        }
        if self.partitioned && self.crosses(l) {
            self.links[l].held.push((from, payload));
            return;
        }
        let (a, b) = (self.links[l].ends[0].0, self.links[l].ends[1].0);
        let mut at = self.now + self.latency(a, b);
        if self.cfg.loss > 0.0 && self.rng.random_bool(self.cfg.loss.min(1.0)) {
            at += self.cfg.rto;
        }
        let at = at.max(self.links[l].last_arrival[from]);
        self.links[l].last_arrival[from] = at;
        self.push(
            at,
            Ev::Deliver {
                link: l,
                from,
                payload,
            },
        );
    }
}
