//! The command sequences against the router's real `/cni/v1/*` handlers ([`weft::api`]) fed
//! by a scripted event loop, and a recording [`Plumbing`]: ordering, rollback, codes.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};

use super::*;
use weft::api::{AddOutcome, ApiCommand, ApiError};

type Log = Arc<Mutex<Vec<String>>>;

/// How the scripted router answers.
#[derive(Clone)]
struct Script {
    add: Result<AddReply, ApiError>,
    attached: Result<(), ApiError>,
    del: Result<(), ApiError>,
    check: Option<AddReply>,
    gc: usize,
    status: Result<(), ApiError>,
}

fn reply() -> AddReply {
    AddReply {
        ip: "10.32.0.7/12".into(),
        gateway: "10.32.0.1".into(),
        mtu: 1376,
        bridge: "weft".into(),
    }
}

impl Default for Script {
    fn default() -> Script {
        Script {
            add: Ok(reply()),
            attached: Ok(()),
            del: Ok(()),
            check: Some(reply()),
            gc: 2,
            status: Ok(()),
        }
    }
}

fn temp_socket() -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "weft-cni-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("weft.sock")
}

/// Serves `weft::api::cni_router` on a fresh socket from its own thread; the event loop
/// answers from `script` and logs every request as `"verb {json}"`.
fn fake_router(script: Script, log: Log) -> String {
    let path = temp_socket();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let p = path.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let (tx, mut rx) = tokio::sync::mpsc::channel(8);
            let listener = tokio::net::UnixListener::bind(&p).unwrap();
            tokio::spawn(async move {
                let _ = axum::serve(listener, weft::api::cni_router(tx)).await;
            });
            ready_tx.send(()).unwrap();
            let push = |s: String| log.lock().unwrap().push(s);
            while let Some(cmd) = rx.recv().await {
                match cmd {
                    ApiCommand::Add(req, r) => {
                        push(format!(
                            "router add {}",
                            serde_json::to_value(&req).unwrap()
                        ));
                        let _ = r.send(script.add.clone().map(AddOutcome::Done));
                    }
                    ApiCommand::Attached(req, r) => {
                        push(format!(
                            "router attached {}",
                            serde_json::to_value(&req).unwrap()
                        ));
                        let _ = r.send(script.attached.clone());
                    }
                    ApiCommand::Del(req, r) => {
                        push(format!(
                            "router del {}",
                            serde_json::to_value(&req).unwrap()
                        ));
                        let _ = r.send(script.del.clone());
                    }
                    ApiCommand::Check(req, r) => {
                        push(format!(
                            "router check {}",
                            serde_json::to_value(&req).unwrap()
                        ));
                        let _ = r.send(Ok(script.check.clone()));
                    }
                    ApiCommand::Gc(req, r) => {
                        push(format!("router gc {}", serde_json::to_value(&req).unwrap()));
                        let _ = r.send(Ok(GcReply {
                            released: script.gc,
                        }));
                    }
                    ApiCommand::Status(r) => {
                        push("router status".into());
                        let _ = r.send(script.status.clone());
                    }
                    ApiCommand::RmPeer(_, r) => {
                        let _ = r.send(Err(weft::api::ApiError::new(101, "not used here")));
                    }
                }
            }
        });
    });
    ready_rx.recv().unwrap();
    path.to_str().unwrap().to_string()
}

/// A recording plumbing with scripted answers.
struct FakePlumbing {
    log: Log,
    exists: bool,
    add: Result<PodLinks, CniError>,
    del: Result<(), CniError>,
    check: Result<PodLinks, CniError>,
}

fn links() -> PodLinks {
    PodLinks {
        host_ifname: "vethwe01234567".into(),
        host_mac: "aa:aa:aa:aa:aa:aa".into(),
        pod_mac: "02:00:00:00:00:07".into(),
    }
}

impl FakePlumbing {
    fn new(log: &Log) -> FakePlumbing {
        FakePlumbing {
            log: log.clone(),
            exists: false,
            add: Ok(links()),
            del: Ok(()),
            check: Ok(links()),
        }
    }
}

