//! NetworkPolicy end to end: two real routers in a `weft lab` started with
//! `--manifests DIR`, four pods attached through the real `weft-net` plugin (two per node,
//! in two Kubernetes namespaces), real TCP probes between every pair of pods compared with
//! the expected matrix: no policy, deny-all ingress in a namespace, allow from a labelled pod
//! across nodes, egress deny. Then: a policy file edited is enforced within 1 s (both
//! ways), an invalid file leaves the other policies enforced and shows in `/status/policy`,
//! blocked connections show in the metrics and the router's log, and a change nft refuses
//! (a fault injected by an `nft` shim) leaves the previous rules in force, shows in
//! `/status/policy` and goes in by itself once nft accepts again.
//! Needs root, iproute2 and nft; `#[ignore]`d unless asked for (see main.rs).

use crate::common;
use crate::common::prerequisites;

use std::collections::BTreeMap;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use weft::lab::{self, Lab, LabGuard, LabOptions, LabPassword};
use weft_fastpath::netns::Netns;

const WEFT: &str = env!("CARGO_BIN_EXE_weft");
const PORT: u16 = 8080;

/// Pod network namespaces and the manifests directory of one test, removed on drop.
struct Cleanup {
    namespaces: Vec<String>,
    dir: PathBuf,
}
impl Drop for Cleanup {
    fn drop(&mut self) {
        for n in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[derive(Clone, Debug)]
struct Pod {
    /// `namespace/name`, as in the manifests and CNI_ARGS.
    key: &'static str,
    node: usize,
    netns: String,
    ip: String,
}

/// Attaches a pod the way a runtime does (`weft-net` ADD with the Kubernetes names in
/// CNI_ARGS); returns its address.
fn cni_add(lab: &Lab, node: usize, key: &str, netns: &str) -> String {
    let (ns, name) = key.split_once('/').unwrap();
    let conf = serde_json::json!({
        "cniVersion": "1.0.0", "name": "weft", "type": "weft-net",
        "socket": lab.node_socket(node),
    });
    let out = common::run_weft_net(
        &lab.namespace(node),
        "ADD",
        netns,
        netns,
        Some(&format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE={ns};K8S_POD_NAME={name}"
        )),
        &conf,
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "ADD {key}: {text}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let a = v["ips"][0]["address"].as_str().expect("an address");
    a.split('/').next().unwrap().to_string()
}

/// A TCP server on [`PORT`] in the pod, accepting (and closing) connections for the rest of
/// the test process.
fn serve(netns: &str) {
    let ns = Netns::open(format!("/var/run/netns/{netns}")).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = ns.run_blocking(move || {
            let l = TcpListener::bind(("0.0.0.0", PORT)).expect("listen");
            tx.send(()).unwrap();
            for c in l.incoming() {
                drop(c);
            }
        });
    });
    rx.recv_timeout(Duration::from_secs(5)).expect("server up");
}

/// One TCP connection attempt from `from` to `to`.
fn connects(from: &Pod, to: &Pod, timeout: Duration) -> bool {
    let ns = Netns::open(format!("/var/run/netns/{}", from.netns)).unwrap();
    let addr = format!("{}:{PORT}", to.ip).parse().unwrap();
    ns.run_blocking(move || TcpStream::connect_timeout(&addr, timeout).is_ok())
        .unwrap()
}

type Matrix = BTreeMap<(&'static str, &'static str), bool>;

