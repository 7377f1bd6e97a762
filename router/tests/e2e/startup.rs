//! Starting without a usable network password file (a Kubernetes Secret missing, or emptied):
//! the router must not exit into a crash loop. It stays up, says what it waits for (status,
//! `/readyz`, the CNI plugin's error), keeps the mesh and the sleeve off, and joins the mesh
//! once the file holds the password; readiness then follows the mesh.
//! Needs root, iproute2, nft and ping; `#[ignore]`d unless asked for (see main.rs).

use crate::common::*;
use std::process::Command;
use std::time::{Duration, Instant};
use weft::lab::{Lab, LabPassword};

/// GET `path` on node `i`'s API: (HTTP code, body).
async fn get(lab: &Lab, i: usize, path: &str) -> (u16, String) {
    let addr = format!("unix:{}", lab.node_socket(i).display());
    weft::client::get(&addr, path)
        .await
        .expect("the API answers")
}

/// `weft status ready` against node `i`, as the DaemonSet's readiness probe runs it:
/// (success, stdout + stderr).
fn ready_cmd(lab: &Lab, i: usize) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(["status", "ready", "--addr"])
        .arg(format!("unix:{}", lab.node_socket(i).display()))
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

async fn wait_readyz(lab: &Lab, i: usize, want: u16, limit: Duration) -> String {
    let t = Instant::now();
    loop {
        // A router that is (re)starting may not have bound its socket yet.
        let addr = format!("unix:{}", lab.node_socket(i).display());
        let (code, body) = weft::client::get(&addr, "/readyz")
            .await
            .unwrap_or_else(|e| (0, e.to_string()));
        if code == want {
            return body;
        }
        assert!(
            t.elapsed() < limit,
            "node {i}: /readyz stays {code} ({}), expected {want}",
            body.trim()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root (network namespaces): run as root with --include-ignored, as scripts/test.sh does"]
async fn a_blank_or_missing_password_file_is_waited_for_not_fatal() {
    prerequisites();
    let (lab, _g) = lab_with("pw", 2, LabPassword::Random, &[]).await;
    let secret = std::fs::read_to_string(lab.info().password_file.clone().unwrap()).unwrap();
    // Both routers are in the mesh: ready.
    wait_readyz(&lab, 1, 200, Duration::from_secs(10)).await;

    // n1 restarts with a whitespace-only password file (what an emptied Secret gives).
    lab.stop_node(1).await.unwrap();
    let pid = lab
        .start_node(1, &[], Some(LabPassword::Given(" \n".into())))
        .await
        .unwrap();
    let why = wait_readyz(&lab, 1, 503, Duration::from_secs(10)).await;
    assert!(why.contains("waiting for the network password"), "{why}");
    assert!(why.contains("is empty"), "{why}");
    // The readiness probe's command fails with the same reason (kubectl describe shows it).
    let (ok, text) = ready_cmd(&lab, 1);
    assert!(!ok, "weft status ready succeeds while waiting: {text}");
    assert!(text.contains("waiting for the network password"), "{text}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(weft::lab::process::alive(pid), "the router did not exit");
    let (code, body) = get(&lab, 1, "/healthz").await;
    assert_eq!(code, 200, "alive while waiting: {body}");
    let st = lab.status(1).await.unwrap();
    assert!(st.connections.is_empty(), "no mesh while waiting: {st:?}");
    assert!(st.encryption, "never runs unencrypted");
    let text = get(&lab, 1, "/status").await.1;
    assert!(
        text.contains("Ready: no: waiting for the network password"),
        "{text}"
    );
    // Nothing listens on the sleeve or control ports meanwhile.
    let ss = Command::new("ip")
        .args(["netns", "exec", &lab.namespace(1), "ss", "-uln"])
        .output()
        .unwrap();
    let ss = String::from_utf8_lossy(&ss.stdout);
    assert!(!ss.contains(":6783") && !ss.contains(":6784"), "{ss}");

    // The CNI plugin is told to try again later, with the reason.
    let pod_ns = format!("weft-pwwait-{}", weft::lab::random_alnum(5));
    let conf = serde_json::json!({
        "cniVersion": "1.1.0", "name": "weft", "type": "weft-net",
        "socket": lab.node_socket(1),
    });
    let out = run_weft_net(&lab.namespace(1), "STATUS", "c1", &pod_ns, None, &conf);
    let answer = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "STATUS fails while waiting");
    assert!(
        answer.contains("waiting for the network password"),
        "{answer}"
    );

    // The Secret is deleted (an optional Secret volume: the file disappears): still up,
    // still waiting, and the reason follows.
    let file = lab.dir().join("n1.password");
    std::fs::remove_file(&file).unwrap();
    let t = Instant::now();
    let why = loop {
        let (code, body) = get(&lab, 1, "/readyz").await;
        assert_eq!(code, 503, "not ready without a password file: {body}");
        if body.contains("cannot read password file") {
            break body;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the reason does not follow the missing file: {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(why.contains("No such file"), "{why}");
    assert!(
        weft::lab::process::alive(pid),
        "a missing file is not fatal"
    );

    // The Secret is fixed: the router starts the mesh by itself and becomes ready.
    let t = Instant::now();
    std::fs::write(&file, &secret).unwrap();
    wait_readyz(&lab, 1, 200, Duration::from_secs(20)).await;
    eprintln!("ready {:?} after the password file was fixed", t.elapsed());
    let (ok, text) = ready_cmd(&lab, 1);
    assert!(ok && text.trim() == "ready", "weft status ready: {text}");
    assert!(
        weft::lab::process::alive(pid),
        "the same process, no restart"
    );
    // In the mesh (once seen ready with no established connection under load: a follow-up
    // in the notes; the wait keeps this test about the password file).
    lab.wait_until(Duration::from_secs(5), "n1 connected", |s| {
        s[0].as_ref().is_some_and(|st| {
            st.connections
                .iter()
                .any(|c| c.state == weft::status::ConnState::Established)
        })
    })
    .await
    .unwrap();

    // Missing from the start (the Secret does not exist when the pod starts): the first
    // read fails, and that too is waited for, not fatal.
    lab.stop_node(1).await.unwrap();
    let shared = lab.info().password_file.clone().unwrap();
    let aside = shared.with_extension("aside");
    std::fs::rename(&shared, &aside).unwrap();
    let pid = lab.start_node(1, &[], None).await.unwrap();
    let why = wait_readyz(&lab, 1, 503, Duration::from_secs(10)).await;
    assert!(
        why.contains("cannot read password file") && why.contains("No such file"),
        "{why}"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        weft::lab::process::alive(pid),
        "a password file missing at start is not fatal"
    );
    std::fs::rename(&aside, &shared).unwrap();
    wait_readyz(&lab, 1, 200, Duration::from_secs(20)).await;
    assert!(
        weft::lab::process::alive(pid),
        "the same process, no restart"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root (network namespaces): run as root with --include-ignored, as scripts/test.sh does"]
async fn readiness_needs_a_peer_connection_when_peers_are_known() {
    prerequisites();
    let (lab, _g) = lab_with("rd", 2, LabPassword::Random, &[]).await;
    wait_readyz(&lab, 1, 200, Duration::from_secs(10)).await;
    // n2 gone: n1 knows a peer but reaches none.
    lab.stop_node(2).await.unwrap();
    let why = wait_readyz(&lab, 1, 503, Duration::from_secs(15)).await;
    assert!(why.contains("no connection established"), "{why}");
    let (code, _) = get(&lab, 1, "/healthz").await;
    assert_eq!(code, 200, "liveness does not depend on peers");
    lab.start_node(2, &[], None).await.unwrap();
    wait_readyz(&lab, 1, 200, Duration::from_secs(20)).await;
}
