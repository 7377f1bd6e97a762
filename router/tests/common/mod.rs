//! Helpers shared by the namespace tests that run a `weft lab` with pods: prerequisites,
//! pods, ping, a checked TCP transfer between pods, metrics.
#![allow(dead_code)] // each test file uses its own subset

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use weft::lab::pods::{start_pods, weft_net_beside, LabPod};
use weft::lab::{self, Lab, LabGuard, LabOptions, LabPassword};
use weft_fastpath::netns::Netns;

pub mod frames;

pub const WEFT: &str = env!("CARGO_BIN_EXE_weft");

/// The CNI plugin, `weft-net`: built by the `weft-cni` package, so cargo does not build it
/// for this package's tests; it is taken from beside `weft` (where `cargo build --release
/// --workspace`, and so scripts/test.sh, puts it). A test that needs it and finds none fails
/// and says how to build it.
pub fn weft_net() -> &'static str {
    static PATH: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        let p = weft_net_beside(std::path::Path::new(WEFT));
        assert!(
            p.is_file(),
            "{} is missing: build it with `cargo build --release -p weft-cni` (the tests \
             use the weft-net beside the weft binary)",
            p.display()
        );
        p.to_string_lossy().into_owned()
    });
    &PATH
}

/// Runs `ip ARGS`; panics with its stderr if it fails.
pub fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `weft-net` the way a runtime does: inside node namespace `node_ns`, with the CNI
/// variables for container `id` whose network namespace is `pod_ns`, `cni_args` as CNI_ARGS
/// (if any) and `conf` on stdin.
pub fn run_weft_net(
    node_ns: &str,
    cmd: &str,
    id: &str,
    pod_ns: &str,
    cni_args: Option<&str>,
    conf: &serde_json::Value,
) -> std::process::Output {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", node_ns, weft_net()])
        .env("CNI_COMMAND", cmd)
        .env("CNI_CONTAINERID", id)
        .env("CNI_NETNS", format!("/var/run/netns/{pod_ns}"))
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/opt/cni/bin")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(a) = cni_args {
        c.env("CNI_ARGS", a);
    }
    let mut child = c.spawn().expect("running weft-net");
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(conf.to_string().as_bytes())
        .expect("writing the CNI config");
    child.wait_with_output().expect("waiting for weft-net")
}

/// Root, iproute2, nft and ping, or a panic that names what is missing. The tests that call it
/// are `#[ignore]`d ("needs root"): they run only when asked for (`--include-ignored`, as
/// scripts/test.sh does), and then a missing piece fails them instead of passing silently.
pub fn prerequisites() {
    if let Err(e) = lab::check_prerequisites() {
        panic!("this test needs root and network namespaces: {e:#}");
    }
    for tool in ["nft", "ping"] {
        if Command::new(tool).arg("-V").output().is_err() {
            panic!("this test needs {tool} (scripts/test.sh installs it)");
        }
    }
}

/// A lab of `nodes` nodes whose routers get `args` too; removed when the guard drops.
pub async fn lab_with(
    prefix: &str,
    nodes: usize,
    password: LabPassword,
    args: &[&str],
) -> (Lab, LabGuard) {
    let id = format!("{prefix}{}", lab::random_alnum(5));
    let guard = LabGuard::new(&id);
    let mut opts = LabOptions::new(&id, nodes, WEFT);
    opts.password = password;
    opts.timeout = Duration::from_secs(20);
    opts.router_args = args.iter().map(|a| a.to_string()).collect();
    (Lab::up(opts).await.expect("lab up"), guard)
}

/// Pods (one per node) whose namespaces are deleted on drop (the lab guard removes the
/// routers and node namespaces; pod namespaces are ours).
pub struct Pods(pub Vec<LabPod>);
impl Drop for Pods {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = Command::new("ip")
                .args(["netns", "del", &p.namespace])
                .status();
        }
    }
}

pub fn pods(lab: &Lab) -> Pods {
    let plugin = weft_net_beside(std::path::Path::new(WEFT));
    Pods(start_pods(lab, &plugin, 1).expect("pods"))
}

