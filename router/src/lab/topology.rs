//! The lab's underlay: network namespaces joined by veth links to bridges ("switches").
//!
//! A [`Topology`] describes the namespaces and links; [`Topology::create_blocking`] builds
//! it with `ip` (iproute2) and [`teardown_blocking`] removes everything named after a lab
//! id, whatever state a failed creation left behind. Today a lab has one segment (one switch,
//! every node on it); the description already has a list of segments, each with its own
//! switch namespace, subnet and members, so labs with several segments joined by a
//! dual-homed node or a NAT gateway fit in later.
//!
//! The plumbing is synchronous (it runs short `ip` commands) so that it can also run from
//! `Drop` guards; async callers use the wrappers, which run it on the blocking pool.

use std::net::Ipv4Addr;
use std::process::Command;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use serde::{Deserialize, Serialize};

use super::process;

/// Most nodes a lab can have (addresses .11 to .74 of a segment's /24).
pub const MAX_NODES: usize = 64;
/// Node `i` (1-based) has host address `i + NODE_ADDR_OFFSET` in each of its segments.
pub const NODE_ADDR_OFFSET: usize = 10;
/// Segment `k` uses 10.201.`k`.0/24.
pub const UNDERLAY_BASE: [u8; 2] = [10, 201];

/// One underlay network: a bridge in its own "switch" namespace with a veth port per member.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segment {
    /// Namespace holding the bridge.
    pub namespace: String,
    /// Bridge device in that namespace.
    pub bridge: String,
    /// Network address of the segment (a /24).
    pub subnet: Ipv4Addr,
    pub prefix_len: u8,
    /// Member nodes, 1-based.
    pub members: Vec<usize>,
}

/// Namespaces and links of a lab.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Topology {
    pub id: String,
    /// Nodes are numbered 1..=nodes and live in namespaces `weft-<id>-n<i>`.
    pub nodes: usize,
    pub segments: Vec<Segment>,
}

/// A lab id is short and plain so that every derived name stays valid.
pub fn validate_id(id: &str) -> anyhow::Result<()> {
    if id.is_empty()
        || id.len() > 8
        || !id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    {
        bail!("invalid lab id {id:?}: use 1 to 8 characters from a-z and 0-9");
    }
    Ok(())
}

/// Prefix of every namespace of lab `id`.
pub fn namespace_prefix(id: &str) -> String {
    format!("weft-{id}-")
}

impl Topology {
    /// All nodes on one switch, `weft-<id>-sw`, in 10.201.0.0/24.
    pub fn single_segment(id: &str, nodes: usize) -> anyhow::Result<Topology> {
        validate_id(id)?;
        if !(1..=MAX_NODES).contains(&nodes) {
            bail!("a lab has 1 to {MAX_NODES} nodes, not {nodes}");
        }
        Ok(Topology {
            id: id.to_string(),
            nodes,
            segments: vec![Segment {
                namespace: format!("weft-{id}-sw"),
                bridge: "br0".to_string(),
                subnet: Ipv4Addr::new(UNDERLAY_BASE[0], UNDERLAY_BASE[1], 0, 0),
                prefix_len: 24,
                members: (1..=nodes).collect(),
            }],
        })
    }

    fn check_node(&self, i: usize) {
        assert!(
            (1..=self.nodes).contains(&i),
            "lab node {i} does not exist (nodes are numbered 1..={})",
            self.nodes
        );
    }

    /// Namespace of node `i` (1-based).
    pub fn node_namespace(&self, i: usize) -> String {
        self.check_node(i);
        format!("weft-{}-n{i}", self.id)
    }

    /// Every namespace of the lab: switches first, then nodes.
    pub fn namespaces(&self) -> Vec<String> {
        let mut v: Vec<String> = self.segments.iter().map(|s| s.namespace.clone()).collect();
        v.extend((1..=self.nodes).map(|i| self.node_namespace(i)));
        v
    }

    /// Address of node `i` in segment `seg`, if it is a member.
    pub fn node_addr(&self, i: usize, seg: usize) -> Option<Ipv4Addr> {
        let s = self.segments.get(seg)?;
        if !s.members.contains(&i) {
            return None;
        }
        let o = s.subnet.octets();
        Some(Ipv4Addr::new(
            o[0],
            o[1],
            o[2],
            (i + NODE_ADDR_OFFSET) as u8,
        ))
    }

    /// The node's address in the first segment it belongs to.
    pub fn primary_addr(&self, i: usize) -> Ipv4Addr {
        self.check_node(i);
        (0..self.segments.len())
            .find_map(|k| self.node_addr(i, k))
            .unwrap_or_else(|| panic!("lab node {i} is on no segment"))
    }

    /// The node's interface towards segment `seg`.
    pub fn node_iface(seg: usize) -> String {
        format!("eth{seg}")
    }

