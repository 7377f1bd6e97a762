//! `deploy/10-weft.conflist` driven by libcni, the library container runtimes call plugins
//! with, through a small Go driver (`tests/cni-driver/main.go`, built here with Debian's Go
//! and golang-github-appc-cni-dev, offline). The chain is the real one: `weft-net`, then the
//! reference `portmap` and `bandwidth` plugins (Debian containernetworking-plugins), with port
//! mappings and a bandwidth limit passed as capability arguments, as a runtime passes them.
//! ADD, CHECK, DEL and a second DEL against a real router in a `weft lab`.
//!
//! Needs root, iproute2, tc, iptables, go, golang-github-appc-cni-dev and
//! containernetworking-plugins (`scripts/test.sh` installs them). `#[ignore]`d unless asked for
//! (`--include-ignored`); then a missing piece is a failure, not a skip.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, OnceLock};
use std::time::{Duration, Instant};

use weft::lab::{self, Lab, LabGuard, LabOptions, LabPassword};

const WEFT: &str = env!("CARGO_BIN_EXE_weft");
const TARGET_TMP: &str = env!("CARGO_TARGET_TMPDIR");
const DRIVER_SRC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/cni-driver/main.go");
const CONFLIST: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/10-weft.conflist");
/// Where Debian's golang-github-appc-cni-dev puts the library (a GOPATH tree).
const GOPATH_DEBIAN: &str = "/usr/share/gocode";
/// Where Debian 12's containernetworking-plugins puts the plugins.
const DEBIAN_CNI_DIR: &str = "/usr/lib/cni";
const PACKAGES: &str = "golang-go golang-github-appc-cni-dev containernetworking-plugins iptables";

const HOST_PORT: u16 = 18080;
const CONTAINER_PORT: u16 = 8080;
/// Ingress limit for the pod, bits/s (the bandwidth plugin shapes the host side of the veth).
const INGRESS_BPS: u64 = 10_000_000;

/// What is missing to run this test, if anything.
fn missing_prerequisites() -> Vec<String> {
    let mut missing = Vec::new();
    if let Err(e) = lab::check_prerequisites() {
        missing.push(format!("{e:#}"));
    }
    let runs = |argv: &[&str]| {
        Command::new(argv[0])
            .args(&argv[1..])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !runs(&["go", "version"]) {
        missing.push("go (package golang-go)".into());
    }
    if !Path::new(GOPATH_DEBIAN)
        .join("src/github.com/containernetworking/cni/libcni")
        .is_dir()
    {
        missing.push(format!(
            "the Go CNI library in {GOPATH_DEBIAN} (package golang-github-appc-cni-dev)"
        ));
    }
    for p in ["portmap", "bandwidth"] {
        if !Path::new(DEBIAN_CNI_DIR).join(p).is_file() {
            missing.push(format!(
                "{DEBIAN_CNI_DIR}/{p} (package containernetworking-plugins)"
            ));
        }
    }
    if !runs(&["iptables", "--version"]) {
        missing.push("iptables (package iptables)".into());
    }
    if !runs(&["tc", "-V"]) {
        missing.push("tc (package iproute2)".into());
    }
    missing
}

/// Fails the test, naming the packages, when a piece is missing (the test is `#[ignore]`d: it
/// runs only when asked for, and then never passes without having run).
fn prerequisites() {
    let missing = missing_prerequisites();
    if !missing.is_empty() {
        panic!(
            "libcni test: missing {}\n  install (Debian, as root): apt-get install {PACKAGES}",
            missing.join("; ")
        );
    }
}

/// Builds the Go driver once per test binary, into the target dir: GOPATH mode over Debian's
/// source tree, so nothing is downloaded (GOPROXY=off makes sure of it).
fn driver() -> &'static Path {
    static DRIVER: OnceLock<PathBuf> = OnceLock::new();
    DRIVER.get_or_init(|| {
        let dir = Path::new(TARGET_TMP).join("cni-driver");
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("cni-driver");
        // Built under a unique name and renamed: other test runs may share the target dir.
        let tmp = dir.join(format!("cni-driver.{}", lab::random_alnum(6)));
        let gopath = dir.join("gopath");
        let built = Command::new("go")
            .args(["build", "-o"])
            .arg(&tmp)
            .arg(DRIVER_SRC)
            .env("GO111MODULE", "off")
            .env("GOPATH", format!("{GOPATH_DEBIAN}:{}", gopath.display()))
            .env("GOCACHE", dir.join("gocache"))
            .env("GOPROXY", "off")
            .env("GOFLAGS", "")
            .env("CGO_ENABLED", "0")
            .output()
            .expect("running go build");
        assert!(
            built.status.success(),
            "go build of the CNI driver failed:\n{}",
            String::from_utf8_lossy(&built.stderr)
        );
        std::fs::rename(&tmp, &out).unwrap();
        out
    })
}

