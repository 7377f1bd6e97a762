//! Control transport: QUIC + Noise authentication + gossip framing, on real sockets
//! (127.0.0.1, ephemeral ports).

use proptest::prelude::*;
use rand::{Rng, RngCore, SeedableRng};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::timeout;
use weft::transport::error::{NOT_BOUND, PEER_HAS_NO_PASSWORD, PEER_HAS_PASSWORD, WRONG_PASSWORD};
use weft::transport::*;
use weft_gossip::message::MAX_MESSAGE_BYTES;
use weft_gossip::{Channel, FailKind, Identity, Message, PeerName, PeerRecord, PeerUid, Summary};

const PSK_A: [u8; 32] = [0xa5; 32];
const PSK_B: [u8; 32] = [0x5a; 32];
const T: Duration = Duration::from_secs(10);

fn fresh_uid() -> u64 {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

fn ident(n: &str) -> Identity {
    Identity {
        name: PeerName::derive(n),
        nickname: n.to_string(),
        uid: PeerUid(fresh_uid()),
    }
}

fn bind(n: &str, psk: Option<[u8; 32]>) -> Transport {
    let mut cfg = TransportConfig::new("127.0.0.1:0".parse().unwrap(), ident(n), psk);
    cfg.handshake_timeout = Duration::from_secs(3);
    Transport::bind(cfg).unwrap()
}

/// `a` dials `b`; `b` accepts one attempt. Returns (dialer result, acceptor result).
async fn connect(
    a: &Transport,
    b: &Transport,
) -> (
    Result<PeerConn, ConnectError>,
    Result<PeerConn, ConnectError>,
) {
    let accept = async { b.accept().await.expect("endpoint open").complete().await };
    timeout(T, async { tokio::join!(a.dial(b.local_addr()), accept) })
        .await
        .expect("connection setup finishes")
}

async fn pair(a: &Transport, b: &Transport) -> (PeerConn, PeerConn) {
    let (x, y) = connect(a, b).await;
    (x.expect("dial succeeds"), y.expect("accept succeeds"))
}

/// Keeps accepting (and completing) inbound attempts in the background, dropping results.
fn accept_forever(t: &Transport) {
    let t = t.clone();
    tokio::spawn(async move {
        while let Some(i) = t.accept().await {
            tokio::spawn(async move {
                let _ = i.complete().await;
            });
        }
    });
}

fn req(channel: Channel, i: u64) -> Message {
    Message::Request {
        channel,
        origins: vec![PeerName::new(i).unwrap()],
    }
}

fn topo(i: u64) -> Message {
    Message::Topology(vec![Arc::new(PeerRecord {
        summary: Summary {
            origin: PeerName::new(i).unwrap(),
            uid: PeerUid(i),
            version: i,
        },
        nickname: format!("n{i}"),
        connections: vec![],
    })])
}

async fn recv(c: &mut PeerConn) -> Message {
    timeout(T, c.recv())
        .await
        .expect("message in time")
        .expect("connection up")
}

/// Sends a few messages on both channels each way and checks they arrive in order.
async fn exchange(a: &mut PeerConn, b: &mut PeerConn, n: u64) {
    one_way(a, b, n).await;
    one_way(b, a, n).await;
}

async fn one_way(from: &PeerConn, to: &mut PeerConn, n: u64) {
    {
        let tx = from.sender();
        for i in 0..n {
            tx.send(&req(Channel::Topology, i)).await.unwrap();
            tx.send(&req(Channel::Endpoints, i)).await.unwrap();
        }
        tx.send(&topo(7)).await.unwrap();
        let (mut t, mut e, mut rec) = (0, 0, false);
        while t < n || e < n || !rec {
            match recv(to).await {
                Message::Request {
                    channel: Channel::Topology,
                    origins,
                } => {
                    assert_eq!(origins[0].as_u64(), t, "topology channel in order");
                    t += 1;
                }
                Message::Request {
                    channel: Channel::Endpoints,
                    origins,
                } => {
                    assert_eq!(origins[0].as_u64(), e, "endpoints channel in order");
                    e += 1;
                }
                m @ Message::Topology(_) => {
                    assert_eq!(m, topo(7));
                    rec = true;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }
}

#[tokio::test]
async fn same_password_connects_and_carries_both_channels() {
    let (a, b) = (bind("a", Some(PSK_A)), bind("b", Some(PSK_A)));
    let ida = encode_identity(&ident("a"));
    assert!(!ida.is_empty());
    let (mut ca, mut cb) = pair(&a, &b).await;
    assert_eq!(ca.peer.name, PeerName::derive("b"));
    assert_eq!(ca.peer.nickname, "b");
    assert_eq!(cb.peer.name, PeerName::derive("a"));
    assert!(ca.outbound && !cb.outbound);
    assert_eq!(ca.remote, b.local_addr());
    assert_eq!(
        cb.remote,
        a.local_addr(),
        "inbound source = where the dialer listens"
    );
    assert_eq!(
        ca.secrets, cb.secrets,
        "both sides hold the same session secrets"
    );
    assert!(ca.secrets.psk);
    let (send_a, recv_a) = ca.secrets.directional(true);
    let (send_b, recv_b) = cb.secrets.directional(false);
    assert_eq!((send_a, recv_a), (recv_b, send_b), "split keys mirrored");
    assert_ne!(send_a, recv_a);
    exchange(&mut ca, &mut cb, 50).await;

    // A second pair gets different secrets (fresh ephemeral keys and exporter).
    let (ca2, _cb2) = pair(&a, &b).await;
    assert_ne!(ca.secrets, ca2.secrets);

    ca.close(CloseCode::NORMAL, "bye");
    let end = timeout(T, cb.closed()).await.unwrap();
    assert_eq!(
        end,
        ConnectionEnd::Peer {
            code: CloseCode::NORMAL,
            reason: "bye".into()
        }
    );
    assert_eq!(end.to_failure(), None);
    let end = timeout(T, ca.closed()).await.unwrap();
    assert!(
        matches!(
            end,
            ConnectionEnd::Local {
                code: CloseCode::NORMAL,
                ..
            }
        ),
        "{end:?}"
    );
    assert!(matches!(cb.recv().await, Err(ConnectionEnd::Peer { .. })));
}

#[tokio::test]
async fn no_password_on_both_sides_connects() {
    let (a, b) = (bind("a", None), bind("b", None));
    let (mut ca, mut cb) = pair(&a, &b).await;
    assert!(!ca.secrets.psk);
    assert_eq!(ca.secrets, cb.secrets);
    exchange(&mut ca, &mut cb, 10).await;
}

#[tokio::test]
async fn wrong_password_fails_clearly_on_both_sides_and_endpoints_recover() {
    let (a, b) = (bind("a", Some(PSK_A)), bind("b", Some(PSK_B)));
    let (da, db) = connect(&a, &b).await;
    let da = da.unwrap_err();
    let db = db.unwrap_err();
    assert_eq!(da, ConnectError::Auth(WRONG_PASSWORD.into()));
    assert_eq!(db, ConnectError::Auth(WRONG_PASSWORD.into()));
    assert_eq!(
        da.to_string(),
        "authentication failed: wrong network password"
    );
    assert_eq!(da.to_failure().kind, FailKind::Auth);
    assert_eq!(db.to_failure().detail, WRONG_PASSWORD);

    // Both endpoints keep working: a correct dial to the same acceptor succeeds, and the
    // failed dialer can still reach a peer sharing its password.
    let c = bind("c", Some(PSK_B));
    let (mut cc, mut cb) = pair(&c, &b).await;
    exchange(&mut cc, &mut cb, 5).await;
    let d = bind("d", Some(PSK_A));
    let (mut ca, mut cd) = pair(&a, &d).await;
    exchange(&mut ca, &mut cd, 5).await;
    // And the acceptor still turns the wrong password away.
    let (x, y) = connect(&a, &b).await;
    assert!(matches!(x, Err(ConnectError::Auth(_))));
    assert!(matches!(y, Err(ConnectError::Auth(_))));
}

#[tokio::test]
async fn password_on_one_side_only_is_a_clear_mismatch_both_ways() {
    let (with, without) = (bind("with", Some(PSK_A)), bind("without", None));
    for (dialer, acceptor) in [(&with, &without), (&without, &with)] {
        let (d, a) = connect(dialer, acceptor).await;
        let (d, a) = (d.unwrap_err(), a.unwrap_err());
        for (t, e) in [(dialer, d), (acceptor, a)] {
            let expect = if t.has_password() {
                PEER_HAS_NO_PASSWORD
            } else {
                PEER_HAS_PASSWORD
            };
            assert_eq!(e, ConnectError::PasswordMismatch(expect.into()));
            assert_eq!(e.to_failure().kind, FailKind::Auth);
        }
    }
    assert!(PEER_HAS_PASSWORD.contains("the peer has a network password and this router has none"));
}

#[tokio::test]
async fn refused_attempt_and_unanswered_dial() {
    let (a, b) = (bind("a", None), bind("b", None));
    let refuse = async { b.accept().await.unwrap().refuse() };
    let (r, ()) = tokio::join!(a.dial(b.local_addr()), refuse);
    let e = r.unwrap_err();
    assert!(matches!(e, ConnectError::Refused(_)), "{e:?}");
    assert_eq!(e.to_failure().kind, FailKind::Refused);

    // Nobody answers: bounded by the handshake timeout (3 s here).
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let t0 = std::time::Instant::now();
    let e = a.dial(silent.local_addr().unwrap()).await.unwrap_err();
    assert_eq!(e, ConnectError::Timeout);
    assert_eq!(e.to_failure().kind, FailKind::Unreachable);
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dial_to_itself_is_recognised_even_when_its_other_half_closes_first() {
    // The mesh closes the inbound half of a self-connection as soon as it completes, which
    // can overtake the last handshake message to the dialling half. That half must still
    // see that it reached itself (its own static key answered), never a refusal.
    let me = ident("self");
    let mut cfg = TransportConfig::new("127.0.0.1:0".parse().unwrap(), me.clone(), None);
    cfg.handshake_timeout = Duration::from_secs(3);
    let t = Transport::bind(cfg).unwrap();
    let acceptor = t.clone();
    tokio::spawn(async move {
        while let Some(i) = acceptor.accept().await {
            tokio::spawn(async move {
                if let Ok(c) = i.complete().await {
                    c.close(CloseCode::NORMAL, "connection to self");
                }
            });
        }
    });
    let (mut completed, mut closed_first) = (0, 0);
    for _ in 0..40 {
        match timeout(T, t.dial(t.local_addr())).await.expect("dial ends") {
            Ok(c) => {
                assert_eq!(c.peer.uid, me.uid, "completed: it names us");
                completed += 1;
            }
            Err(ConnectError::SelfConnection) => closed_first += 1,
            Err(e) => panic!("a dial to our own address failed as {e:?}"),
        }
    }
    eprintln!("self-dials: {completed} completed, {closed_first} closed before completing");
    // A dial to another router's address is not mistaken for one to ourselves.
    let other = bind("other", None);
    let (c, o) = connect(&t, &other).await;
    let (c, _o) = (c.expect("dial to another router"), o.unwrap());
    assert_ne!(c.peer.uid, me.uid);
}

#[tokio::test]
async fn silent_client_cannot_hold_an_accept_slot() {
    let b = bind("b", Some(PSK_A));
    // A QUIC client that completes the QUIC handshake and then says nothing.
    let (_, client_cfg) = weft::transport::tls::configs().unwrap();
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    ep.set_default_client_config(client_cfg);
    let addr = b.local_addr();
    let dial = async { ep.connect(addr, "weft").unwrap().await.unwrap() };
    let t0 = std::time::Instant::now();
    let (conn, res) = tokio::join!(dial, async { b.accept().await.unwrap().complete().await });
    assert_eq!(res.unwrap_err(), ConnectError::Timeout);
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    // The acceptor closed the half-open connection.
    let e = timeout(T, conn.closed()).await.unwrap();
    assert!(
        matches!(e, quinn::ConnectionError::ApplicationClosed(ref c) if c.error_code == quinn::VarInt::from_u64(CloseCode::PROTOCOL.0).unwrap()),
        "{e:?}"
    );
}

/// A raw QUIC connection to `to` that has sent `preamble` on the handshake stream.
async fn raw_preamble(to: SocketAddr, preamble: &[u8]) -> (quinn::Endpoint, quinn::Connection) {
    let (_, client_cfg) = weft::transport::tls::configs().unwrap();
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    ep.set_default_client_config(client_cfg);
    let conn = ep.connect(to, "weft").unwrap().await.unwrap();
    let (mut s, _r) = conn.open_bi().await.unwrap();
    s.write_all(preamble).await.unwrap();
    // Keep the stream open until the peer answers by closing the connection.
    let _ = timeout(T, conn.closed()).await;
    (ep, conn)
}

#[tokio::test]
async fn bad_preamble_is_turned_away_with_a_reason() {
    let b = bind("b", Some(PSK_A));
    let cases: [(&[u8], CloseCode); 3] = [
        (b"weft\x02\x01", CloseCode::VERSION),
        (b"wtf!\x01\x01", CloseCode::PROTOCOL),
        (b"weft\x01\x00", CloseCode::PASSWORD_MISMATCH),
    ];
    for (preamble, code) in cases {
        let (client, acc) = tokio::join!(raw_preamble(b.local_addr(), preamble), async {
            b.accept().await.unwrap().complete().await
        });
        let acc = acc.unwrap_err();
        match client.1.close_reason() {
            Some(quinn::ConnectionError::ApplicationClosed(c)) => {
                assert_eq!(CloseCode::from(c.error_code), code, "{acc}")
            }
            other => panic!("expected an application close, got {other:?}"),
        }
        match code {
            CloseCode::VERSION => {
                assert!(matches!(acc, ConnectError::Version(_)), "{acc:?}");
                assert!(acc.to_string().contains("version 2"), "{acc}");
                assert_eq!(acc.to_failure().kind, FailKind::Refused);
            }
            CloseCode::PROTOCOL => {
                assert!(acc.to_string().contains("not a weft peer"), "{acc}")
            }
            _ => assert_eq!(
                acc,
                ConnectError::PasswordMismatch(PEER_HAS_NO_PASSWORD.into())
            ),
        }
    }
}

#[tokio::test]
async fn random_datagrams_do_not_disturb_connections() {
    let (a, b) = (bind("a", Some(PSK_A)), bind("b", Some(PSK_A)));
    let (mut ca, mut cb) = pair(&a, &b).await;
    // Garbage may look like new connection attempts: let the acceptors deal with them.
    accept_forever(&a);
    accept_forever(&b);
    let targets = [a.local_addr(), b.local_addr()];
    let noise = tokio::spawn(async move {
        let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
        for i in 0..3000u32 {
            let len = match i % 4 {
                0 => rng.random_range(1..64),
                1 => rng.random_range(64..1200),
                _ => rng.random_range(1200..=1500),
            };
            let mut buf = vec![0u8; len];
            rng.fill_bytes(&mut buf);
            match i % 3 {
                // QUIC v1 long header (Initial-looking)
                0 if len > 8 => {
                    buf[0] = 0xc0 | (buf[0] & 0x0f);
                    buf[1..5].copy_from_slice(&1u32.to_be_bytes());
                }
                // short header
                1 => buf[0] = 0x40 | (buf[0] & 0x3f),
                _ => {}
            }
            let to = targets[i as usize % 2];
            let _ = sock.send_to(&buf, to).await;
            if i % 50 == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    });
    for round in 0..6 {
        exchange(&mut ca, &mut cb, 30).await;
        tokio::time::sleep(Duration::from_millis(if round == 0 { 50 } else { 200 })).await;
    }
    noise.await.unwrap();
    exchange(&mut ca, &mut cb, 30).await;
    assert!(!ca.sender().is_closed() && !cb.sender().is_closed());
}

/// Opens a raw stream on `conn`'s QUIC connection and writes `bytes` to it.
async fn raw_stream(conn: &PeerConn, bytes: &[u8]) -> quinn::SendStream {
    let mut s = conn.quic().open_uni().await.unwrap();
    s.write_all(bytes).await.unwrap();
    s
}

async fn expect_protocol_close(bad: &mut PeerConn, victim: &mut PeerConn, what: &str) {
    let end = timeout(T, victim.recv())
        .await
        .expect("closed in time")
        .unwrap_err();
    match &end {
        ConnectionEnd::Protocol(d) => assert!(d.contains(what), "{what}: {d}"),
        e => panic!("{what}: expected a protocol error, got {e:?}"),
    }
    assert_eq!(end.to_failure().unwrap().kind, FailKind::Protocol);
    assert_eq!(victim.closed().await, end);
    match timeout(T, bad.closed()).await.unwrap() {
        ConnectionEnd::Peer { code, reason } => {
            assert_eq!(code, CloseCode::PROTOCOL);
            assert!(reason.contains(what), "{reason}");
        }
        e => panic!("{e:?}"),
    }
}

#[tokio::test]
async fn bad_frames_close_only_the_offending_connection() {
    let b = bind("b", Some(PSK_A));
    let good = bind("good", Some(PSK_A));
    let (mut cg, mut bg) = pair(&good, &b).await;

    // Oversized frame.
    let a = bind("a", Some(PSK_A));
    let (mut ca, mut ba) = pair(&a, &b).await;
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(MAX_MESSAGE_BYTES as u32 + 1).to_be_bytes());
    let _s = raw_stream(&ca, &frame).await;
    expect_protocol_close(&mut ca, &mut ba, "exceeds the limit").await;

    // Malformed message body.
    let (mut ca, mut ba) = pair(&a, &b).await;
    let mut frame = vec![1u8];
    frame.extend_from_slice(&5u32.to_be_bytes());
    frame.extend_from_slice(&[1, 0xff, 0xff, 0xff, 0xff]);
    let _s = raw_stream(&ca, &frame).await;
    expect_protocol_close(&mut ca, &mut ba, "endpoints message").await;

    // A topology message on the endpoints stream.
    let (mut ca, mut ba) = pair(&a, &b).await;
    let body = topo(1).encode();
    let mut frame = vec![1u8];
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&body);
    let _s = raw_stream(&ca, &frame).await;
    expect_protocol_close(&mut ca, &mut ba, "on the endpoints stream").await;

    // Unknown (reserved) channels are ignored, not an error: the receiver stops such
    // streams (STOP_SENDING), and a sender that then resets them gets the slot back, so
    // many more than the stream limit can come and go.
    let (mut ca, mut ba) = pair(&a, &b).await;
    for _ in 0..3 * weft::transport::tls::MAX_UNI_STREAMS {
        let mut s = timeout(T, raw_stream(&ca, &[9, 0, 0, 0, 3, 1, 2, 3]))
            .await
            .expect("reserved-channel stream slots are released");
        let stopped = timeout(T, s.stopped()).await.unwrap().unwrap();
        assert_eq!(
            stopped,
            Some(quinn::VarInt::from_u32(0)),
            "receiver stops the stream"
        );
        let _ = s.reset(quinn::VarInt::from_u32(0));
    }
    exchange(&mut ca, &mut ba, 3).await;

    // A stream ending mid-frame (a cancelled send) is dropped quietly.
    let mut s = raw_stream(&ca, &[0, 0, 0, 0, 100, 1, 2]).await;
    let _ = s.finish();
    exchange(&mut ca, &mut ba, 3).await;

    // The bystander connection never noticed.
    exchange(&mut cg, &mut bg, 10).await;
    assert!(!cg.sender().is_closed());
}

#[tokio::test]
async fn peer_shutdown_is_seen_at_once() {
    let (a, b) = (bind("a", None), bind("b", None));
    let (ca, _cb) = pair(&a, &b).await;
    b.shutdown().await;
    let end = timeout(Duration::from_secs(2), ca.closed()).await.unwrap();
    assert_eq!(
        end,
        ConnectionEnd::Peer {
            code: CloseCode::NORMAL,
            reason: "shutting down".into()
        }
    );
    assert!(
        b.accept().await.is_none(),
        "a closed endpoint accepts nothing"
    );
}

#[tokio::test]
async fn vanished_peer_is_detected_within_the_idle_timeout() {
    let a = bind("a", Some(PSK_A));
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (die_tx, die_rx) = tokio::sync::oneshot::channel::<()>();
    // The peer runs on its own runtime, which is then torn down without any chance to send
    // a close: like a process killed or a cable pulled.
    let peer = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let b = bind("b", Some(PSK_A));
            addr_tx.send(b.local_addr()).unwrap();
            let conn = b.accept().await.unwrap().complete().await.unwrap();
            let _ = die_rx.await;
            std::mem::forget(conn);
            std::mem::forget(b);
        });
        rt.shutdown_background();
    });
    let addr: SocketAddr = addr_rx.recv().unwrap();
    let mut ca = timeout(T, a.dial(addr)).await.unwrap().unwrap();
    ca.send(&req(Channel::Topology, 1)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !ca.sender().is_closed(),
        "keep-alives hold an idle connection open"
    );
    die_tx.send(()).unwrap();
    peer.join().unwrap();
    let t0 = std::time::Instant::now();
    let end = timeout(Duration::from_secs(8), ca.recv())
        .await
        .expect("noticed in time")
        .unwrap_err();
    assert_eq!(end, ConnectionEnd::TimedOut);
    assert!(
        t0.elapsed() <= Duration::from_millis(7000),
        "{:?}",
        t0.elapsed()
    );
    let f = end.to_failure().unwrap();
    assert_eq!(f.kind, FailKind::Unreachable);
}

