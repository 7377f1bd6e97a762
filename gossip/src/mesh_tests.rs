//! Unit tests of the mesh state machine on hand-driven inputs.

use crate::mesh::*;
use crate::message::{Channel, ConnRecord, Endpoint, EndpointRecord, Message, PeerRecord, Summary};
use crate::peer::{Identity, PeerName, PeerUid};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn name(v: u64) -> PeerName {
    PeerName::new(v).unwrap()
}

fn ident(v: u64, uid: u64) -> Identity {
    Identity {
        name: name(v),
        nickname: format!("n{v}"),
        uid: PeerUid(uid),
    }
}

fn addr(v: u64) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, v as u8], 6783))
}

fn mesh_with(v: u64, cfg: Config) -> (Mesh, Instant) {
    let t0 = Instant::now();
    (Mesh::new(ident(v, 100 + v), cfg, v, t0), t0)
}

fn mesh(v: u64) -> (Mesh, Instant) {
    mesh_with(v, Config::default())
}

fn est(conn: ConnId, peer: u64, outbound: bool) -> Input {
    Input::ConnectionEstablished {
        conn,
        addr: addr(peer),
        outbound,
        peer: ident(peer, 100 + peer),
    }
}

fn closes(actions: &[Action]) -> Vec<(ConnId, CloseReason)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Close { conn, reason } => Some((*conn, *reason)),
            _ => None,
        })
        .collect()
}

fn connects(actions: &[Action]) -> Vec<SocketAddr> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Connect { addr } => Some(*addr),
            _ => None,
        })
        .collect()
}

fn sends(actions: &[Action]) -> Vec<(ConnId, Message)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send { conn, msg } => Some((*conn, msg.clone())),
            _ => None,
        })
        .collect()
}

fn record(origin: u64, version: u64, uid: u64, conns: &[(u64, bool)]) -> Arc<PeerRecord> {
    Arc::new(PeerRecord {
        summary: Summary {
            origin: name(origin),
            uid: PeerUid(uid),
            version,
        },
        nickname: format!("n{origin}"),
        connections: conns
            .iter()
            .map(|&(p, outbound)| ConnRecord {
                peer: name(p),
                addr: addr(p),
                outbound,
            })
            .collect(),
    })
}

/// Lets rate-limited publication of our own record happen.
fn settle(m: &mut Mesh, t: Instant) -> Instant {
    let t = t + Duration::from_secs(2);
    m.handle(Input::Tick, t);
    t
}

fn own(m: &Mesh) -> Summary {
    let me = m.identity().name;
    *m.view(Channel::Topology)
        .iter()
        .find(|s| s.origin == me)
        .unwrap()
}

#[test]
fn own_record_tracks_connections() {
    let (mut m, t0) = mesh(1);
    assert_eq!(own(&m).version, 1);
    let a = m.handle(est(10, 2, true), t0);
    assert!(a.contains(&Action::TopologyChanged));
    assert_eq!(own(&m).version, 2);
    // the new neighbour gets a digest of the topology channel
    let d = sends(&a);
    assert!(
        matches!(&d[..], [(10, Message::Digest { channel: Channel::Topology, entries })] if entries.len() == 1)
    );
    m.handle(
        Input::ConnectionClosed {
            conn: 10,
            reason: None,
        },
        t0,
    );
    assert_eq!(
        own(&m).version,
        2,
        "rate-limited while connections keep changing"
    );
    assert!(m.poll_timeout() <= t0 + Duration::from_secs(1));
    settle(&mut m, t0);
    assert_eq!(own(&m).version, 3);
    let peers = m.peers();
    assert_eq!(peers.len(), 1);
    assert_eq!(peers[0].connections, 0);
}

