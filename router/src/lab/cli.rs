//! The `weft lab up|down|status` commands.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use clap::builder::RangedU64ValueParser;

use super::{id_flag, lab_dir, list_namespaces, Lab, LabOptions, LabPassword, SegmentSpec};
use crate::client;

#[derive(Clone, Debug, clap::Subcommand)]
pub enum LabCmd {
    /// Build a mesh of routers in network namespaces on this machine (needs root).
    Up(LabUpArgs),
    /// Stop the lab's routers and remove its namespaces and files.
    Down(LabDownArgs),
    /// Show the status of every router of the lab.
    Status(LabStatusArgs),
}

fn parse_segments(s: &str) -> Result<SegmentSpec, String> {
    s.parse().map_err(|e: anyhow::Error| e.to_string())
}

fn parse_id(s: &str) -> Result<String, String> {
    super::validate_id(s).map_err(|e| e.to_string())?;
    Ok(s.to_string())
}

#[derive(Clone, Debug, clap::Args)]
pub struct LabUpArgs {
    /// Number of nodes, 1 to 64 (default 3; with --segments, the highest node named).
    #[arg(long, value_parser = RangedU64ValueParser::<usize>::new().range(1..=64))]
    pub nodes: Option<usize>,
    /// Underlay segments: '|'-separated lists of nodes or ranges, e.g. '1,2,3|3,4,5' (n3
    /// joins two segments) or '1-3|nat:4,5' (n4, n5 on a private network behind a NAT
    /// gateway on the first segment). Default: one segment with every node.
    #[arg(long, value_name = "SPEC", value_parser = parse_segments)]
    pub segments: Option<SegmentSpec>,
    /// Network password of the lab (default: a random one, stored in the lab directory).
    #[arg(long, conflicts_with = "no_password")]
    pub password: Option<String>,
    /// Run the lab without a password (no encryption).
    #[arg(long)]
    pub no_password: bool,
    /// Lab id (1-8 characters a-z0-9): namespaces are weft-<ID>-n<i>, weft-<ID>-sw[<k>]
    /// and weft-<ID>-gw<k>.
    #[arg(long, default_value = "lab", value_parser = parse_id)]
    pub id: String,
    /// Seconds to wait for the mesh.
    #[arg(long, default_value_t = 30)]
    pub timeout: u64,
    /// The weft binary to run as router (default: this one).
    #[arg(long)]
    pub bin: Option<PathBuf>,
    /// Pods per node, attached through the weft-net CNI plugin (0 for none).
    #[arg(long, default_value_t = 2, value_parser = RangedU64ValueParser::<usize>::new().range(0..=16))]
    pub pods: usize,
    /// A directory of Kubernetes YAML (Namespaces, Pods, NetworkPolicies) every router
    /// enforces (`weft router --manifests`). Lab pods are `lab/<their namespace name>`.
    #[arg(long, value_name = "DIR")]
    pub manifests: Option<PathBuf>,
    /// Extra arguments for every `weft router`, after `--`.
    #[arg(last = true)]
    pub router_args: Vec<String>,
}

#[derive(Clone, Debug, clap::Args)]
pub struct LabDownArgs {
    /// Lab id.
    #[arg(long, default_value = "lab", value_parser = parse_id)]
    pub id: String,
}

#[derive(Clone, Debug, clap::Args)]
pub struct LabStatusArgs {
    /// Lab id.
    #[arg(long, default_value = "lab", value_parser = parse_id)]
    pub id: String,
}

/// `println!` that does not panic when stdout is a closed pipe (`weft lab up | head`).
macro_rules! say {
    ($($arg:tt)*) => {
        client::print_stdout(&format!("{}\n", format_args!($($arg)*)))?
    };
}

/// Runs a `weft lab` command.
pub async fn run(cmd: LabCmd) -> anyhow::Result<()> {
    match cmd {
        LabCmd::Up(a) => up(a).await,
        LabCmd::Down(a) => down(a).await,
        LabCmd::Status(a) => status(a).await,
    }
}

