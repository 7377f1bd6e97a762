//! The sleeve engine: two OS threads that move frames between the node's TAP and UDP 6784.
//!
//! Design note. The router (tokio) owns the control plane; the per-packet work happens
//! here, off the async runtime, in two blocking threads:
//!
//! - **tx** reads frames from the TAP (with `virtio_net_hdr`, so TCP segmentation-offload
//!   frames of up to 64 KB arrive whole), looks up the destination MAC's owner and the next
//!   hop, packs records into datagrams sized for that hop's path MTU ([`out::Out`]), seals
//!   them and sends each batch with one UDP GSO `sendmsg`;
//! - **rx** receives batches (`recvmmsg`, GRO-coalesced), opens each datagram with its
//!   session, writes frames for this node to the TAP (whole, offload header included),
//!   forwards relayed and broadcast records to the next hops, answers path-MTU probes, and
//!   runs the timers (probes, keepalives, reassembly expiry).
//!
//! The router changes sessions, routes and the MAC table through [`Engine`]; each change
//! publishes a new immutable [`Table`] snapshot, which the threads pick up with one atomic
//! load per batch. A session's send side is shared by both threads behind a mutex (taken
//! once per batch); its receive side is used by rx only.

mod out;
mod rx;
mod tx;

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::driver::{Tap, Udp};
use crate::pmtu::{Pmtu, PmtuConfig};
use crate::session::{Mode, RekeyPolicy, RxSession, SessionKeys, TxSession};

/// Default sleeve port.
pub const DEFAULT_PORT: u16 = 6784;
/// A session with nothing sent for this long sends a keepalive (keeps NAT mappings open).
pub const KEEPALIVE: Duration = Duration::from_secs(10);
/// Fallback underlay MTU when the route's MTU cannot be read.
pub const DEFAULT_LINK_MTU: u16 = 1500;

/// What [`Engine::start`] needs.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// This node's peer name (48 bits).
    pub me: u64,
    /// The TAP port on the node bridge.
    pub tap: String,
    /// UDP address to listen on.
    pub listen: SocketAddrV4,
    /// Encrypted (the mesh has a password) or plain.
    pub mode: Mode,
    pub rekey: RekeyPolicy,
    pub pmtu: PmtuConfig,
}

/// Counters of the engine (all monotonic).
#[derive(Debug, Default)]
pub struct Counters {
    pub rx_packets: AtomicU64,
    pub rx_bytes: AtomicU64,
    pub tx_packets: AtomicU64,
    pub tx_bytes: AtomicU64,
    pub frames_in: AtomicU64,
    pub frames_out: AtomicU64,
    pub relayed_records: AtomicU64,
    /// Dropped datagrams, by reason.
    pub drop_malformed: AtomicU64,
    pub drop_unknown_session: AtomicU64,
    pub drop_auth: AtomicU64,
    pub drop_replay: AtomicU64,
    pub drop_bad_records: AtomicU64,
    /// Frames dropped: no route / no session to the next hop.
    pub drop_no_route: AtomicU64,
    pub drop_tap_write: AtomicU64,
    /// Frames whose source MAC the gossiped table gives to another node.
    pub drop_foreign_mac: AtomicU64,
    pub drop_send: AtomicU64,
    pub icmp_frag_needed: AtomicU64,
    pub endpoint_changes: AtomicU64,
    pub rekeys: AtomicU64,
}

impl Counters {
    /// A snapshot of every counter.
    pub fn snapshot(&self) -> Stats {
        let c = self;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Stats {
            rx_packets: g(&c.rx_packets),
            rx_bytes: g(&c.rx_bytes),
            tx_packets: g(&c.tx_packets),
            tx_bytes: g(&c.tx_bytes),
            frames_in: g(&c.frames_in),
            frames_out: g(&c.frames_out),
            relayed_records: g(&c.relayed_records),
            drop_malformed: g(&c.drop_malformed),
            drop_unknown_session: g(&c.drop_unknown_session),
            drop_auth: g(&c.drop_auth),
            drop_replay: g(&c.drop_replay),
            drop_bad_records: g(&c.drop_bad_records),
            drop_no_route: g(&c.drop_no_route),
            drop_tap_write: g(&c.drop_tap_write),
            drop_foreign_mac: g(&c.drop_foreign_mac),
            drop_send: g(&c.drop_send),
            icmp_frag_needed: g(&c.icmp_frag_needed),
            endpoint_changes: g(&c.endpoint_changes),
            rekeys: g(&c.rekeys),
        }
    }
}