#[test]
fn incarnation_bump_wins_over_older_self() {
    let (mut m, t0) = mesh(1);
    m.handle(est(10, 2, true), t0);
    let t0 = settle(&mut m, t0);
    let mine = own(&m);
    // an earlier incarnation of us had version 40 with another uid
    let old = record(1, 40, 7, &[(3, true)]);
    let a = m.handle(
        Input::Message {
            conn: 10,
            msg: Message::Topology(vec![old]),
        },
        t0,
    );
    let now = own(&m);
    assert_eq!(now.version, 41);
    assert_eq!(now.uid, mine.uid, "keeps its own uid");
    assert!(a.contains(&Action::TopologyChanged));
    // hearing of it again (a digest entry) does not bump further
    let entries = vec![Summary {
        origin: name(1),
        uid: PeerUid(7),
        version: 40,
    }];
    m.handle(
        Input::Message {
            conn: 10,
            msg: Message::Digest {
                channel: Channel::Topology,
                entries,
            },
        },
        t0,
    );
    assert_eq!(own(&m).version, 41);
    // our own record echoed back: no bump
    let echo = m.view(Channel::Topology);
    m.handle(
        Input::Message {
            conn: 10,
            msg: Message::Digest {
                channel: Channel::Topology,
                entries: echo,
            },
        },
        t0,
    );
    assert_eq!(own(&m).version, 41);
    // a digest entry of a newer self bumps past it without fetching it
    let entries = vec![Summary {
        origin: name(1),
        uid: PeerUid(3),
        version: 90,
    }];
    let a = m.handle(
        Input::Message {
            conn: 10,
            msg: Message::Announce {
                channel: Channel::Topology,
                entries,
            },
        },
        t0,
    );
    settle(&mut m, t0);
    assert_eq!(own(&m).version, 91);
    assert!(sends(&a)
        .iter()
        .all(|(_, msg)| !matches!(msg, Message::Request { .. })));
}

#[test]
fn duplicate_connections_are_resolved_identically_on_both_sides() {
    // 1 and 2 dial each other at once. Connection X: 1 -> 2, connection Y: 2 -> 1.
    let (mut m1, t0) = mesh(1);
    let (mut m2, _) = mesh(2);
    // peer 1 sees X outbound (id 11) and Y inbound (id 12)
    assert!(closes(&m1.handle(est(11, 2, true), t0)).is_empty());
    let c1 = closes(&m1.handle(est(12, 2, false), t0));
    // peer 2 sees Y outbound (id 22) first, then X inbound (id 21)
    assert!(closes(&m2.handle(est(22, 1, true), t0)).is_empty());
    let c2 = closes(&m2.handle(est(21, 1, false), t0));
    // both keep X (initiated by 1, the smaller name) and close Y
    assert_eq!(c1, vec![(12, CloseReason::Duplicate)]);
    assert_eq!(c2, vec![(22, CloseReason::Duplicate)]);
    let st1 = m1.connections(t0);
    assert_eq!(
        st1.iter()
            .filter(|c| c.state == TargetState::Established)
            .count(),
        1
    );
    // the other order of arrival gives the same result
    let (mut m1, _) = mesh(1);
    m1.handle(est(12, 2, false), t0);
    let c = closes(&m1.handle(est(11, 2, true), t0));
    assert_eq!(c, vec![(12, CloseReason::Duplicate)]);
    settle(&mut m1, t0);
    assert_eq!(own(&m1).version, 2, "changes batched into one version");
    assert_eq!(m1.peers()[0].connections, 1);
}

#[test]
fn restarted_peer_replaces_its_old_connection() {
    let (mut m, t0) = mesh(5);
    m.handle(est(1, 2, false), t0);
    let newer = Input::ConnectionEstablished {
        conn: 2,
        addr: addr(2),
        outbound: false,
        peer: ident(2, 999),
    };
    let a = m.handle(newer, t0);
    assert_eq!(closes(&a), vec![(1, CloseReason::Duplicate)]);
}

/// `at` shows as this router's own address and is not dialled again for 200 s.
fn assert_self_and_never_dialled(m: &mut Mesh, at: SocketAddr, t0: Instant) {
    let t = m
        .connections(t0)
        .into_iter()
        .find(|c| c.addr == at)
        .unwrap();
    assert_eq!(t.state, TargetState::IsSelf);
    for s in 1..200 {
        let a = m.handle(Input::Tick, t0 + Duration::from_secs(s));
        assert!(!connects(&a).contains(&at));
    }
}