impl Plumbing for FakePlumbing {
    async fn exists(&self, netns: &str, ifname: &str) -> Result<bool, CniError> {
        self.log
            .lock()
            .unwrap()
            .push(format!("plumbing exists {netns} {ifname}"));
        Ok(self.exists)
    }
    async fn add(&self, spec: &PodSpec) -> Result<PodLinks, CniError> {
        self.log.lock().unwrap().push(format!(
            "plumbing add {} {} {} via {} mtu {} on {}",
            spec.netns, spec.ifname, spec.ip, spec.gateway, spec.mtu, spec.bridge
        ));
        self.add.clone()
    }
    async fn del(
        &self,
        container_id: &str,
        ifname: &str,
        netns: Option<&str>,
    ) -> Result<(), CniError> {
        self.log
            .lock()
            .unwrap()
            .push(format!("plumbing del {container_id} {ifname} {netns:?}"));
        self.del.clone()
    }
    async fn check(&self, spec: &PodSpec) -> Result<PodLinks, CniError> {
        self.log
            .lock()
            .unwrap()
            .push(format!("plumbing check {} {}", spec.ifname, spec.ip));
        self.check.clone()
    }
    async fn announce(&self, spec: &PodSpec) {
        self.log
            .lock()
            .unwrap()
            .push(format!("plumbing announce {} {}", spec.ifname, spec.ip));
    }
}

const NETNS: &str = "/proc/self/ns/net";

fn env(command: &str) -> HashMap<&'static str, String> {
    let mut m = HashMap::new();
    m.insert("CNI_COMMAND", command.to_string());
    if matches!(command, "ADD" | "DEL" | "CHECK") {
        m.insert("CNI_CONTAINERID", "c0ffee".to_string());
        m.insert("CNI_IFNAME", "eth0".to_string());
        m.insert("CNI_NETNS", NETNS.to_string());
        m.insert(
            "CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;FOO=bar".to_string(),
        );
    }
    m.insert("CNI_PATH", "/opt/cni/bin".to_string());
    m
}

fn conf(version: &str, socket: &str, extra: Value) -> Vec<u8> {
    let mut c =
        json!({"cniVersion": version, "name": "weft", "type": "weft-net", "socket": socket});
    if let (Value::Object(c), Value::Object(e)) = (&mut c, extra) {
        c.extend(e);
    }
    serde_json::to_vec(&c).unwrap()
}

fn invoke(
    env: &HashMap<&'static str, String>,
    stdin: &[u8],
    plumbing: &FakePlumbing,
) -> (i32, Value) {
    let out = run(|k| env.get(k).cloned(), stdin, plumbing);
    let v = if out.stdout.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&out.stdout).expect("stdout is JSON")
    };
    (out.exit_code, v)
}

fn entries(log: &Log) -> Vec<String> {
    log.lock().unwrap().clone()
}

#[test]
fn add_allocates_plumbs_reports_and_returns_the_result() {
    let log = Log::default();
    let sock = fake_router(Script::default(), log.clone());
    let (rc, out) = invoke(
        &env("ADD"),
        &conf("1.0.0", &sock, json!({})),
        &FakePlumbing::new(&log),
    );
    assert_eq!(rc, 0, "{out}");
    assert_eq!(
        out,
        json!({
            "cniVersion": "1.0.0",
            "interfaces": [
                {"name": "vethwe01234567", "mac": "aa:aa:aa:aa:aa:aa"},
                {"name": "eth0", "mac": "02:00:00:00:00:07", "sandbox": NETNS}
            ],
            "ips": [{"address": "10.32.0.7/12", "gateway": "10.32.0.1", "interface": 1}],
            "routes": [{"dst": "0.0.0.0/0", "gw": "10.32.0.1"}],
            "dns": {}
        })
    );
    assert_eq!(
        entries(&log),
        vec![
            format!("plumbing exists {NETNS} eth0"),
            format!(
                "router add {}",
                json!({"container_id": "c0ffee", "ifname": "eth0", "netns": NETNS,
                       "pod_namespace": "default", "pod_name": "web-0"})
            ),
            format!("plumbing add {NETNS} eth0 10.32.0.7/12 via 10.32.0.1 mtu 1376 on weft"),
            format!(
                "router attached {}",
                json!({"container_id": "c0ffee", "ifname": "eth0",
                       "mac": "02:00:00:00:00:07", "host_ifname": "vethwe01234567"})
            ),
            "plumbing announce eth0 10.32.0.7/12".to_string(),
        ]
    );
}