/// Copies one direction of a relayed stream until it ends.
async fn pipe(mut from: quinn::RecvStream, mut to: quinn::SendStream) {
    while let Ok(Some(c)) = from.read_chunk(usize::MAX, true).await {
        if to.write_all(&c.bytes).await.is_err() {
            return;
        }
    }
    let _ = to.finish();
}

/// Forwards the application close of `from` to `to`.
async fn forward_close(from: quinn::Connection, to: quinn::Connection) {
    if let quinn::ConnectionError::ApplicationClosed(c) = from.closed().await {
        to.close(c.error_code, &c.reason);
    }
}

/// A man in the middle: terminates the dialer's QUIC session, opens its own to the real
/// acceptor and relays the authentication stream byte for byte (and close codes back).
async fn mitm_relay(to: SocketAddr) -> SocketAddr {
    let (server_cfg, client_cfg) = weft::transport::tls::configs().unwrap();
    let mut m = quinn::Endpoint::server(server_cfg, "127.0.0.1:0".parse().unwrap()).unwrap();
    m.set_default_client_config(client_cfg);
    let addr = m.local_addr().unwrap();
    tokio::spawn(async move {
        let victim = m.accept().await.unwrap().await.unwrap();
        let real = m.connect(to, "weft").unwrap().await.unwrap();
        let (vs, vr) = victim.accept_bi().await.unwrap();
        let (rs, rr) = real.open_bi().await.unwrap();
        tokio::join!(
            pipe(vr, rs),
            pipe(rr, vs),
            forward_close(victim.clone(), real.clone()),
            forward_close(real.clone(), victim.clone()),
        );
        drop(m);
    });
    addr
}