#[test]
fn self_connection_is_closed_and_never_dialled_again() {
    let (mut m, t0) = mesh(1);
    let a = m.set_targets(&[addr(1), addr(2)], t0);
    let mut dialled = connects(&a);
    dialled.sort();
    assert_eq!(dialled, vec![addr(1), addr(2)]);
    let a = m.handle(
        Input::ConnectionEstablished {
            conn: 3,
            addr: addr(1),
            outbound: true,
            peer: ident(1, 101),
        },
        t0,
    );
    assert_eq!(closes(&a), vec![(3, CloseReason::SelfConnection)]);
    // the inbound half of the same connection is closed too
    let a = m.handle(
        Input::ConnectionEstablished {
            conn: 4,
            addr: addr(1),
            outbound: false,
            peer: ident(1, 101),
        },
        t0,
    );
    assert_eq!(closes(&a), vec![(4, CloseReason::SelfConnection)]);
    assert_self_and_never_dialled(&mut m, addr(1), t0);
    assert_eq!(own(&m).version, 1, "never listed as a connection");
}

#[test]
fn a_dial_that_reached_ourselves_before_completing_is_never_dialled_again() {
    // The other end (ours) closed the connection before our side of the handshake was
    // through: the driver reports the proven self-dial instead of a failure.
    let (mut m, t0) = mesh(1);
    let a = m.set_targets(&[addr(1), addr(2)], t0);
    assert!(connects(&a).contains(&addr(1)));
    let a = m.handle(Input::DialedSelf { addr: addr(1) }, t0);
    assert!(closes(&a).is_empty());
    assert_self_and_never_dialled(&mut m, addr(1), t0);
}

#[test]
fn inbound_over_the_limit_is_refused() {
    let cfg = Config {
        conn_limit: 2,
        ..Config::default()
    };
    let (mut m, t0) = mesh_with(1, cfg);
    assert!(m.accepts_inbound());
    m.handle(est(1, 2, false), t0);
    m.handle(est(2, 3, false), t0);
    assert!(!m.accepts_inbound());
    let a = m.handle(est(3, 4, false), t0);
    assert_eq!(closes(&a), vec![(3, CloseReason::ConnLimit)]);
    settle(&mut m, t0);
    assert_eq!(m.peers()[0].connections, 2);
    // dials in progress count too
    let (mut m, t0) = mesh_with(
        1,
        Config {
            conn_limit: 2,
            ..Config::default()
        },
    );
    m.set_targets(&[addr(7)], t0);
    m.handle(est(1, 2, false), t0);
    assert!(!m.accepts_inbound());
    assert_eq!(
        closes(&m.handle(est(2, 3, false), t0)),
        vec![(2, CloseReason::ConnLimit)]
    );
}

#[test]
fn failed_targets_back_off_and_are_retried_forever() {
    let cfg = Config::default();
    let (mut m, t0) = mesh_with(1, cfg.clone());
    assert_eq!(connects(&m.set_targets(&[addr(9)], t0)), vec![addr(9)]);
    let mut now = t0;
    let fail = Failure {
        kind: FailKind::Auth,
        detail: "wrong password".into(),
    };
    for n in 1..=12u32 {
        m.handle(
            Input::ConnectFailed {
                addr: addr(9),
                failure: fail.clone(),
            },
            now,
        );
        let st = m
            .connections(now)
            .into_iter()
            .find(|c| c.addr == addr(9))
            .unwrap();
        assert_eq!((st.state, st.attempts), (TargetState::Failed, n));
        assert_eq!(st.reason.as_deref(), Some("wrong password"));
        let wait = st.retry_in.unwrap();
        let base = cfg
            .backoff_initial
            .saturating_mul(1 << (n - 1))
            .min(cfg.backoff_max);
        assert!(
            wait >= base / 2 && wait < base * 3 / 2,
            "attempt {n}: {wait:?} vs {base:?}"
        );
        assert!(m.poll_timeout() <= now + wait);
        assert!(connects(&m.handle(Input::Tick, now + wait - Duration::from_millis(1))).is_empty());
        now += wait;
        assert_eq!(
            connects(&m.handle(Input::Tick, now)),
            vec![addr(9)],
            "retried after {n}"
        );
    }
    // success resets the attempts
    m.handle(
        Input::ConnectionEstablished {
            conn: 5,
            addr: addr(9),
            outbound: true,
            peer: ident(9, 1),
        },
        now,
    );
    let st = m
        .connections(now)
        .into_iter()
        .find(|c| c.addr == addr(9))
        .unwrap();
    assert_eq!((st.state, st.attempts), (TargetState::Established, 0));
    // closed by the peer going away: retried soon, with jitter around backoff_initial
    m.handle(
        Input::ConnectionClosed {
            conn: 5,
            reason: None,
        },
        now,
    );
    let st = m
        .connections(now)
        .into_iter()
        .find(|c| c.addr == addr(9))
        .unwrap();
    assert_eq!(st.attempts, 0);
    let soon = now + cfg.backoff_initial * 3 / 2;
    assert_eq!(connects(&m.handle(Input::Tick, soon)), vec![addr(9)]);
}

