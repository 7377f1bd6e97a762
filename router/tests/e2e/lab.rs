//! `weft lab` plumbing: namespaces, veths and the bridge; starting and stopping detached
//! processes in them. Needs root and iproute2; `#[ignore]`d unless asked for (see main.rs). Each test
//! uses its own random lab id and tears down through a guard, so runs do not collide.

use crate::common::prerequisites;
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt as _;
use std::path::PathBuf;
use std::time::Duration;

use weft::lab::{self, Lab, LabGuard, LabOptions, LabPassword, Topology};

fn test_id() -> String {
    format!("t{}", lab::random_alnum(5))
}

#[test]
fn names_and_addresses() {
    assert!(lab::validate_id("lab").is_ok());
    assert!(lab::validate_id("a1b2c3d4").is_ok());
    for bad in ["", "a1b2c3d4e", "Lab", "a-b", "a/b", "a b"] {
        assert!(lab::validate_id(bad).is_err(), "{bad:?}");
    }
    assert!(Topology::single_segment("x", 0).is_err());
    assert!(Topology::single_segment("x", 65).is_err());
    let t = Topology::single_segment("lab", 64).unwrap();
    assert_eq!(t.node_namespace(1), "weft-lab-n1");
    assert_eq!(t.segments[0].namespace, "weft-lab-sw");
    assert_eq!(t.primary_addr(1), Ipv4Addr::new(10, 201, 0, 11));
    assert_eq!(t.primary_addr(64), Ipv4Addr::new(10, 201, 0, 74));
    assert_eq!(t.namespaces().len(), 65);
    let a = lab::node_peer_name("lab", 1);
    assert_eq!(a, lab::node_peer_name("lab", 1));
    assert_ne!(a, lab::node_peer_name("lab", 2));
    assert!(a.parse::<weft_gossip::PeerName>().is_ok());
}