#[test]
fn add_result_formats_per_version() {
    for (version, ip_version, mtu) in [
        ("0.3.0", Some("4"), None),
        ("0.3.1", Some("4"), None),
        ("0.4.0", Some("4"), None),
        ("1.0.0", None, None),
        ("1.1.0", None, Some(1376)),
    ] {
        let log = Log::default();
        let sock = fake_router(Script::default(), log.clone());
        let dns = json!({"nameservers": ["10.96.0.10"], "search": ["svc.cluster.local"]});
        let (rc, out) = invoke(
            &env("ADD"),
            &conf(version, &sock, json!({ "dns": dns })),
            &FakePlumbing::new(&log),
        );
        assert_eq!(rc, 0, "{out}");
        assert_eq!(out["cniVersion"], version);
        assert_eq!(
            out["ips"][0].get("version").and_then(Value::as_str),
            ip_version
        );
        assert_eq!(out["interfaces"][1].get("mtu").and_then(Value::as_u64), mtu);
        assert_eq!(out["dns"], dns);
    }
}

#[test]
fn add_passes_a_prev_result_through_and_shifts_indices() {
    let log = Log::default();
    let sock = fake_router(Script::default(), log.clone());
    let prev = json!({
        "cniVersion": "0.4.0",
        "interfaces": [{"name": "dummy0", "mac": "00:11:22:33:44:55"}],
        "ips": [{"version": "4", "address": "192.0.2.5/24", "interface": 0}],
        "routes": [{"dst": "192.0.2.0/24"}],
        "dns": {"nameservers": ["192.0.2.53"]}
    });
    let (rc, out) = invoke(
        &env("ADD"),
        &conf("0.4.0", &sock, json!({ "prevResult": prev })),
        &FakePlumbing::new(&log),
    );
    assert_eq!(rc, 0, "{out}");
    assert_eq!(out["interfaces"].as_array().unwrap().len(), 3);
    assert_eq!(out["interfaces"][0]["name"], "dummy0");
    assert_eq!(out["interfaces"][2]["name"], "eth0");
    assert_eq!(out["ips"][0]["address"], "192.0.2.5/24");
    assert_eq!(out["ips"][1]["address"], "10.32.0.7/12");
    assert_eq!(out["ips"][1]["interface"], 2);
    assert_eq!(out["ips"][1]["version"], "4");
    assert_eq!(out["routes"].as_array().unwrap().len(), 2);
    assert_eq!(out["dns"], json!({"nameservers": ["192.0.2.53"]}));
}

#[test]
fn add_refuses_an_existing_interface_without_touching_anything() {
    let log = Log::default();
    let sock = fake_router(Script::default(), log.clone());
    let plumbing = FakePlumbing {
        exists: true,
        ..FakePlumbing::new(&log)
    };
    let (rc, out) = invoke(&env("ADD"), &conf("1.0.0", &sock, json!({})), &plumbing);
    assert_eq!(rc, 1);
    assert_eq!(out["code"], code::INTERFACE);
    assert!(
        out["msg"].as_str().unwrap().contains("already exists"),
        "{out}"
    );
    assert_eq!(entries(&log), vec![format!("plumbing exists {NETNS} eth0")]);
}

#[test]
fn add_releases_the_address_when_plumbing_fails() {
    let log = Log::default();
    let sock = fake_router(Script::default(), log.clone());
    let plumbing = FakePlumbing {
        add: Err(CniError::new(code::INTERFACE, "creating veth pair: EEXIST")),
        ..FakePlumbing::new(&log)
    };
    let (rc, out) = invoke(&env("ADD"), &conf("1.0.0", &sock, json!({})), &plumbing);
    assert_eq!(rc, 1);
    assert_eq!(out["code"], code::INTERFACE);
    assert_eq!(out["cniVersion"], "1.0.0");
    let log = entries(&log);
    assert!(log[2].starts_with("plumbing add"), "{log:?}");
    assert_eq!(
        log[3],
        format!(
            "router del {}",
            json!({"container_id": "c0ffee", "ifname": "eth0"})
        )
    );
    assert_eq!(log.len(), 4, "{log:?}");
}