/// Reads an engine's [`Counters`]: see [`Engine::stats_reader`].
#[derive(Clone, Debug)]
pub struct StatsReader(Arc<Counters>);

impl From<Arc<Counters>> for StatsReader {
    fn from(c: Arc<Counters>) -> StatsReader {
        StatsReader(c)
    }
}

impl StatsReader {
    pub fn stats(&self) -> Stats {
        self.0.snapshot()
    }
}

/// A snapshot of [`Counters`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub frames_in: u64,
    pub frames_out: u64,
    pub relayed_records: u64,
    pub drop_malformed: u64,
    pub drop_unknown_session: u64,
    pub drop_auth: u64,
    pub drop_replay: u64,
    pub drop_bad_records: u64,
    pub drop_no_route: u64,
    pub drop_tap_write: u64,
    pub drop_foreign_mac: u64,
    pub drop_send: u64,
    pub icmp_frag_needed: u64,
    pub endpoint_changes: u64,
    /// Key steps taken by the sending halves of the sessions (one per session per step).
    pub rekeys: u64,
}

/// What status shows of one session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionInfo {
    pub conn: u64,
    pub peer: u64,
    pub endpoint: SocketAddrV4,
    /// Path MTU (outer IPv4 packet size) currently used.
    pub path_mtu: u16,
    /// Whether the path MTU has been confirmed by a probe.
    pub confirmed: bool,
    /// Largest IP packet a pod can send in one datagram on this path.
    pub inner_mtu: u16,
    pub tx_packets: u64,
    pub rx_packets: u64,
    /// Time since the last authenticated packet from the peer.
    pub last_rx: Option<Duration>,
}

/// One session with a direct neighbour (one per control connection).
pub(crate) struct Session {
    pub conn: u64,
    pub peer: u64,
    pub tx: Mutex<TxSession>,
    pub rx: Mutex<RxSession>,
    endpoint: AtomicU64,
    pub pmtu: Mutex<Pmtu>,
    /// Current path MTU, readable without the lock.
    pub path_mtu: AtomicU32,
    pub confirmed: AtomicBool,
    /// Milliseconds since the engine started (0 = never).
    pub last_tx_ms: AtomicU64,
    pub last_rx_ms: AtomicU64,
    pub tx_packets: AtomicU64,
    pub rx_packets: AtomicU64,
}

fn pack(a: SocketAddrV4) -> u64 {
    (u64::from(u32::from(*a.ip())) << 16) | u64::from(a.port())
}

fn unpack(v: u64) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::from((v >> 16) as u32), v as u16)
}

impl Session {
    pub fn endpoint(&self) -> SocketAddrV4 {
        unpack(self.endpoint.load(Ordering::Relaxed))
    }

    /// Follows the peer to a new source address; true if it changed.
    pub fn learn_endpoint(&self, a: SocketAddrV4) -> bool {
        self.endpoint.swap(pack(a), Ordering::Relaxed) != pack(a)
    }
}

/// The forwarding state the threads read: immutable, replaced as a whole.
#[derive(Default)]
pub(crate) struct Table {
    pub by_index: HashMap<u32, Arc<Session>>,
    /// The session used to send to each direct neighbour (the newest one).
    pub by_peer: HashMap<u64, Arc<Session>>,
    /// MAC -> owning node (gossiped endpoint table).
    pub macs: HashMap<[u8; 6], u64>,
    /// Destination node -> next hop (a direct neighbour).
    pub unicast: HashMap<u64, u64>,
    /// Origin node -> neighbours to forward its broadcasts to.
    pub broadcast: HashMap<u64, Vec<u64>>,
}

/// What the router has told us, from which tables are built.
#[derive(Default)]
struct Inputs {
    /// Sessions in the order they were added.
    sessions: Vec<Arc<Session>>,
    macs: HashMap<[u8; 6], u64>,
    unicast: HashMap<u64, u64>,
    broadcast: HashMap<u64, Vec<u64>>,
}

