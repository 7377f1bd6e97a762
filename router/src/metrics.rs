//! Prometheus metrics (OpenMetrics text), served on `GET /metrics`.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `weft_peers` | gauge | |
//! | `weft_identity_conflicts` | gauge | |
//! | `weft_ipam_conflicting_addresses` | gauge | |
//! | `weft_connections` | gauge | `state` = established, connecting, failed |
//! | `weft_gossip_bytes_total` | counter | `direction` = sent, received |
//! | `weft_gossip_messages_total` | counter | `direction` |
//! | `weft_handshake_failures_total` | counter | `reason` = auth, password_mismatch, unreachable, refused, protocol |
//! | `weft_gossip_decode_errors_total` | counter | |
//! | `weft_inbound_attempts_total` | counter | `reason` = retry, refused, admitted |
//! | `weft_inbound_handshakes` | gauge | |
//! | `weft_gossip_dropped_records_total` | counter | |
//! | `weft_build_info` | info | `version` |
//! | `weft_sleeve_packets_total` | counter | `direction` = sent, received |
//! | `weft_sleeve_bytes_total` | counter | `direction` |
//! | `weft_sleeve_dropped_total` | counter | `reason` = malformed, unknown_session, auth, replay, bad_records, no_route, tap_write, send, foreign_mac |
//! | `weft_sleeve_relayed_records_total` | counter | |
//! | `weft_sleeve_icmp_frag_needed_total` | counter | |
//! | `weft_sleeve_endpoint_changes_total` | counter | |
//! | `weft_sleeve_rekeys_total` | counter | |
//! | `weft_pod_guard_drops_total` | counter | `reason` = the pod guard's counters (`weft_policy::guard::COUNTERS`): spoofed-mac, spoofed-ip, spoofed-arp, spoofed-nd, router-messages, ethertype, unknown-port, node-ports, node-router-messages |
//! | `weft_policy_*` | | see [`crate::enforcer::metrics`] |
//!
//! Every label value is pre-created, so each series exists (at 0) from the start.

use std::sync::{Arc, Mutex};

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

use crate::status::ConnState;

/// The content type of the OpenMetrics text format.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnStateLabels {
    pub state: ConnState,
}

impl EncodeLabelValue for ConnState {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(encoder, self.as_str())
    }
}

/// Gossip traffic direction.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Direction {
    Sent,
    Received,
}

impl EncodeLabelValue for Direction {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        let s = match self {
            Direction::Sent => "sent",
            Direction::Received => "received",
        };
        std::fmt::Write::write_str(encoder, s)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GossipLabels {
    pub direction: Direction,
}

/// Why a connection handshake failed.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum HandshakeFailure {
    /// Authentication failed for another reason than a password mismatch (e.g. missing password).
    Auth,
    /// Both sides have a password, and they differ.
    PasswordMismatch,
    Unreachable,
    Refused,
    Protocol,
}

impl HandshakeFailure {
    pub const ALL: [HandshakeFailure; 5] = [
        HandshakeFailure::Auth,
        HandshakeFailure::PasswordMismatch,
        HandshakeFailure::Unreachable,
        HandshakeFailure::Refused,
        HandshakeFailure::Protocol,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            HandshakeFailure::Auth => "auth",
            HandshakeFailure::PasswordMismatch => "password_mismatch",
            HandshakeFailure::Unreachable => "unreachable",
            HandshakeFailure::Refused => "refused",
            HandshakeFailure::Protocol => "protocol",
        }
    }
}

impl From<&weft_gossip::FailKind> for HandshakeFailure {
    fn from(k: &weft_gossip::FailKind) -> Self {
        match k {
            weft_gossip::FailKind::Unreachable => HandshakeFailure::Unreachable,
            weft_gossip::FailKind::Auth => HandshakeFailure::Auth,
            weft_gossip::FailKind::Refused | weft_gossip::FailKind::DuplicateName => {
                HandshakeFailure::Refused
            }
            weft_gossip::FailKind::Protocol => HandshakeFailure::Protocol,
        }
    }
}

impl EncodeLabelValue for HandshakeFailure {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(encoder, self.as_str())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: HandshakeFailure,
}

/// Why the sleeve dropped a datagram or frame.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DropLabels {
    pub reason: &'static str,
}

/// The sleeve's drop reasons, in the order of [`sleeve_drops`].
pub const SLEEVE_DROP_REASONS: [&str; 9] = [
    "malformed",
    "unknown_session",
    "auth",
    "replay",
    "bad_records",
    "no_route",
    "tap_write",
    "send",
    "foreign_mac",
];