#[tokio::test]
async fn relayed_handshake_fails_as_man_in_the_middle() {
    for psk in [Some(PSK_A), None] {
        let (a, b) = (bind("a", psk), bind("b", psk));
        let relay = mitm_relay(b.local_addr()).await;
        let accept = async { b.accept().await.unwrap().complete().await };
        let (d, acc) = timeout(T, async { tokio::join!(a.dial(relay), accept) })
            .await
            .unwrap();
        let (d, acc) = (d.unwrap_err(), acc.unwrap_err());
        // Either side may be the one to notice; both report the binding failure.
        assert_eq!(
            d,
            ConnectError::Auth(NOT_BOUND.into()),
            "psk={}",
            psk.is_some()
        );
        assert_eq!(
            acc,
            ConnectError::Auth(NOT_BOUND.into()),
            "psk={}",
            psk.is_some()
        );
    }
}

#[test]
fn noise_bound_to_the_session_prologue() {
    // Two QUIC sessions relayed by a man in the middle have different exporters: the
    // relayed Noise handshake fails at message 2.
    let run = |pi: &[u8], pr: &[u8], ki: Option<&[u8; 32]>, kr: Option<&[u8; 32]>| {
        let si = NoiseHandshake::generate_static_key().unwrap();
        let sr = NoiseHandshake::generate_static_key().unwrap();
        let mut i = NoiseHandshake::new(true, &si, pi, ki).unwrap();
        let mut r = NoiseHandshake::new(false, &sr, pr, kr).unwrap();
        let m1 = i.write(&[]).map_err(|e| (1, e))?;
        r.read(&m1).map_err(|e| (1, e))?;
        let m2 = r.write(&[]).map_err(|e| (2, e))?;
        i.read(&m2).map_err(|e| (2, e))?;
        let m3 = i.write(b"id-i").map_err(|e| (3, e))?;
        r.read(&m3).map_err(|e| (3, e))?;
        let m4 = r.write(b"id-r").map_err(|e| (4, e))?;
        i.read(&m4).map_err(|e| (4, e))?;
        Ok::<_, (u8, NoiseError)>((
            i.finish(ki.is_some()).unwrap(),
            r.finish(kr.is_some()).unwrap(),
        ))
    };
    let (x, y) = run(&[1; 32], &[1; 32], Some(&PSK_A), Some(&PSK_A)).unwrap();
    assert_eq!(x, y);
    // With a PSK, `e` already keys the cipher, so message 1 carries a tag over the
    // handshake hash (which includes the prologue): the responder notices at once.
    assert_eq!(
        run(&[1; 32], &[2; 32], Some(&PSK_A), Some(&PSK_A)).unwrap_err(),
        (1, NoiseError::Decrypt)
    );
    assert_eq!(
        run(&[1; 32], &[2; 32], None, None).unwrap_err(),
        (2, NoiseError::Decrypt)
    );
    assert_eq!(
        run(&[1; 32], &[1; 32], Some(&PSK_A), Some(&PSK_B)).unwrap_err(),
        (3, NoiseError::Decrypt)
    );
}

#[test]
fn psk_derivation_is_stable_and_separated() {
    let k = derive_psk(b"correct horse", "prod");
    assert_eq!(k, derive_psk(b"correct horse", "prod"));
    assert_ne!(k, derive_psk(b"correct horse", "staging"));
    assert_ne!(k, derive_psk(b"correct horsf", "prod"));
    assert_ne!(k, [0; 32]);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn handshake_parsers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let _ = parse_preamble(&bytes);
        if let Ok(id) = decode_identity(&bytes) {
            prop_assert!(id.nickname.len() <= weft_gossip::peer::MAX_NICKNAME);
            prop_assert_eq!(decode_identity(&encode_identity(&id)), Ok(id));
        }
    }

    #[test]
    fn preamble_roundtrip(version in any::<u8>(), has_password in any::<bool>()) {
        let p = Preamble { version, has_password };
        prop_assert_eq!(parse_preamble(&p.encode()), Ok(p));
    }
}
