//! `weft-net` driven the way container runtimes drive it: a fresh process per command, the
//! `CNI_*` environment (and nothing else), the network configuration on stdin, the result or
//! the CNI error JSON on stdout, the exit status. No router runs here: these are the protocol
//! and failure cases (the full ADD/DEL path against a router is tested elsewhere).

#![allow(unsafe_code)] // syscalls and FFI; each use has its SAFETY note

use std::io::Write as _;
use std::process::{Command, Stdio};

use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_weft-net");

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    /// stdout as JSON (it must be, whenever there is any).
    fn json(&self) -> Value {
        serde_json::from_str(self.stdout.trim()).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}): {:?}\nstderr: {}",
                self.stdout, self.stderr
            )
        })
    }

    /// Asserts a CNI error: exit 1 and the spec's error object with `code`.
    fn error(&self, code: u64) -> Value {
        let v = self.json();
        assert_eq!(self.code, 1, "exit status; stdout {}", self.stdout);
        assert_eq!(v["code"], code, "{v}\nstderr: {}", self.stderr);
        assert!(v["cniVersion"].is_string(), "{v}");
        assert!(v["msg"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
        assert!(v["details"].is_string(), "{v}");
        v
    }
}

fn run(env: &[(&str, &str)], stdin: &str) -> Run {
    let mut child = Command::new(BIN)
        .env_clear()
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn weft-net");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    Run {
        code: out.status.code().expect("exited"),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

/// A socket path nobody listens on.
fn dead_socket() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("/tmp/nonexistent-{}-{nanos}.sock", std::process::id())
}

fn conf(version: &str, socket: &str) -> String {
    json!({"cniVersion": version, "name": "weft", "type": "weft-net", "socket": socket}).to_string()
}

/// A namespace of the test's own, empty: it exists, and ADD's first look into it (is the
/// interface name free?) changes nothing. (Not the plugin's own namespace: that is the node's,
/// which weft-net refuses.) Removed when the test process exits.
fn netns() -> &'static str {
    static NS: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NS.get_or_init(|| {
        let name = format!("weft-cnispec-{}", std::process::id());
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            ok,
            "creating the network namespace {name} (needs root and iproute2)"
        );
        extern "C" fn remove() {
            let name = format!("weft-cnispec-{}", std::process::id());
            let _ = Command::new("ip").args(["netns", "del", &name]).status();
        }
        // SAFETY: registers a plain function to run at exit.
        unsafe { libc::atexit(remove) };
        format!("/var/run/netns/{name}")
    })
}
/// An interface name that exists nowhere.
const IFNAME: &str = "wefttest0";

fn attach_env<'a>(command: &'a str, container: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("CNI_COMMAND", command),
        ("CNI_CONTAINERID", container),
        ("CNI_NETNS", netns()),
        ("CNI_IFNAME", IFNAME),
        ("CNI_PATH", "/opt/cni/bin"),
        (
            "CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;\
             K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=1234",
        ),
    ]
}