#[test]
fn discovery_dials_addresses_learned_from_records() {
    let (mut m, t0) = mesh(1);
    m.handle(est(1, 2, true), t0);
    // 2 reports an outbound connection to 3 at 3's address; 3 reports 2
    let recs = vec![
        record(2, 5, 1, &[(1, false), (3, true)]),
        record(3, 5, 1, &[(2, false)]),
    ];
    let a = m.handle(
        Input::Message {
            conn: 1,
            msg: Message::Topology(recs),
        },
        t0,
    );
    assert_eq!(connects(&a), vec![addr(3)]);
    let st = m
        .connections(t0)
        .into_iter()
        .find(|c| c.addr == addr(3))
        .unwrap();
    assert_eq!(
        (st.source, st.peer),
        (TargetSource::Discovered, Some(name(3)))
    );
    // without discovery nothing is dialled
    let (mut m, t0) = mesh_with(
        1,
        Config {
            discovery: false,
            ..Config::default()
        },
    );
    m.handle(est(1, 2, true), t0);
    let recs = vec![
        record(2, 5, 1, &[(1, false), (3, true)]),
        record(3, 5, 1, &[(2, false)]),
    ];
    let a = m.handle(
        Input::Message {
            conn: 1,
            msg: Message::Topology(recs),
        },
        t0,
    );
    assert!(connects(&a).is_empty());
}

#[test]
fn unreachable_peers_are_collected_after_the_grace_period() {
    let cfg = Config::default();
    let (mut m, t0) = mesh_with(1, cfg.clone());
    m.handle(est(1, 2, true), t0);
    let recs = vec![
        record(2, 5, 1, &[(1, false), (3, true)]),
        record(3, 5, 1, &[(2, false)]),
    ];
    m.handle(
        Input::Message {
            conn: 1,
            msg: Message::Topology(recs),
        },
        t0,
    );
    let ep = EndpointRecord {
        summary: Summary {
            origin: name(3),
            uid: PeerUid(1),
            version: 1,
        },
        endpoints: vec![Endpoint {
            mac: [2, 0, 0, 0, 0, 3],
            ips: vec![],
            pod: None,
        }],
    };
    m.handle(
        Input::Message {
            conn: 1,
            msg: Message::Endpoints(vec![Arc::new(ep)]),
        },
        t0,
    );
    assert_eq!(m.view(Channel::Topology).len(), 3);
    // 2 drops its connection to 3: 3 becomes unreachable
    let a = m.handle(
        Input::Message {
            conn: 1,
            msg: Message::Topology(vec![record(2, 6, 1, &[(1, false)])]),
        },
        t0,
    );
    assert!(a.contains(&Action::TopologyChanged));
    let mut now = t0;
    while now < t0 + cfg.gc_grace {
        now += Duration::from_millis(500);
        m.handle(Input::Tick, now);
        if m.view(Channel::Topology).len() == 2 {
            break;
        }
    }
    assert!(now >= t0 + cfg.gc_grace, "not before the grace period");
    let a = m.handle(Input::Tick, now + Duration::from_secs(2));
    assert_eq!(m.view(Channel::Topology).len(), 2);
    assert!(m.view(Channel::Endpoints).is_empty());
    assert!(m.endpoints().is_empty());
    let _ = a;
    // a digest still listing 3 does not bring it back
    let entries = vec![Summary {
        origin: name(3),
        uid: PeerUid(1),
        version: 5,
    }];
    let a = m.handle(
        Input::Message {
            conn: 1,
            msg: Message::Digest {
                channel: Channel::Topology,
                entries,
            },
        },
        now,
    );
    assert!(sends(&a)
        .iter()
        .all(|(_, msg)| !matches!(msg, Message::Request { .. })));
    // we never collect ourselves, even alone
    let (mut lone, t0) = mesh(9);
    lone.handle(Input::Tick, t0 + Duration::from_secs(100));
    assert_eq!(lone.view(Channel::Topology).len(), 1);
}

