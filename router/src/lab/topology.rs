//! The lab's underlay: network namespaces joined by veth links to bridges ("switches").
//!
//! A [`Topology`] describes the namespaces and links; [`Topology::create_blocking`] builds
//! it with `ip` (iproute2) and `nft`, and [`teardown_blocking`] removes everything named
//! after a lab id, whatever state a failed creation left behind.
//!
//! A lab has one or more segments, each a bridge in its own switch namespace
//! (`weft-<id>-sw` for the first, `weft-<id>-sw<k>` for the others) with subnet
//! 10.201.`k`.0/24. Node `i` has one veth per segment it is on (`eth<k>` in its namespace,
//! address 10.201.`k`.`10+i`), so a node on two segments joins them. A NAT segment is a
//! private network behind a gateway namespace `weft-<id>-gw<k>`: leg `wan` on the first
//! (public) segment at 10.201.0.`255-k`, leg `lan` at 10.201.`k`.1, forwarding on and an
//! nftables masquerade for the private subnet leaving on `wan`; its nodes route everything
//! through 10.201.`k`.1. Nobody has a route into a private subnet.
//!
//! The plumbing is synchronous (it runs short `ip` commands) so that it can also run from
//! `Drop` guards; async callers use the wrappers, which run it on the blocking pool.

#![allow(unsafe_code)] // syscalls and FFI; each use has its SAFETY note

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::process::Command;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use serde::{Deserialize, Serialize};

use super::process;
use super::segments::SegmentSpec;

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
    /// Set for a private segment behind a NAT gateway on the first segment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nat: Option<NatGateway>,
}

/// The gateway of a NAT segment: a namespace with one leg on the first (public) segment and
/// one on the private segment, masquerading the private subnet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NatGateway {
    /// `weft-<id>-gw<k>`.
    pub namespace: String,
    /// Address of the `wan` leg on the first segment (what public nodes see).
    pub public_addr: Ipv4Addr,
    /// Address of the `lan` leg, the private nodes' default gateway.
    pub private_addr: Ipv4Addr,
}