    /// Builds every namespace and link. On error, what was built stays: call
    /// [`teardown_blocking`] (the lab commands do).
    pub fn create_blocking(&self) -> anyhow::Result<()> {
        for seg in &self.segments {
            let sw = seg.namespace.as_str();
            ip(&["netns", "add", sw])?;
            ip(&["-n", sw, "link", "set", "lo", "up"])?;
            ip(&["-n", sw, "link", "add", &seg.bridge, "type", "bridge"])?;
            ip(&["-n", sw, "link", "set", &seg.bridge, "up"])?;
        }
        for i in 1..=self.nodes {
            let ns = self.node_namespace(i);
            ip(&["netns", "add", &ns])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            for (k, seg) in self.segments.iter().enumerate() {
                let Some(addr) = self.node_addr(i, k) else {
                    continue;
                };
                let sw = seg.namespace.as_str();
                let port = format!("n{i}");
                let iface = Self::node_iface(k);
                ip(&[
                    "-n", sw, "link", "add", &port, "type", "veth", "peer", "name", &iface,
                    "netns", &ns,
                ])?;
                ip(&["-n", sw, "link", "set", &port, "master", &seg.bridge, "up"])?;
                let cidr = format!("{addr}/{}", seg.prefix_len);
                ip(&["-n", &ns, "addr", "add", &cidr, "dev", &iface])?;
                ip(&["-n", &ns, "link", "set", &iface, "up"])?;
            }
        }
        Ok(())
    }

    /// Async form of [`Topology::create_blocking`].
    pub async fn create(&self) -> anyhow::Result<()> {
        let t = self.clone();
        tokio::task::spawn_blocking(move || t.create_blocking()).await?
    }
}

/// Builds the one-segment topology of lab `id` with `nodes` nodes, without starting routers.
pub async fn create_topology(id: &str, nodes: usize) -> anyhow::Result<Topology> {
    let t = Topology::single_segment(id, nodes)?;
    t.create().await?;
    Ok(t)
}

/// Runs `ip ARGS`, returning its standard output.
pub fn ip(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("ip").args(args).output().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            anyhow!(
                "the `ip` command was not found: weft lab needs iproute2 \
                 (install it, e.g. `apt-get install iproute2`)"
            )
        } else {
            anyhow!("cannot run `ip {}`: {e}", args.join(" "))
        }
    })?;
    if !out.status.success() {
        bail!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Fails with advice unless we are root and `ip` works.
pub fn check_prerequisites() -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!("weft lab needs root (it creates network namespaces): run it with sudo");
    }
    ip(&["-V"]).map(drop)
}

/// Names of the existing network namespaces that start with `prefix`.
pub fn list_namespaces(prefix: &str) -> anyhow::Result<Vec<String>> {
    let out = ip(&["netns", "list"])?;
    Ok(out
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(prefix))
        .map(str::to_string)
        .collect())
}

/// Processes whose network namespace is `ns`.
pub fn namespace_pids(ns: &str) -> Vec<u32> {
    ip(&["netns", "pids", ns])
        .map(|o| {
            o.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// What a teardown removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TeardownReport {
    pub namespaces: Vec<String>,
    /// Processes that were still running in those namespaces and were stopped.
    pub processes: usize,
}

/// Removes every namespace of lab `id` (`weft-<id>-*`), stopping the processes inside
/// (SIGTERM, SIGKILL after 3 s) first. Succeeds when there is nothing to remove.
pub fn teardown_blocking(id: &str) -> anyhow::Result<TeardownReport> {
    validate_id(id)?;
    let prefix = namespace_prefix(id);
    let namespaces = list_namespaces(&prefix)?;
    let pids: Vec<u32> = namespaces
        .iter()
        .flat_map(|ns| namespace_pids(ns))
        .collect();
    let processes = process::terminate(&pids, Duration::from_secs(3));
    let mut errors = Vec::new();
    // Nodes before switches: deleting a node namespace also removes its veth peers.
    let mut order = namespaces.clone();
    order.sort_by_key(|n| n[prefix.len()..].starts_with("sw"));
    for ns in &order {
        if let Err(e) = ip(&["netns", "del", ns]) {
            errors.push(e.to_string());
        }
    }
    let left = list_namespaces(&prefix)?;
    if !left.is_empty() {
        bail!(
            "could not remove namespaces {}: {}",
            left.join(", "),
            errors.join("; ")
        );
    }
    Ok(TeardownReport {
        namespaces,
        processes,
    })
}

/// Async form of [`teardown_blocking`].
pub async fn teardown(id: &str) -> anyhow::Result<TeardownReport> {
    let id = id.to_string();
    tokio::task::spawn_blocking(move || teardown_blocking(&id)).await?
}

/// Runs `f` on a thread that has joined network namespace `ns` (`/run/netns/<ns>`); sockets
/// it creates belong to that namespace. Handy for tests that talk to a node's 127.0.0.1.
pub fn run_in_netns<T, F>(ns: &str, f: F) -> anyhow::Result<T>
where
    T: Send,
    F: FnOnce() -> T + Send,
{
    use std::os::fd::AsRawFd as _;
    let path = format!("/run/netns/{ns}");
    let file =
        std::fs::File::open(&path).with_context(|| format!("opening network namespace {path}"))?;
    std::thread::scope(|s| {
        s.spawn(move || {
            // SAFETY: setns on a valid namespace fd only changes this thread's network
            // namespace; the thread ends after `f`.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(anyhow!(
                    "entering network namespace {ns}: {}",
                    std::io::Error::last_os_error()
                ));
            }
            Ok(f())
        })
        .join()
        .map_err(|_| anyhow!("thread in network namespace {ns} panicked"))?
    })
}