#[tokio::test]
#[ignore = "needs root (network namespaces): run as root with --include-ignored, as scripts/test.sh does"]
async fn topology_up_ping_and_teardown() {
    prerequisites();
    let id = test_id();
    let _guard = LabGuard::new(&id);
    let topo = lab::create_topology(&id, 3).await.unwrap();
    let mut found = lab::list_namespaces(&format!("weft-{id}-")).unwrap();
    found.sort();
    let mut want = topo.namespaces();
    want.sort();
    assert_eq!(found, want);
    assert_eq!(found.len(), 4);

    let n2 = topo.node_namespace(2);
    let addrs = lab::topology::ip(&["-n", &n2, "-4", "addr", "show", "dev", "eth0"]).unwrap();
    assert!(addrs.contains("10.201.0.12/24"), "{addrs}");

    // Underlay reachability n1 -> n2 through the switch: TCP from a thread in n1 to a
    // listener in n2 (no ping binary needed) ...
    let listener = lab::run_in_netns(&n2, || std::net::TcpListener::bind("10.201.0.12:0"))
        .unwrap()
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    let accept = std::thread::spawn(move || listener.accept().map(|(_, peer)| peer));
    let local = lab::run_in_netns(&topo.node_namespace(1), move || {
        let s = std::net::TcpStream::connect_timeout(
            &(Ipv4Addr::new(10, 201, 0, 12), port).into(),
            Duration::from_secs(3),
        )?;
        s.local_addr()
    })
    .unwrap()
    .unwrap();
    assert_eq!(local.ip().to_string(), "10.201.0.11");
    assert_eq!(
        accept.join().unwrap().unwrap().ip().to_string(),
        "10.201.0.11"
    );

    // ... and ICMP when ping is installed.
    let ping = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &topo.node_namespace(1),
            "ping",
            "-c1",
            "-W1",
            "10.201.0.13",
        ])
        .output();
    match ping {
        Ok(out)
            if out.status.code() != Some(127)
                && !String::from_utf8_lossy(&out.stderr).contains("No such file") =>
        {
            assert!(
                out.status.success(),
                "ping failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        _ => eprintln!("ping not installed: checked reachability over TCP only"),
    }

    let r = lab::teardown(&id).await.unwrap();
    assert_eq!(r.namespaces.len(), 4);
    assert!(lab::list_namespaces(&format!("weft-{id}-"))
        .unwrap()
        .is_empty());
    // idempotent
    assert!(lab::teardown(&id).await.unwrap().namespaces.is_empty());
}

#[tokio::test]
#[ignore = "needs root (network namespaces): run as root with --include-ignored, as scripts/test.sh does"]
async fn teardown_after_partial_failure() {
    prerequisites();
    let id = test_id();
    let _guard = LabGuard::new(&id);
    // A leftover namespace makes creation fail half-way.
    lab::topology::ip(&["netns", "add", &format!("weft-{id}-n3")]).unwrap();
    let err = lab::create_topology(&id, 4).await.unwrap_err().to_string();
    assert!(err.contains(&format!("weft-{id}-n3")), "{err}");
    let left = lab::list_namespaces(&format!("weft-{id}-")).unwrap();
    assert!(left.len() >= 3, "{left:?}");

    let r = Lab::down(&id).await.unwrap();
    assert_eq!(r.namespaces.len(), left.len());
    assert!(lab::list_namespaces(&format!("weft-{id}-"))
        .unwrap()
        .is_empty());
    let again = Lab::down(&id).await.unwrap();
    assert!(again.nothing_found(), "{again:?}");
}

/// A stand-in for `weft router`: logs its arguments and sleeps until told to stop;
/// exits at once when given `--exit-now`.
fn fake_router(dir: &std::path::Path) -> PathBuf {
    let path = dir.join("fake-weft");
    std::fs::write(
        &path,
        "#!/bin/sh\n\
         echo \"fake router: $*\"\n\
         for a in \"$@\"; do [ \"$a\" = --exit-now ] && { echo exiting; exit 3; }; done\n\
         trap 'kill $child 2>/dev/null; exit 0' TERM\n\
         sleep 300 & child=$!\n\
         wait $child\n",
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

#[tokio::test]
#[ignore = "needs root (network namespaces): run as root with --include-ignored, as scripts/test.sh does"]
async fn lab_processes_start_stop_and_down() {
    prerequisites();
    let id = test_id();
    let _guard = LabGuard::new(&id);
    let tmp = std::env::temp_dir().join(format!("weft-labtest-{id}"));
    std::fs::create_dir_all(&tmp).unwrap();
    let bin = fake_router(&tmp);

    let mut opts = LabOptions::new(&id, 3, &bin);
    opts.wait = false;
    opts.router_args = vec!["--no-fastpath".into()];
    let lab = Lab::up(opts).await.unwrap();
    let dir = lab.dir();
    assert_eq!(dir, PathBuf::from(format!("/run/weft-lab/{id}")));
    assert_eq!(lab.namespace(2), format!("weft-{id}-n2"));
    assert_eq!(lab.underlay_addr(3), Ipv4Addr::new(10, 201, 0, 13));
    assert_eq!(lab.node_socket(1), dir.join("n1.sock"));

    let pw = dir.join("password");
    assert_eq!(
        std::fs::metadata(&pw).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(std::fs::read_to_string(&pw).unwrap().len(), 32);

    // lab.json describes the lab, with the exact router command lines
    let info: lab::LabInfo =
        serde_json::from_str(&std::fs::read_to_string(dir.join("lab.json")).unwrap()).unwrap();
    assert_eq!(info, lab.info());
    let argv = &info.nodes[0].argv;
    let expect: Vec<String> = [
        bin.to_str().unwrap(),
        "router",
        "--name",
        &lab::node_peer_name(&id, 1),
        "--nickname",
        "n1",
        "--peer",
        "10.201.0.12:6783",
        "--peer",
        "10.201.0.13:6783",
        "--password-file",
        pw.to_str().unwrap(),
        "--status-addr",
        "127.0.0.1:6784",
        "--metrics-addr",
        "127.0.0.1:6782",
        "--api-socket",
        dir.join("n1.sock").to_str().unwrap(),
        "--state-dir",
        dir.join("n1.state").to_str().unwrap(),
        "--no-fastpath",
    ]
    .map(String::from)
    .to_vec();
    assert_eq!(argv, &expect);

    // every router runs detached inside its own namespace
    for i in 1..=3 {
        let pid = lab.pid(i).expect("router running");
        // `ip netns exec` enters the namespace just after it is spawned: give it a moment.
        let t = std::time::Instant::now();
        let in_ns = loop {
            let in_ns = lab::topology::namespace_pids(&lab.namespace(i));
            if in_ns.contains(&pid) || t.elapsed() > std::time::Duration::from_secs(3) {
                break in_ns;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        };
        assert!(
            in_ns.contains(&pid),
            "pid {pid} not in {}: {in_ns:?}",
            lab.namespace(i)
        );
        assert_eq!(
            std::fs::read_to_string(dir.join(format!("n{i}.pid")))
                .unwrap()
                .trim(),
            pid.to_string()
        );
    }
    let log = lab.log_path(2);
    let mut logged = String::new();
    for _ in 0..50 {
        logged = std::fs::read_to_string(&log).unwrap();
        if logged.contains("fake router:") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(logged.contains("fake router: router --name"), "{logged}");

    // no status API behind the fake: waiting times out and says what each node saw
    let err = format!(
        "{:#}",
        lab.wait_for_mesh(Duration::from_millis(300))
            .await
            .unwrap_err()
    );
    assert!(err.contains("not reached within"), "{err}");
    assert!(
        err.contains("fake router:") && err.contains("weft lab down --id"),
        "{err}"
    );
    assert!(lab.status(1).await.is_err());

    // stop and restart a node with another password and extra arguments
    let old = lab.pid(1).unwrap();
    lab.stop_node(1).await.unwrap();
    assert!(lab.pid(1).is_none());
    assert!(!lab::process::alive(old));
    assert!(!dir.join("n1.pid").exists());
    lab.stop_node(1).await.unwrap(); // idempotent
    let new = lab
        .start_node(
            1,
            &["--conn-limit".into(), "5".into()],
            Some(LabPassword::Random),
        )
        .await
        .unwrap();
    assert_ne!(new, old);
    let argv = lab.info().nodes[0].argv.clone();
    let own_pw = dir.join("n1.password");
    assert!(argv
        .windows(2)
        .any(|w| w[0] == "--password-file" && w[1] == own_pw.to_str().unwrap()));
    assert_ne!(
        std::fs::read_to_string(&own_pw).unwrap(),
        std::fs::read_to_string(&pw).unwrap()
    );
    assert!(argv.ends_with(&["--conn-limit".to_string(), "5".to_string()]));
    assert!(
        lab.start_node(1, &[], None).await.is_err(),
        "already running"
    );

    // a node without password
    lab.stop_node(3).await.unwrap();
    lab.start_node(3, &[], Some(LabPassword::None))
        .await
        .unwrap();
    assert!(!lab.info().nodes[2]
        .argv
        .iter()
        .any(|a| a == "--password-file"));

    // a router that exits is reported at once, not after the timeout
    lab.stop_node(2).await.unwrap();
    lab.start_node(2, &["--exit-now".into()], None)
        .await
        .unwrap();
    let t0 = std::time::Instant::now();
    let err = format!(
        "{:#}",
        lab.wait_for_mesh(Duration::from_secs(20))
            .await
            .unwrap_err()
    );
    assert!(err.contains("router of n2 exited"), "{err}");
    assert!(t0.elapsed() < Duration::from_secs(10));

    // the lab can be found again from its directory
    let again = Lab::load(&id).unwrap();
    assert_eq!(again.info(), lab.info());

    let pids: Vec<u32> = [1, 3].iter().filter_map(|&i| lab.pid(i)).collect();
    assert_eq!(pids.len(), 2);
    let r = Lab::down(&id).await.unwrap();
    assert_eq!(r.namespaces.len(), 4);
    assert!(r.dir_removed);
    assert!(r.processes >= 2);
    for p in pids {
        assert!(!lab::process::alive(p), "pid {p} survived lab down");
    }
    assert!(!dir.exists());
    assert!(lab::list_namespaces(&format!("weft-{id}-"))
        .unwrap()
        .is_empty());
    assert!(Lab::load(&id).is_err());
    std::fs::remove_dir_all(&tmp).unwrap();
}

#[tokio::test]
#[ignore = "needs root (network namespaces): run as root with --include-ignored, as scripts/test.sh does"]
async fn up_fails_cleanly_without_binary() {
    prerequisites();
    let id = test_id();
    let _guard = LabGuard::new(&id);
    let err = Lab::up(LabOptions::new(&id, 2, "/nonexistent/weft"))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("/nonexistent/weft") && err.contains("not found"),
        "{err}"
    );
    assert!(lab::list_namespaces(&format!("weft-{id}-"))
        .unwrap()
        .is_empty());
}

/// A directory holding links to only `tools` (found on the current `PATH`): a `PATH` for a
/// machine that lacks everything else. Removed on drop.
struct OnlyTools(PathBuf);

impl OnlyTools {
    fn new(tools: &[&str]) -> OnlyTools {
        let dir = std::env::temp_dir().join(format!("weft-path-{}", lab::random_alnum(8)));
        std::fs::create_dir(&dir).unwrap();
        let path = std::env::var_os("PATH").unwrap_or_default();
        for t in tools {
            let found = std::env::split_paths(&path)
                .map(|d| d.join(t))
                .find(|p| p.is_file())
                .unwrap_or_else(|| panic!("{t} is not on PATH"));
            std::os::unix::fs::symlink(found, dir.join(t)).unwrap();
        }
        OnlyTools(dir)
    }

    fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for OnlyTools {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `weft lab up` as a user runs it, with `PATH` set to `path`.
fn lab_up_with_path(path: &std::path::Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(["lab", "up"])
        .args(args)
        .env("PATH", path)
        .output()
        .unwrap()
}

fn nothing_left(id: &str) {
    assert!(
        lab::list_namespaces(&format!("weft-{id}-"))
            .unwrap()
            .is_empty(),
        "namespaces of lab {id} left behind"
    );
    assert!(
        !lab::lab_dir(id).exists(),
        "{} left behind",
        lab::lab_dir(id).display()
    );
}

#[tokio::test]
#[ignore = "needs root (network namespaces): run as root with --include-ignored, as scripts/test.sh does"]
async fn up_names_a_missing_tool_and_leaves_nothing_behind() {
    prerequisites();
    for (tools, package) in [(&["ip"][..], "nftables"), (&["nft"][..], "iproute2")] {
        let id = test_id();
        let _guard = LabGuard::new(&id);
        let path = OnlyTools::new(tools);
        let out = lab_up_with_path(path.path(), &["--id", &id, "--nodes", "2"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "with only {tools:?}: {stderr}");
        assert!(
            stderr.contains(package) && stderr.contains("apt-get install"),
            "with only {tools:?} the error must name {package}: {stderr}"
        );
        nothing_left(&id);
    }
}

#[tokio::test]
#[ignore = "needs root (network namespaces): run as root with --include-ignored, as scripts/test.sh does"]
async fn up_needs_no_ping_command() {
    prerequisites();
    let id = test_id();
    let _guard = LabGuard::new(&id);
    // What a fresh Debian machine with iproute2 and nftables has: no ping, no iperf, no
    // tcpdump. The pods' reachability check must still pass (it is weft's own ICMP echo).
    let path = OnlyTools::new(&["ip", "nft"]);
    let out = lab_up_with_path(
        path.path(),
        &["--id", &id, "--nodes", "2", "--pods", "1", "--no-password"],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("ping n1-p1 -> n2-p1") && stdout.contains("ping n2-p1 -> n1-p1"),
        "{stdout}"
    );
    assert!(!stdout.contains("FAILED"), "{stdout}");
    // ... and it is an honest probe: a pod that is gone does not answer.
    let victim = stdout
        .lines()
        .find(|l| l.contains("ping n1-p1 -> n2-p1"))
        .and_then(|l| l.split(['(', ')']).nth(1))
        .expect("the address of n2-p1")
        .to_string();
    let from = format!("weft-{id}-n1-p1");
    assert!(weft::lab::pods::ping(&from, &victim), "n1-p1 -> {victim}");
    lab::topology::ip(&[
        "-n",
        &format!("weft-{id}-n2-p1"),
        "link",
        "set",
        "eth0",
        "down",
    ])
    .unwrap();
    let err = weft::lab::pods::echo(&from, &victim)
        .unwrap_err()
        .to_string();
    assert!(err.contains("no answer"), "{err}");
}
