//! `weft router --kube` end to end: two real routers, each in its own network namespace,
//! joined by a veth "underlay", each reading the in-process fake API server through a
//! listener on its namespace's loopback (one server, the same objects for both). Checks:
//! the routers dial the Nodes' InternalIPs and connect, mark their Nodes
//! `NetworkUnavailable=False`, hand out pod addresses (and the bridge gateway) from their
//! Node's `spec.podCIDR`, show the `kube` status section; pods on the two nodes ping each
//! other; a NetworkPolicy created in the API blocks them, and deleting it lets them through
//! again; a deleted Node's space is left alone while its router runs and reclaimed by the
//! survivor once it has stopped; a router restarted (an upgrade) rejoins, becomes ready and its
//! pod is reachable again; a router restarted while the API server is down serves pods from
//! the podCIDR in its peer cache.
//! Needs root, iproute2, nft and ping; `#[ignore]`d unless asked for (see main.rs).

#![allow(unsafe_code)] // syscalls and FFI; each use has its SAFETY note

use crate::common;
use crate::common::ip;
use crate::common::prerequisites;

use crate::kube_support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kube_support::{obj, FakeApi, Kind};
use serde_json::Value;
use weft::lab;
use weft_fastpath::netns::Netns;

const WEFT: &str = env!("CARGO_BIN_EXE_weft");

/// Namespaces, routers and files of one test; everything goes on drop (routers first).
struct Env {
    dir: PathBuf,
    namespaces: Vec<String>,
    routers: Vec<(String, Child)>,
}

impl Env {
    fn new(tag: &str) -> Env {
        let dir = std::env::temp_dir().join(format!("weft-kube-daemon-{tag}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Env {
            dir,
            namespaces: Vec::new(),
            routers: Vec::new(),
        }
    }

    fn netns(&mut self, name: String) -> String {
        ip(&["netns", "add", &name]);
        self.namespaces.push(name.clone());
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        name
    }

    fn log(&self, node: &str) -> PathBuf {
        self.dir.join(format!("{node}.log"))
    }

    fn socket(&self, node: &str) -> PathBuf {
        self.dir.join(node).join("weft.sock")
    }

    /// Starts `weft router --kube` for Node `node` in `ns`, its kubeconfig pointing at
    /// `api_port` on the namespace's loopback.
    fn start_router(&mut self, ns: &str, node: &str, api_port: u16) {
        let state = self.dir.join(node);
        std::fs::create_dir_all(&state).unwrap();
        let kubeconfig = state.join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://127.0.0.1:{api_port}\nusers:\n- name: weft\n  user:\n    token: t0ken\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: weft\ncurrent-context: fake\n"
            ),
        )
        .unwrap();
        let log = std::fs::File::create(self.log(node)).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", ns, WEFT, "router", "--kube"])
            .arg("--state-dir")
            .arg(&state)
            .arg("--api-socket")
            .arg(self.socket(node))
            .args(["--metrics-addr", "off", "--ipalloc-range", "10.32.0.0/12"])
            .env("NODE_NAME", node)
            .env("KUBECONFIG", &kubeconfig)
            .env("WEFT_PASSWORD", "kube daemon test password")
            .env("WEFT_LOG", "info")
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env_remove("WEFT_NAME")
            .env_remove("WEFT_NICKNAME")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.routers.push((node.to_string(), child));
    }

    /// Stops `node`'s router with SIGTERM (it closes its connections) and waits for it.
    fn stop_router(&mut self, node: &str) {
        let i = self.routers.iter().position(|(n, _)| n == node).unwrap();
        let (_, mut child) = self.routers.remove(i);
        terminate(&mut child);
    }
}