#[test]
fn announce_request_records_round_trip_with_one_request_in_flight() {
    let (mut a, t0) = mesh(1);
    let (mut b, _) = mesh(2);
    a.handle(est(1, 2, true), t0);
    a.handle(est(2, 3, true), t0);
    a.handle(est(3, 4, true), t0);
    b.handle(est(1, 1, false), t0);
    let rec3 = record(3, 4, 1, &[]);
    // b learns 3's record; a hears of it from both 2 and 3
    b.handle(
        Input::Message {
            conn: 1,
            msg: Message::Topology(vec![rec3.clone()]),
        },
        t0,
    );
    let ann = Message::Announce {
        channel: Channel::Topology,
        entries: vec![rec3.summary],
    };
    let r1 = sends(&a.handle(
        Input::Message {
            conn: 1,
            msg: ann.clone(),
        },
        t0,
    ));
    assert_eq!(
        r1,
        vec![(
            1,
            Message::Request {
                channel: Channel::Topology,
                origins: vec![name(3)]
            }
        )]
    );
    let r2 = sends(&a.handle(Input::Message { conn: 2, msg: ann }, t0));
    assert!(r2.is_empty(), "already requested from 2");
    // b answers with the record itself (shared, not copied)
    let resp = sends(&b.handle(
        Input::Message {
            conn: 1,
            msg: r1[0].1.clone(),
        },
        t0,
    ));
    assert_eq!(resp.len(), 1);
    match &resp[0].1 {
        Message::Topology(recs) => assert!(Arc::ptr_eq(&recs[0], &rec3)),
        m => panic!("unexpected {m:?}"),
    }
    let acts = a.handle(
        Input::Message {
            conn: 1,
            msg: resp[0].1.clone(),
        },
        t0,
    );
    assert!(acts.contains(&Action::TopologyChanged));
    assert!(a
        .view(Channel::Topology)
        .iter()
        .any(|s| s.origin == name(3) && s.version == 4));
    // it is news now: announced at the next rounds, not back to where it came from
    let mut announced_to = Vec::new();
    for i in 1..=3 {
        for (c, m) in sends(&a.handle(Input::Tick, t0 + Duration::from_millis(150 * i))) {
            if let Message::Announce { entries, .. } = m {
                if entries.iter().any(|s| s.origin == name(3)) {
                    announced_to.push(c);
                }
            }
        }
    }
    assert!(
        // not to 2 (it came from there), not to 3 (its origin): to 4
        !announced_to.is_empty() && announced_to.iter().all(|&c| c == 3),
        "{announced_to:?}"
    );
}

#[test]
fn timed_out_requests_go_to_another_neighbour() {
    let (mut a, t0) = mesh(1);
    a.handle(est(1, 2, true), t0);
    a.handle(est(2, 3, true), t0);
    let s = Summary {
        origin: name(4),
        uid: PeerUid(1),
        version: 2,
    };
    let ann = Message::Announce {
        channel: Channel::Topology,
        entries: vec![s],
    };
    assert_eq!(
        sends(&a.handle(
            Input::Message {
                conn: 1,
                msg: ann.clone()
            },
            t0
        ))
        .len(),
        1
    );
    assert!(sends(&a.handle(Input::Message { conn: 2, msg: ann }, t0)).is_empty());
    let deadline = a.poll_timeout();
    assert!(deadline <= t0 + Duration::from_secs(1));
    let mut later = t0;
    let mut retried = None;
    while later < t0 + Duration::from_secs(2) && retried.is_none() {
        later += Duration::from_millis(50);
        retried = sends(&a.handle(Input::Tick, later))
            .into_iter()
            .find(|(_, m)| matches!(m, Message::Request { .. }));
    }
    assert_eq!(retried.map(|(c, _)| c), Some(2));
}