/// Name of the gateway's leg on the public segment.
pub const GW_WAN: &str = "wan";
/// Name of the gateway's leg on the private segment.
pub const GW_LAN: &str = "lan";
/// The nftables table of a NAT gateway (in the gateway's namespace only).
pub const GW_NFT_TABLE: &str = "weft_lab_nat";

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
        Topology::segmented(id, nodes, &SegmentSpec::single(nodes))
    }

    /// The segments of `spec` (validated here): segment `k` (0-based) is switch
    /// `weft-<id>-sw` (k = 0) or `weft-<id>-sw<k>`, subnet 10.201.`k`.0/24; a `nat:` segment
    /// gets gateway `weft-<id>-gw<k>` at 10.201.0.`255-k` and 10.201.`k`.1.
    pub fn segmented(id: &str, nodes: usize, spec: &SegmentSpec) -> anyhow::Result<Topology> {
        validate_id(id)?;
        if !(1..=MAX_NODES).contains(&nodes) {
            bail!("a lab has 1 to {MAX_NODES} nodes, not {nodes}");
        }
        spec.validate(nodes)?;
        let net =
            |k: usize, host: u8| Ipv4Addr::new(UNDERLAY_BASE[0], UNDERLAY_BASE[1], k as u8, host);
        let segments = spec
            .segments
            .iter()
            .enumerate()
            .map(|(k, def)| {
                let mut members = def.members.clone();
                members.sort_unstable();
                Segment {
                    namespace: if k == 0 {
                        format!("weft-{id}-sw")
                    } else {
                        format!("weft-{id}-sw{k}")
                    },
                    bridge: "br0".to_string(),
                    subnet: net(k, 0),
                    prefix_len: 24,
                    members,
                    nat: def.nat.then(|| NatGateway {
                        namespace: format!("weft-{id}-gw{k}"),
                        public_addr: net(0, (255 - k) as u8),
                        private_addr: net(k, 1),
                    }),
                }
            })
            .collect();
        Ok(Topology {
            id: id.to_string(),
            nodes,
            segments,
        })
    }

    /// True for the classic lab: one segment with every node.
    pub fn is_single_segment(&self) -> bool {
        self.segments.len() == 1 && self.segments[0].nat.is_none()
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

    /// Every namespace of the lab: switches first, then NAT gateways, then nodes.
    pub fn namespaces(&self) -> Vec<String> {
        let mut v: Vec<String> = self.segments.iter().map(|s| s.namespace.clone()).collect();
        v.extend(
            self.segments
                .iter()
                .filter_map(|s| s.nat.as_ref().map(|g| g.namespace.clone())),
        );
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

    /// The segments node `i` is on, with its address in each.
    pub fn node_addrs(&self, i: usize) -> Vec<(usize, Ipv4Addr)> {
        (0..self.segments.len())
            .filter_map(|k| self.node_addr(i, k).map(|a| (k, a)))
            .collect()
    }

    /// The node's address in the first segment it belongs to.
    pub fn primary_addr(&self, i: usize) -> Ipv4Addr {
        self.check_node(i);
        self.node_addrs(i)
            .first()
            .map(|(_, a)| *a)
            .unwrap_or_else(|| panic!("lab node {i} is on no segment"))
    }

    /// The NAT segment node `i` is behind, if any.
    pub fn nat_segment(&self, i: usize) -> Option<usize> {
        self.segments
            .iter()
            .position(|s| s.nat.is_some() && s.members.contains(&i))
    }

    /// The address node `from` dials to reach node `to` directly, if it can: `to`'s
    /// address in the first segment they share; from behind NAT, also the public (first)
    /// segment's nodes.
    pub fn dial_addr(&self, from: usize, to: usize) -> Option<Ipv4Addr> {
        if from == to {
            return None;
        }
        let shared = (0..self.segments.len())
            .find(|&k| self.node_addr(from, k).is_some() && self.node_addr(to, k).is_some());
        match shared {
            Some(k) => self.node_addr(to, k),
            None if self.nat_segment(from).is_some() => self.node_addr(to, 0),
            None => None,
        }
    }

    /// The addresses node `i` is given as `--peer`s, by node number.
    pub fn peer_addrs(&self, i: usize) -> Vec<Ipv4Addr> {
        (1..=self.nodes)
            .filter_map(|j| self.dial_addr(i, j))
            .collect()
    }

    /// The nodes `i` can have a direct connection with (either side dialling).
    pub fn direct_neighbours(&self, i: usize) -> BTreeSet<usize> {
        (1..=self.nodes)
            .filter(|&j| self.dial_addr(i, j).is_some() || self.dial_addr(j, i).is_some())
            .collect()
    }

    /// Every pair `(a, b)`, `a < b`, that can connect directly: nodes sharing a segment, and
    /// nodes behind NAT with the public segment's nodes.
    pub fn expected_links(&self) -> BTreeSet<(usize, usize)> {
        (1..=self.nodes)
            .flat_map(|a| {
                self.direct_neighbours(a)
                    .into_iter()
                    .filter(move |&b| a < b)
                    .map(move |b| (a, b))
            })
            .collect()
    }

    /// The nodes that `i` reaches over direct links, possibly through others (itself
    /// included): its part of the mesh.
    pub fn reachable_from(&self, i: usize) -> BTreeSet<usize> {
        let mut seen = BTreeSet::from([i]);
        let mut todo = vec![i];
        while let Some(a) = todo.pop() {
            for b in self.direct_neighbours(a) {
                if seen.insert(b) {
                    todo.push(b);
                }
            }
        }
        seen
    }

    /// The node's interface towards segment `seg`.
    pub fn node_iface(seg: usize) -> String {
        format!("eth{seg}")
    }

    /// A few lines describing the segments (for `weft lab up|status`).
    pub fn describe(&self) -> String {
        let mut out = String::new();
        for (k, s) in self.segments.iter().enumerate() {
            let members: Vec<String> = s.members.iter().map(|i| format!("n{i}")).collect();
            let kind = match (&s.nat, k) {
                (Some(_), _) => "private",
                (None, 0) if self.segments.len() > 1 => "public",
                _ => "",
            };
            out.push_str(&format!(
                "segment {k}{}: {}/{} on {} (eth{k}): {}\n",
                if kind.is_empty() {
                    String::new()
                } else {
                    format!(" ({kind})")
                },
                s.subnet,
                s.prefix_len,
                s.namespace,
                members.join(" ")
            ));
            if let Some(g) = &s.nat {
                out.push_str(&format!(
                    "  NAT gateway {}: lan {} (default route of {}) masquerades out of wan {} \
                     on segment 0\n",
                    g.namespace,
                    g.private_addr,
                    members.join(" "),
                    g.public_addr
                ));
            }
        }
        let multi: Vec<String> = (1..=self.nodes)
            .filter(|&i| self.node_addrs(i).len() > 1)
            .map(|i| format!("n{i}"))
            .collect();
        if !multi.is_empty() {
            out.push_str(&format!("multi-homed: {}\n", multi.join(" ")));
        }
        out
    }

    /// Builds every namespace and link. On error, what was built stays: call
    /// [`teardown_blocking`] (the lab commands do).
    pub fn create_blocking(&self) -> anyhow::Result<()> {
        if self.segments.iter().any(|s| s.nat.is_some()) {
            nft_available()?;
        }
        for seg in &self.segments {
            let sw = seg.namespace.as_str();
            ip(&["netns", "add", sw])?;
            ip(&["-n", sw, "link", "set", "lo", "up"])?;
            ip(&["-n", sw, "link", "add", &seg.bridge, "type", "bridge"])?;
            ip(&["-n", sw, "link", "set", &seg.bridge, "up"])?;
        }
        for (k, seg) in self.segments.iter().enumerate() {
            if let Some(gw) = &seg.nat {
                self.create_gateway(k, seg, gw)?;
            }
        }
        for i in 1..=self.nodes {
            let ns = self.node_namespace(i);
            ip(&["netns", "add", &ns])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            for (k, addr) in self.node_addrs(i) {
                let seg = &self.segments[k];
                let port = format!("n{i}");
                let iface = Self::node_iface(k);
                self.veth(k, &port, &ns, &iface, addr)?;
                if let Some(gw) = &seg.nat {
                    let via = gw.private_addr.to_string();
                    ip(&["-n", &ns, "route", "add", "default", "via", &via])?;
                }
            }
        }
        Ok(())
    }

    /// A veth from segment `k`'s bridge (port `port`) to `iface` in `ns`, with `addr`/24.
    fn veth(
        &self,
        k: usize,
        port: &str,
        ns: &str,
        iface: &str,
        addr: Ipv4Addr,
    ) -> anyhow::Result<()> {
        let seg = &self.segments[k];
        let sw = seg.namespace.as_str();
        ip(&[
            "-n", sw, "link", "add", port, "type", "veth", "peer", "name", iface, "netns", ns,
        ])?;
        ip(&["-n", sw, "link", "set", port, "master", &seg.bridge, "up"])?;
        let cidr = format!("{addr}/{}", seg.prefix_len);
        ip(&["-n", ns, "addr", "add", &cidr, "dev", iface])?;
        ip(&["-n", ns, "link", "set", iface, "up"])?;
        Ok(())
    }

    /// The gateway of NAT segment `k`: legs, forwarding, masquerade.
    fn create_gateway(&self, k: usize, seg: &Segment, gw: &NatGateway) -> anyhow::Result<()> {
        let ns = gw.namespace.as_str();
        ip(&["netns", "add", ns])?;
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
        let port = format!("gw{k}");
        self.veth(0, &port, ns, GW_WAN, gw.public_addr)?;
        self.veth(k, &port, ns, GW_LAN, gw.private_addr)?;
        run_in_netns(ns, || {
            std::fs::write("/proc/sys/net/ipv4/ip_forward", "1\n")
                .context("enabling IPv4 forwarding")
        })??;
        let rules = format!(
            "table ip {GW_NFT_TABLE} {{\n\
             \x20 chain postrouting {{\n\
             \x20   type nat hook postrouting priority srcnat; policy accept;\n\
             \x20   ip saddr {}/{} oifname \"{GW_WAN}\" masquerade\n\
             \x20 }}\n\
             }}\n",
            seg.subnet, seg.prefix_len
        );
        nft_in(ns, &rules)
    }

    /// Async form of [`Topology::create_blocking`].
    pub async fn create(&self) -> anyhow::Result<()> {
        let t = self.clone();
        tokio::task::spawn_blocking(move || t.create_blocking()).await?
    }
}

/// Fails with advice unless the `nft` command runs.
fn nft_available() -> anyhow::Result<()> {
    match Command::new("nft").arg("--version").output() {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => bail!(
            "`nft --version` failed: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "NAT segments need the `nft` command (install nftables, e.g. `apt-get install nftables`)"
        ),
        Err(e) => bail!("cannot run nft: {e}"),
    }
}

/// Loads an nftables ruleset (`nft -f -`) in namespace `ns`.
fn nft_in(ns: &str, rules: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("running nft in {ns}"))?;
    child
        .stdin
        .take()
        .context("nft stdin")?
        .write_all(rules.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "nft in {ns} refused the NAT rules: {}\n{rules}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Builds the one-segment topology of lab `id` with `nodes` nodes, without starting routers.
pub async fn create_topology(id: &str, nodes: usize) -> anyhow::Result<Topology> {
    let t = Topology::single_segment(id, nodes)?;
    t.create().await?;
    Ok(t)
}

/// Builds the topology of lab `id` with `nodes` nodes on the segments of `spec`, without
/// starting routers. On error, call [`teardown`].
pub async fn create_segmented(
    id: &str,
    nodes: usize,
    spec: &SegmentSpec,
) -> anyhow::Result<Topology> {
    let t = Topology::segmented(id, nodes, spec)?;
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
    ip(&["-V"]).map(drop)?;
    nft_accepts_the_pod_guard()
}

/// Fails with advice unless `nft` runs and it and the kernel accept the tables every router
/// writes (the pod guard's, the most demanding), checked with `nft --check`: nothing is
/// changed anywhere. Without nft a router runs, but no pod can attach (the guard cannot be put
/// in place) and nothing is masqueraded or enforced; better said here than in a node log.
fn nft_accepts_the_pod_guard() -> anyhow::Result<()> {
    let version = match Command::new("nft").arg("--version").output() {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_string(),
        Ok(o) => bail!(
            "`nft --version` failed: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "the `nft` command was not found: weft lab's routers write their pod guard, \
             NetworkPolicy and masquerade tables with it (install nftables, e.g. \
             `apt-get install nftables`)"
        ),
        Err(e) => bail!("cannot run nft: {e}"),
    };
    let sample = weft_policy::guard::Guard {
        node: weft_policy::guard::NodePorts {
            bridge: "weft".into(),
            udp: vec![6783, 6784],
            tcp: vec![6782, 6784],
        },
        ports: vec![weft_policy::guard::PodPort {
            host_ifname: "vethwe00000001".into(),
            mac: [0x02, 0, 0, 0, 0, 1],
            ipv4: vec![Ipv4Addr::new(10, 32, 0, 2)],
            ipv6: Vec::new(),
        }],
    };
    let script = sample
        .to_nft()
        .map_err(|e| anyhow!("the sample pod guard: {e}"))?;
    weft_policy::Nft::new().check_script(&script).map_err(|e| {
        anyhow!(
            "{version} or this kernel does not accept the pod guard's tables (weft needs \
             nf_tables for the bridge and inet families, and an nft that knows the \
             expressions it uses): {e}"
        )
    })
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
