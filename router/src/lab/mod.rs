//! `weft lab`: a local mesh of real routers, each in its own network namespace.
//!
//! `weft lab up` builds the underlay ([`topology`]: one segment, or several given by
//! `--segments` ([`segments`]), joined by multi-homed nodes or NAT gateways), starts one
//! detached `weft router` per node (via `ip netns exec`) and waits until every router sees
//! the whole mesh and is connected to every node it can reach directly ([`topology_ready`]). Everything a
//! lab owns lives under `/run/weft-lab/<id>/`: `lab.json` (the description, with pids),
//! `password`, and per node `n<i>.log`, `n<i>.pid`, `n<i>.sock` (status API) and
//! `n<i>.state/`. `weft lab down` stops the routers and removes namespaces and directory.
//!
//! The same machinery is a library for multi-node tests: [`Lab::up`], [`Lab::status`],
//! [`Lab::stop_node`], [`Lab::start_node`], [`Lab::wait_until`], [`Lab::down`] and a
//! [`LabGuard`] that tears the lab down when dropped. Nodes are numbered from 1, like
//! their namespaces (`weft-<id>-n1`).

pub mod pods;
pub mod process;
mod ready;
pub mod segments;
pub mod topology;

use std::io::Read as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use serde::{Deserialize, Serialize};

use crate::client;
use crate::status::{table, Status};
pub use ready::{mesh_gaps, mesh_ready, topology_ready};
pub use segments::{SegmentDef, SegmentSpec};
pub use topology::{
    check_prerequisites, create_segmented, create_topology, list_namespaces, run_in_netns,
    teardown, teardown_blocking, validate_id, NatGateway, Segment, Topology,
};

/// Where labs keep their files.
pub const LAB_ROOT: &str = "/run/weft-lab";
/// Control port of the lab routers.
pub const CONTROL_PORT: u16 = 6783;

/// The directory of lab `id`.
pub fn lab_dir(id: &str) -> PathBuf {
    Path::new(LAB_ROOT).join(id)
}

/// The peer name of node `i` of lab `id`: stable across runs.
pub fn node_peer_name(id: &str, i: usize) -> String {
    weft_gossip::PeerName::derive(&format!("lab-{id}-n{i}")).to_string()
}

/// `n` random characters from a-z0-9 (from the kernel's generator).
pub fn random_alnum(n: usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut bytes = vec![0u8; n];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .expect("reading /dev/urandom");
    // 252 = 7 * 36: the modulo bias of larger values is negligible for ids and passwords.
    bytes
        .iter()
        .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
        .collect()
}

/// The network password of a lab (or of one node, see [`Lab::start_node`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LabPassword {
    /// A fresh random password.
    Random,
    Given(String),
    /// No password: no encryption.
    None,
}

/// What [`Lab::up`] builds.
#[derive(Clone, Debug)]
pub struct LabOptions {
    pub id: String,
    pub nodes: usize,
    pub password: LabPassword,
    /// How long [`Lab::up`] waits for the mesh (when `wait`; see [`topology_ready`]).
    pub timeout: Duration,
    /// The `weft` binary to run as router.
    pub bin: PathBuf,
    /// Extra arguments for every router.
    pub router_args: Vec<String>,
    /// Wait for the mesh ([`Lab::wait_for_mesh`]) before returning.
    pub wait: bool,
    /// Underlay segments (`--segments`); `None`: one segment with every node.
    pub segments: Option<SegmentSpec>,
}

impl LabOptions {
    /// `nodes` nodes, random password, 30 s timeout, waiting for the mesh.
    pub fn new(id: &str, nodes: usize, bin: impl Into<PathBuf>) -> Self {
        LabOptions {
            id: id.to_string(),
            nodes,
            password: LabPassword::Random,
            timeout: Duration::from_secs(30),
            bin: bin.into(),
            router_args: Vec::new(),
            wait: true,
            segments: None,
        }
    }
}

/// One node as recorded in `lab.json`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct NodeInfo {
    pub index: usize,
    pub nickname: String,
    pub name: String,
    pub namespace: String,
    pub address: Ipv4Addr,
    pub socket: PathBuf,
    pub log: PathBuf,
    pub pid_file: PathBuf,
    pub state_dir: PathBuf,
    /// The running router, if any.
    pub pid: Option<u32>,
    /// How the router was last started (after `ip netns exec <namespace>`).
    pub argv: Vec<String>,
}

