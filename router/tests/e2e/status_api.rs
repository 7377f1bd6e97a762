//! The status API over TCP and a unix socket, read with `weft status`'s client; metrics.

use std::io::{Read as _, Write as _};
use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::watch;
use weft::client::{self, StatusArgs, StatusWhat};
use weft::metrics::{metrics_router, HandshakeFailure, Metrics};
use weft::status::{
    api_router, bind_unix, serve_tcp, serve_unix, ConnInfo, ConnState, IpamInfo, PeerInfo, Status,
};

fn sample() -> Status {
    let peer = |name: &str, nick: &str, conns, reachable, hop: Option<&str>| PeerInfo {
        name: name.into(),
        nickname: nick.into(),
        uid: "00000000000000aa".into(),
        connections: conns,
        reachable,
        next_hop: hop.map(str::to_string),
    };
    let conn = |peer: Option<(&str, &str)>, addr: &str, state, path: Option<&str>| ConnInfo {
        peer: peer.map(|p| p.0.to_string()),
        nickname: peer.map(|p| p.1.to_string()),
        address: addr.into(),
        state,
        outbound: true,
        path: path.map(str::to_string),
        encrypted: true,
        mtu: if path.is_some() { 1376 } else { 0 },
        reason: None,
        attempts: 0,
        retry_in_ms: None,
        source: "configured".into(),
    };
    let mut failed = conn(None, "10.201.0.14:6783", ConnState::Failed, None);
    failed.reason = Some("authentication failed: password mismatch".into());
    failed.attempts = 3;
    failed.retry_in_ms = Some(4200);
    let mut inbound = conn(
        Some(("02:00:00:00:00:03", "gamma")),
        "10.201.0.13:40122",
        ConnState::Established,
        Some("sleeve"),
    );
    inbound.outbound = false;
    inbound.source = "inbound".into();
    Status {
        version: "0.1.0".into(),
        name: "02:00:00:00:00:01".into(),
        nickname: "alpha".into(),
        uid: "0123456789abcdef".into(),
        encryption: true,
        protocol: 1,
        listen: "0.0.0.0:6783".into(),
        uptime_secs: 3725,
        conn_limit: 100,
        pod_mtu: 1376,
        pod_guard: None,
        identity_conflicts: Vec::new(),
        refused_as_duplicate: None,
        discovery: true,
        targets: vec!["10.201.0.12:6783".into(), "10.201.0.14:6783".into()],
        peers: vec![
            peer("02:00:00:00:00:01", "alpha", 2, true, None),
            peer(
                "02:00:00:00:00:02",
                "beta",
                1,
                true,
                Some("02:00:00:00:00:02"),
            ),
            peer(
                "02:00:00:00:00:03",
                "gamma",
                1,
                true,
                Some("02:00:00:00:00:03"),
            ),
        ],
        connections: vec![
            conn(
                Some(("02:00:00:00:00:02", "beta")),
                "10.201.0.12:6783",
                ConnState::Established,
                Some("fastpath"),
            ),
            inbound,
            conn(None, "10.201.0.15:6783", ConnState::Connecting, None),
            failed,
        ],
        ipam: IpamInfo {
            range: "10.32.0.0/12".into(),
            ..Default::default()
        },
        endpoints: Vec::new(),
        policy: None,
        kube: None,
        not_ready: None,
    }
}

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "weft-{tag}-{}-{}",
        std::process::id(),
        weft::lab::random_alnum(6)
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A raw HTTP/1.0 GET with extra header lines; returns (head, body).
async fn raw_get(addr: std::net::SocketAddr, path: &str, headers: &str) -> (String, String) {
    let req = format!("GET {path} HTTP/1.0\r\nHost: x\r\n{headers}\r\n");
    tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        s.write_all(req.as_bytes()).unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).unwrap();
        let (head, body) = resp.split_once("\r\n\r\n").unwrap();
        (head.to_string(), body.to_string())
    })
    .await
    .unwrap()
}

async fn start_tcp(router: axum::Router) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve_tcp(listener, router));
    addr
}

fn check_json(body: &str) {
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    for k in [
        "name",
        "nickname",
        "encryption",
        "peers",
        "connections",
        "ipam",
    ] {
        assert!(v.get(k).is_some(), "missing {k} in {v}");
    }
    assert_eq!(v["encryption"], serde_json::json!(true));
    assert_eq!(v["peers"][1]["nickname"], "beta");
    assert!(v["ipam"].is_object());
    assert_eq!(v["pod_mtu"], 1376);
    let conns = v["connections"].as_array().unwrap();
    for c in conns {
        for k in [
            "peer",
            "address",
            "state",
            "path",
            "encrypted",
            "mtu",
            "reason",
        ] {
            assert!(c.get(k).is_some(), "missing connection field {k} in {c}");
        }
    }
    assert_eq!(conns[0]["state"], "established");
    assert_eq!(conns[0]["path"], "fastpath");
    assert_eq!(conns[0]["mtu"], 1376);
    assert_eq!(conns[2]["state"], "connecting");
    assert!(conns[2]["path"].is_null());
    assert!(conns[2]["peer"].is_null());
    assert!(conns[2]["reason"].is_null());
    assert_eq!(conns[3]["state"], "failed");
    let back: Status = serde_json::from_str(body).unwrap();
    assert_eq!(back, sample());
}