async fn up(a: LabUpArgs) -> anyhow::Result<()> {
    let nodes = match (a.nodes, &a.segments) {
        (Some(n), _) => n,
        (None, Some(spec)) => spec.max_node().clamp(1, super::topology::MAX_NODES),
        (None, None) => 3,
    };
    let topo = match &a.segments {
        None => super::Topology::single_segment(&a.id, nodes)?,
        Some(spec) => super::Topology::segmented(&a.id, nodes, spec)
            .context(format!("invalid --segments '{spec}'"))?,
    };
    tokio::task::spawn_blocking(super::check_prerequisites).await??;
    let bin = match a.bin {
        Some(b) => b,
        None => std::env::current_exe().context("finding the weft binary (use --bin)")?,
    };
    let password = match (a.password, a.no_password) {
        (_, true) => LabPassword::None,
        (Some(p), false) => LabPassword::Given(p),
        (None, false) => LabPassword::Random,
    };
    let encrypted = password != LabPassword::None;
    let mut router_args = a.router_args;
    if let Some(dir) = &a.manifests {
        let dir =
            std::fs::canonicalize(dir).with_context(|| format!("--manifests {}", dir.display()))?;
        router_args.extend([
            "--manifests".to_string(),
            dir.to_string_lossy().into_owned(),
        ]);
    }
    let opts = LabOptions {
        id: a.id.clone(),
        nodes,
        password,
        timeout: Duration::from_secs(a.timeout),
        bin: bin.clone(),
        router_args,
        wait: false,
        segments: a.segments,
    };
    let id = a.id;
    let n = nodes;
    let plugin = super::pods::weft_net_beside(&opts.bin);
    if a.pods > 0 && !plugin.is_file() {
        anyhow::bail!(
            "{} not found: the lab attaches pods through it (build both with `cargo build \
             --release -p weft -p weft-cni`, or use --pods 0)",
            plugin.display()
        );
    }
    if topo.is_single_segment() {
        say!(
            "weft lab {id}: {n} node{} in namespaces weft-{id}-n1..n{n} on switch weft-{id}-sw, \
             underlay 10.201.0.0/24",
            if n == 1 { "" } else { "s" }
        );
    } else {
        say!(
            "weft lab {id}: {n} node{} in namespaces weft-{id}-n1..n{n} on {} segments:\n{}",
            if n == 1 { "" } else { "s" },
            topo.segments.len(),
            topo.describe().trim_end()
        );
    }
    let lab = Lab::up(opts).await?;
    let dir = lab.dir();
    if encrypted {
        say!(
            "encryption enabled: the password is in {}",
            dir.join("password").display()
        );
    } else {
        say!("encryption disabled (--no-password)");
    }
    say!(
        "started {n} routers; waiting up to {} s for the mesh...",
        a.timeout
    );
    let (took, statuses) = lab.wait_for_mesh(Duration::from_secs(a.timeout)).await?;
    if topo.is_single_segment() {
        say!(
            "mesh of {n} node{} established in {:.2} s\n",
            if n == 1 { "" } else { "s" },
            took.as_secs_f64()
        );
    } else {
        let nat = topo.segments.iter().any(|s| s.nat.is_some());
        say!(
            "mesh of {n} nodes established in {:.2} s: every node sees all others, and the {} \
             pairs that share a segment{} are connected\n",
            took.as_secs_f64(),
            topo.expected_links().len(),
            if nat {
                " or connect out through NAT"
            } else {
                ""
            }
        );
    }
    let statuses: Vec<_> = statuses.into_iter().map(Some).collect();
    client::print_stdout(&lab.summary_table(&statuses))?;
    if a.pods > 0 {
        let started = std::time::Instant::now();
        let per_node = a.pods;
        let pods =
            tokio::task::block_in_place(|| super::pods::start_pods(&lab, &plugin, per_node))?;
        say!(
            "\n{} pods attached through weft-net in {:.2} s:",
            pods.len(),
            started.elapsed().as_secs_f64()
        );
        let mut table =
            String::from("POD     NODE  NAMESPACE                 IP              GATEWAY\n");
        for p in &pods {
            table += &format!(
                "n{}-p{:<3} n{:<4} {:<25} {:<15} {}\n",
                p.node, p.index, p.node, p.namespace, p.ip, p.gateway
            );
        }
        client::print_stdout(&table)?;
        // Pods on one node talk through its bridge; across nodes through the sleeve (relayed
        // where nodes share no segment). Each pod pings its neighbour on the same node, and
        // the first pod of each node pings the first pod of the next node.
        let nodes = lab.nodes();
        let checks = tokio::task::spawn_blocking(move || {
            let mut pairs = Vec::new();
            for p in &pods {
                if let Some(q) = pods
                    .iter()
                    .find(|q| q.node == p.node && q.index == p.index + 1)
                {
                    pairs.push((p, q));
                }
                if nodes > 1 && p.index == 1 {
                    let next = p.node % nodes + 1;
                    if let Some(q) = pods.iter().find(|q| q.node == next && q.index == 1) {
                        pairs.push((p, q));
                    }
                }
            }
            pairs
                .into_iter()
                .map(|(p, q)| {
                    // The first packet across nodes may wait for ARP over the overlay.
                    let ok = (0..3).any(|_| super::pods::ping(&p.namespace, &q.ip));
                    (
                        format!("n{}-p{}", p.node, p.index),
                        format!("n{}-p{} ({})", q.node, q.index, q.ip),
                        ok,
                    )
                })
                .collect::<Vec<_>>()
        })
        .await?;
        for (from, to, ok) in &checks {
            say!(
                "  ping {from} -> {to}: {}",
                if *ok { "ok" } else { "FAILED" }
            );
        }
        if checks.iter().any(|c| !c.2) {
            anyhow::bail!("some pods cannot reach each other (see the node logs)");
        }
    }
    let weft = self_command();
    let flag = id_flag(&id);
    say!(
        "\nLook around:\n  \
         ip netns exec weft-{id}-n1 {weft} status              # n1's router (127.0.0.1:6784 in its namespace)\n  \
         ip netns exec weft-{id}-n1 {weft} status connections\n  \
         {weft} lab status{flag}\n  \
         logs: {}/n<i>.log\n\
         Remove the lab:\n  \
         {weft} lab down{flag}",
        dir.display()
    );
    Ok(())
}