/// The contents of `lab.json`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct LabInfo {
    pub id: String,
    pub dir: PathBuf,
    pub bin: PathBuf,
    /// The lab's password file; `None` for an unencrypted lab.
    pub password_file: Option<PathBuf>,
    pub router_args: Vec<String>,
    pub topology: Topology,
    pub nodes: Vec<NodeInfo>,
}

/// A running lab.
#[derive(Debug)]
pub struct Lab {
    info: Mutex<LabInfo>,
}

/// What [`Lab::down`] removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DownReport {
    pub namespaces: Vec<String>,
    pub processes: usize,
    pub dir_removed: bool,
}

impl DownReport {
    pub fn nothing_found(&self) -> bool {
        self.namespaces.is_empty() && self.processes == 0 && !self.dir_removed
    }
}

/// Tears lab `id` down when dropped (errors ignored): keep one alive for a test's duration.
#[derive(Debug)]
pub struct LabGuard {
    pub id: String,
}

impl LabGuard {
    pub fn new(id: &str) -> Self {
        LabGuard { id: id.to_string() }
    }
}

impl Drop for LabGuard {
    fn drop(&mut self) {
        if let Err(e) = Lab::down_blocking(&self.id) {
            eprintln!("weft lab: tearing down lab {}: {e:#}", self.id);
        }
    }
}

impl Lab {
    /// Builds and starts a lab, replacing any lab with the same id; with `opts.wait`, waits
    /// for the mesh ([`Lab::wait_for_mesh`]; on timeout the lab is left up and the error
    /// tells what each node saw).
    pub async fn up(opts: LabOptions) -> anyhow::Result<Lab> {
        let topo = match &opts.segments {
            None => Topology::single_segment(&opts.id, opts.nodes)?,
            Some(spec) => {
                Topology::segmented(&opts.id, opts.nodes, spec).context("invalid --segments")?
            }
        };
        tokio::task::spawn_blocking(check_prerequisites).await??;
        if !opts.bin.is_file() {
            bail!("router binary {} not found (use --bin)", opts.bin.display());
        }
        let id = opts.id.clone();
        Lab::down(&id)
            .await
            .context("removing the previous lab with this id")?;
        let dir = lab_dir(&id);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        if let Err(e) = topo.create().await {
            let _ = Lab::down(&id).await;
            return Err(e.context(format!("building the namespaces of lab {id}")));
        }
        let password_file = match &opts.password {
            LabPassword::None => None,
            LabPassword::Random => Some(write_secret(&dir.join("password"), &random_alnum(32))?),
            LabPassword::Given(p) => Some(write_secret(&dir.join("password"), p)?),
        };
        let nodes = (1..=opts.nodes)
            .map(|i| NodeInfo {
                index: i,
                nickname: format!("n{i}"),
                name: node_peer_name(&id, i),
                namespace: topo.node_namespace(i),
                address: topo.primary_addr(i),
                socket: dir.join(format!("n{i}.sock")),
                log: dir.join(format!("n{i}.log")),
                pid_file: dir.join(format!("n{i}.pid")),
                state_dir: dir.join(format!("n{i}.state")),
                pid: None,
                argv: Vec::new(),
            })
            .collect();
        let lab = Lab {
            info: Mutex::new(LabInfo {
                id: id.clone(),
                dir,
                bin: opts.bin.clone(),
                password_file,
                router_args: opts.router_args.clone(),
                topology: topo,
                nodes,
            }),
        };
        lab.save()?;
        for i in 1..=opts.nodes {
            lab.start_node(i, &[], None).await.with_context(|| {
                format!(
                    "starting the router of n{i}; the lab is left up, remove it with \
                         `weft lab down{}`",
                    id_flag(&id)
                )
            })?;
        }
        if opts.wait {
            lab.wait_for_mesh(opts.timeout).await?;
        }
        Ok(lab)
    }