pub(crate) struct Shared {
    pub me: u64,
    pub mode: Mode,
    pub started: Instant,
    pub counters: Arc<Counters>,
    pub stop: AtomicBool,
    generation: AtomicU64,
    table: Mutex<Arc<Table>>,
    /// MACs learned from received frames (source MAC -> source node), consulted when the
    /// gossiped table has no entry.
    pub learned: Mutex<HashMap<[u8; 6], u64>>,
    /// Ids of frames this node originates (reassembly keys), shared by every thread that
    /// reads the TAP.
    pub frame_ids: AtomicU32,
    /// Held by whichever thread is reading the TAP and sending what it read, so frames
    /// leave in the order they were read (see `RxState::round`: the rx thread drains the
    /// TAP after delivering, at low load, to save a thread wake-up per round trip).
    pub tap_reader: Mutex<()>,
}

impl Shared {
    pub fn now_ms(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.started).as_millis() as u64 + 1
    }

    /// The current table if it changed since `seen` (which is updated).
    pub fn table_if_changed(&self, seen: &mut u64) -> Option<Arc<Table>> {
        let g = self.generation.load(Ordering::Acquire);
        if g == *seen {
            return None;
        }
        let t = self.table.lock().unwrap_or_else(|e| e.into_inner()).clone();
        *seen = g;
        Some(t)
    }
}

/// The running sleeve. Dropping it stops the threads.
pub struct Engine {
    shared: Arc<Shared>,
    inputs: Mutex<Inputs>,
    cfg: EngineConfig,
    udp: Arc<Udp>,
    threads: Vec<JoinHandle<()>>,
}