#[tokio::test]
async fn status_over_tcp() {
    let (_tx, rx) = watch::channel(Arc::new(sample()));
    let addr = start_tcp(api_router(rx)).await;
    let url = format!("http://{addr}");

    let (code, body) = client::get(&url, "/status.json").await.unwrap();
    assert_eq!(code, 200);
    check_json(&body);

    let (code, text) = client::get(&url, "/status").await.unwrap();
    assert_eq!(code, 200);
    assert!(text.contains("Name: 02:00:00:00:00:01(alpha)"), "{text}");
    assert!(text.contains("Encryption: enabled"), "{text}");
    assert!(
        text.contains("Peers: 3 (with 4 established connections)"),
        "{text}"
    );
    assert!(
        text.contains("Connections: 4 (2 established, 1 connecting, 1 failed)"),
        "{text}"
    );
    assert!(text.contains("Uptime: 1h02m05s"), "{text}");

    let (_, peers) = client::get(&url, "/status/peers").await.unwrap();
    assert!(
        peers.contains("02:00:00:00:00:02(beta)") && peers.contains("gamma"),
        "{peers}"
    );
    assert!(
        peers.contains("(this router)") && peers.contains("direct"),
        "{peers}"
    );

    let (_, conns) = client::get(&url, "/status/connections").await.unwrap();
    let lines: Vec<&str> = conns.lines().collect();
    assert_eq!(lines.len(), 4, "{conns}");
    assert!(
        lines[0].starts_with("-> 10.201.0.12:6783") && lines[0].contains("beta(02:00:00:00:00:02)"),
        "{conns}"
    );
    assert!(
        lines[0].contains("fastpath")
            && lines[0].contains("mtu=1376")
            && lines[0].contains("encrypted")
    );
    assert!(lines[1].starts_with("<- 10.201.0.13:40122"), "{conns}");
    assert!(
        lines[3].contains("password mismatch") && lines[3].contains("retry in 4.2s"),
        "{conns}"
    );
    // columns are aligned: the state column starts at the same offset on every line
    let col = lines[0].find("established").unwrap();
    assert_eq!(lines[2].find("connecting").unwrap(), col, "{conns}");
    assert_eq!(lines[3].find("failed").unwrap(), col, "{conns}");

    let (_, ipam) = client::get(&url, "/status/ipam").await.unwrap();
    assert!(ipam.contains("10.32.0.0/12"));

    let (code, peers_json) = client::get(&url, "/status/peers?format=json")
        .await
        .unwrap();
    assert_eq!(code, 200);
    let v: serde_json::Value = serde_json::from_str(&peers_json).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 3);

    let (head, body) = raw_get(addr, "/status/ipam", "Accept: application/json\r\n").await;
    assert!(
        head.to_lowercase()
            .contains("content-type: application/json"),
        "{head}"
    );
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["range"], "10.32.0.0/12");

    let (code, _) = client::get(&url, "/nope").await.unwrap();
    assert_eq!(code, 404);
    let (code, body) = client::get(&url, "/healthz").await.unwrap();
    assert_eq!((code, body.as_str()), (200, "ok"));

    // the `weft status` command itself
    for what in [
        None,
        Some(StatusWhat::Peers),
        Some(StatusWhat::Connections),
        Some(StatusWhat::Ipam),
    ] {
        for json in [false, true] {
            client::run_status(StatusArgs {
                what,
                json,
                addr: url.clone(),
            })
            .await
            .unwrap();
        }
    }
}