/// Probes every ordered pair of pods (in parallel); a result that differs from `expect`
/// is probed once more with a longer timeout (first packets across nodes may wait for ARP).
fn probe(pods: &[Pod], expect: &Matrix) -> Matrix {
    std::thread::scope(|s| {
        let handles: Vec<_> = pods
            .iter()
            .flat_map(|a| pods.iter().map(move |b| (a, b)))
            .filter(|(a, b)| a.key != b.key)
            .map(|(a, b)| {
                let want = expect[&(a.key, b.key)];
                s.spawn(move || {
                    let mut got = connects(a, b, Duration::from_millis(700));
                    if got != want {
                        got = connects(a, b, Duration::from_secs(2));
                    }
                    ((a.key, b.key), got)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

fn assert_matrix(pods: &[Pod], expect: &Matrix, what: &str) {
    let got = probe(pods, expect);
    let wrong: Vec<String> = got
        .iter()
        .filter(|(k, v)| expect[*k] != **v)
        .map(|((a, b), v)| format!("{a} -> {b}: {} (expected {})", v, !v))
        .collect();
    assert!(wrong.is_empty(), "{what}: {wrong:#?}");
}

/// The expected matrix: `allowed(from, to)`.
fn matrix(pods: &[Pod], allowed: impl Fn(&str, &str) -> bool) -> Matrix {
    let mut m = Matrix::new();
    for a in pods {
        for b in pods {
            if a.key != b.key {
                m.insert((a.key, b.key), allowed(a.key, b.key));
            }
        }
    }
    m
}

/// A `weft` that runs the real router with `bin/` first in `PATH`, where an `nft` shim
/// passes everything to the real `nft` except, while the file `refuse` exists, the
/// policy table's changes, which it refuses the way nft refuses a ruleset (exit 1, an error
/// on stderr). Returns the wrapper; `dir.join("refuse")` switches the fault on.
fn weft_with_nft_shim(dir: &Path) -> PathBuf {
    let real = ["/usr/sbin/nft", "/sbin/nft", "/usr/bin/nft"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("nft installed");
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let refuse = dir.join("refuse");
    let exe = |path: &Path, text: String| {
        std::fs::write(path, text).unwrap();
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
    };
    exe(
        &bin.join("nft"),
        format!(
            "#!/bin/sh\n\
             if [ -e '{refuse}' ] && [ \"$1\" = -f ]; then\n\
             \tscript=$(cat)\n\
             \tcase \"$script\" in *weft-policy*)\n\
             \t\techo 'Error: refused by the test (fault injection)' >&2; exit 1;;\n\
             \tesac\n\
             \tprintf '%s\\n' \"$script\" | exec {real} \"$@\"\n\
             fi\n\
             exec {real} \"$@\"\n",
            refuse = refuse.display()
        ),
    );
    let wrapper = dir.join("weft");
    exe(
        &wrapper,
        format!(
            "#!/bin/sh\nPATH='{}':$PATH exec {WEFT} \"$@\"\n",
            bin.display()
        ),
    );
    std::os::unix::fs::symlink(common::weft_net(), dir.join("weft-net")).unwrap();
    wrapper
}

/// Replaces a file the way a careful tool does (write aside, rename over).
fn write_file(dir: &Path, name: &str, text: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

const OBJECTS: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {team: shop}}
---
apiVersion: v1
kind: Namespace
metadata: {name: dev}
---
apiVersion: v1
kind: Pod
metadata: {name: db, namespace: shop, labels: {app: db}}
spec: {containers: [{name: c, image: x, ports: [{name: sql, containerPort: 8080}]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: shop, labels: {app: web}}
spec: {containers: [{name: c, image: x}]}
---
apiVersion: v1
kind: Pod
metadata: {name: other, namespace: shop, labels: {app: other}}
spec: {containers: [{name: c, image: x}]}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: dev, labels: {app: client}}
spec: {containers: [{name: c, image: x}]}
"#;

/// Deny all ingress in `shop`; `shop/db` accepts `sql` (8080) from pods matching
/// `db_from`; `dev/client` may send nothing.
fn policies(db_from: &str) -> String {
    format!(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: default-deny, namespace: shop}}
spec: {{podSelector: {{}}, policyTypes: [Ingress]}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: db-clients, namespace: shop}}
spec:
  podSelector: {{matchLabels: {{app: db}}}}
  ingress:
  - from: [{{podSelector: {{matchExpressions: [{{key: app, operator: In, values: [{db_from}]}}]}}}}]
    ports: [{{port: sql}}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: no-egress, namespace: dev}}
spec:
  podSelector: {{matchLabels: {{app: client}}}}
  policyTypes: [Egress]
  egress: []
"#
    )
}

/// Probes `from` → `to` until the result is `want`; returns how long after `since` the
/// first attempt that showed it started.
fn flips_within(from: &Pod, to: &Pod, want: bool, since: Instant, limit: Duration) -> Duration {
    loop {
        let attempt = Instant::now();
        if connects(from, to, Duration::from_millis(150)) == want {
            return attempt.duration_since(since);
        }
        assert!(
            since.elapsed() < limit,
            "{} -> {} still {} after {limit:?}",
            from.key,
            to.key,
            !want
        );
    }
}

async fn metric(lab: &Lab, node: usize, series: &str) -> u64 {
    let text = lab.get(node, "/metrics").await.unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

async fn policy_status(lab: &Lab, node: usize) -> serde_json::Value {
    let body = lab
        .get(node, "/status/policy")
        .await
        .expect("/status/policy");
    serde_json::from_str(&body).expect("JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root (network namespaces): run as root with --include-ignored, as scripts/test.sh does"]
async fn policies_from_manifests_are_enforced_across_nodes() {
    prerequisites();
    let tag = lab::random_alnum(5);
    let dir = std::env::temp_dir().join(format!("weft-policy-e2e-{}-{tag}", std::process::id()));
    let mut cleanup = Cleanup {
        namespaces: Vec::new(),
        dir: dir.clone(),
    };
    std::fs::create_dir_all(&dir).unwrap();
    write_file(&dir, "objects.yaml", OBJECTS);
    let shim = dir.join("shim");
    let wrapper = weft_with_nft_shim(&shim);

    let id = format!("q{tag}");
    let _guard = LabGuard::new(&id);
    let mut opts = LabOptions::new(&id, 2, &wrapper);
    opts.password = LabPassword::Random;
    opts.timeout = Duration::from_secs(20);
    opts.router_args = vec!["--manifests".into(), dir.to_string_lossy().into_owned()];
    let lab = Lab::up(opts).await.expect("lab up");

    // db and other on n1, web and client on n2.
    let mut pods = Vec::new();
    for (i, (key, node)) in [
        ("shop/db", 1),
        ("shop/other", 1),
        ("shop/web", 2),
        ("dev/client", 2),
    ]
    .into_iter()
    .enumerate()
    {
        let netns = format!("wq{tag}{i}");
        assert!(Command::new("ip")
            .args(["netns", "add", &netns])
            .status()
            .unwrap()
            .success());
        cleanup.namespaces.push(netns.clone());
        let ip = cni_add(&lab, node, key, &netns);
        serve(&netns);
        pods.push(Pod {
            key,
            node,
            netns,
            ip,
        });
    }
    let by = |k: &str| pods.iter().find(|p| p.key == k).unwrap().clone();
    let (db, other, web, client) = (
        by("shop/db"),
        by("shop/other"),
        by("shop/web"),
        by("dev/client"),
    );
    assert!(db.node == other.node && web.node == client.node && db.node != web.node);

    // Both routers know all four pods (the endpoint table is gossiped).
    lab.wait_until(
        Duration::from_secs(15),
        "every pod in both endpoint tables",
        |s| {
            s.iter().all(|st| {
                st.as_ref().is_some_and(|st| {
                    pods.iter().all(|p| {
                        st.endpoints
                            .iter()
                            .any(|e| e.pod.as_deref() == Some(p.key) && e.ips == vec![p.ip.clone()])
                    })
                })
            })
        },
    )
    .await
    .unwrap();

    // No policy: everyone reaches everyone. (Retry: the first packets across nodes wait
    // for the overlay paths.)
    let open = matrix(&pods, |_, _| true);
    let t = Instant::now();
    while probe(&pods, &open) != open && t.elapsed() < Duration::from_secs(15) {}
    assert_matrix(&pods, &open, "no policy");
    // The enforcer follows the endpoint table a moment after the mesh's status shows it
    // (a debounce and an nft apply): wait for it, briefly.
    let t = Instant::now();
    let st = loop {
        let st = policy_status(&lab, 1).await;
        if st["addresses"]["from_endpoints"] == 4 || t.elapsed() > Duration::from_secs(5) {
            break st;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(st["state"], "enforcing", "{st:#}");
    assert_eq!(st["policies"].as_array().unwrap().len(), 0);
    assert_eq!(st["addresses"]["from_endpoints"], 4, "{st:#}");

    // Deny-all ingress in shop, db open to web (across nodes) on its named port, client
    // denied egress.
    write_file(&dir, "policies.yaml", &policies("web"));
    let enforced = |db_from: &'static [&'static str]| {
        move |a: &str, b: &str| {
            let ingress_ok = match b {
                "shop/db" => db_from.iter().any(|f| a == format!("shop/{f}")),
                "shop/web" | "shop/other" => false,
                _ => true,
            };
            a != "dev/client" && ingress_ok
        }
    };
    let t0 = Instant::now();
    let took = flips_within(&web, &other, false, t0, Duration::from_secs(1));
    eprintln!("first policies enforced {took:?} after the file was written");
    assert_matrix(&pods, &matrix(&pods, enforced(&["web"])), "policies");
    let st = policy_status(&lab, 1).await;
    let names: Vec<&str> = st["policies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 3, "{st:#}");
    let deny = st["policies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "default-deny")
        .unwrap();
    assert_eq!(deny["selected"].as_array().unwrap().len(), 3, "{deny:#}");
    assert!(st["table"]["groups"].as_u64().unwrap() >= 1, "{st:#}");

    // Editing the policy: other may reach db too; then not again. Each way within 1 s.
    let t0 = Instant::now();
    write_file(&dir, "policies.yaml", &policies("web, other"));
    let open_took = flips_within(&other, &db, true, t0, Duration::from_secs(1));
    assert!(
        connects(&web, &db, Duration::from_secs(1)),
        "web still reaches db"
    );
    let t0 = Instant::now();
    write_file(&dir, "policies.yaml", &policies("web"));
    let close_took = flips_within(&other, &db, false, t0, Duration::from_secs(1));
    eprintln!("policy change enforced: allow after {open_took:?}, deny after {close_took:?}");
    assert!(open_took < Duration::from_secs(1) && close_took < Duration::from_secs(1));

    // An invalid file: rejected with its reason, everything else still enforced.
    write_file(
        &dir,
        "bad.yaml",
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: open-web, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/40}}]}]
"#,
    );
    write_file(&dir, "broken.yaml", "kind: [unclosed");
    let t = Instant::now();
    let st = loop {
        let st = policy_status(&lab, 2).await;
        if st["rejected"].as_array().unwrap().len() >= 2 || t.elapsed() > Duration::from_secs(3) {
            break st;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let rejected = st["rejected"].as_array().unwrap();
    assert_eq!(rejected.len(), 2, "{st:#}");
    let bad = rejected
        .iter()
        .find(|r| r["object"] == "shop/open-web")
        .unwrap_or_else(|| panic!("{st:#}"));
    assert_eq!(bad["kind"], "NetworkPolicy");
    assert!(
        bad["reason"].as_str().unwrap().contains("bad.yaml")
            && bad["reason"].as_str().unwrap().contains("cidr"),
        "{bad:#}"
    );
    assert!(rejected
        .iter()
        .any(|r| r["reason"].as_str().unwrap().contains("broken.yaml")));
    assert_eq!(st["policies"].as_array().unwrap().len(), 3, "{st:#}");
    assert_matrix(
        &pods,
        &matrix(&pods, enforced(&["web"])),
        "after an invalid file",
    );

    // Blocked connections are counted (exactly, from the table's counters, and as logged)
    // and logged with the pods' names. other -> db was refused on n1 (same node, bridged).
    let series = r#"weft_policy_blocked_packets_total{direction="ingress",namespace="shop"}"#;
    let logged = r#"weft_policy_blocked_logged_total{direction="ingress",namespace="shop"}"#;
    let t = Instant::now();
    while (metric(&lab, 1, series).await == 0 || metric(&lab, 1, logged).await == 0)
        && t.elapsed() < Duration::from_secs(8)
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(metric(&lab, 1, series).await > 0, "blocked packets counted");
    assert!(metric(&lab, 1, logged).await > 0, "blocked packets logged");
    assert!(metric(&lab, 1, "weft_policy_policies").await == 3);
    let egress = r#"weft_policy_blocked_packets_total{direction="egress",namespace="dev"}"#;
    assert!(
        metric(&lab, 2, egress).await > 0,
        "client's egress drops counted on n2"
    );
    let log = std::fs::read_to_string(lab.log_path(1)).unwrap();
    let line = format!("{} (shop/db):{PORT}", db.ip);
    assert!(
        log.lines()
            .any(|l| l.contains("policy blocked a connection") && l.contains(&line)),
        "the router's log names the blocked destination"
    );
    let drops = policy_status(&lab, 1).await["drops"].clone();
    assert!(
        drops
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["namespace"] == "shop" && d["packets"].as_u64().unwrap() > 0),
        "{drops:#}"
    );

    // /status.json carries the one-line summary (refreshed at least every second).
    let t = Instant::now();
    let summary = loop {
        let st = lab.status(1).await.unwrap();
        let summary = st.policy.expect("policy summary in /status.json");
        if summary.starts_with("3 policies (2 rejected objects)")
            || t.elapsed() > Duration::from_secs(3)
        {
            break summary;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        summary.starts_with("3 policies (2 rejected objects)"),
        "{summary}"
    );

    // nft refuses the next change on both nodes: the previous rules stay in force, status
    // says so with nft's error, and the change goes in by itself once nft accepts again.
    std::fs::write(shim.join("refuse"), "").unwrap();
    let failures_before = policy_status(&lab, 1).await["apply_failures"]
        .as_u64()
        .unwrap();
    write_file(&dir, "policies.yaml", &policies("web, other"));
    let t = Instant::now();
    let st = loop {
        let st = policy_status(&lab, 1).await;
        if st["state"] != "enforcing" || t.elapsed() > Duration::from_secs(3) {
            break st;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        st["state"], "last update failed; the previous rules are in force",
        "{st:#}"
    );
    assert!(
        st["apply_failures"].as_u64().unwrap() > failures_before,
        "{st:#}"
    );
    assert!(
        st["last_apply"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("refused by the test")),
        "nft's own message in status: {st:#}"
    );
    assert!(
        !connects(&other, &db, Duration::from_millis(700)),
        "the previous rules still deny other -> db"
    );
    assert!(
        connects(&web, &db, Duration::from_secs(1)),
        "and still allow web -> db"
    );
    std::fs::remove_file(shim.join("refuse")).unwrap();
    let t0 = Instant::now();
    let took = flips_within(&other, &db, true, t0, Duration::from_secs(10));
    eprintln!("the refused change went in {took:?} after nft accepted again");
    let st = policy_status(&lab, 1).await;
    assert_eq!(st["state"], "enforcing", "{st:#}");
    write_file(&dir, "policies.yaml", &policies("web"));
    flips_within(&other, &db, false, Instant::now(), Duration::from_secs(1));

    // Removing the policies opens everything again.
    std::fs::remove_file(dir.join("policies.yaml")).unwrap();
    let t0 = Instant::now();
    flips_within(&web, &other, true, t0, Duration::from_secs(1));
    assert_matrix(&pods, &open, "policies removed");
    drop(cleanup);
}