fn sleeve_drops(s: &weft_sleeve::engine::Stats) -> [u64; 9] {
    [
        s.drop_malformed,
        s.drop_unknown_session,
        s.drop_auth,
        s.drop_replay,
        s.drop_bad_records,
        s.drop_no_route,
        s.drop_tap_write,
        s.drop_send,
        s.drop_foreign_mac,
    ]
}

/// Adds `now - last` to `c` (all of `now` when the source restarted from zero).
fn add_delta(c: &Counter, now: u64, last: u64) {
    c.inc_by(if now >= last { now - last } else { now });
}

/// Label of `weft_fastpath_switches_total`: the path traffic moved to.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SwitchLabels {
    pub to: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: String,
}

/// All of weft's metrics. Handles are cheap clones of what the registry holds, so updating a
/// field is what the next scrape shows.
#[derive(Debug)]
pub struct Metrics {
    pub registry: Registry,
    /// `weft_peers`: peers in the topology view (this router included).
    pub peers: Gauge,
    /// `weft_identity_conflicts`: peer names used by two live routers, seen here.
    pub identity_conflicts: Gauge,
    /// `weft_ipam_conflicting_addresses`: pod addresses held twice after a partition.
    pub ipam_conflicting_addresses: Gauge,
    /// `weft_connections{state}`.
    pub connections: Family<ConnStateLabels, Gauge>,
    /// `weft_gossip_bytes_total{direction}`.
    pub gossip_bytes: Family<GossipLabels, Counter>,
    /// `weft_gossip_messages_total{direction}`.
    pub gossip_messages: Family<GossipLabels, Counter>,
    /// `weft_handshake_failures_total{reason}`.
    pub handshake_failures: Family<ReasonLabels, Counter>,
    /// `weft_gossip_decode_errors_total`.
    pub decode_errors: Counter,
    /// `weft_inbound_attempts_total{reason}`: inbound QUIC attempts by what was done with
    /// them (a stateless Retry, refused, admitted to the handshake).
    pub inbound_attempts: Family<DropLabels, Counter>,
    /// `weft_inbound_handshakes`: inbound handshakes running now (each holds state).
    pub inbound_handshakes: Gauge,
    /// `weft_gossip_dropped_records_total`: records (and endpoints) from peers dropped for
    /// breaking a bound, the connection kept.
    pub dropped_records: Counter,
    last_dropped_records: Mutex<u64>,
    /// `weft_sleeve_packets_total{direction}`, `weft_sleeve_bytes_total{direction}`.
    pub sleeve_packets: Family<GossipLabels, Counter>,
    pub sleeve_bytes: Family<GossipLabels, Counter>,
    /// `weft_sleeve_dropped_total{reason}`.
    pub sleeve_dropped: Family<DropLabels, Counter>,
    pub sleeve_relayed: Counter,
    pub sleeve_icmp: Counter,
    pub sleeve_endpoint_changes: Counter,
    /// `weft_sleeve_rekeys_total`: session key steps of the sleeve.
    pub sleeve_rekeys: Counter,
    /// `weft_fastpath_switches_total{to}`: a peer's traffic moved between fastpath and sleeve.
    pub fastpath_switches: Family<SwitchLabels, Counter>,
    /// `weft_pod_guard_drops_total{reason}`: what the pod guard dropped.
    pub pod_guard_drops: Family<DropLabels, Counter>,
    last_guard: Mutex<std::collections::BTreeMap<String, u64>>,
    last_sleeve: Mutex<weft_sleeve::engine::Stats>,
    /// The sleeve engine's counters, read at every scrape (see [`Metrics::watch_sleeve`]).
    sleeve_reader: Mutex<Option<weft_sleeve::engine::StatsReader>>,
    /// The version reported by `weft_build_info{version}`.
    pub version: &'static str,
    /// Last totals given to [`Metrics::set_gossip_totals`]:
    /// sent bytes, sent messages, received bytes, received messages.
    last_gossip: Mutex<[u64; 4]>,
    /// The policy enforcer's metrics (`weft_policy_*`).
    pub policy: crate::enforcer::PolicyMetrics,
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let mut registry = Registry::default();
        let policy = crate::enforcer::PolicyMetrics::register(&mut registry);
        let version = env!("CARGO_PKG_VERSION");