fn terminate(child: &mut Child) {
    // SAFETY: kill(2) on the pid of a child we started and have not reaped.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(10) {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

impl Drop for Env {
    fn drop(&mut self) {
        for (_, c) in &mut self.routers {
            terminate(c);
        }
        if std::thread::panicking() {
            for node in ["node-a", "node-b"] {
                let log = std::fs::read_to_string(self.log(node)).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                eprintln!("--- {node} log (last lines) ---");
                for l in tail.iter().rev() {
                    eprintln!("{l}");
                }
            }
        }
        for ns in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A listener on 127.0.0.1 inside namespace `ns` (the socket stays in it).
fn listener_in(ns: &str) -> tokio::net::TcpListener {
    let l = Netns::open(format!("/var/run/netns/{ns}"))
        .unwrap()
        .run_blocking(|| std::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap()
        .unwrap();
    l.set_nonblocking(true).unwrap();
    tokio::net::TcpListener::from_std(l).unwrap()
}

async fn get(sock: &Path, path: &str) -> Option<(u16, String)> {
    weft::client::get(&format!("unix:{}", sock.display()), path)
        .await
        .ok()
}

async fn status(sock: &Path) -> Option<Value> {
    match get(sock, "/status.json").await {
        Some((200, body)) => serde_json::from_str(&body).ok(),
        _ => None,
    }
}

/// Polls `sock`'s status until `pred` holds; returns it.
async fn wait_status(sock: &Path, secs: u64, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut last = None;
    while Instant::now() < deadline {
        if let Some(st) = status(sock).await {
            if pred(&st) {
                return st;
            }
            last = Some(st);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!(
        "timed out waiting for {what}; last status: {}",
        serde_json::to_string_pretty(&last).unwrap()
    );
}

/// `weft-net ADD` of a pod whose namespace is `podns`, through the router in `ns`.
fn cni_add(ns: &str, sock: &Path, id: &str, podns: &str) -> Value {
    let conf = serde_json::json!({
        "cniVersion": "1.0.0", "name": "weft", "type": "weft-net", "socket": sock,
    });
    let out = common::run_weft_net(
        ns,
        "ADD",
        id,
        podns,
        Some(&format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={id}"
        )),
        &conf,
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "ADD {id}: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&text).unwrap()
}

fn ping_within(podns: &str, ip: &str, limit: Duration) -> bool {
    let t = Instant::now();
    while t.elapsed() < limit {
        let ok = Command::new("ip")
            .args(["netns", "exec", podns, "ping", "-c1", "-W1", ip])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return true;
        }
    }
    false
}

fn has(v: &Value, s: &str) -> bool {
    v.as_array()
        .is_some_and(|a| a.iter().any(|x| x.as_str().is_some_and(|t| t.contains(s))))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root (network namespaces): run as root with --include-ignored, as scripts/test.sh does"]
async fn routers_from_nodes_pod_cidrs_condition_and_reclaim() {
    prerequisites();
    let tag = format!("{}{}", std::process::id(), lab::random_alnum(3));
    let mut env = Env::new(&tag);
    let short = lab::random_alnum(5);
    let (na, nb) = (
        env.netns(format!("wkd{short}a")),
        env.netns(format!("wkd{short}b")),
    );
    let (va, vb) = (format!("wkd{short}a0"), format!("wkd{short}b0"));
    ip(&["link", "add", &va, "type", "veth", "peer", "name", &vb]);
    ip(&["link", "set", &va, "netns", &na]);
    ip(&["link", "set", &vb, "netns", &nb]);
    ip(&["-n", &na, "addr", "add", "10.201.0.1/24", "dev", &va]);
    ip(&["-n", &nb, "addr", "add", "10.201.0.2/24", "dev", &vb]);
    ip(&["-n", &na, "link", "set", &va, "up"]);
    ip(&["-n", &nb, "link", "set", &vb, "up"]);

    let api = FakeApi::start().await;
    let (la, lb) = (listener_in(&na), listener_in(&nb));
    let (pa, pb) = (
        la.local_addr().unwrap().port(),
        lb.local_addr().unwrap().port(),
    );
    api.serve_also(la);
    api.serve_also(lb);
    api.apply(
        Kind::Nodes,
        obj::node(
            "node-a",
            &[("InternalIP", "10.201.0.1")],
            Some("10.32.1.0/24"),
        ),
    );
    api.apply(
        Kind::Nodes,
        obj::node(
            "node-b",
            &[("InternalIP", "10.201.0.2")],
            Some("10.32.2.0/24"),
        ),
    );
    env.start_router(&na, "node-a", pa);
    env.start_router(&nb, "node-b", pb);
    let (sa, sb) = (env.socket("node-a"), env.socket("node-b"));
    let name_a = weft::kube::peer_name_for_node("node-a").to_string();
    let name_b = weft::kube::peer_name_for_node("node-b").to_string();

    // identity from the Node name; the Nodes' addresses are dialled and connect
    for (sock, me, other) in [(&sa, &name_a, &name_b), (&sb, &name_b, &name_a)] {
        let st = wait_status(sock, 40, "one connection, to the other Node", |st| {
            st["connections"].as_array().is_some_and(|c| {
                c.len() == 1
                    && c[0]["state"] == "established"
                    && c[0]["peer"].as_str() == Some(other.as_str())
            })
        })
        .await;
        assert_eq!(st["name"].as_str(), Some(me.as_str()));
        assert!(st["nickname"].as_str().unwrap().starts_with("node-"));
        assert_eq!(st["encryption"], true);
    }
    // no --peer: the connection comes from dialling the other Node's InternalIP (both
    // dial; the mesh keeps one connection per pair)
    let mut outbound = 0;
    for (sock, other) in [(&sa, "10.201.0.2:6783"), (&sb, "10.201.0.1:6783")] {
        let st = status(sock).await.unwrap();
        let conns = st["connections"].as_array().unwrap();
        assert_eq!(conns[0]["address"], other, "{conns:?}");
        outbound += usize::from(conns[0]["outbound"] == true);
    }
    assert_eq!(outbound, 1);

    // the gateway comes from the podCIDR; the Node condition follows once pods can attach
    let st = wait_status(
        &sa,
        30,
        "the kube section, synced, network available",
        |st| st["kube"]["synced"] == true && st["kube"]["network_available"] == true,
    )
    .await;
    assert_eq!(st["ipam"]["gateway"], "10.32.1.1/12");
    let k = &st["kube"];
    assert_eq!(k["node"], "node-a");
    assert_eq!(k["connected"], true);
    assert_eq!(k["this_node_found"], true);
    assert_eq!(k["peers"], 1);
    assert_eq!(k["pod_cidrs"][0], "10.32.1.0/24");
    assert!(
        k["ipam_source"]
            .as_str()
            .unwrap()
            .contains("spec.podCIDR 10.32.1.0/24"),
        "{k}"
    );
    let resources: Vec<&str> = k["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["resource"].as_str().unwrap())
        .collect();
    assert_eq!(
        resources,
        ["nodes", "pods", "namespaces", "networkpolicies"]
    );
    let (_, text) = get(&sa, "/status").await.unwrap();
    assert!(
        text.contains("Kubernetes: connected, synced, node node-a podCIDR 10.32.1.0/24"),
        "{text}"
    );
    for node in ["node-a", "node-b"] {
        let patched = api.patches().iter().any(|r| {
            r.path == format!("/api/v1/nodes/{node}/status")
                && r.content_type.as_deref() == Some("application/strategic-merge-patch+json")
        });
        assert!(patched, "{node}: {:?}", api.patches());
        let n = api.object(Kind::Nodes, node).unwrap();
        let conds = n["status"]["conditions"].as_array().unwrap();
        let c = conds
            .iter()
            .find(|c| c["type"] == "NetworkUnavailable")
            .unwrap();
        assert_eq!(
            (c["status"].as_str(), c["reason"].as_str()),
            (Some("False"), Some("WeftIsUp"))
        );
        assert!(
            conds.iter().any(|c| c["type"] == "Ready"),
            "other conditions kept"
        );
    }

    // pods get addresses from their Node's podCIDR and reach each other across nodes
    let mut pods = Vec::new();
    for (ns, sock, id) in [(&na, &sa, "pod-a"), (&nb, &sb, "pod-b")] {
        let podns = env.netns(format!("wkd{short}{id}"));
        let r = cni_add(ns, sock, id, &podns);
        let addr = r["ips"][0]["address"].as_str().unwrap().to_string();
        let gw = r["ips"][0]["gateway"].as_str().unwrap().to_string();
        pods.push((podns, addr, gw));
    }
    assert_eq!(pods[0].1, "10.32.1.2/12");
    assert_eq!(pods[0].2, "10.32.1.1");
    assert_eq!(pods[1].1, "10.32.2.2/12");
    assert_eq!(pods[1].2, "10.32.2.1");
    let podns_a = pods[0].0.clone();
    let ok = tokio::task::spawn_blocking(move || {
        ping_within(&podns_a, "10.32.2.2", Duration::from_secs(15))
    })
    .await
    .unwrap();
    assert!(ok, "pod-a cannot ping pod-b");
    // NetworkPolicy from the API: deny all ingress to pod-b, enforced on node-b
    api.apply(
        Kind::Namespaces,
        serde_json::json!({"metadata": {"name": "default"}}),
    );
    for (name, node, ip) in [
        ("pod-a", "node-a", "10.32.1.2"),
        ("pod-b", "node-b", "10.32.2.2"),
    ] {
        api.apply(
            Kind::Pods,
            serde_json::json!({
                "metadata": {"name": name, "namespace": "default", "labels": {"app": name}},
                "spec": {"nodeName": node, "containers": [{"name": "c"}]},
                "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]},
            }),
        );
    }
    api.apply(
        Kind::NetworkPolicies,
        serde_json::json!({
            "metadata": {"name": "deny-b", "namespace": "default"},
            "spec": {"podSelector": {"matchLabels": {"app": "pod-b"}}, "policyTypes": ["Ingress"]},
        }),
    );
    wait_status(&sb, 20, "the policy applied on node-b", |st| {
        st["policy"]
            .as_str()
            .is_some_and(|p| p.starts_with("1 policies (0 rejected objects), 1 pods selected"))
    })
    .await;
    let podns_a = pods[0].0.clone();
    let blocked = tokio::task::spawn_blocking(move || {
        !ping_within(&podns_a, "10.32.2.2", Duration::from_secs(3))
    })
    .await
    .unwrap();
    assert!(
        blocked,
        "the NetworkPolicy from the API did not block pod-b's ingress"
    );
    assert!(api.delete(Kind::NetworkPolicies, "default/deny-b"));
    wait_status(&sb, 20, "the policy removed on node-b", |st| {
        st["policy"]
            .as_str()
            .is_some_and(|p| p.starts_with("0 policies"))
    })
    .await;
    let podns_a = pods[0].0.clone();
    let ok = tokio::task::spawn_blocking(move || {
        ping_within(&podns_a, "10.32.2.2", Duration::from_secs(10))
    })
    .await
    .unwrap();
    assert!(ok, "pod-b unreachable after its policy was deleted");

    // A rolling restart, as an upgrade does it: node-b's router stops and starts again. Its
    // pod keeps its interface and address (the state dir), the router rejoins the mesh and
    // reports ready, and pod-a reaches pod-b again.
    env.stop_router("node-b");
    let t = Instant::now();
    env.start_router(&nb, "node-b", pb);
    wait_status(&sb, 30, "node-b ready again after its restart", |st| {
        st["not_ready"].is_null()
            && st["connections"]
                .as_array()
                .is_some_and(|c| c.iter().any(|c| c["state"] == "established"))
    })
    .await;
    assert_eq!(
        get(&sb, "/readyz").await.map(|(code, _)| code),
        Some(200),
        "readiness after the restart"
    );
    let podns_a = pods[0].0.clone();
    let ok = tokio::task::spawn_blocking(move || {
        ping_within(&podns_a, "10.32.2.2", Duration::from_secs(15))
    })
    .await
    .unwrap();
    assert!(ok, "pod-b unreachable after its router restarted");
    eprintln!(
        "node-b restarted: ready and reachable after {:?}",
        t.elapsed()
    );

    // each router's IPAM shows the other's podCIDR as its blocks
    let st = status(&sa).await.unwrap();
    let b_blocks = st["ipam"]["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name_b.as_str())
        .map(|p| p["blocks"].clone());
    assert_eq!(b_blocks, Some(serde_json::json!(["10.32.2.0/24"])));

    // node-b's Node is deleted while its router still runs: its space stays
    assert!(api.delete(Kind::Nodes, "node-b"));
    let st = wait_status(&sa, 10, "a pending reclaim", |st| {
        has(
            &st["kube"]["reclaim_pending"],
            "waiting until it is unreachable",
        )
    })
    .await;
    assert_eq!(st["kube"]["peers"], 0);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let st = status(&sa).await.unwrap();
    assert!(!has(&st["ipam"]["removed"], &name_b), "{}", st["ipam"]);
    assert!(has(&st["kube"]["reclaim_pending"], &name_b));

    // its router stops: node-a reclaims the space (frees it: node-a has its own podCIDR)
    env.stop_router("node-b");
    let st = wait_status(&sa, 30, "node-b's space reclaimed", |st| {
        has(&st["ipam"]["removed"], &name_b)
    })
    .await;
    assert!(
        has(&st["kube"]["reclaimed"], "freed 10.32.2.0/24"),
        "{}",
        st["kube"]
    );
    assert!(has(&st["kube"]["reclaimed"], "Node node-b deleted"));
    assert!(st["kube"]["reclaim_pending"].as_array().unwrap().is_empty());
    let owners: Vec<&str> = st["ipam"]["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(owners, [name_a.as_str()], "only node-a owns space now");
    // the peer cache holds the last complete list, for a restart while the API is down
    let cache = std::fs::read_to_string(env.dir.join("node-a").join("kube-peers.json")).unwrap();
    assert!(cache.contains("10.32.1.0/24") && !cache.contains("node-b"));

    // a restart while the API server is down: the pod CIDR comes from the cache, pods
    // keep being served
    env.stop_router("node-a");
    api.set_down(true);
    env.start_router(&na, "node-a", pa);
    let st = wait_status(
        &sa,
        30,
        "node-a serving pods from the cached podCIDR",
        |st| st["ipam"]["gateway"] == "10.32.1.1/12",
    )
    .await;
    assert_eq!(st["kube"]["peers_from_cache"], true, "{}", st["kube"]);
    assert_eq!(st["kube"]["connected"], false);
    let podns = env.netns(format!("wkd{short}pod-c"));
    let r = cni_add(&na, &sa, "pod-c", &podns);
    let addr = r["ips"][0]["address"].as_str().unwrap();
    assert!(
        addr.starts_with("10.32.1.") && addr != "10.32.1.2/12",
        "{addr}"
    );
    api.set_down(false);
    wait_status(&sa, 30, "node-a synced again", |st| {
        st["kube"]["synced"] == true && st["kube"]["connected"] == true
    })
    .await;
}