#[test]
fn add_undoes_interface_and_address_when_attached_fails() {
    let log = Log::default();
    let script = Script {
        attached: Err(ApiError::new(101, "endpoint table is full")),
        ..Script::default()
    };
    let sock = fake_router(script, log.clone());
    let (rc, out) = invoke(
        &env("ADD"),
        &conf("1.0.0", &sock, json!({})),
        &FakePlumbing::new(&log),
    );
    assert_eq!(rc, 1);
    assert_eq!(out["code"], 101);
    assert!(out["msg"]
        .as_str()
        .unwrap()
        .contains("endpoint table is full"));
    let log = entries(&log);
    let tail: Vec<&str> = log[3..]
        .iter()
        .map(|s| s.split(' ').nth(1).unwrap())
        .collect();
    assert_eq!(tail, ["attached", "del", "del"], "{log:?}");
    assert!(log[4].starts_with("plumbing del c0ffee eth0"), "{log:?}");
    assert!(log[5].starts_with("router del"), "{log:?}");
}

#[test]
fn add_keeps_the_address_when_the_interface_cannot_be_undone() {
    let log = Log::default();
    let script = Script {
        attached: Err(ApiError::new(101, "endpoint table is full")),
        ..Script::default()
    };
    let sock = fake_router(script, log.clone());
    let plumbing = FakePlumbing {
        del: Err(CniError::new(
            code::INTERFACE,
            "deleting vethwe01234567: EBUSY",
        )),
        ..FakePlumbing::new(&log)
    };
    let (rc, out) = invoke(&env("ADD"), &conf("1.0.0", &sock, json!({})), &plumbing);
    assert_eq!((rc, out["code"].as_u64()), (1, Some(101)));
    let log = entries(&log);
    assert!(log.last().unwrap().starts_with("plumbing del"), "{log:?}");
    assert!(!log.iter().any(|l| l.starts_with("router del")), "{log:?}");
}

#[test]
fn add_passes_router_codes_through() {
    for (api_code, cni_code) in [(100, 100), (11, 11), (101, 101)] {
        let log = Log::default();
        let script = Script {
            add: Err(ApiError::new(api_code, "range 10.32.0.0/12 is full")),
            ..Script::default()
        };
        let sock = fake_router(script, log.clone());
        let (rc, out) = invoke(
            &env("ADD"),
            &conf("1.0.0", &sock, json!({})),
            &FakePlumbing::new(&log),
        );
        assert_eq!(rc, 1);
        assert_eq!(out["code"], cni_code, "{out}");
        assert!(!entries(&log).iter().any(|l| l.starts_with("plumbing add")));
    }
}

#[test]
fn add_releases_an_unusable_allocation() {
    for bad in [
        AddReply {
            ip: "10.32.0.7".into(),
            ..reply()
        },
        AddReply {
            ip: "fd00::7/64".into(),
            ..reply()
        },
        AddReply { mtu: 0, ..reply() },
        AddReply {
            bridge: "".into(),
            ..reply()
        },
    ] {
        let log = Log::default();
        let script = Script {
            add: Ok(bad.clone()),
            ..Script::default()
        };
        let sock = fake_router(script, log.clone());
        let (rc, out) = invoke(
            &env("ADD"),
            &conf("1.0.0", &sock, json!({})),
            &FakePlumbing::new(&log),
        );
        assert_eq!(rc, 1, "{bad:?}");
        assert_eq!(out["code"], code::ROUTER_ERROR, "{bad:?}: {out}");
        let log = entries(&log);
        assert!(log.last().unwrap().starts_with("router del"), "{log:?}");
        assert!(
            !log.iter().any(|l| l.starts_with("plumbing add")),
            "{log:?}"
        );
    }
}

