//! Pods of a lab: network namespaces attached to their node's router through the real
//! `weft-net` plugin, called the way a container runtime calls it (env + stdin JSON).

use anyhow::{bail, Context};
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::Lab;

/// One pod of the lab.
#[derive(Debug, Clone)]
pub struct LabPod {
    pub node: usize,
    pub index: usize,
    pub namespace: String,
    pub ip: String,
    pub gateway: String,
}

/// The `weft-net` binary next to the `weft` binary the lab runs.
pub fn weft_net_beside(bin: &Path) -> PathBuf {
    bin.with_file_name("weft-net")
}

/// Namespace of pod `j` of node `i`.
pub fn pod_namespace(id: &str, i: usize, j: usize) -> String {
    format!("weft-{id}-n{i}-p{j}")
}

/// Runs one CNI command of `weft-net` for a pod; returns the plugin's JSON answer.
pub fn cni(
    lab: &Lab,
    plugin: &Path,
    node: usize,
    command: &str,
    pod_ns: &str,
) -> anyhow::Result<serde_json::Value> {
    let conf = serde_json::json!({
        "cniVersion": "1.0.0", "name": "weft", "type": "weft-net",
        "socket": lab.node_socket(node),
    });
    let mut child = Command::new("ip")
        .args(["netns", "exec", &lab.namespace(node)])
        .arg(plugin)
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", pod_ns)
        .env("CNI_NETNS", format!("/var/run/netns/{pod_ns}"))
        .env("CNI_IFNAME", "eth0")
        .env(
            "CNI_ARGS",
            format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=lab;K8S_POD_NAME={pod_ns}"),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {}", plugin.display()))?;
    child
        .stdin
        .take()
        .context("plugin stdin")?
        .write_all(conf.to_string().as_bytes())?;
    let out = child.wait_with_output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "weft-net {command} for {pod_ns} failed: {}{}",
            text.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    if text.trim().is_empty() {
        return Ok(serde_json::Value::Null);
    }
    serde_json::from_str(&text).with_context(|| format!("weft-net answered {text:?}"))
}

/// Creates `per_node` pods on every node of the lab through `weft-net` ADD.
pub fn start_pods(lab: &Lab, plugin: &Path, per_node: usize) -> anyhow::Result<Vec<LabPod>> {
    if !plugin.exists() {
        bail!(
            "{} not found: build it with `cargo build --release -p weft-cni`",
            plugin.display()
        );
    }
    let id = lab.id();
    let mut pods = Vec::new();
    for i in 1..=lab.nodes() {
        for j in 1..=per_node {
            let ns = pod_namespace(&id, i, j);
            let ok = Command::new("ip")
                .args(["netns", "add", &ns])
                .status()
                .context("running ip")?
                .success();
            if !ok {
                bail!("cannot create the pod namespace {ns}");
            }
            let r = cni(lab, plugin, i, "ADD", &ns)?;
            let addr = r["ips"][0]["address"]
                .as_str()
                .context("weft-net returned no address")?;
            pods.push(LabPod {
                node: i,
                index: j,
                namespace: ns,
                ip: addr.split('/').next().unwrap_or(addr).to_string(),
                gateway: r["ips"][0]["gateway"].as_str().unwrap_or("").to_string(),
            });
        }
    }
    Ok(pods)
}

/// Whether `from` reaches `ip`: one ICMP echo from inside the namespace, answered within 2 s.
/// Sent by this process (a raw ICMP socket opened in the namespace by a thread that enters
/// it), so the lab needs no `ping` command.
pub fn ping(from: &str, ip: &str) -> bool {
    echo(from, ip).is_ok()
}

/// One ICMP echo from namespace `from` to `ip`, or why there was no answer.
pub fn echo(from: &str, ip: &str) -> anyhow::Result<Duration> {
    let target: IpAddr = ip
        .parse()
        .with_context(|| format!("{ip:?} is not an IP address"))?;
    let reply = super::run_in_netns(from, || {
        let mut pinger = ping::Pinger::builder()
            .socket_type(ping::SocketType::RAW)
            .build()?;
        pinger.ping(target, Duration::from_secs(2))
    })?
    .map_err(|e| match e {
        ping::Error::Timeout => anyhow::anyhow!("no answer from {ip} within 2 s"),
        e => anyhow::anyhow!("ICMP echo from {from} to {ip}: {e}"),
    })?;
    Ok(reply.rtt)
}
