//! The `weft lab up|down|status` commands.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use clap::builder::RangedU64ValueParser;

use super::{id_flag, lab_dir, list_namespaces, Lab, LabOptions, LabPassword};
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

fn parse_id(s: &str) -> Result<String, String> {
    super::validate_id(s).map_err(|e| e.to_string())?;
    Ok(s.to_string())
}

#[derive(Clone, Debug, clap::Args)]
pub struct LabUpArgs {
    /// Number of nodes, 1 to 64.
    #[arg(long, default_value_t = 3, value_parser = RangedU64ValueParser::<usize>::new().range(1..=64))]
    pub nodes: usize,
    /// Network password of the lab (default: a random one, stored in the lab directory).
    #[arg(long, conflicts_with = "no_password")]
    pub password: Option<String>,
    /// Run the lab without a password (no encryption).
    #[arg(long)]
    pub no_password: bool,
    /// Lab id (1-8 characters a-z0-9): namespaces are weft-<ID>-n<i> and weft-<ID>-sw.
    #[arg(long, default_value = "lab", value_parser = parse_id)]
    pub id: String,
    /// Seconds to wait for the full mesh.
    #[arg(long, default_value_t = 30)]
    pub timeout: u64,
    /// The weft binary to run as router (default: this one).
    #[arg(long)]
    pub bin: Option<PathBuf>,
    /// Pods per node, attached through the weft-net CNI plugin (0 for none).
    #[arg(long, default_value_t = 2, value_parser = RangedU64ValueParser::<usize>::new().range(0..=16))]
    pub pods: usize,
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
    let opts = LabOptions {
        id: a.id.clone(),
        nodes: a.nodes,
        password,
        timeout: Duration::from_secs(a.timeout),
        bin: bin.clone(),
        router_args: a.router_args,
        wait: false,
    };
    let id = a.id;
    let n = a.nodes;
    let plugin = super::pods::weft_net_beside(&opts.bin);
    say!(
        "weft lab {id}: {n} node{} in namespaces weft-{id}-n1..n{n} on switch weft-{id}-sw, \
         underlay 10.201.0.0/24",
        if n == 1 { "" } else { "s" }
    );
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
    say!(
        "mesh of {n} node{} established in {:.2} s\n",
        if n == 1 { "" } else { "s" },
        took.as_secs_f64()
    );
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
        // Pods on one node talk through its bridge; across nodes once a data path exists.
        let checks = tokio::task::spawn_blocking(move || {
            pods.iter()
                .filter_map(|p| {
                    let q = pods
                        .iter()
                        .find(|q| q.node == p.node && q.index == p.index + 1)?;
                    Some((
                        p.namespace.clone(),
                        q.ip.clone(),
                        super::pods::ping(&p.namespace, &q.ip),
                    ))
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
            anyhow::bail!("pods on the same node cannot reach each other (see the node logs)");
        }
        say!("pods on different nodes reach each other once the sleeve/fastpath data path lands");
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
    for node in &info.nodes {
        let mut out = format!(
            "── n{} ({}, {}) ──\n",
            node.index, node.namespace, node.address
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