        let peers = Gauge::default();
        registry.register(
            "weft_peers",
            "Peers in the topology view, this router included",
            peers.clone(),
        );
        let identity_conflicts = Gauge::default();
        registry.register(
            "weft_identity_conflicts",
            "Peer names that two live routers use, as this router sees them (the second is refused)",
            identity_conflicts.clone(),
        );
        let ipam_conflicting_addresses = Gauge::default();
        registry.register(
            "weft_ipam_conflicting_addresses",
            "Pod addresses held by two pods after a partition (weft status names the pods to delete)",
            ipam_conflicting_addresses.clone(),
        );
        let connections = Family::<ConnStateLabels, Gauge>::default();
        registry.register(
            "weft_connections",
            "Connections of this router by state",
            connections.clone(),
        );
        let gossip_bytes = Family::<GossipLabels, Counter>::default();
        registry.register(
            "weft_gossip_bytes",
            "Gossip bytes on the wire, by direction",
            gossip_bytes.clone(),
        );
        let gossip_messages = Family::<GossipLabels, Counter>::default();
        registry.register(
            "weft_gossip_messages",
            "Gossip messages, by direction",
            gossip_messages.clone(),
        );
        let handshake_failures = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "weft_handshake_failures",
            "Failed connection handshakes, by reason",
            handshake_failures.clone(),
        );
        let inbound_attempts = Family::<DropLabels, Counter>::default();
        registry.register(
            "weft_inbound_attempts",
            "Inbound connection attempts, by what was done with them (retry: address not validated yet)",
            inbound_attempts.clone(),
        );
        let inbound_handshakes = Gauge::default();
        registry.register(
            "weft_inbound_handshakes",
            "Inbound handshakes in progress (validated addresses only)",
            inbound_handshakes.clone(),
        );
        let decode_errors = Counter::default();
        registry.register(
            "weft_gossip_decode_errors",
            "Gossip messages that could not be decoded",
            decode_errors.clone(),
        );
        let dropped_records = Counter::default();
        registry.register(
            "weft_gossip_dropped_records",
            "Gossip records or endpoints from peers dropped for breaking a bound (the connection stays)",
            dropped_records.clone(),
        );
        let sleeve_packets = Family::<GossipLabels, Counter>::default();
        registry.register(
            "weft_sleeve_packets",
            "Sleeve datagrams, by direction",
            sleeve_packets.clone(),
        );
        let sleeve_bytes = Family::<GossipLabels, Counter>::default();
        registry.register(
            "weft_sleeve_bytes",
            "Sleeve bytes on the wire (UDP payload), by direction",
            sleeve_bytes.clone(),
        );
        let sleeve_dropped = Family::<DropLabels, Counter>::default();
        registry.register(
            "weft_sleeve_dropped",
            "Sleeve datagrams or frames dropped, by reason",
            sleeve_dropped.clone(),
        );
        let sleeve_relayed = Counter::default();
        registry.register(
            "weft_sleeve_relayed_records",
            "Frame records forwarded for other nodes",
            sleeve_relayed.clone(),
        );
        let sleeve_icmp = Counter::default();
        registry.register(
            "weft_sleeve_icmp_frag_needed",
            "ICMP fragmentation-needed answers sent to pods",
            sleeve_icmp.clone(),
        );
        let sleeve_endpoint_changes = Counter::default();
        registry.register(
            "weft_sleeve_endpoint_changes",
            "Peers followed to a new source address (NAT rebinding)",
            sleeve_endpoint_changes.clone(),
        );
        let sleeve_rekeys = Counter::default();
        registry.register(
            "weft_sleeve_rekeys",
            "Sleeve session key steps (each session steps its keys by volume and by time)",
            sleeve_rekeys.clone(),
        );
        for reason in SLEEVE_DROP_REASONS {
            let _ = sleeve_dropped.get_or_create(&DropLabels { reason });
        }
        let fastpath_switches = Family::<SwitchLabels, Counter>::default();
        registry.register(
            "weft_fastpath_switches",
            "Peers whose traffic moved between the kernel fastpath and the sleeve, by destination path",
            fastpath_switches.clone(),
        );
        for to in ["fastpath", "sleeve"] {
            let _ = fastpath_switches.get_or_create(&SwitchLabels { to });
        }
        let pod_guard_drops = Family::<DropLabels, Counter>::default();
        registry.register(
            "weft_pod_guard_drops",
            "Frames and packets the pod guard dropped (spoofing, router messages, the router's own ports), by reason",
            pod_guard_drops.clone(),
        );
        for (_, reason, _) in weft_policy::guard::COUNTERS {
            let _ = pod_guard_drops.get_or_create(&DropLabels { reason });
        }
        registry.register(
            "weft_build",
            "weft build information",
            Info::new(BuildLabels {
                version: version.to_string(),
            }),
        );

        for state in [
            ConnState::Established,
            ConnState::Connecting,
            ConnState::Failed,
        ] {
            let _ = connections.get_or_create(&ConnStateLabels { state });
        }
        for direction in [Direction::Sent, Direction::Received] {
            let _ = gossip_bytes.get_or_create(&GossipLabels { direction });
            let _ = gossip_messages.get_or_create(&GossipLabels { direction });
            let _ = sleeve_packets.get_or_create(&GossipLabels { direction });
            let _ = sleeve_bytes.get_or_create(&GossipLabels { direction });
        }
        for reason in HandshakeFailure::ALL {
            let _ = handshake_failures.get_or_create(&ReasonLabels { reason });
        }

        Arc::new(Metrics {
            registry,
            peers,
            identity_conflicts,
            ipam_conflicting_addresses,
            connections,
            gossip_bytes,
            gossip_messages,
            handshake_failures,
            inbound_attempts,
            inbound_handshakes,
            decode_errors,
            dropped_records,
            last_dropped_records: Mutex::new(0),
            sleeve_packets,
            sleeve_bytes,
            sleeve_dropped,
            sleeve_relayed,
            sleeve_icmp,
            sleeve_endpoint_changes,
            sleeve_rekeys,
            fastpath_switches,
            pod_guard_drops,
            last_guard: Mutex::new(Default::default()),
            last_sleeve: Mutex::new(Default::default()),
            sleeve_reader: Mutex::new(None),
            version,
            last_gossip: Mutex::new([0; 4]),
            policy,
        })
    }

    /// Reads the sleeve engine's counters at every scrape from now on, so the `weft_sleeve_*`
    /// counters are current when they are read rather than as of the last status refresh.
    pub fn watch_sleeve(&self, reader: weft_sleeve::engine::StatsReader) {
        *self.sleeve_reader.lock().unwrap_or_else(|p| p.into_inner()) = Some(reader);
    }

    /// The OpenMetrics text exposition (ends with `# EOF`).
    pub fn encode(&self) -> String {
        let reader = self
            .sleeve_reader
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(r) = reader {
            self.set_sleeve_totals(&r.stats());
        }
        {
            let now = crate::transport::dropped_records();
            let mut last = self
                .last_dropped_records
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            add_delta(&self.dropped_records, now, *last);
            *last = now;
        }
        let mut out = String::new();
        // Writing into a String cannot fail; an error would be a bug in a metric's encoder.
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("encoding metrics into a String");
        out
    }

    /// Takes the pod guard's drop totals (see [`crate::pod_guard::GuardView::drops`]).
    pub fn set_guard_drops(&self, totals: &std::collections::BTreeMap<String, u64>) {
        let mut last = self.last_guard.lock().unwrap_or_else(|p| p.into_inner());
        for (_, reason, _) in weft_policy::guard::COUNTERS {
            let now = totals.get(*reason).copied().unwrap_or(0);
            let before = last.get(*reason).copied().unwrap_or(0);
            add_delta(
                &self.pod_guard_drops.get_or_create(&DropLabels { reason }),
                now,
                before,
            );
            last.insert(reason.to_string(), now);
        }
    }

    pub fn set_peers(&self, n: i64) {
        self.peers.set(n);
    }

    pub fn set_connection_counts(&self, established: i64, connecting: i64, failed: i64) {
        for (state, v) in [
            (ConnState::Established, established),
            (ConnState::Connecting, connecting),
            (ConnState::Failed, failed),
        ] {
            self.connections
                .get_or_create(&ConnStateLabels { state })
                .set(v);
        }
    }

    /// Takes the mesh's running totals and adds what is new since the last call to the
    /// counters. A total that went down means its source restarted from zero: its whole value
    /// is new.
    pub fn set_gossip_totals(
        &self,
        sent_bytes: u64,
        sent_msgs: u64,
        recv_bytes: u64,
        recv_msgs: u64,
    ) {
        let mut last = self.last_gossip.lock().unwrap_or_else(|p| p.into_inner());
        let now = [sent_bytes, sent_msgs, recv_bytes, recv_msgs];
        let delta = |i: usize| {
            if now[i] >= last[i] {
                now[i] - last[i]
            } else {
                now[i]
            }
        };
        let sent = GossipLabels {
            direction: Direction::Sent,
        };
        let recv = GossipLabels {
            direction: Direction::Received,
        };
        self.gossip_bytes.get_or_create(&sent).inc_by(delta(0));
        self.gossip_messages.get_or_create(&sent).inc_by(delta(1));
        self.gossip_bytes.get_or_create(&recv).inc_by(delta(2));
        self.gossip_messages.get_or_create(&recv).inc_by(delta(3));
        *last = now;
    }

    /// Takes the sleeve engine's running totals and adds what is new to the counters.
    pub fn set_sleeve_totals(&self, now: &weft_sleeve::engine::Stats) {
        let mut last = self.last_sleeve.lock().unwrap_or_else(|p| p.into_inner());
        let sent = GossipLabels {
            direction: Direction::Sent,
        };
        let recv = GossipLabels {
            direction: Direction::Received,
        };
        add_delta(
            &self.sleeve_packets.get_or_create(&sent),
            now.tx_packets,
            last.tx_packets,
        );
        add_delta(
            &self.sleeve_packets.get_or_create(&recv),
            now.rx_packets,
            last.rx_packets,
        );
        add_delta(
            &self.sleeve_bytes.get_or_create(&sent),
            now.tx_bytes,
            last.tx_bytes,
        );
        add_delta(
            &self.sleeve_bytes.get_or_create(&recv),
            now.rx_bytes,
            last.rx_bytes,
        );
        for ((reason, n), l) in SLEEVE_DROP_REASONS
            .iter()
            .zip(sleeve_drops(now))
            .zip(sleeve_drops(&last))
        {
            add_delta(
                &self.sleeve_dropped.get_or_create(&DropLabels { reason }),
                n,
                l,
            );
        }
        add_delta(
            &self.sleeve_relayed,
            now.relayed_records,
            last.relayed_records,
        );
        add_delta(
            &self.sleeve_icmp,
            now.icmp_frag_needed,
            last.icmp_frag_needed,
        );
        add_delta(
            &self.sleeve_endpoint_changes,
            now.endpoint_changes,
            last.endpoint_changes,
        );
        add_delta(&self.sleeve_rekeys, now.rekeys, last.rekeys);
        *last = *now;
    }

    /// Counts one failed handshake.
    pub fn handshake_failure(&self, reason: HandshakeFailure) {
        self.handshake_failures
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// Counts one fastpath switch of a peer, to the fastpath or to the sleeve.
    pub fn fastpath_switch(&self, to_fastpath: bool) {
        let to = if to_fastpath { "fastpath" } else { "sleeve" };
        self.fastpath_switches
            .get_or_create(&SwitchLabels { to })
            .inc();
    }

    /// Counts one undecodable gossip message.
    pub fn decode_error(&self) {
        self.decode_errors.inc();
    }

    pub fn inbound_attempt(&self, reason: &'static str) {
        self.inbound_attempts
            .get_or_create(&DropLabels { reason })
            .inc();
    }
}

