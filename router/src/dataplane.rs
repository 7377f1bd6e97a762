//! The router's side of the data plane: starts the sleeve engine and keeps it fed.
//!
//! The event loop calls in here when a control connection comes up or goes (one sleeve
//! session per connection, keyed from its Noise handshake), when routes change, and when
//! the gossiped endpoint table changes (the MAC table). Status reads the sessions back: per
//! connection the path, its MTU and whether it is encrypted.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, SocketAddrV4};

use tracing::{info, warn};
use weft_gossip::{Mesh, PeerName};
use weft_sleeve::engine::{Engine, EngineConfig, SessionInfo, StatsReader};
use weft_sleeve::pmtu::PmtuConfig;
use weft_sleeve::session::{Mode, RekeyPolicy, SessionKeys};

use crate::transport::SessionSecrets;

/// The data plane of one router: the sleeve engine, or why there is none.
pub struct DataPlane {
    engine: Option<Engine>,
    /// Why the sleeve is not running (shown in status).
    pub unavailable: Option<String>,
    port: u16,
    mode: Mode,
}

/// The 48-bit MAC a peer name is written as.
pub fn mac_of(name: PeerName) -> [u8; 6] {
    let v = name.as_u64().to_be_bytes();
    [v[2], v[3], v[4], v[5], v[6], v[7]]
}

/// MAC -> owner, from the gossiped endpoint table; each node's bridge MAC (its peer name)
/// belongs to it too. Ours included.
pub fn mac_claims(mesh: &Mesh) -> Vec<([u8; 6], u64)> {
    let mut macs: Vec<([u8; 6], u64)> = mesh
        .peers()
        .into_iter()
        .map(|p| (mac_of(p.name), p.name.as_u64()))
        .collect();
    macs.push((mac_of(mesh.identity().name), mesh.identity().name.as_u64()));
    for (owner, e) in mesh.endpoints() {
        macs.push((e.mac, owner.as_u64()));
    }
    macs
}

impl DataPlane {
    /// Starts the sleeve on `tap`, listening on UDP `port` (all IPv4 addresses).
    pub fn start(me: PeerName, tap: &str, port: u16, encrypted: bool) -> DataPlane {
        let mode = if encrypted {
            Mode::Encrypted
        } else {
            Mode::Plain
        };
        let cfg = EngineConfig {
            me: me.as_u64(),
            tap: tap.to_string(),
            listen: SocketAddrV4::new(std::net::Ipv4Addr::UNSPECIFIED, port),
            mode,
            rekey: RekeyPolicy::default(),
            pmtu: PmtuConfig::default(),
        };
        match Engine::start(cfg) {
            Ok(engine) => {
                let (gso, gro) = engine.offloads();
                info!(port, encrypted, gso, gro, "sleeve started");
                DataPlane {
                    engine: Some(engine),
                    unavailable: None,
                    port,
                    mode,
                }
            }
            Err(e) => {
                let why = format!("sleeve unavailable: {e} (TAP {tap}, UDP port {port})");
                warn!("{why}: pods on other nodes are unreachable");
                DataPlane {
                    engine: None,
                    unavailable: Some(why),
                    port,
                    mode,
                }
            }
        }
    }

    pub fn running(&self) -> bool {
        self.engine.is_some()
    }

    pub fn encrypted(&self) -> bool {
        self.mode == Mode::Encrypted
    }

    /// A control connection to `peer` at `remote` was authenticated.
    pub fn connection_up(
        &self,
        conn: u64,
        peer: PeerName,
        remote: SocketAddr,
        outbound: bool,
        secrets: &SessionSecrets,
    ) {
        let Some(engine) = &self.engine else { return };
        let IpAddr::V4(ip) = remote.ip() else {
            warn!(%remote, "sleeve: IPv6 peers are not supported yet");
            return;
        };
        let keys = SessionKeys::new(
            secrets.handshake_hash,
            secrets.initiator_key,
            secrets.responder_key,
            outbound,
        );
        engine.add_session(conn, peer.as_u64(), keys, SocketAddrV4::new(ip, self.port));
    }

    pub fn connection_down(&self, conn: u64) {
        if let Some(engine) = &self.engine {
            engine.remove_session(conn);
        }
    }

    /// Routes changed: unicast next hops and broadcast children.
    pub fn update_routes(&self, mesh: &mut Mesh) {
        let Some(engine) = &self.engine else { return };
        let r = mesh.routes();
        let unicast: HashMap<u64, u64> = r
            .unicast
            .iter()
            .map(|(d, h)| (d.as_u64(), h.as_u64()))
            .collect();
        let broadcast: HashMap<u64, Vec<u64>> = r
            .broadcast
            .iter()
            .map(|(o, c)| (o.as_u64(), c.iter().map(|p| p.as_u64()).collect()))
            .collect();
        engine.set_routes(unicast, broadcast);
    }

    /// The endpoint table or the peer set changed: MAC -> owner (see [`mac_claims`]).
    pub fn update_macs(&self, mesh: &Mesh) {
        let Some(engine) = &self.engine else { return };
        engine.set_macs(mac_claims(mesh).into_iter().collect());
    }

    /// The session used towards each direct neighbour (the newest), by peer name.
    pub fn sessions_by_peer(&self) -> HashMap<u64, SessionInfo> {
        let mut by_peer: HashMap<u64, SessionInfo> = HashMap::new();
        for s in self.engine.iter().flat_map(|e| e.sessions()) {
            if by_peer.get(&s.peer).is_none_or(|o| o.conn < s.conn) {
                by_peer.insert(s.peer, s);
            }
        }
        by_peer
    }

    /// A reader of the engine's counters, for the metrics endpoint.
    pub fn stats_reader(&self) -> Option<StatsReader> {
        self.engine.as_ref().map(|e| e.stats_reader())
    }

    /// Stops the threads.
    pub fn stop(&mut self) {
        if let Some(e) = self.engine.take() {
            e.stop();
        }
    }
}
