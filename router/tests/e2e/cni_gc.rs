//! CNI STATUS and GC end to end: the real `weft-net` driven the way a runtime drives it
//! (env + stdin JSON, cniVersion 1.1.0) against a real router in a one-node `weft lab`.
//! Needs root and iproute2; `#[ignore]`d unless asked for (see main.rs).

use crate::common;

use std::process::Command;
use std::time::Duration;

use weft::lab::{self, Lab, LabGuard, LabOptions, LabPassword};

const WEFT: &str = env!("CARGO_BIN_EXE_weft");

/// Pod namespaces of the test, deleted on drop.
struct PodNs(Vec<String>);
impl Drop for PodNs {
    fn drop(&mut self) {
        for n in &self.0 {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

/// Runs `weft-net` in node 1's namespace with `conf` on stdin; (exit code, stdout).
fn cni(lab: &Lab, cmd: &str, id: &str, podns: &str, conf: &serde_json::Value) -> (i32, String) {
    let out = common::run_weft_net(&lab.namespace(1), cmd, id, podns, None, conf);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn conf(socket: &std::path::Path) -> serde_json::Value {
    serde_json::json!({
        "cniVersion": "1.1.0", "name": "weft", "type": "weft-net",
        "socket": socket,
    })
}

async fn used(lab: &Lab) -> u64 {
    lab.status(1).await.unwrap().ipam.used
}

async fn used_becomes(lab: &Lab, n: u64) {
    for _ in 0..50 {
        if used(lab).await == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("IPAM used is {}, expected {n}", used(lab).await);
}

async fn endpoints_become(lab: &Lab, n: usize) {
    let mut last = Vec::new();
    for _ in 0..50 {
        last = lab.status(1).await.unwrap().endpoints;
        if last.len() == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("expected {n} endpoints, have {last:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root (network namespaces): run as root with --include-ignored, as scripts/test.sh does"]
async fn status_and_gc_through_the_plugin() {
    common::prerequisites();
    let id = format!("c{}", lab::random_alnum(5));
    let _guard = LabGuard::new(&id);
    let mut opts = LabOptions::new(&id, 1, WEFT);
    opts.password = LabPassword::Random;
    let lab = Lab::up(opts).await.expect("lab up");
    let conf = conf(&lab.node_socket(1));

    // STATUS: ready once the node's gateway is set (the lab waits for the mesh, not that).
    let mut status = (1, String::new());
    for _ in 0..50 {
        status = cni(&lab, "STATUS", "", "", &conf);
        if status.0 == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, (0, String::new()), "STATUS of a ready router");

    let tag = lab::random_alnum(4);
    let mut ns = PodNs(Vec::new());
    let mut ids = Vec::new();
    for k in ["a", "b", "c"] {
        let name = format!("wg{tag}{k}");
        assert!(Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .unwrap()
            .success());
        ns.0.push(name.clone());
        let (code, out) = cni(&lab, "ADD", &format!("ctr-{k}"), &name, &conf);
        assert_eq!(code, 0, "{out}");
        ids.push(format!("ctr-{k}"));
    }
    used_becomes(&lab, 4).await; // gateway + three pods
    endpoints_become(&lab, 3).await;

    // The runtime lost container b (its namespace is gone) and garbage-collects: every
    // attachment it still knows is valid, b's address is released.
    let b_ns = ns.0.remove(1);
    let _ = Command::new("ip").args(["netns", "del", &b_ns]).status();
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = serde_json::json!([
        {"containerID": "ctr-a", "ifname": "eth0"},
        {"containerID": "ctr-c", "ifname": "eth0"},
    ]);
    let (code, out) = cni(&lab, "GC", "", "", &gc);
    assert_eq!((code, out.as_str()), (0, ""), "GC succeeds silently");
    used_becomes(&lab, 3).await;
    endpoints_become(&lab, 2).await; // b's endpoint is gone

    // GC without the list is refused (code 7), never read as "nothing is valid".
    let (code, out) = cni(&lab, "GC", "", "", &conf);
    assert_ne!(code, 0);
    let err: serde_json::Value = serde_json::from_str(&out).expect("error JSON");
    assert_eq!(err["code"], 7, "{err}");
    used_becomes(&lab, 3).await;

    // GC again is a no-op; an empty list releases every pod (never the node's gateway).
    assert_eq!(cni(&lab, "GC", "", "", &gc).0, 0);
    used_becomes(&lab, 3).await;
    let mut none = conf.clone();
    none["cni.dev/valid-attachments"] = serde_json::json!([]);
    let (code, out) = cni(&lab, "GC", "", "", &none);
    assert_eq!(code, 0, "{out}");
    used_becomes(&lab, 1).await;

    // STATUS with no router behind the socket: code 50, "plugin not available".
    let mut dead = conf.clone();
    dead["socket"] = serde_json::json!(format!("/run/weft-lab/{id}/nothing.sock"));
    let (code, out) = cni(&lab, "STATUS", "", "", &dead);
    assert_ne!(code, 0);
    let err: serde_json::Value = serde_json::from_str(&out).expect("error JSON");
    assert_eq!(err["code"], 50, "{err}");
}