/// Files of one test run (plugin dir, conflist, libcni cache), removed on drop.
struct TempDir(PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A pod network namespace, deleted on drop.
struct PodNs(String);
impl Drop for PodNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// Runs `argv` in namespace `ns` (`ip netns exec`).
fn in_ns(ns: &str, argv: &[&str]) -> Output {
    Command::new("ip")
        .args(["netns", "exec", ns])
        .args(argv)
        .output()
        .unwrap()
}

/// One driver invocation, as a runtime on node `ns` would make it.
struct Driver {
    node_ns: String,
    conflist: PathBuf,
    path: String,
    cache: PathBuf,
    netns: String,
    id: String,
}

impl Driver {
    fn run(&self, cmd: &str) -> Output {
        self.run_with(&self.conflist, cmd)
    }

    fn run_with(&self, conflist: &Path, cmd: &str) -> Output {
        let port = format!("{HOST_PORT}:{CONTAINER_PORT}");
        let bw = INGRESS_BPS.to_string();
        let args = format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={}",
            self.id
        );
        let conflist = conflist.to_str().unwrap();
        let cache = self.cache.to_str().unwrap();
        let argv = [
            driver().to_str().unwrap(),
            "-conflist",
            conflist,
            "-netns",
            &self.netns,
            "-id",
            &self.id,
            "-ifname",
            "eth0",
            "-path",
            &self.path,
            "-cachedir",
            cache,
            "-args",
            &args,
            "-portmap",
            &port,
            "-bandwidth",
            &bw,
            "-cmd",
            cmd,
        ];
        in_ns(&self.node_ns, &argv)
    }
}

/// The Debian version of containernetworking-plugins, e.g. `1.1.1+ds1-3+b5`.
fn portmap_version() -> String {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f", "${Version}", "containernetworking-plugins"])
        .output();
    out.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// Plugins older than 1.3, which have the IPv6 CHECK bug (reported against 1.2).
fn old_portmap(version: &str) -> bool {
    let mut parts = version.split(['.', '+', '-', '~']);
    let major: u32 = parts
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or(u32::MAX);
    let minor: u32 = parts
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or(u32::MAX);
    (major, minor) < (1, 3)
}

/// A TCP server in the pod on `CONTAINER_PORT`: answers every connection with the address it
/// came from. Runs on a thread that joined the pod's namespace until `stop` is set.
fn serve_in_pod(pod_ns: &str, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    let (ready_tx, ready_rx) = mpsc::channel();
    let ns = pod_ns.to_string();
    let handle = std::thread::spawn(move || {
        lab::run_in_netns(&ns, move || {
            let l = TcpListener::bind(("0.0.0.0", CONTAINER_PORT)).expect("bind in the pod");
            l.set_nonblocking(true).unwrap();
            ready_tx.send(()).unwrap();
            while !stop.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((mut s, peer)) => {
                        let _ = s.write_all(format!("hello {}\n", peer.ip()).as_bytes());
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Err(e) => panic!("accept in the pod: {e}"),
                }
            }
        })
        .unwrap()
    });
    ready_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("pod server ready");
    handle
}