pub fn ping(from: &str, ip: &str) -> bool {
    Command::new("ip")
        .args(["netns", "exec", from, "ping", "-c1", "-W2", ip])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Pings until one answers (the first packets may wait for ARP and session setup).
pub fn ping_within(from: &str, ip: &str, limit: Duration) -> bool {
    let t = Instant::now();
    while t.elapsed() < limit {
        if ping(from, ip) {
            return true;
        }
    }
    false
}

pub fn byte_at(i: usize) -> u8 {
    (i.wrapping_mul(7) % 251) as u8
}

/// Sends `bytes` of a known pattern over TCP from pod `client` to pod `server` (port 5201)
/// and checks every byte on arrival. Returns the goodput in Gbit/s, or what went wrong
/// (a stall of 20 s, a reset, corruption).
pub fn tcp_transfer(server: &LabPod, client: &LabPod, bytes: usize) -> Result<f64, String> {
    let srv = Netns::open(format!("/var/run/netns/{}", server.namespace)).unwrap();
    let cli = Netns::open(format!("/var/run/netns/{}", client.namespace)).unwrap();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::scope(|s| {
        let server_side = s.spawn(|| {
            srv.run_blocking(move || {
                let l = TcpListener::bind("0.0.0.0:5201").expect("listen");
                ready_tx.send(()).unwrap();
                let (mut c, _) = l.accept().map_err(|e| format!("accept: {e}"))?;
                c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                let mut buf = vec![0u8; 1 << 16];
                let mut got = 0usize;
                loop {
                    let n = c
                        .read(&mut buf)
                        .map_err(|e| format!("read after {got} bytes: {e}"))?;
                    if n == 0 {
                        break;
                    }
                    for (k, b) in buf[..n].iter().enumerate() {
                        if *b != byte_at(got + k) {
                            return Err(format!("corrupted byte at {}", got + k));
                        }
                    }
                    got += n;
                }
                Ok(got)
            })
            .unwrap()
        });
        ready_rx.recv_timeout(Duration::from_secs(5)).unwrap();
        let ip = server.ip.clone();
        let started = Instant::now();
        cli.run_blocking(move || {
            let mut c = TcpStream::connect_timeout(
                &format!("{ip}:5201").parse().unwrap(),
                Duration::from_secs(5),
            )
            .map_err(|e| format!("connect: {e}"))?;
            c.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
            let chunk: Vec<u8> = (0..1 << 16).map(byte_at).collect();
            let mut sent = 0usize;
            while sent < bytes {
                // The pattern repeats every 251 bytes; keep the phase across chunks.
                let phase = sent % 251;
                let n = (bytes - sent).min(chunk.len() - 251);
                c.write_all(&chunk[phase..phase + n])
                    .map_err(|e| format!("write after {sent} bytes: {e}"))?;
                sent += n;
            }
            Ok::<(), String>(())
        })
        .unwrap()?;
        let got = server_side.join().unwrap()?;
        if got != bytes {
            return Err(format!("{got} of {bytes} bytes arrived"));
        }
        let secs = started.elapsed().as_secs_f64();
        Ok(bytes as f64 * 8.0 / secs / 1e9)
    })
}

/// [`tcp_transfer`]; on failure, panics with the sleeve metrics and connections of every node.
pub async fn transfer(lab: &Lab, server: &LabPod, client: &LabPod, bytes: usize) -> f64 {
    match tcp_transfer(server, client, bytes) {
        Ok(g) => g,
        Err(e) => {
            let mut diag = String::new();
            for i in 1..=lab.nodes() {
                let m = lab.get(i, "/metrics").await.unwrap_or_default();
                diag.push_str(&format!("-- n{i} --\n"));
                for l in m
                    .lines()
                    .filter(|l| l.starts_with("weft_sleeve") && !l.ends_with(" 0"))
                {
                    diag.push_str(l);
                    diag.push('\n');
                }
                if let Ok(st) = lab.status(i).await {
                    for c in st.connections {
                        diag.push_str(&format!("{c:?}\n"));
                    }
                }
            }
            panic!("TCP transfer failed: {e}\n{diag}");
        }
    }
}

/// The sum of the samples of metric `name` (a name with labels picks one series) on node `node`.
pub async fn metric(lab: &Lab, node: usize, name: &str) -> u64 {
    let text = lab.get(node, "/metrics").await.unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}