async fn down(a: LabDownArgs) -> anyhow::Result<()> {
    let r = Lab::down(&a.id).await?;
    if r.nothing_found() {
        say!("no lab {:?} here: nothing to remove", a.id);
    } else {
        say!(
            "lab {:?} removed: {} process{} stopped, {} namespace{} deleted{}",
            a.id,
            r.processes,
            if r.processes == 1 { "" } else { "es" },
            r.namespaces.len(),
            if r.namespaces.len() == 1 { "" } else { "s" },
            if r.dir_removed {
                format!(", {} removed", lab_dir(&a.id).display())
            } else {
                String::new()
            }
        );
    }
    Ok(())
}

async fn status(a: LabStatusArgs) -> anyhow::Result<()> {
    let lab = match Lab::load(&a.id) {
        Ok(l) => l,
        Err(e) => {
            let left =
                list_namespaces(&super::topology::namespace_prefix(&a.id)).unwrap_or_default();
            if left.is_empty() {
                return Err(e);
            }
            return Err(e.context(format!(
                "namespaces {} are left from an earlier lab: remove them with `weft lab down{}`",
                left.join(", "),
                id_flag(&a.id)
            )));
        }
    };
    let mut failed = 0;
    let info = lab.info();
    if !info.topology.is_single_segment() {
        client::print_stdout(&format!("{}\n", info.topology.describe()))?;
    }
    for node in &info.nodes {
        let mut out = format!(
            "── n{} ({}, {}) ──\n",
            node.index,
            node.namespace,
            super::addr_list(&info.topology, node)
        );
        let addr = format!("unix:{}", node.socket.display());
        match client::get(&addr, "/status").await {
            Ok((200, body)) => {
                out.push_str(&body);
                if let Ok((200, conns)) = client::get(&addr, "/status/connections").await {
                    out.push_str(&conns);
                }
            }
            Ok((code, body)) => {
                failed += 1;
                out.push_str(&format!("answered {code}: {}\n", body.trim()));
            }
            Err(e) => {
                failed += 1;
                out.push_str(&format!("{e:#}\n"));
            }
        }
        out.push('\n');
        client::print_stdout(&out)?;
    }
    if failed > 0 {
        anyhow::bail!("{failed} of {} routers did not answer", lab.nodes());
    }
    Ok(())
}

/// How to invoke this binary in printed advice: `weft` if that is what PATH finds.
fn self_command() -> String {
    let Ok(me) = std::env::current_exe().and_then(|p| p.canonicalize()) else {
        return "weft".into();
    };
    let on_path = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("weft"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default()
        .into_iter()
        .find(|c| Path::new(c).is_file());
    match on_path.and_then(|c| c.canonicalize().ok()) {
        Some(c) if c == me => "weft".into(),
        _ => me.display().to_string(),
    }
}