#[test]
fn add_with_a_missing_netns_is_unknown_container() {
    let log = Log::default();
    let mut e = env("ADD");
    e.insert(
        "CNI_NETNS",
        "/var/run/netns/weft-test-does-not-exist".into(),
    );
    let (rc, out) = invoke(
        &e,
        &conf("1.0.0", "/nonexistent/weft.sock", json!({})),
        &FakePlumbing::new(&log),
    );
    assert_eq!(rc, 1);
    assert_eq!(out["code"], code::UNKNOWN_CONTAINER);
    assert!(entries(&log).is_empty());
}

#[test]
fn del_removes_the_interface_then_releases() {
    let log = Log::default();
    let sock = fake_router(Script::default(), log.clone());
    let mut e = env("DEL");
    e.remove("CNI_NETNS");
    let (rc, out) = invoke(
        &e,
        &conf("1.0.0", &sock, json!({})),
        &FakePlumbing::new(&log),
    );
    assert_eq!((rc, out), (0, Value::Null));
    assert_eq!(
        entries(&log),
        vec![
            "plumbing del c0ffee eth0 None".to_string(),
            format!(
                "router del {}",
                json!({"container_id": "c0ffee", "ifname": "eth0"})
            ),
        ]
    );
}

#[test]
fn del_keeps_the_address_when_the_interface_cannot_be_removed() {
    let log = Log::default();
    let sock = fake_router(Script::default(), log.clone());
    let plumbing = FakePlumbing {
        del: Err(CniError::new(
            code::INTERFACE,
            "deleting vethwe01234567: EBUSY",
        )),
        ..FakePlumbing::new(&log)
    };
    let (rc, out) = invoke(&env("DEL"), &conf("1.0.0", &sock, json!({})), &plumbing);
    assert_eq!(rc, 1);
    assert_eq!(out["code"], code::INTERFACE);
    assert_eq!(entries(&log).len(), 1);
}

#[test]
fn del_with_the_router_down_removes_the_interface_and_asks_for_a_retry() {
    let log = Log::default();
    let (rc, out) = invoke(
        &env("DEL"),
        &conf("1.0.0", "/nonexistent/weft.sock", json!({})),
        &FakePlumbing::new(&log),
    );
    assert_eq!(rc, 1);
    assert_eq!(out["code"], code::TRY_AGAIN_LATER);
    assert!(out["msg"]
        .as_str()
        .unwrap()
        .contains("/nonexistent/weft.sock"));
    assert_eq!(
        entries(&log),
        vec![format!("plumbing del c0ffee eth0 Some(\"{NETNS}\")")]
    );
}

fn prev_result(ip: &str, mac: &str) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "interfaces": [
            {"name": "vethwe01234567", "mac": "aa:aa:aa:aa:aa:aa"},
            {"name": "eth0", "mac": mac, "sandbox": NETNS}
        ],
        "ips": [{"address": ip, "gateway": "10.32.0.1", "interface": 1}],
        "routes": [{"dst": "0.0.0.0/0", "gw": "10.32.0.1"}],
        "dns": {}
    })
}

#[test]
fn check_compares_router_prev_result_and_interface() {
    let log = Log::default();
    let sock = fake_router(Script::default(), log.clone());
    let good = conf(
        "1.0.0",
        &sock,
        json!({"prevResult": prev_result("10.32.0.7/12", "02:00:00:00:00:07")}),
    );
    let (rc, out) = invoke(&env("CHECK"), &good, &FakePlumbing::new(&log));
    assert_eq!((rc, &out), (0, &Value::Null), "{out}");
    assert!(entries(&log)
        .last()
        .unwrap()
        .starts_with("plumbing check eth0 10.32.0.7/12"));

    for (prev, what) in [
        (prev_result("10.32.0.9/12", "02:00:00:00:00:07"), "address"),
        (prev_result("10.32.0.7/12", "02:00:00:00:00:99"), "MAC"),
    ] {
        let c = conf("1.0.0", &sock, json!({ "prevResult": prev }));
        let (rc, out) = invoke(&env("CHECK"), &c, &FakePlumbing::new(&log));
        assert_eq!(rc, 1, "{what}");
        assert_eq!(out["code"], code::CHECK_FAILED, "{what}: {out}");
    }

    let plumbing = FakePlumbing {
        check: Err(CniError::new(
            code::CHECK_FAILED,
            "eth0 MTU is 1500, want 1376",
        )),
        ..FakePlumbing::new(&log)
    };
    let (rc, out) = invoke(&env("CHECK"), &good, &plumbing);
    assert_eq!((rc, out["code"].as_u64()), (1, Some(103)));

    let (rc, out) = invoke(
        &env("CHECK"),
        &conf("1.0.0", &sock, json!({})),
        &FakePlumbing::new(&log),
    );
    assert_eq!((rc, out["code"].as_u64()), (1, Some(7)), "{out}");
}