#[test]
fn digest_pulls_newer_and_pushes_back_what_the_sender_lacks() {
    let (mut a, t0) = mesh(1);
    a.handle(est(1, 2, true), t0);
    a.handle(
        Input::Message {
            conn: 1,
            msg: Message::Topology(vec![record(5, 3, 1, &[]), record(6, 9, 1, &[])]),
        },
        t0,
    );
    let entries = vec![
        Summary {
            origin: name(2),
            uid: PeerUid(1),
            version: 4,
        }, // unknown to a: pull
        Summary {
            origin: name(5),
            uid: PeerUid(1),
            version: 7,
        }, // newer: pull
        Summary {
            origin: name(6),
            uid: PeerUid(1),
            version: 2,
        }, // older: push back
    ];
    let out = sends(&a.handle(
        Input::Message {
            conn: 1,
            msg: Message::Digest {
                channel: Channel::Topology,
                entries,
            },
        },
        t0,
    ));
    let req = out.iter().find_map(|(_, m)| match m {
        Message::Request { origins, .. } => Some(origins.clone()),
        _ => None,
    });
    assert_eq!(req, Some(vec![name(2), name(5)]));
    let back = out.iter().find_map(|(_, m)| match m {
        Message::Announce { entries, .. } => {
            Some(entries.iter().map(|s| s.origin).collect::<Vec<_>>())
        }
        _ => None,
    });
    // 1 (ourselves) and 6 (newer here)
    assert_eq!(back, Some(vec![name(1), name(6)]));
}

#[test]
fn endpoint_conflicts_are_resolved_by_version_uid_and_name() {
    let (mut a, t0) = mesh(1);
    a.handle(est(1, 2, true), t0);
    let mac = [2, 0, 0, 0, 0, 1];
    let ep = |ip: u8| Endpoint {
        mac,
        ips: vec![std::net::IpAddr::from([10, 32, 0, ip])],
        pod: None,
    };
    a.set_local_endpoints(vec![ep(1), ep(9)], t0); // duplicate MAC: one kept
    let mine = a.endpoints();
    assert_eq!(mine.len(), 1);
    let other = |o: u64, version: u64| {
        Arc::new(EndpointRecord {
            summary: Summary {
                origin: name(o),
                uid: PeerUid(1),
                version,
            },
            endpoints: vec![ep(o as u8)],
        })
    };
    // our record has version 1: a claim with version 2 wins
    a.handle(
        Input::Message {
            conn: 1,
            msg: Message::Endpoints(vec![other(2, 2)]),
        },
        t0,
    );
    assert_eq!(a.endpoints(), vec![(name(2), ep(2))]);
    // equal (version, uid): the larger owner name wins
    a.handle(
        Input::Message {
            conn: 1,
            msg: Message::Endpoints(vec![other(3, 2)]),
        },
        t0,
    );
    assert_eq!(a.endpoints(), vec![(name(3), ep(3))]);
}

#[test]
fn invalid_records_close_the_connection_without_panicking() {
    let (mut a, t0) = mesh(1);
    a.handle(est(1, 2, true), t0);
    // unsorted connections and a connection to itself
    let bad = Arc::new(PeerRecord {
        summary: Summary {
            origin: name(2),
            uid: PeerUid(1),
            version: 9,
        },
        nickname: String::new(),
        connections: vec![
            ConnRecord {
                peer: name(5),
                addr: addr(5),
                outbound: true,
            },
            ConnRecord {
                peer: name(2),
                addr: addr(2),
                outbound: true,
            },
        ],
    });
    let acts = a.handle(
        Input::Message {
            conn: 1,
            msg: Message::Topology(vec![bad]),
        },
        t0,
    );
    assert_eq!(closes(&acts), vec![(1, CloseReason::Protocol)]);
    assert!(!a
        .view(Channel::Topology)
        .iter()
        .any(|s| s.origin == name(2)));
    // messages on unknown connections are ignored
    a.handle(
        Input::Message {
            conn: 77,
            msg: Message::Request {
                channel: Channel::Endpoints,
                origins: vec![name(1)],
            },
        },
        t0,
    );
    a.routes();
}

