//! Hostile or unlucky input to a node: what a container runtime (or anyone who can run the
//! plugin) passes to `weft-net`, and a full state directory. Each must be refused cleanly,
//! never cost another node anything, and never hand out an address twice. Needs root,
//! iproute2 and nft; `#[ignore]`d unless asked for (see main.rs).

use crate::common::frames;
use crate::common::*;
use serde_json::json;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use weft::lab::{self, LabPassword};

fn netns_add(name: &str) {
    ip(&["netns", "add", name]);
}

struct Namespaces(Vec<String>);
impl Drop for Namespaces {
    fn drop(&mut self) {
        for n in &self.0 {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

/// A host on lab `lab`'s underlay switch that is no peer: namespace `<prefix><tag>` with eth0
/// on the switch, holding `addrs` (each `/24`). Removed when the guard drops.
fn underlay_host(lab: &weft::lab::Lab, prefix: &str, addrs: &[String]) -> (String, Namespaces) {
    let tag = lab::random_alnum(4);
    let name = format!("{prefix}{tag}");
    netns_add(&name);
    let guard = Namespaces(vec![name.clone()]);
    let sw = format!("weft-{}-sw", lab.id());
    let port = format!("{name}p");
    ip(&[
        "-n", &sw, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &name,
    ]);
    ip(&["-n", &sw, "link", "set", &port, "master", "br0", "up"]);
    for a in addrs {
        ip(&[
            "-n",
            &name,
            "addr",
            "add",
            &format!("{a}/24"),
            "dev",
            "eth0",
        ]);
    }
    ip(&["-n", &name, "link", "set", "eth0", "up"]);
    (name, guard)
}

fn has_eth0(ns: &str) -> bool {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "ip", "-o", "link"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).contains("eth0")
}

fn cni_error(out: &std::process::Output) -> serde_json::Value {
    assert!(
        !out.status.success(),
        "succeeded: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root (network namespaces): run as root with --include-ignored, as scripts/test.sh does"]
async fn runtime_input_that_would_hurt_other_nodes_is_refused() {
    prerequisites();
    let (lab, _g) = lab_with("hi", 2, LabPassword::None, &[]).await;
    let conf = json!({"cniVersion": "1.0.0", "name": "weft", "type": "weft-net",
                      "socket": lab.node_socket(1)});
    let tag = lab::random_alnum(4);
    let pod = format!("whi{tag}");
    netns_add(&pod);
    let _ns = Namespaces(vec![pod.clone()]);
    let node1 = lab.namespace(1);
    let conns_before = lab.status(1).await.unwrap().connections;

    // Pod names another node would refuse to take (over 512 bytes), or that would write
    // forged lines into every node's log.
    let long = format!("K8S_POD_NAMESPACE=default;K8S_POD_NAME={}", "a".repeat(600));
    let newline = "K8S_POD_NAMESPACE=default;K8S_POD_NAME=web\nINFO weft: forged".to_string();
    let upper = "K8S_POD_NAMESPACE=Default;K8S_POD_NAME=web-0".to_string();
    for args in [&long, &newline, &upper] {
        let out = run_weft_net(&node1, "ADD", "c-names", &pod, Some(args), &conf);
        let e = cni_error(&out);
        assert_eq!(e["code"], 4, "{e}");
        assert!(e["msg"].as_str().unwrap().contains("K8S_POD_"), "{e}");
        assert!(!e["msg"].as_str().unwrap().contains('\n'), "{e}");
        assert!(!has_eth0(&pod), "nothing created");
    }
    // The same through the router's socket, for any other client of it: refused before
    // anything is allocated.
    let sock = format!("unix:{}", lab.node_socket(1).display());
    let body = json!({"container_id": "c-api", "ifname": "eth0", "netns": format!("/var/run/netns/{pod}"),
                      "pod_namespace": "default", "pod_name": "x".repeat(600)});
    let (code, text) = weft::client::post_json(
        &sock,
        "/cni/v1/add",
        &body.to_string(),
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    assert_eq!(code, 400, "{text}");
    assert!(text.contains("K8S_POD_NAME"), "{text}");
    let container = json!({"container_id": "bad/../id", "ifname": "eth0", "netns": "/x"});
    let (code, _) = weft::client::post_json(
        &sock,
        "/cni/v1/add",
        &container.to_string(),
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    assert_eq!(code, 400);

    // CNI_NETNS naming the node's own namespace: the host is never configured as a pod.
    let addrs_before = Command::new("ip")
        .args(["netns", "exec", &node1, "ip", "-o", "addr"])
        .output()
        .unwrap()
        .stdout;
    let mut c = Command::new("ip");
    c.args(["netns", "exec", &node1, weft_net()])
        .env("CNI_COMMAND", "ADD")
        .env("CNI_CONTAINERID", "c-host")
        .env("CNI_NETNS", "/proc/self/ns/net")
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/opt/cni/bin")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(conf.to_string().as_bytes())
        .unwrap();
    let e = cni_error(&child.wait_with_output().unwrap());
    assert_eq!(e["code"], 4, "{e}");
    assert!(
        e["msg"].as_str().unwrap().contains("own network namespace"),
        "{e}"
    );
    let addrs_after = Command::new("ip")
        .args(["netns", "exec", &node1, "ip", "-o", "addr"])
        .output()
        .unwrap()
        .stdout;
    assert_eq!(addrs_before, addrs_after, "the node's addresses changed");

    // Endless stdin: read only up to a bound, then refused at once.
    let started = Instant::now();
    let out = Command::new("ip")
        .args(["netns", "exec", &node1, weft_net()])
        .env("CNI_COMMAND", "ADD")
        .env("CNI_CONTAINERID", "c-zero")
        .env("CNI_NETNS", format!("/var/run/netns/{pod}"))
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/opt/cni/bin")
        .stdin(std::fs::File::open("/dev/zero").unwrap())
        .output()
        .unwrap();
    let e = cni_error(&out);
    assert_eq!(e["code"], 5, "{e}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );

    // A peer name that cannot be a MAC address is refused when the router starts, saying why.
    // (In a namespace of the test's own; `timeout` ends a router that would start anyway.)
    let scratch = std::env::temp_dir().join(format!("weft-hi-{tag}"));
    let out = Command::new("timeout")
        .args([
            "5",
            "ip",
            "netns",
            "exec",
            &pod,
            WEFT,
            "router",
            "--name",
            "ff:ff:ff:ff:ff:ff",
        ])
        .arg("--state-dir")
        .arg(&scratch)
        .arg("--api-socket")
        .arg(scratch.join("weft.sock"))
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&scratch);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unicast"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Nothing of this cost the nodes their connection or a decode error.
    let st = lab.status(1).await.unwrap();
    assert_eq!(st.connections.len(), conns_before.len());
    for node in [1, 2] {
        assert_eq!(
            metric(&lab, node, "weft_gossip_decode_errors_total").await,
            0
        );
    }
}

/// Files of `dir` with their modes.
fn modes(dir: &std::path::Path) -> Vec<(String, u32)> {
    use std::os::unix::fs::PermissionsExt as _;
    let mut v: Vec<(String, u32)> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                e.metadata().unwrap().permissions().mode() & 0o777,
            )
        })
        .collect();
    v.sort();
    v
}

struct Unmount(std::path::PathBuf);
impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root (network namespaces): run as root with --include-ignored, as scripts/test.sh does"]
async fn a_full_state_directory_fails_the_add_and_never_hands_out_an_address_twice() {
    prerequisites();
    let (lab, _g) = lab_with("hd", 1, LabPassword::None, &[]).await;
    let tag = lab::random_alnum(4);
    let conf = json!({"cniVersion": "1.0.0", "name": "weft", "type": "weft-net",
                      "socket": lab.node_socket(1)});
    let node1 = lab.namespace(1);
    let mut names = Namespaces(Vec::new());
    let mut pod = |i: usize| {
        let n = format!("whd{tag}{i}");
        netns_add(&n);
        names.0.push(n.clone());
        n
    };
    let add = |ns: &str| run_weft_net(&node1, "ADD", ns, ns, None, &conf);
    let ip_of = |out: &std::process::Output| -> String {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["ips"][0]["address"].as_str().unwrap().to_string()
    };
    let p1 = pod(1);
    let mut ips = vec![ip_of(&add(&p1))];

    // The state directory moves onto a small file system, which then fills up.
    let state = lab.info().nodes[0].state_dir.clone();
    assert!(
        modes(&state).iter().all(|(_, m)| m & 0o077 == 0),
        "state files are root-only: {:?}",
        modes(&state)
    );
    lab.stop_node(1).await.unwrap();
    let keep = std::env::temp_dir().join(format!("weft-hd-{tag}"));
    ip(&["netns", "exec", &node1, "true"]); // (the node namespace stays)
    assert!(Command::new("cp")
        .arg("-a")
        .arg(&state)
        .arg(&keep)
        .status()
        .unwrap()
        .success());
    assert!(Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=256k", "weft-hd"])
        .arg(&state)
        .status()
        .unwrap()
        .success());
    let _unmount = Unmount(state.clone());
    assert!(Command::new("sh")
        .arg("-c")
        .arg(format!("cp -a {}/. {}/", keep.display(), state.display()))
        .status()
        .unwrap()
        .success());
    let _ = std::fs::remove_dir_all(&keep);
    // A leftover of an interrupted write, from an earlier run.
    std::fs::write(state.join(".weft-old.tmp"), b"half").unwrap();
    lab.start_node(1, &[], None).await.unwrap();
    lab.wait_until(Duration::from_secs(20), "the gateway back", |s| {
        s[0].as_ref()
            .is_some_and(|st| st.ipam.gateway.is_some() && st.not_ready.is_none())
    })
    .await
    .unwrap();
    assert!(
        !state.join(".weft-old.tmp").exists(),
        "the leftover was removed"
    );
    let _ = Command::new("dd")
        .args(["if=/dev/zero", "bs=4k"])
        .arg(format!("of={}", state.join("fill").display()))
        .stderr(Stdio::null())
        .status();

    // Full: every ADD fails with "try again later", and nothing is handed out.
    for i in 2..=6 {
        let ns = pod(i);
        let out = add(&ns);
        let e = cni_error(&out);
        assert_eq!(e["code"], 11, "{e}");
        assert!(
            e["msg"].as_str().unwrap().contains("state directory"),
            "{e}"
        );
        assert!(!has_eth0(&ns));
    }
    let st = lab.status(1).await.unwrap();
    assert_eq!(
        st.ipam.used, 2,
        "the gateway and the first pod only: {:?}",
        st.ipam
    );

    // Space again: the next pod gets a new address, and after a restart still nobody
    // gets one twice.
    std::fs::remove_file(state.join("fill")).unwrap();
    let p7 = pod(7);
    ips.push(ip_of(&add(&p7)));
    lab.stop_node(1).await.unwrap();
    lab.start_node(1, &[], None).await.unwrap();
    lab.wait_until(Duration::from_secs(20), "the gateway back", |s| {
        s[0].as_ref()
            .is_some_and(|st| st.ipam.gateway.is_some() && st.not_ready.is_none())
    })
    .await
    .unwrap();
    for i in 8..=10 {
        let ns = pod(i);
        ips.push(ip_of(&add(&ns)));
    }
    let mut unique = ips.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(
        unique.len(),
        ips.len(),
        "an address handed out twice: {ips:?}"
    );
    assert!(
        modes(&state).iter().all(|(_, m)| m & 0o077 == 0),
        "{:?}",
        modes(&state)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root (network namespaces): run as root with --include-ignored, as scripts/test.sh does"]
async fn vxlan_from_a_host_that_is_not_a_peer_reaches_no_pod() {
    prerequisites();
    // No password: nothing is authenticated, but the VXLAN port still takes frames only from
    // the fastpath's peers.
    let (lab, _g) = lab_with("hv", 2, LabPassword::None, &[]).await;
    let p = pods(&lab);
    let (a, b) = (&p.0[0], &p.0[1]);
    assert!(ping_within(&b.namespace, &a.ip, Duration::from_secs(15)));
    lab.wait_until(Duration::from_secs(15), "the fastpath", |s| {
        s.iter().flatten().all(|st| {
            st.connections
                .iter()
                .all(|c| c.path.as_deref() == Some("fastpath"))
        })
    })
    .await
    .unwrap();
    // A host on the underlay switch that is no peer.
    let (intruder, _ns) = underlay_host(&lab, "whv", &["10.201.0.250".into()]);
    let a_mac = frames::mac_in(&a.namespace, "eth0");
    let inner = frames::eth(
        a_mac,
        [2, 0xba, 0xd0, 0, 0, 2],
        frames::ETH_IPV4,
        &frames::udp4(
            b.ip.parse().unwrap(),
            a.ip.parse().unwrap(),
            40000,
            7300,
            b"intruder",
        ),
    );
    let datagram = frames::vxlan(6785, &inner);
    let node1 = lab.underlay_addr(1).to_string();
    let ns = weft_fastpath::netns::Netns::open(format!("/var/run/netns/{intruder}")).unwrap();
    let received = {
        let (tx, rx) = std::sync::mpsc::channel();
        let pod_ns =
            weft_fastpath::netns::Netns::open(format!("/var/run/netns/{}", a.namespace)).unwrap();
        std::thread::scope(|s| {
            let h = s.spawn(move || {
                pod_ns
                    .run_blocking(move || {
                        let sock = std::net::UdpSocket::bind("0.0.0.0:7300").unwrap();
                        sock.set_read_timeout(Some(Duration::from_millis(1500)))
                            .unwrap();
                        tx.send(()).unwrap();
                        let mut buf = [0u8; 256];
                        sock.recv(&mut buf).ok()
                    })
                    .unwrap()
            });
            rx.recv().unwrap();
            ns.run_blocking(move || {
                let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
                for _ in 0..5 {
                    s.send_to(&datagram, format!("{node1}:6785")).unwrap();
                }
            })
            .unwrap();
            h.join().unwrap()
        })
    };
    assert!(received.is_none(), "a non-peer's VXLAN frame reached a pod");
    // The peers themselves still use the fastpath.
    assert!(ping(&b.namespace, &a.ip));
    let st = lab.status(1).await.unwrap();
    assert!(
        st.connections
            .iter()
            .all(|c| c.path.as_deref() == Some("fastpath")),
        "{:?}",
        st.connections
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root (network namespaces): run as root with --include-ignored, as scripts/test.sh does"]
async fn withheld_sleeve_datagrams_replayed_from_elsewhere_do_not_move_a_peer() {
    prerequisites();
    // An on-path attacker holds back a few of n2's sleeve datagrams to n1 (they are
    // authentic and never seen), lets the rest through, then sends the held ones from its own
    // address. The sleeve follows a peer to a new address (NAT rebinding) only on its newest
    // datagram, so n1 must keep sending to n2.
    let (lab, _g) = lab_with("hr", 2, LabPassword::Random, &[]).await;
    let p = pods(&lab);
    let (a, b) = (&p.0[0], &p.0[1]);
    assert!(ping_within(&b.namespace, &a.ip, Duration::from_secs(15)));
    let sw = format!("weft-{}-sw", lab.id());
    let (n1, n2) = (lab.underlay_addr(1), lab.underlay_addr(2));
    let (intruder, _ns) = underlay_host(&lab, "whr", &["10.201.0.250".into()]);
    let hold = format!(
        "table bridge {intruder} {{\n chain f {{\n  type filter hook forward priority 0;\n  ip saddr {n2} ip daddr {n1} udp dport 6784 drop\n }}\n}}\n"
    );
    let nft = |script: &str| {
        let mut c = Command::new("ip")
            .args(["netns", "exec", &sw, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write as _;
        c.stdin
            .take()
            .unwrap()
            .write_all(script.as_bytes())
            .unwrap();
        assert!(c.wait().unwrap().success(), "nft: {script}");
    };
    let is_sleeve_to_n1 = move |f: &[u8]| {
        f.len() > 42
            && f[12..14] == frames::ETH_IPV4.to_be_bytes()
            && f[23] == 17
            && f[30..34] == n1.octets()
            && f[36..38] == 6784u16.to_be_bytes()
    };
    nft(&hold);
    let held = std::thread::scope(|s| {
        let h = s.spawn(|| capture(&sw, "n2", Duration::from_millis(1500), is_sleeve_to_n1));
        std::thread::sleep(Duration::from_millis(200));
        for _ in 0..3 {
            let _ = ping(&b.namespace, &a.ip);
        }
        h.join().unwrap()
    });
    fn capture(
        ns: &str,
        ifname: &str,
        d: Duration,
        keep: impl Fn(&[u8]) -> bool + Send + 'static,
    ) -> Vec<Vec<u8>> {
        frames::capture(ns, ifname, d, keep)
    }
    nft(&format!("delete table bridge {intruder}"));
    assert!(!held.is_empty(), "nothing held back");
    // Newer traffic gets through first.
    assert!(ping_within(&b.namespace, &a.ip, Duration::from_secs(5)));
    let changes = metric(&lab, 1, "weft_sleeve_endpoint_changes_total").await;
    let payloads: Vec<Vec<u8>> = held.iter().map(|f| f[42..].to_vec()).collect();
    let ns = weft_fastpath::netns::Netns::open(format!("/var/run/netns/{intruder}")).unwrap();
    ns.run_blocking(move || {
        let s = std::net::UdpSocket::bind("0.0.0.0:6784").unwrap();
        for p in &payloads {
            s.send_to(p, format!("{n1}:6784")).unwrap();
        }
    })
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        metric(&lab, 1, "weft_sleeve_endpoint_changes_total").await,
        changes,
        "n1 followed the replayed datagrams to the intruder"
    );
    // And traffic from n1 still goes to n2, at once.
    let started = Instant::now();
    assert!(ping(&a.namespace, &b.ip), "n1 -> n2 after the replay");
    assert!(started.elapsed() < Duration::from_secs(2));
}

/// Kills a process started by the test when dropped.
struct Killed(std::process::Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root (network namespaces): run as root with --include-ignored, as scripts/test.sh does"]
async fn a_second_router_with_a_live_routers_name_is_refused_and_reported() {
    prerequisites();
    let (lab, _g) = lab_with("hn", 3, LabPassword::Random, &[]).await;
    let info = lab.info();
    let (n1, n3) = (&info.nodes[0], &info.nodes[2]);
    let n1_addr = lab.underlay_addr(1).to_string();
    let original = lab.status(1).await.unwrap().uid;
    // n3's machine is cloned from n1's: its router starts with n1's name.
    lab.stop_node(3).await.unwrap();
    let mut argv = n3.argv.clone();
    let at = argv.iter().position(|a| a == "--name").unwrap();
    argv[at + 1] = n1.name.clone();
    let at = argv.iter().position(|a| a == "--state-dir").unwrap();
    argv[at + 1] = info.dir.join("clone.state").to_string_lossy().into_owned();
    let log = std::fs::File::create(info.dir.join("clone.log")).unwrap();
    let clone = Command::new("ip")
        .args(["netns", "exec", &n3.namespace])
        .args(&argv)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let _clone = Killed(clone);
    // n2 settles on the original, reports the conflict, and stays settled.
    lab.wait_until(
        Duration::from_secs(60),
        "n2 reports the name conflict",
        |s| {
            s[1].as_ref().is_some_and(|st| {
                st.identity_conflicts
                    .iter()
                    .any(|c| c.name == n1.name && c.kept_uid == original && c.refusals >= 2)
            })
        },
    )
    .await
    .unwrap_or_else(|e| {
        let log = std::fs::read_to_string(info.dir.join("clone.log")).unwrap_or_default();
        panic!("{e:#}\nclone log:\n{log}")
    });
    let until = Instant::now() + Duration::from_secs(15);
    while Instant::now() < until {
        let st = lab.status(2).await.unwrap();
        let p = st
            .peers
            .iter()
            .find(|p| p.name == n1.name)
            .expect("n1 known");
        assert_eq!(p.uid, original, "n2 keeps the original router");
        for c in st
            .connections
            .iter()
            .filter(|c| c.peer.as_deref() == Some(&n1.name))
        {
            if c.state == weft::status::ConnState::Established {
                assert!(
                    c.address.starts_with(&n1_addr),
                    "n2 is connected to the clone: {c:?}"
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // The original says another router uses its name; the clone says it is refused, is not
    // ready, and hands out nothing.
    let st1 = lab.status(1).await.unwrap();
    assert!(
        st1.identity_conflicts
            .iter()
            .any(|c| c.ours && c.name == n1.name),
        "{:?}",
        st1.identity_conflicts
    );
    assert!(st1.not_ready.is_none(), "{:?}", st1.not_ready);
    let st3 = lab.status(3).await.unwrap();
    let r = st3
        .refused_as_duplicate
        .as_ref()
        .expect("the clone knows it is refused");
    assert_eq!(r.name, n1.name);
    assert!(st3
        .not_ready
        .as_deref()
        .unwrap_or("")
        .contains("another router with its name"));
    assert!(st3.render_text().contains("NAME CONFLICT"));
}

/// Runs weft-net ADD for a fresh pod `id` on node `node`; its address, or the error answer.
fn add_pod(lab: &weft::lab::Lab, node: usize, id: &str) -> Result<String, String> {
    netns_add(id);
    let conf = json!({
        "cniVersion": "1.0.0", "name": "weft", "type": "weft-net",
        "socket": lab.node_socket(node),
    });
    let args = format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={id}");
    let out = run_weft_net(&lab.namespace(node), "ADD", id, id, Some(&args), &conf);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(text);
    }
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| format!("{e}: {text}"))?;
    let a = v["ips"][0]["address"].as_str().ok_or(text.clone())?;
    Ok(a.split('/').next().unwrap().to_string())
}

fn del_pod(lab: &weft::lab::Lab, node: usize, id: &str) {
    let conf = json!({
        "cniVersion": "1.0.0", "name": "weft", "type": "weft-net",
        "socket": lab.node_socket(node),
    });
    let args = format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={id}");
    let out = run_weft_net(&lab.namespace(node), "DEL", id, id, Some(&args), &conf);
    assert!(
        out.status.success(),
        "DEL {id}: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root (network namespaces): run as root with --include-ignored, as scripts/test.sh does"]
async fn addresses_held_twice_after_a_partition_are_loud_on_both_sides_and_resolvable() {
    prerequisites();
    // 8 blocks of 4 addresses: both sides of the partition need all the free ones.
    let (lab, _g) = lab_with(
        "hp",
        2,
        LabPassword::Random,
        &["--ipalloc-range", "10.40.0.0/27"],
    )
    .await;
    let (u1, u2) = (
        lab.underlay_addr(1).to_string(),
        lab.underlay_addr(2).to_string(),
    );
    lab.wait_until(Duration::from_secs(20), "gateways", |s| {
        s.iter().flatten().all(|st| st.not_ready.is_none())
    })
    .await
    .unwrap();
    // Partition: each node drops the other's packets.
    let cut = |node: usize, other: &str, verb: &str| {
        ip(&[
            "-n",
            &lab.namespace(node),
            "route",
            verb,
            "blackhole",
            &format!("{other}/32"),
        ]);
    };
    cut(1, &u2, "add");
    cut(2, &u1, "add");
    lab.wait_until(Duration::from_secs(20), "the connection to die", |s| {
        s.iter().flatten().all(|st| {
            st.connections
                .iter()
                .all(|c| c.state != weft::status::ConnState::Established)
        })
    })
    .await
    .unwrap();
    let tag = lab::random_alnum(4);
    let mut names = Vec::new();
    let mut pods: Vec<(usize, String, String)> = Vec::new(); // node, pod, address
    for node in [1, 2] {
        for k in 0..40 {
            let id = format!("whp{tag}-{node}-{k}");
            names.push(id.clone());
            match add_pod(&lab, node, &id) {
                Ok(ip) => pods.push((node, id, ip)),
                Err(e) if e.contains("exhausted") => break,
                Err(e) => panic!("ADD {id}: {e}"),
            }
        }
    }
    let _ns = Namespaces(names);
    let on = |n| pods.iter().filter(|p| p.0 == n).count();
    assert!(
        on(1) > 8 && on(2) > 8,
        "both sides claimed free blocks: {pods:?}"
    );
    // Heal: both sides say so, in status, metrics and logs.
    cut(1, &u2, "del");
    cut(2, &u1, "del");
    lab.wait_until(Duration::from_secs(60), "both report the conflict", |s| {
        s.iter()
            .flatten()
            .all(|st| st.ipam.conflicting_addresses > 0 && !st.ipam.conflicts.is_empty())
    })
    .await
    .unwrap();
    let info = lab.info();
    for node in [1, 2] {
        let st = lab.status(node).await.unwrap();
        assert!(st.render_text().contains("IPAM CONFLICT"), "n{node}");
        assert!(
            metric(&lab, node, "weft_ipam_conflicting_addresses").await > 0,
            "n{node}"
        );
        let log = std::fs::read_to_string(&info.nodes[node - 1].log).unwrap();
        assert!(
            log.contains("held twice after a partition"),
            "n{node} logged it"
        );
    }
    // The losing side names its pods that hold such addresses; deleting them resolves it.
    let mut named = Vec::new();
    for node in [1, 2] {
        let st = lab.status(node).await.unwrap();
        for line in st
            .ipam
            .conflicts
            .iter()
            .filter(|l| l.contains("of this node are in block"))
        {
            for p in pods.iter().filter(|p| p.0 == node) {
                if line.contains(&format!("default/{} ({})", p.1, p.2)) {
                    named.push(p.clone());
                }
            }
        }
    }
    assert!(!named.is_empty(), "the loser names its pods");
    for (node, id, _) in &named {
        del_pod(&lab, *node, id);
    }
    lab.wait_until(Duration::from_secs(30), "the conflict to clear", |s| {
        s.iter()
            .flatten()
            .all(|st| st.ipam.conflicting_addresses == 0)
    })
    .await
    .unwrap();
    // Every remaining pod has an address of its own.
    let mut left: Vec<&str> = pods
        .iter()
        .filter(|p| !named.contains(p))
        .map(|p| p.2.as_str())
        .collect();
    let n = left.len();
    left.sort();
    left.dedup();
    assert_eq!(left.len(), n, "an address is still held twice");
    assert_eq!(metric(&lab, 1, "weft_ipam_conflicting_addresses").await, 0);
}

/// nft counters of `table` `chain` rules in namespace `ns`: bytes per rule comment.
fn nft_bytes(ns: &str, table: &str) -> std::collections::BTreeMap<String, u64> {
    let out = Command::new("ip")
        .args([
            "netns", "exec", ns, "nft", "-j", "list", "table", "inet", table,
        ])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut m = std::collections::BTreeMap::new();
    for item in v["nftables"].as_array().unwrap() {
        let Some(rule) = item.get("rule") else {
            continue;
        };
        let Some(comment) = rule["comment"].as_str() else {
            continue;
        };
        for e in rule["expr"].as_array().unwrap() {
            if let Some(c) = e.get("counter") {
                m.insert(comment.to_string(), c["bytes"].as_u64().unwrap());
            }
        }
    }
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root (network namespaces): run as root with --include-ignored, as scripts/test.sh does"]
async fn a_flood_of_unanswered_quic_initials_costs_nothing_and_starves_nobody() {
    prerequisites();
    let (lab, _g) = lab_with("hq", 2, LabPassword::Random, &[]).await;
    let node1 = std::net::SocketAddr::from((lab.underlay_addr(1), 6783));
    // A host on the underlay that sends QUIC Initials and never answers (its firewall drops
    // everything coming back, counted).
    // Twenty source addresses (a spoofer has as many as it likes).
    let sources: Vec<std::net::Ipv4Addr> = (200..220).map(|i| [10, 201, 0, i].into()).collect();
    let addrs: Vec<String> = sources.iter().map(|a| a.to_string()).collect();
    let (attacker, _ns) = underlay_host(&lab, "whq", &addrs);
    let rules = format!(
        "table inet whq {{\n\
           chain out {{ type filter hook output priority 0; ip daddr {ip} udp dport 6783 counter comment \"sent\"; }}\n\
           chain in {{ type filter hook input priority 0; ip saddr {ip} udp sport 6783 counter drop comment \"answered\"; }}\n\
         }}\n",
        ip = node1.ip()
    );
    let mut nft = Command::new("ip")
        .args(["netns", "exec", &attacker, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(nft.stdin.as_mut().unwrap(), rules.as_bytes()).unwrap();
    assert!(nft.wait().unwrap().success());

    // 100 fresh handshakes a second for 15 s.
    let flood_ns = weft_fastpath::netns::Netns::open(format!("/var/run/netns/{attacker}")).unwrap();
    let flood = std::thread::spawn(move || {
        flood_ns
            .run_blocking(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async move {
                    let (_, client) = weft::transport::tls::configs().unwrap();
                    let eps: Vec<quinn::Endpoint> = sources
                        .iter()
                        .map(|a| {
                            let mut ep = quinn::Endpoint::client((*a, 0).into()).unwrap();
                            ep.set_default_client_config(client.clone());
                            ep
                        })
                        .collect();
                    let mut tick = tokio::time::interval(Duration::from_millis(10));
                    for k in 0..1500 {
                        tick.tick().await;
                        if let Ok(c) = eps[k % eps.len()].connect(node1, "weft") {
                            tokio::spawn(async move {
                                let _ = tokio::time::timeout(Duration::from_secs(6), c).await;
                            });
                        }
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                })
            })
            .unwrap()
    });
    // The flood holds no handshake state at n1 (every attempt gets a stateless Retry first).
    let mut most = 0;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        most = most.max(metric(&lab, 1, "weft_inbound_handshakes").await);
    }
    assert!(
        most <= 1,
        "{most} inbound handshakes in progress during the flood"
    );
    // Meanwhile n2 restarts and must get back in at once.
    lab.stop_node(2).await.unwrap();
    lab.start_node(2, &[], None).await.unwrap();
    let t = Instant::now();
    lab.wait_until(
        Duration::from_secs(10),
        "n2 back in the mesh during the flood",
        |s| {
            s.iter().flatten().all(|st| {
                st.connections
                    .iter()
                    .any(|c| c.state == weft::status::ConnState::Established)
            })
        },
    )
    .await
    .unwrap();
    eprintln!(
        "n2 reconnected {:?} after its restart, during the flood",
        t.elapsed()
    );
    flood.join().unwrap();
    let c = nft_bytes(&attacker, "whq");
    let (sent, answered) = (c["sent"], c["answered"]);
    eprintln!("flood: {sent} bytes sent, {answered} bytes answered");
    let retried = metric(&lab, 1, "weft_inbound_attempts_total{reason=\"retry\"}").await;
    assert!(retried >= 1000, "{retried} attempts answered with a Retry");
    assert!(sent > 1_000_000, "the flood ran: {sent} bytes");
    assert!(
        answered * 3 <= sent,
        "amplification {:.2}x before address validation",
        answered as f64 / sent as f64
    );
    // Nothing of it fills the log or the status.
    let st = lab.status(1).await.unwrap();
    let rows = st
        .connections
        .iter()
        .filter(|c| c.source == "inbound")
        .count();
    assert!(rows <= 16, "{rows} inbound rows");
    let log = std::fs::read_to_string(&lab.info().nodes[0].log).unwrap();
    let warns = log
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("inbound"))
        .count();
    assert!(warns <= 10, "{warns} WARN lines about inbound attempts");
}