/// `GET /metrics`; merge it into another router or serve it alone.
pub fn metrics_router(m: Arc<Metrics>) -> Router {
    Router::new().route(
        "/metrics",
        get(move || {
            let m = m.clone();
            async move { ([(header::CONTENT_TYPE, CONTENT_TYPE)], m.encode()).into_response() }
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;
    use weft_sleeve::engine::Counters;

    fn value(text: &str, name: &str) -> u64 {
        text.lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    }

    #[test]
    fn every_scrape_reads_the_sleeve_counters_afresh() {
        let m = Metrics::new();
        let counters = Arc::new(Counters::default());
        m.watch_sleeve(counters.clone().into());
        assert_eq!(value(&m.encode(), "weft_sleeve_relayed_records_total"), 0);
        counters.relayed_records.fetch_add(7, Ordering::Relaxed);
        counters.drop_replay.fetch_add(2, Ordering::Relaxed);
        let text = m.encode();
        assert_eq!(value(&text, "weft_sleeve_relayed_records_total"), 7);
        assert_eq!(
            value(&text, "weft_sleeve_dropped_total{reason=\"replay\"}"),
            2
        );
        // Totals become counter increments once: a scrape without changes adds nothing.
        assert_eq!(value(&m.encode(), "weft_sleeve_relayed_records_total"), 7);
    }

    #[test]
    fn sleeve_rekeys_are_exported() {
        let m = Metrics::new();
        let counters = Arc::new(Counters::default());
        m.watch_sleeve(counters.clone().into());
        assert!(m.encode().contains("weft_sleeve_rekeys_total 0"));
        counters.rekeys.fetch_add(3, Ordering::Relaxed);
        assert_eq!(value(&m.encode(), "weft_sleeve_rekeys_total"), 3);
        counters.rekeys.fetch_add(1, Ordering::Relaxed);
        assert_eq!(value(&m.encode(), "weft_sleeve_rekeys_total"), 4);
    }
}