#[test]
fn stats_count_encoded_bytes_of_everything_sent_and_received() {
    let (mut a, t0) = mesh(1);
    let mut sent = 0u64;
    let mut count = |acts: &[Action]| {
        for (_, m) in sends(acts) {
            sent += m.encoded_len() as u64;
        }
    };
    count(&a.handle(est(1, 2, true), t0));
    let msg = Message::Topology(vec![record(2, 3, 1, &[(1, false)]), record(3, 1, 1, &[])]);
    let len = msg.encoded_len() as u64;
    count(&a.handle(Input::Message { conn: 1, msg }, t0));
    let req = Message::Request {
        channel: Channel::Topology,
        origins: vec![name(1), name(2), name(3)],
    };
    let len2 = req.encoded_len() as u64;
    count(&a.handle(Input::Message { conn: 1, msg: req }, t0));
    for i in 1..5 {
        count(&a.handle(Input::Tick, t0 + Duration::from_millis(200 * i)));
    }
    let st = a.stats();
    assert_eq!(st.bytes_sent, sent);
    assert_eq!(st.bytes_received, len + len2);
    assert_eq!(st.messages_received, 2);
}

#[test]
fn poll_timeout_covers_the_gossip_interval() {
    let (m, t0) = mesh(1);
    let cfg = Config::default();
    let t = m.poll_timeout();
    assert!(t > t0 && t <= t0 + cfg.gossip_interval * 6 / 5);
}

#[test]
fn routes_use_live_connections_and_symmetric_records() {
    let (mut a, t0) = mesh(1);
    a.handle(est(1, 2, true), t0);
    // 2 lists 1 and 3; 3 lists 2: 1-2-3
    a.handle(
        Input::Message {
            conn: 1,
            msg: Message::Topology(vec![
                record(2, 5, 1, &[(1, false), (3, true)]),
                record(3, 5, 1, &[(2, false)]),
            ]),
        },
        t0,
    );
    let r = a.routes().clone();
    assert_eq!(r.unicast.get(&name(2)), Some(&name(2)));
    assert_eq!(r.unicast.get(&name(3)), Some(&name(2)));
    assert_eq!(r.broadcast.get(&name(1)), Some(&vec![name(2)]));
    assert_eq!(r.broadcast.get(&name(3)), Some(&vec![]));
    let p3 = a.peers().into_iter().find(|p| p.name == name(3)).unwrap();
    assert!(p3.reachable);
    assert_eq!(p3.next_hop, Some(name(2)));
    // our connection to 2 goes away: nothing reachable, cache invalidated
    a.handle(
        Input::ConnectionClosed {
            conn: 1,
            reason: None,
        },
        t0,
    );
    assert!(a.routes().unicast.is_empty());
}

#[test]
fn a_full_peer_makes_room_for_a_newcomer_only() {
    let cfg = Config {
        conn_limit: 2,
        ..Config::default()
    };
    let (mut m, t0) = mesh_with(1, cfg);
    m.handle(est(1, 2, false), t0);
    m.handle(est(2, 3, false), t0);
    // 2 also reports a connection to 5; 3 has only us
    let recs = vec![
        record(2, 3, 1, &[(1, true), (5, true)]),
        record(3, 3, 1, &[(1, true)]),
    ];
    m.handle(
        Input::Message {
            conn: 1,
            msg: Message::Topology(recs),
        },
        t0,
    );
    assert!(m.accepts_inbound(), "it could make room");
    // 5 is known to be connected (2 reports it): refused
    let a = m.handle(est(3, 5, false), t0);
    assert_eq!(closes(&a), vec![(3, CloseReason::ConnLimit)]);
    // 9 is unknown: 2 (well connected) makes room for it, 3 (only us) is kept
    let a = m.handle(est(4, 9, false), t0);
    assert_eq!(closes(&a), vec![(1, CloseReason::ConnLimit)]);
    let t = settle(&mut m, t0);
    let me = m.peers().into_iter().find(|p| p.name == name(1)).unwrap();
    assert_eq!(me.connections, 2);
    let _ = t;
}