/// Connects from namespace `ns` to `addr` and reads the server's greeting.
fn fetch(ns: &str, addr: SocketAddr) -> std::io::Result<String> {
    lab::run_in_netns(ns, move || {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
        s.set_read_timeout(Some(Duration::from_secs(3)))?;
        let mut buf = String::new();
        s.read_to_string(&mut buf)?;
        Ok(buf)
    })
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root (network namespaces): run as root with --include-ignored, as scripts/test.sh does"]
async fn conflist_add_check_del_through_libcni_with_portmap_and_bandwidth() {
    prerequisites();
    let driver_path = driver();
    assert!(driver_path.is_file());

    let id = format!("c{}", lab::random_alnum(5));
    let _guard = LabGuard::new(&id);
    let mut opts = LabOptions::new(&id, 2, WEFT);
    opts.password = LabPassword::Random;
    opts.timeout = Duration::from_secs(20);
    let lab = Lab::up(opts).await.expect("lab up");
    let node_ns = lab.namespace(1);

    // Plugin dir: weft-net (as a runtime would install it) first, then Debian's plugins.
    let tmp = TempDir(Path::new(TARGET_TMP).join(format!("libcni-{id}")));
    let bin = tmp.0.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::copy(crate::common::weft_net(), bin.join("weft-net")).unwrap();
    // The deployed conflist, pointed at this node's router socket.
    let mut conf: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(CONFLIST).unwrap()).unwrap();
    let types: Vec<&str> = conf["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["weft-net", "portmap", "bandwidth"], "{conf}");
    conf["plugins"][0]["socket"] = lab.node_socket(1).to_str().unwrap().into();
    let conflist = tmp.0.join("10-weft.conflist");
    std::fs::write(&conflist, serde_json::to_vec_pretty(&conf).unwrap()).unwrap();

    let pod = PodNs(format!("weft-{id}-pod"));
    assert!(Command::new("ip")
        .args(["netns", "add", &pod.0])
        .status()
        .unwrap()
        .success());
    let drv = Driver {
        node_ns: node_ns.clone(),
        conflist,
        path: format!("{}:{DEBIAN_CNI_DIR}", bin.display()),
        cache: tmp.0.join("cache"),
        netns: format!("/var/run/netns/{}", pod.0),
        id: format!("ctr-{id}"),
    };

    // ADD: the result is weft-net's, passed through portmap and bandwidth.
    let t = Instant::now();
    let out = drv.run("add");
    assert!(out.status.success(), "ADD failed: {}", text(&out));
    eprintln!("ADD took {:?}", t.elapsed());
    let result: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)));
    eprintln!("ADD result: {result}");
    assert_eq!(result["cniVersion"], "1.0.0", "{result}");
    let ifaces = result["interfaces"].as_array().expect("interfaces");
    let host = ifaces
        .iter()
        .find(|i| i.get("sandbox").is_none_or(|s| s.as_str() == Some("")))
        .expect("a host-side interface");
    let host_if = host["name"].as_str().unwrap().to_string();
    assert!(host_if.starts_with("vethwe"), "{result}");
    let pod_if_index = ifaces
        .iter()
        .position(|i| i["name"] == "eth0" && i["sandbox"] == drv.netns.as_str())
        .unwrap_or_else(|| panic!("eth0 in the pod's sandbox: {result}"));
    let ip0 = &result["ips"][0];
    assert_eq!(ip0["interface"], pod_if_index, "{result}");
    let cidr = ip0["address"].as_str().unwrap();
    assert!(cidr.ends_with("/12"), "{result}");
    let pod_ip = cidr.split('/').next().unwrap().to_string();
    assert!(pod_ip.starts_with("10."), "{result}");

    // The pod has eth0 with that address.
    let addr = in_ns(&pod.0, &["ip", "-br", "addr", "show", "dev", "eth0"]);
    assert!(
        addr.status.success() && text(&addr).contains(cidr),
        "pod eth0: {}",
        text(&addr)
    );
    // The host side hangs off the node bridge.
    let link = in_ns(&node_ns, &["ip", "-d", "link", "show", "dev", &host_if]);
    assert!(text(&link).contains("master weft"), "{}", text(&link));

    // portmap: DNAT rules in the node namespace (iptables, nft-backed on Debian 12).
    let nat = in_ns(&node_ns, &["iptables-save", "-t", "nat"]);
    let nat_text = text(&nat);
    assert!(
        nat_text.contains("CNI-HOSTPORT-DNAT")
            && nat_text.contains(&format!("--to-destination {pod_ip}:{CONTAINER_PORT}")),
        "portmap rules: {nat_text}"
    );

    // portmap works: a server in the pod is reachable at the node's underlay address.
    // From the node itself the connection takes the OUTPUT-chain DNAT (no route_localnet
    // needed: the destination is the underlay address, not 127.0.0.1); from the other node
    // it takes the PREROUTING DNAT, then the node forwards it to its bridge.
    let stop = Arc::new(AtomicBool::new(false));
    let server = serve_in_pod(&pod.0, stop.clone());
    let hostport = SocketAddr::from((lab.underlay_addr(1), HOST_PORT));
    let from_node = fetch(&node_ns, hostport);
    let from_peer = fetch(&lab.namespace(2), hostport);
    stop.store(true, Ordering::Relaxed);
    server.join().unwrap();
    let from_node = from_node.expect("node -> its own underlay address:hostPort -> pod");
    assert!(from_node.starts_with("hello "), "{from_node}");
    eprintln!("via hostPort from the node: {}", from_node.trim());
    let from_peer = from_peer.expect("other node -> node:hostPort -> pod");
    assert_eq!(
        from_peer.trim(),
        format!("hello {}", lab.underlay_addr(2)),
        "the pod sees the client's own address"
    );

    // bandwidth: the ingress limit is a token bucket on the host side of the veth.
    let qd = in_ns(&node_ns, &["tc", "qdisc", "show", "dev", &host_if]);
    let qd_text = text(&qd);
    assert!(
        qd_text.contains("tbf") && qd_text.contains("rate 10Mbit"),
        "bandwidth qdisc on {host_if}: {qd_text}"
    );

    // CHECK: every plugin of the chain agrees with the cached result.
    let out = drv.run("check");
    if !out.status.success() {
        // portmap up to 1.2 (Debian 12 ships 1.1.1) fails CHECK for a pod without an IPv6
        // address whenever ip6tables works: it looks for IPv6 DNAT rules it never created
        // (containernetworking/plugins#819). Accept exactly that, loudly, and check the rest
        // of the chain (weft-net, bandwidth) against the same cached result without portmap.
        let msg = text(&out);
        let version = portmap_version();
        assert!(
            msg.contains("could not check ipv6 dnat") && old_portmap(&version),
            "CHECK failed: {msg}"
        );
        eprintln!(
            "NOTE: portmap {version} CHECK fails for IPv4-only pods (its IPv6 bug, \
             containernetworking/plugins#819, fixed upstream later): checking weft-net and \
             bandwidth without it. Its error: {msg}"
        );
        let mut no_portmap = conf.clone();
        no_portmap["plugins"]
            .as_array_mut()
            .unwrap()
            .retain(|p| p["type"] != "portmap");
        let path = tmp.0.join("10-weft-no-portmap.conflist");
        std::fs::write(&path, serde_json::to_vec_pretty(&no_portmap).unwrap()).unwrap();
        let out = drv.run_with(&path, "check");
        assert!(out.status.success(), "CHECK failed: {}", text(&out));
        // What portmap's CHECK would have looked at for IPv4 is still there.
        let nat_text = text(&in_ns(&node_ns, &["iptables-save", "-t", "nat"]));
        assert!(nat_text.contains(&format!("{pod_ip}:{CONTAINER_PORT}")));
    }

    // DEL: the interface, the address and the port mapping are gone.
    let out = drv.run("del");
    assert!(out.status.success(), "DEL failed: {}", text(&out));
    let links = in_ns(&pod.0, &["ip", "-br", "link"]);
    assert!(!text(&links).contains("eth0"), "{}", text(&links));
    let host_link = in_ns(&node_ns, &["ip", "link", "show", "dev", &host_if]);
    assert!(!host_link.status.success(), "{host_if} is left");
    let nat_text = text(&in_ns(&node_ns, &["iptables-save", "-t", "nat"]));
    assert!(
        !nat_text.contains(&pod_ip) && !nat_text.contains(&HOST_PORT.to_string()),
        "portmap rules left after DEL: {nat_text}"
    );
    lab.wait_until(Duration::from_secs(5), "the pod's address released", |s| {
        s[0].as_ref().is_some_and(|st| st.ipam.used == 1)
    })
    .await
    .unwrap();

    // DEL again (the cached result is gone now): still success.
    let out = drv.run("del");
    assert!(out.status.success(), "second DEL failed: {}", text(&out));
}