#[tokio::test]
async fn status_over_unix_socket() {
    let dir = temp_dir("api");
    let sock = dir.join("sub").join("weft.sock");
    std::fs::create_dir_all(sock.parent().unwrap()).unwrap();
    // a stale socket file from an earlier run is replaced
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    assert!(sock.exists());

    let (_tx, rx) = watch::channel(Arc::new(sample()));
    let router = api_router(rx.clone());
    let listener = bind_unix(&sock).unwrap();
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o660);
    }
    // a live socket is not stolen
    let err = bind_unix(&sock).unwrap_err().to_string();
    assert!(err.contains("already serving"), "{err}");
    tokio::spawn(weft::status::serve_unix_listener(listener, router));

    for addr in [
        format!("unix:{}", sock.display()),
        sock.display().to_string(),
    ] {
        let (code, body) = client::get(&addr, "/status.json").await.unwrap();
        assert_eq!(code, 200);
        check_json(&body);
        let (_, text) = client::get(&addr, "/status/peers").await.unwrap();
        assert!(text.contains("gamma"));
    }

    // serve_unix creates the parent directory
    let sock2 = dir.join("deeper/still/weft.sock");
    tokio::spawn({
        let sock2 = sock2.clone();
        async move { serve_unix(&sock2, api_router(rx)).await }
    });
    let addr2 = format!("unix:{}", sock2.display());
    let mut ok = false;
    for _ in 0..50 {
        if let Ok((200, _)) = client::get(&addr2, "/healthz").await {
            ok = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(ok, "serve_unix did not come up");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn not_ready_until_published() {
    let (tx, rx) = watch::channel(Arc::new(Status::default()));
    let addr = start_tcp(api_router(rx)).await;
    let url = format!("http://{addr}");
    assert_eq!(client::get(&url, "/healthz").await.unwrap().0, 503);
    assert_eq!(client::get(&url, "/readyz").await.unwrap().0, 503);
    assert_eq!(client::get(&url, "/status.json").await.unwrap().0, 503);
    let err = client::run_status(StatusArgs {
        what: None,
        json: false,
        addr: url.clone(),
    })
    .await
    .unwrap_err();
    assert!(err.to_string().contains("503"), "{err}");
    tx.send(Arc::new(sample())).unwrap();
    assert_eq!(
        client::get(&url, "/healthz").await.unwrap(),
        (200, "ok".to_string())
    );
    assert_eq!(client::get(&url, "/status").await.unwrap().0, 200);
    assert_eq!(
        client::get(&url, "/readyz").await.unwrap(),
        (200, "ready\n".to_string())
    );
    // Alive but not ready: liveness stays 200, readiness says why.
    let mut st = sample();
    st.not_ready = Some("no connection established to any of 2 known peers".into());
    tx.send(Arc::new(st)).unwrap();
    assert_eq!(client::get(&url, "/healthz").await.unwrap().0, 200);
    let (code, body) = client::get(&url, "/readyz").await.unwrap();
    assert_eq!(code, 503);
    assert!(body.contains("no connection established"), "{body}");
    let text = client::get(&url, "/status").await.unwrap().1;
    assert!(
        text.contains("Ready: no: no connection established"),
        "{text}"
    );
}

#[tokio::test]
async fn unreachable_router_errors_clearly() {
    // a port that was just free
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let err = client::get(&url, "/status").await.unwrap_err().to_string();
    assert!(
        err.contains("cannot reach the weft router at") && err.contains("connection refused"),
        "{err}"
    );
    assert!(err.contains("is `weft router` running"), "{err}");
    let err = client::run_status(StatusArgs {
        what: None,
        json: false,
        addr: url,
    })
    .await
    .unwrap_err();
    assert!(err.to_string().contains("cannot reach"));

    let err = client::get("unix:/nonexistent/weft.sock", "/status")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("unix:/nonexistent/weft.sock") && err.contains("no such socket"),
        "{err}"
    );
}

#[tokio::test]
async fn metrics() {
    let m = Metrics::new();
    let addr = start_tcp(metrics_router(m.clone())).await;

    m.set_peers(3);
    m.set_connection_counts(2, 1, 0);
    m.handshake_failure(HandshakeFailure::PasswordMismatch);
    m.handshake_failure((&weft_gossip::FailKind::Unreachable).into());
    m.decode_error();
    m.set_gossip_totals(100, 2, 50, 1);
    let text = m.encode();
    for line in [
        "weft_peers 3",
        r#"weft_connections{state="established"} 2"#,
        r#"weft_connections{state="connecting"} 1"#,
        r#"weft_connections{state="failed"} 0"#,
        r#"weft_handshake_failures_total{reason="password_mismatch"} 1"#,
        r#"weft_handshake_failures_total{reason="unreachable"} 1"#,
        r#"weft_handshake_failures_total{reason="auth"} 0"#,
        "weft_gossip_decode_errors_total 1",
        r#"weft_gossip_bytes_total{direction="sent"} 100"#,
        r#"weft_gossip_bytes_total{direction="received"} 50"#,
        r#"weft_gossip_messages_total{direction="sent"} 2"#,
        &format!(
            r#"weft_build_info{{version="{}"}} 1"#,
            env!("CARGO_PKG_VERSION")
        ),
        "# TYPE weft_gossip_bytes counter",
        "# EOF",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "no line {line:?} in\n{text}"
        );
    }

    // counters only go up: deltas from the totals, and a reset source counts from zero again
    m.set_gossip_totals(150, 3, 50, 1);
    m.set_gossip_totals(10, 1, 60, 2);
    let text = m.encode();
    assert!(
        text.contains(r#"weft_gossip_bytes_total{direction="sent"} 160"#),
        "{text}"
    );
    assert!(
        text.contains(r#"weft_gossip_messages_total{direction="sent"} 4"#),
        "{text}"
    );
    assert!(
        text.contains(r#"weft_gossip_bytes_total{direction="received"} 60"#),
        "{text}"
    );

    let (head, body) = raw_get(addr, "/metrics", "").await;
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{head}"
    );
    assert!(
        head.to_lowercase()
            .contains("content-type: application/openmetrics-text; version=1.0.0; charset=utf-8"),
        "{head}"
    );
    assert!(body.contains(r#"weft_connections{state="established"} 2"#));
}