#[test]
fn check_fails_when_the_router_does_not_know_the_attachment() {
    let log = Log::default();
    let script = Script {
        check: None,
        ..Script::default()
    };
    let sock = fake_router(script, log.clone());
    let c = conf(
        "1.0.0",
        &sock,
        json!({"prevResult": prev_result("10.32.0.7/12", "02:00:00:00:00:07")}),
    );
    let (rc, out) = invoke(&env("CHECK"), &c, &FakePlumbing::new(&log));
    assert_eq!(rc, 1);
    assert_eq!(out["code"], code::CHECK_FAILED);
    assert!(out["msg"].as_str().unwrap().contains("no address"), "{out}");
}

#[test]
fn check_is_not_part_of_0_3() {
    let log = Log::default();
    let c = conf("0.3.1", "/nonexistent/weft.sock", json!({}));
    let (rc, out) = invoke(&env("CHECK"), &c, &FakePlumbing::new(&log));
    assert_eq!((rc, out["code"].as_u64()), (1, Some(1)));
    assert_eq!(out["cniVersion"], "0.3.1");
}

#[test]
fn status_maps_router_readiness() {
    let log = Log::default();
    let sock = fake_router(Script::default(), log.clone());
    let (rc, out) = invoke(
        &env("STATUS"),
        &conf("1.1.0", &sock, json!({})),
        &FakePlumbing::new(&log),
    );
    assert_eq!((rc, out), (0, Value::Null));

    let script = Script {
        status: Err(ApiError::new(11, "IPAM has no address space yet")),
        ..Script::default()
    };
    let sock = fake_router(script, log.clone());
    let (rc, out) = invoke(
        &env("STATUS"),
        &conf("1.1.0", &sock, json!({})),
        &FakePlumbing::new(&log),
    );
    assert_eq!(rc, 1);
    assert_eq!(out["code"], code::NOT_AVAILABLE);
    assert!(out["msg"].as_str().unwrap().contains("IPAM"), "{out}");

    let (rc, out) = invoke(
        &env("STATUS"),
        &conf("1.0.0", &sock, json!({})),
        &FakePlumbing::new(&log),
    );
    assert_eq!(
        (rc, out["code"].as_u64()),
        (1, Some(1)),
        "STATUS needs 1.1.0"
    );
}

#[test]
fn gc_sends_the_valid_attachments() {
    let log = Log::default();
    let sock = fake_router(Script::default(), log.clone());
    let c = conf(
        "1.1.0",
        &sock,
        json!({"cni.dev/valid-attachments": [
            {"containerID": "a1", "ifname": "eth0"},
            {"containerID": "b2", "ifname": "net1"}
        ]}),
    );
    let (rc, out) = invoke(&env("GC"), &c, &FakePlumbing::new(&log));
    assert_eq!((rc, out), (0, Value::Null));
    assert_eq!(
        entries(&log),
        vec![format!(
            "router gc {}",
            json!({"valid": [{"container_id": "a1", "ifname": "eth0"},
                             {"container_id": "b2", "ifname": "net1"}]})
        )]
    );
}

#[test]
fn percent_encoding_of_query_values() {
    assert_eq!(percent_encode("abc-1.2_3~"), "abc-1.2_3~");
    assert_eq!(percent_encode("a b&c=d%"), "a%20b%26c%3Dd%25");
}