    /// The lab `id` as described by its `lab.json`.
    pub fn load(id: &str) -> anyhow::Result<Lab> {
        validate_id(id)?;
        let path = lab_dir(id).join("lab.json");
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                bail!(
                    "there is no lab {id:?} ({} does not exist): start one with `weft lab up{}`",
                    path.display(),
                    id_flag(id)
                )
            }
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let info: LabInfo =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        Ok(Lab {
            info: Mutex::new(info),
        })
    }

    /// Stops the routers of lab `id`, deletes its namespaces (also leftovers of a failed
    /// run) and its directory. Succeeds when there is nothing to remove.
    pub async fn down(id: &str) -> anyhow::Result<DownReport> {
        let id = id.to_string();
        tokio::task::spawn_blocking(move || Lab::down_blocking(&id)).await?
    }

    /// [`Lab::down`] for synchronous contexts (`Drop`).
    pub fn down_blocking(id: &str) -> anyhow::Result<DownReport> {
        validate_id(id)?;
        check_prerequisites()?;
        let dir = lab_dir(id);
        // Routers recorded in the lab directory (checked by command line, so that a reused
        // pid is left alone), then whatever still runs inside the namespaces.
        let needle = dir.to_string_lossy().into_owned();
        let mut pids = Vec::new();
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                if e.path().extension().is_some_and(|x| x == "pid") {
                    if let Some(pid) = std::fs::read_to_string(e.path())
                        .ok()
                        .and_then(|s| s.trim().parse::<u32>().ok())
                    {
                        if process::cmdline_contains(pid, &needle) {
                            pids.push(pid);
                        }
                    }
                }
            }
        }
        let stopped = process::terminate(&pids, Duration::from_secs(3));
        let t = teardown_blocking(id)?;
        let dir_removed = dir.exists();
        if dir_removed {
            std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
        }
        Ok(DownReport {
            namespaces: t.namespaces,
            processes: stopped + t.processes,
            dir_removed,
        })
    }

    /// Tears this lab down.
    pub async fn teardown(&self) -> anyhow::Result<DownReport> {
        Lab::down(&self.id()).await
    }

    /// A guard that tears this lab down when dropped.
    pub fn guard(&self) -> LabGuard {
        LabGuard::new(&self.id())
    }

    fn with_info<T>(&self, f: impl FnOnce(&mut LabInfo) -> T) -> T {
        let mut g = self.info.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut g)
    }

    fn node<T>(&self, i: usize, f: impl FnOnce(&NodeInfo) -> T) -> T {
        self.with_info(|info| {
            let n = info.nodes.len();
            let node = info
                .nodes
                .get(i.wrapping_sub(1))
                .unwrap_or_else(|| panic!("lab node {i} does not exist (nodes are 1..={n})"));
            f(node)
        })
    }

    /// A copy of the lab description (`lab.json`).
    pub fn info(&self) -> LabInfo {
        self.with_info(|i| i.clone())
    }

    fn save(&self) -> anyhow::Result<()> {
        let info = self.info();
        let path = info.dir.join("lab.json");
        let tmp = info.dir.join("lab.json.tmp");
        std::fs::write(&tmp, serde_json::to_string_pretty(&info)? + "\n")
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
        Ok(())
    }

    pub fn id(&self) -> String {
        self.with_info(|i| i.id.clone())
    }

    pub fn dir(&self) -> PathBuf {
        self.with_info(|i| i.dir.clone())
    }

    pub fn nodes(&self) -> usize {
        self.with_info(|i| i.nodes.len())
    }

    pub fn topology(&self) -> Topology {
        self.with_info(|i| i.topology.clone())
    }

    /// Status API socket of node `i` (1-based).
    pub fn node_socket(&self, i: usize) -> PathBuf {
        self.node(i, |n| n.socket.clone())
    }

    /// Network namespace of node `i`.
    pub fn namespace(&self, i: usize) -> String {
        self.node(i, |n| n.namespace.clone())
    }

    /// Underlay address of node `i`.
    pub fn underlay_addr(&self, i: usize) -> Ipv4Addr {
        self.node(i, |n| n.address)
    }

    /// Peer name of node `i`.
    pub fn peer_name(&self, i: usize) -> String {
        self.node(i, |n| n.name.clone())
    }

    /// Log file of node `i`.
    pub fn log_path(&self, i: usize) -> PathBuf {
        self.node(i, |n| n.log.clone())
    }

    /// Pid of node `i`'s router, if started and still running.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.node(i, |n| n.pid).filter(|&p| process::alive(p))
    }

    /// Status of node `i`, from its API socket.
    pub async fn status(&self, i: usize) -> anyhow::Result<Status> {
        let addr = format!("unix:{}", self.node_socket(i).display());
        fetch_status(&addr, client::DEFAULT_TIMEOUT).await
    }

    /// `path` (e.g. `/status/connections`) from node `i`'s API, as text.
    pub async fn get(&self, i: usize, path: &str) -> anyhow::Result<String> {
        let addr = format!("unix:{}", self.node_socket(i).display());
        let (code, body) = client::get(&addr, path).await?;
        if code != 200 {
            bail!("node n{i} answered {code} to GET {path}: {}", body.trim());
        }
        Ok(body)
    }

    /// Runs a command in node `i`'s namespace and returns its output.
    pub async fn exec(&self, i: usize, argv: &[&str]) -> anyhow::Result<std::process::Output> {
        let ns = self.namespace(i);
        tokio::process::Command::new("ip")
            .args(["netns", "exec", &ns])
            .args(argv)
            .output()
            .await
            .with_context(|| format!("running {argv:?} in {ns}"))
    }

    /// Starts node `i`'s router (it must not be running). `extra_args` are appended to its
    /// command line; `password` overrides the lab's: `Some(LabPassword::Random)` gives the
    /// node a different password than the others, `Some(LabPassword::None)` none.
    /// Returns the router's pid.
    pub async fn start_node(
        &self,
        i: usize,
        extra_args: &[String],
        password: Option<LabPassword>,
    ) -> anyhow::Result<u32> {
        if let Some(pid) = self.pid(i) {
            bail!("node n{i} is already running (pid {pid})");
        }
        let info = self.info();
        let node = &info.nodes[i - 1];
        let password_file = match password {
            None => info.password_file.clone(),
            Some(LabPassword::None) => None,
            Some(LabPassword::Random) => Some(write_secret(
                &info.dir.join(format!("n{i}.password")),
                &random_alnum(32),
            )?),
            Some(LabPassword::Given(p)) => {
                Some(write_secret(&info.dir.join(format!("n{i}.password")), &p)?)
            }
        };
        std::fs::create_dir_all(&node.state_dir)
            .with_context(|| format!("creating {}", node.state_dir.display()))?;
        let mut argv = vec![info.bin.to_string_lossy().into_owned()];
        argv.extend(router_argv(&info, node, password_file.as_deref()));
        argv.extend(extra_args.iter().cloned());
        let pid = process::spawn_in_netns(&node.namespace, &argv, &node.log)?;
        std::fs::write(&node.pid_file, format!("{pid}\n"))
            .with_context(|| format!("writing {}", node.pid_file.display()))?;
        self.with_info(|info| {
            let n = &mut info.nodes[i - 1];
            n.pid = Some(pid);
            n.argv = argv;
        });
        self.save()?;
        Ok(pid)
    }

    /// Stops node `i`'s router (SIGTERM, SIGKILL after 3 s). Does nothing if it is not
    /// running.
    pub async fn stop_node(&self, i: usize) -> anyhow::Result<()> {
        let (pid, pid_file, needle) = self.node(i, |n| {
            (
                n.pid,
                n.pid_file.clone(),
                n.socket.to_string_lossy().into_owned(),
            )
        });
        if let Some(pid) =
            pid.filter(|&p| process::alive(p) && process::cmdline_contains(p, &needle))
        {
            tokio::task::spawn_blocking(move || process::terminate(&[pid], Duration::from_secs(3)))
                .await?;
        }
        let _ = std::fs::remove_file(pid_file);
        self.with_info(|info| info.nodes[i - 1].pid = None);
        self.save()
    }

    async fn poll_all(&self, timeout: Duration) -> Vec<Result<Status, String>> {
        let sockets: Vec<PathBuf> =
            self.with_info(|i| i.nodes.iter().map(|n| n.socket.clone()).collect());
        let mut set = tokio::task::JoinSet::new();
        for (k, s) in sockets.iter().enumerate() {
            let addr = format!("unix:{}", s.display());
            set.spawn(async move {
                (
                    k,
                    fetch_status(&addr, timeout)
                        .await
                        .map_err(|e| format!("{e:#}")),
                )
            });
        }
        let mut out: Vec<Result<Status, String>> = vec![Err("no answer".into()); sockets.len()];
        while let Some(r) = set.join_next().await {
            if let Ok((k, r)) = r {
                out[k] = r;
            }
        }
        out
    }

    /// Polls every node's status every 100 ms until `pred` holds for the list of statuses
    /// (`None` for nodes that did not answer), a started router exits, or `timeout` passes.
    /// Returns the time it took and the statuses; the error describes what each node saw,
    /// with the tail of its log.
    pub async fn wait_until<F>(
        &self,
        timeout: Duration,
        what: &str,
        pred: F,
    ) -> anyhow::Result<(Duration, Vec<Option<Status>>)>
    where
        F: FnMut(&[Option<Status>]) -> bool,
    {
        self.wait_explained(timeout, what, pred, |_| Vec::new())
            .await
    }

    /// [`Lab::wait_until`], with `explain` saying what is missing when it fails.
    async fn wait_explained<F, E>(
        &self,
        timeout: Duration,
        what: &str,
        mut pred: F,
        explain: E,
    ) -> anyhow::Result<(Duration, Vec<Option<Status>>)>
    where
        F: FnMut(&[Option<Status>]) -> bool,
        E: Fn(&[Option<Status>]) -> Vec<String>,
    {
        let start = Instant::now();
        loop {
            let polled = self.poll_all(Duration::from_secs(1)).await;
            let statuses: Vec<Option<Status>> =
                polled.iter().map(|r| r.as_ref().ok().cloned()).collect();
            if pred(&statuses) {
                return Ok((start.elapsed(), statuses));
            }
            let exited: Vec<usize> = self.with_info(|info| {
                info.nodes
                    .iter()
                    .filter(|n| n.pid.is_some_and(|p| !process::alive(p)))
                    .map(|n| n.index)
                    .collect()
            });
            let missing = || {
                let gaps = explain(&statuses);
                if gaps.is_empty() {
                    String::new()
                } else {
                    format!("missing:\n  {}\n", gaps.join("\n  "))
                }
            };
            if !exited.is_empty() {
                let names: Vec<String> = exited.iter().map(|i| format!("n{i}")).collect();
                bail!(
                    "waiting for {what}: the router of {} exited\n{}{}",
                    names.join(", "),
                    missing(),
                    self.diagnostics(&polled)
                );
            }
            if start.elapsed() >= timeout {
                bail!(
                    "waiting for {what}: not reached within {:.1} s\n{}{}",
                    timeout.as_secs_f64(),
                    missing(),
                    self.diagnostics(&polled)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the mesh is complete ([`topology_ready`]): on one segment, every node
    /// has established connections to all others and sees all of them as reachable; with
    /// segments, every node sees every node of its part of the mesh and is connected to all
    /// it can reach directly.
    pub async fn wait_for_mesh(
        &self,
        timeout: Duration,
    ) -> anyhow::Result<(Duration, Vec<Status>)> {
        let (topo, names) = self.with_info(|i| {
            let names: Vec<String> = i.nodes.iter().map(|n| n.name.clone()).collect();
            (i.topology.clone(), names)
        });
        let n = topo.nodes;
        let what = if topo.segments.len() == 1 {
            format!("a full mesh of {n} nodes")
        } else {
            format!("the mesh of {n} nodes on {} segments", topo.segments.len())
        };
        let (d, statuses) = self
            .wait_explained(
                timeout,
                &what,
                |s| topology_ready(&topo, &names, s),
                |s| mesh_gaps(&topo, &names, s),
            )
            .await?;
        Ok((d, statuses.into_iter().flatten().collect()))
    }

    /// Whether `statuses` (one per node) show a complete mesh for this lab's topology.
    pub fn ready(&self, statuses: &[Option<Status>]) -> bool {
        self.with_info(|i| {
            let names: Vec<String> = i.nodes.iter().map(|n| n.name.clone()).collect();
            topology_ready(&i.topology, &names, statuses)
        })
    }

    /// Underlay addresses of node `i`, by segment: `(segment, address)`.
    pub fn underlay_addrs(&self, i: usize) -> Vec<(usize, Ipv4Addr)> {
        self.with_info(|info| info.topology.node_addrs(i))
    }

    /// What each node saw, and the end of its log.
    fn diagnostics(&self, polled: &[Result<Status, String>]) -> String {
        let info = self.info();
        let mut out = String::new();
        for (node, st) in info.nodes.iter().zip(polled) {
            let running = match node.pid {
                Some(p) if process::alive(p) => format!("pid {p}"),
                Some(p) => format!("pid {p}, exited"),
                None => "not running".to_string(),
            };
            out.push_str(&format!(
                "\n── n{} ({}, {}, {running}) ──\n",
                node.index,
                node.namespace,
                addr_list(&info.topology, node)
            ));
            match st {
                Ok(s) => {
                    out.push_str(&s.render_text());
                    out.push_str(&s.render_connections());
                }
                Err(e) => out.push_str(&format!("no status: {e}\n")),
            }
            out.push_str(&format!("last lines of {}:\n", node.log.display()));
            out.push_str(&process::tail(&node.log, 15));
            out.push('\n');
        }
        out.push_str(&format!(
            "\nThe lab is left up for inspection; remove it with `weft lab down{}`.\n",
            id_flag(&info.id)
        ));
        out
    }

    /// One line per node: namespace, address, name, peers, established connections, encryption.
    pub fn summary_table(&self, statuses: &[Option<Status>]) -> String {
        let info = self.info();
        let mut rows = vec![[
            "NODE",
            "NAMESPACE",
            "ADDRESS",
            "NAME",
            "PEERS",
            "ESTABLISHED",
            "ENCRYPTION",
        ]
        .map(String::from)
        .to_vec()];
        for (node, st) in info.nodes.iter().zip(statuses) {
            let (peers, est, enc) = match st {
                Some(s) => (
                    s.peers.len().to_string(),
                    s.connection_counts().0.to_string(),
                    if s.encryption { "enabled" } else { "disabled" }.to_string(),
                ),
                None => ("?".into(), "?".into(), "?".into()),
            };
            rows.push(vec![
                node.nickname.clone(),
                node.namespace.clone(),
                addr_list(&info.topology, node),
                node.name.clone(),
                peers,
                est,
                enc,
            ]);
        }
        table(&rows)
    }
}

/// The node's underlay addresses, comma-separated (its recorded address if the topology
/// does not know it).
fn addr_list(topo: &Topology, node: &NodeInfo) -> String {
    if !(1..=topo.nodes).contains(&node.index) {
        return node.address.to_string();
    }
    let addrs: Vec<String> = topo
        .node_addrs(node.index)
        .iter()
        .map(|(_, a)| a.to_string())
        .collect();
    if addrs.is_empty() {
        node.address.to_string()
    } else {
        addrs.join(",")
    }
}

/// The `weft router` arguments of a lab node (without the binary).
fn router_argv(info: &LabInfo, node: &NodeInfo, password_file: Option<&Path>) -> Vec<String> {
    let mut a: Vec<String> = vec![
        "router".into(),
        "--name".into(),
        node.name.clone(),
        "--nickname".into(),
        node.nickname.clone(),
    ];
    // The nodes it reaches directly: on a shared segment, or the public segment from
    // behind NAT. Others are found through gossip (dialling them just backs off).
    for addr in info.topology.peer_addrs(node.index) {
        a.push("--peer".into());
        a.push(format!("{addr}:{CONTROL_PORT}"));
    }
    if let Some(f) = password_file {
        a.push("--password-file".into());
        a.push(f.to_string_lossy().into_owned());
    }
    // The lab's own addresses, unless the extra router arguments give their own.
    for (flag, value) in [
        ("--status-addr", "127.0.0.1:6784"),
        ("--metrics-addr", "127.0.0.1:6782"),
    ] {
        if !info.router_args.iter().any(|x| x == flag) {
            a.push(flag.into());
            a.push(value.into());
        }
    }
    a.push("--api-socket".into());
    a.push(node.socket.to_string_lossy().into_owned());
    a.push("--state-dir".into());
    a.push(node.state_dir.to_string_lossy().into_owned());
    a.extend(info.router_args.iter().cloned());
    a
}

async fn fetch_status(addr: &str, timeout: Duration) -> anyhow::Result<Status> {
    let (code, body) = client::get_timeout(addr, "/status.json", timeout).await?;
    if code != 200 {
        bail!("{addr} answered {code}: {}", body.trim());
    }
    serde_json::from_str(&body).map_err(|e| anyhow!("{addr} sent an invalid status: {e}"))
}

/// Writes a secret with mode 0600.
fn write_secret(path: &Path, secret: &str) -> anyhow::Result<PathBuf> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(secret.as_bytes())?;
    Ok(path.to_path_buf())
}

/// ` --id X` unless X is the default id.
fn id_flag(id: &str) -> String {
    if id == "lab" {
        String::new()
    } else {
        format!(" --id {id}")
    }
}

mod cli;
pub use cli::{run, LabCmd, LabDownArgs, LabStatusArgs, LabUpArgs};