/// Reads the MTU the kernel would use towards `dst` (the route's or interface's MTU).
#[allow(unsafe_code)] // getsockopt(IP_MTU)
pub fn route_mtu(dst: Ipv4Addr) -> Option<u16> {
    let s = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    s.connect(SocketAddrV4::new(dst, 9)).ok()?;
    let mut mtu: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: IP_MTU writes one c_int into `mtu`, whose size `len` states.
    let rc = unsafe {
        libc::getsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&s),
            libc::IPPROTO_IP,
            libc::IP_MTU,
            (&mut mtu as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    (rc == 0 && mtu >= 576).then(|| mtu.min(i32::from(u16::MAX)) as u16)
}

impl Engine {
    /// Attaches to the TAP, binds the UDP port and starts the threads.
    pub fn start(cfg: EngineConfig) -> io::Result<Engine> {
        let tap = Arc::new(Tap::attach(&cfg.tap)?);
        let udp = Arc::new(Udp::bind(cfg.listen)?);
        let shared = Arc::new(Shared {
            me: cfg.me,
            mode: cfg.mode,
            started: Instant::now(),
            counters: Arc::default(),
            stop: AtomicBool::new(false),
            generation: AtomicU64::new(1),
            table: Mutex::new(Arc::new(Table::default())),
            learned: Mutex::new(HashMap::new()),
            frame_ids: AtomicU32::new(0),
            tap_reader: Mutex::new(()),
        });
        let mut threads = Vec::new();
        {
            let (s, t, u) = (shared.clone(), tap.clone(), udp.clone());
            threads.push(
                std::thread::Builder::new()
                    .name("sleeve-tx".into())
                    .spawn(move || tx::run(s, t, u))?,
            );
        }
        {
            let (s, t, u) = (shared.clone(), tap, udp.clone());
            threads.push(
                std::thread::Builder::new()
                    .name("sleeve-rx".into())
                    .spawn(move || rx::run(s, t, u))?,
            );
        }
        Ok(Engine {
            shared,
            inputs: Mutex::new(Inputs::default()),
            cfg,
            udp,
            threads,
        })
    }

    /// The bound UDP address.
    pub fn local_addr(&self) -> io::Result<SocketAddrV4> {
        self.udp.local_addr()
    }

    /// Whether UDP segmentation offload (GSO) and receive coalescing (GRO) are in use.
    pub fn offloads(&self) -> (bool, bool) {
        (self.udp.gso(), self.udp.gro())
    }

    fn publish(&self, inputs: &Inputs) {
        let mut t = Table {
            macs: inputs.macs.clone(),
            unicast: inputs.unicast.clone(),
            broadcast: inputs.broadcast.clone(),
            ..Table::default()
        };
        for s in &inputs.sessions {
            t.by_index.insert(
                s.rx.lock().unwrap_or_else(|e| e.into_inner()).local_index(),
                s.clone(),
            );
            // Later sessions replace earlier ones: the newest connection sends.
            t.by_peer.insert(s.peer, s.clone());
        }
        *self.shared.table.lock().unwrap_or_else(|e| e.into_inner()) = Arc::new(t);
        self.shared.generation.fetch_add(1, Ordering::AcqRel);
    }

    fn inputs(&self) -> std::sync::MutexGuard<'_, Inputs> {
        self.inputs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds the session of control connection `conn` with neighbour `peer`, first sending to
    /// `endpoint` (the peer's address on the control connection, sleeve port). A keepalive and
    /// a path-MTU probe go out at once, so a peer behind NAT learns our address and opens
    /// its mapping.
    pub fn add_session(&self, conn: u64, peer: u64, keys: SessionKeys, endpoint: SocketAddrV4) {
        let now = Instant::now();
        let link = route_mtu(*endpoint.ip()).unwrap_or(DEFAULT_LINK_MTU);
        let (tx, rx) = keys.split(self.cfg.mode, self.cfg.rekey, now);
        let pmtu = Pmtu::new(link, self.cfg.pmtu, now);
        let s = Arc::new(Session {
            conn,
            peer,
            tx: Mutex::new(tx),
            rx: Mutex::new(rx),
            endpoint: AtomicU64::new(pack(endpoint)),
            path_mtu: AtomicU32::new(u32::from(pmtu.current())),
            confirmed: AtomicBool::new(false),
            pmtu: Mutex::new(pmtu),
            last_tx_ms: AtomicU64::new(0),
            last_rx_ms: AtomicU64::new(0),
            tx_packets: AtomicU64::new(0),
            rx_packets: AtomicU64::new(0),
        });
        let mut inputs = self.inputs();
        inputs.sessions.retain(|x| x.conn != conn);
        inputs.sessions.push(s);
        self.publish(&inputs);
    }

    /// Removes the session of control connection `conn` (it closed).
    pub fn remove_session(&self, conn: u64) {
        let mut inputs = self.inputs();
        let before = inputs.sessions.len();
        inputs.sessions.retain(|x| x.conn != conn);
        if inputs.sessions.len() != before {
            self.publish(&inputs);
        }
    }

    /// Replaces the routes: destination -> next hop, and origin -> broadcast children.
    pub fn set_routes(&self, unicast: HashMap<u64, u64>, broadcast: HashMap<u64, Vec<u64>>) {
        let mut inputs = self.inputs();
        if inputs.unicast == unicast && inputs.broadcast == broadcast {
            return;
        }
        inputs.unicast = unicast;
        inputs.broadcast = broadcast;
        self.publish(&inputs);
    }

    /// Replaces the MAC table (MAC -> owning node).
    pub fn set_macs(&self, macs: HashMap<[u8; 6], u64>) {
        let mut inputs = self.inputs();
        if inputs.macs == macs {
            return;
        }
        inputs.macs = macs;
        self.publish(&inputs);
    }

    /// The sessions, for status.
    pub fn sessions(&self) -> Vec<SessionInfo> {
        let now = Instant::now();
        let now_ms = self.shared.now_ms(now);
        self.inputs()
            .sessions
            .iter()
            .map(|s| {
                let pmtu = s.path_mtu.load(Ordering::Relaxed) as u16;
                let last = s.last_rx_ms.load(Ordering::Relaxed);
                SessionInfo {
                    conn: s.conn,
                    peer: s.peer,
                    endpoint: s.endpoint(),
                    path_mtu: pmtu,
                    confirmed: s.confirmed.load(Ordering::Relaxed),
                    inner_mtu: crate::icmp::inner_mtu(pmtu, self.cfg.mode),
                    tx_packets: s.tx_packets.load(Ordering::Relaxed),
                    rx_packets: s.rx_packets.load(Ordering::Relaxed),
                    last_rx: (last != 0)
                        .then(|| Duration::from_millis(now_ms.saturating_sub(last))),
                }
            })
            .collect()
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> Stats {
        self.shared.counters.snapshot()
    }

    /// A reader of the counters that can be kept elsewhere (the metrics endpoint reads it at
    /// every scrape); it stays valid after the engine stops.
    pub fn stats_reader(&self) -> StatsReader {
        StatsReader(self.shared.counters.clone())
    }

    /// Stops the threads and waits for them.
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.halt();
    }
}