#[test]
fn version_lists_the_supported_versions() {
    for stdin in ["", r#"{"cniVersion":"1.1.0"}"#, "not even json"] {
        let r = run(&[("CNI_COMMAND", "VERSION")], stdin);
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert_eq!(
            r.json(),
            json!({"cniVersion": "1.1.0",
                   "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]})
        );
    }
    // The caller's version is echoed when it is one of ours.
    let r = run(&[("CNI_COMMAND", "VERSION")], r#"{"cniVersion":"1.0.0"}"#);
    assert_eq!(r.json()["cniVersion"], "1.0.0");
}

#[test]
#[ignore = "needs root (network namespaces): run as root with --include-ignored, as scripts/test.sh does"]
fn malformed_stdin_is_code_6() {
    for stdin in ["{\"cniVersion\": \"1.0.0\", ", "", "[]", "hello"] {
        let r = run(&attach_env("ADD", "c1"), stdin);
        r.error(6);
    }
}

#[test]
#[ignore = "needs root (network namespaces): run as root with --include-ignored, as scripts/test.sh does"]
fn unknown_cni_version_is_code_1() {
    let s = dead_socket();
    for v in ["0.2.0", "1.2.0", "2.0.0"] {
        let r = run(&attach_env("ADD", "c1"), &conf(v, &s));
        let e = r.error(1);
        assert!(e["msg"].as_str().unwrap().contains(v), "{e}");
    }
    let r = run(
        &attach_env("ADD", "c1"),
        r#"{"name":"weft","type":"weft-net"}"#,
    );
    r.error(1);
    // Commands newer than the configuration's version.
    for (cmd, v) in [("STATUS", "1.0.0"), ("GC", "1.0.0"), ("CHECK", "0.3.1")] {
        let r = run(&attach_env(cmd, "c1"), &conf(v, &s));
        r.error(1);
    }
}

#[test]
#[ignore = "needs root (network namespaces): run as root with --include-ignored, as scripts/test.sh does"]
fn missing_or_invalid_environment_is_code_4() {
    let s = dead_socket();
    let c = conf("1.0.0", &s);
    for missing in ["CNI_CONTAINERID", "CNI_IFNAME", "CNI_NETNS", "CNI_COMMAND"] {
        let env: Vec<_> = attach_env("ADD", "c1")
            .into_iter()
            .filter(|(k, _)| *k != missing)
            .collect();
        let e = run(&env, &c).error(4);
        assert!(e["msg"].as_str().unwrap().contains(missing), "{e}");
    }
    let e = run(&attach_env("FROB", "c1"), &c).error(4);
    assert!(e["msg"].as_str().unwrap().contains("FROB"), "{e}");
    let e = run(&attach_env("ADD", "-bad/id"), &c).error(4);
    assert!(
        e["msg"].as_str().unwrap().contains("CNI_CONTAINERID"),
        "{e}"
    );
    // Unknown CNI_ARGS without IgnoreUnknown.
    let mut env = attach_env("ADD", "c1");
    env.retain(|(k, _)| *k != "CNI_ARGS");
    env.push(("CNI_ARGS", "K8S_POD_NAME=web-0;IP=10.32.0.9"));
    let e = run(&env, &c).error(4);
    let msg = e["msg"].as_str().unwrap();
    assert!(
        msg.contains("CNI_ARGS") && msg.contains("IP=10.32.0.9"),
        "{e}"
    );
    // The error is in the configuration's version.
    assert_eq!(e["cniVersion"], "1.0.0");
}

#[test]
#[ignore = "needs root (network namespaces): run as root with --include-ignored, as scripts/test.sh does"]
fn invalid_config_is_code_7_and_delegated_ipam_code_2() {
    let s = dead_socket();
    let r = run(
        &attach_env("ADD", "c1"),
        &json!({"cniVersion": "1.0.0", "name": "weft", "type": "weft-net", "socket": "rel.sock"})
            .to_string(),
    );
    r.error(7);
    let r = run(
        &attach_env("ADD", "c1"),
        &json!({"cniVersion": "1.0.0", "name": "", "type": "weft-net"}).to_string(),
    );
    r.error(7);
    let r = run(
        &attach_env("ADD", "c1"),
        &json!({"cniVersion": "1.0.0", "name": "weft", "type": "weft-net", "socket": s,
                "ipam": {"type": "host-local"}})
        .to_string(),
    );
    let e = r.error(2);
    assert!(e["msg"].as_str().unwrap().contains("host-local"), "{e}");
    let r = run(&[("CNI_COMMAND", "GC")], &conf("1.1.0", &s));
    r.error(7);
}

#[test]
#[ignore = "needs root (network namespaces): run as root with --include-ignored, as scripts/test.sh does"]
fn add_with_a_dead_router_is_code_11_and_creates_nothing() {
    let s = dead_socket();
    let container = "deadrouter0123";
    let r = run(&attach_env("ADD", container), &conf("1.0.0", &s));
    let e = r.error(11);
    assert!(e["msg"].as_str().unwrap().contains(&s), "{e}");
    assert_eq!(e["cniVersion"], "1.0.0");
    assert!(
        r.stderr.contains(&s),
        "the log names the socket: {}",
        r.stderr
    );
    // Nothing half-created: no host-side veth, no pod interface.
    let host = weft_fastpath::host_ifname_for(container, IFNAME);
    assert!(!std::path::Path::new("/sys/class/net").join(&host).exists());
    assert!(!std::path::Path::new("/sys/class/net").join(IFNAME).exists());
}

#[test]
#[ignore = "needs root (network namespaces): run as root with --include-ignored, as scripts/test.sh does"]
fn add_into_the_nodes_own_namespace_is_refused_before_anything_is_done() {
    // A runtime (or anyone who can run the plugin) naming the host's namespace must not get
    // the node's own network reconfigured: no interface, no address, no route.
    let container = "hostns0123";
    for own in ["/proc/self/ns/net", "/proc/thread-self/ns/net"] {
        let mut env = attach_env("ADD", container);
        env.retain(|(k, _)| *k != "CNI_NETNS");
        env.push(("CNI_NETNS", own));
        let e = run(&env, &conf("1.0.0", &dead_socket())).error(4);
        assert!(
            e["msg"]
                .as_str()
                .unwrap()
                .contains("the node's own network namespace"),
            "{e}"
        );
    }
    let host = weft_fastpath::host_ifname_for(container, IFNAME);
    assert!(!std::path::Path::new("/sys/class/net").join(&host).exists());
}

#[test]
#[ignore = "needs root (network namespaces): run as root with --include-ignored, as scripts/test.sh does"]
fn add_into_a_missing_namespace_is_code_3() {
    let mut env = attach_env("ADD", "c1");
    env.retain(|(k, _)| *k != "CNI_NETNS");
    env.push(("CNI_NETNS", "/var/run/netns/weft-test-no-such-ns"));
    run(&env, &conf("1.0.0", &dead_socket())).error(3);
}

#[test]
#[ignore = "needs root (network namespaces): run as root with --include-ignored, as scripts/test.sh does"]
fn del_with_missing_netns_and_dead_router_asks_for_a_retry() {
    // Documented behaviour: the interface side is done (nothing to remove), but the address
    // cannot be released while the router is unreachable, so DEL fails with 11 and the runtime
    // retries; the retry is idempotent.
    let s = dead_socket();
    for netns in [None, Some("/var/run/netns/weft-test-gone")] {
        let mut env: Vec<_> = attach_env("DEL", "gone0123")
            .into_iter()
            .filter(|(k, _)| *k != "CNI_NETNS")
            .collect();
        if let Some(n) = netns {
            env.push(("CNI_NETNS", n));
        }
        for _ in 0..2 {
            let e = run(&env, &conf("1.0.0", &s)).error(11);
            assert!(e["msg"].as_str().unwrap().contains(&s), "{e}");
        }
    }
}

#[test]
fn status_with_a_dead_router_is_code_50() {
    let s = dead_socket();
    let e = run(&[("CNI_COMMAND", "STATUS")], &conf("1.1.0", &s)).error(50);
    assert!(e["msg"].as_str().unwrap().contains(&s), "{e}");
    assert_eq!(e["cniVersion"], "1.1.0");
}

#[test]
fn gc_with_a_dead_router_is_code_11() {
    let s = dead_socket();
    let c = json!({"cniVersion": "1.1.0", "name": "weft", "type": "weft-net", "socket": s,
                   "cni.dev/valid-attachments": [{"containerID": "a1", "ifname": "eth0"}]});
    let e = run(
        &[("CNI_COMMAND", "GC"), ("CNI_PATH", "/opt/cni/bin")],
        &c.to_string(),
    )
    .error(11);
    assert!(e["msg"].as_str().unwrap().contains(&s), "{e}");
}

#[test]
#[ignore = "needs root (network namespaces): run as root with --include-ignored, as scripts/test.sh does"]
fn check_needs_prev_result() {
    let e = run(&attach_env("CHECK", "c1"), &conf("1.0.0", &dead_socket())).error(7);
    assert!(e["msg"].as_str().unwrap().contains("prevResult"), "{e}");
}

#[test]
#[ignore = "needs root (network namespaces): run as root with --include-ignored, as scripts/test.sh does"]
fn log_file_from_weft_cni_log() {
    let log = format!("{}.log", dead_socket());
    let mut env = attach_env("ADD", "c1");
    env.push(("WEFT_CNI_LOG", &log));
    run(&env, &conf("1.0.0", &dead_socket())).error(11);
    let text = std::fs::read_to_string(&log).expect("log file written");
    let _ = std::fs::remove_file(&log);
    assert!(text.contains("cannot reach the weft router"), "{text}");
}

#[test]
#[ignore = "needs root (network namespaces): run as root with --include-ignored, as scripts/test.sh does"]
fn sample_conflist_is_valid() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/10-weft.conflist");
    let v: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert_eq!(v["name"], "weft");
    let version = v["cniVersion"].as_str().unwrap();
    let first = &v["plugins"][0];
    assert_eq!(first["type"], "weft-net");
    // What a runtime would pass to weft-net: the plugin entry plus name and cniVersion.
    let mut c = first.clone();
    c["name"] = v["name"].clone();
    c["cniVersion"] = json!(version);
    c["socket"] = json!(dead_socket());
    let r = run(&attach_env("ADD", "c1"), &c.to_string());
    r.error(11);
    let r = run(&[("CNI_COMMAND", "VERSION")], "");
    let supported = r.json()["supportedVersions"].clone();
    assert!(supported.as_array().unwrap().contains(&json!(version)));
}
