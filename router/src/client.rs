//! `weft status` and `weft rmpeer`: the router's status and admin API read from the command
//! line (the HTTP client itself is `weft_api::client`).

use std::io::Write as _;

use std::time::Duration;

use anyhow::{bail, Context as _};

pub use weft_api::client::{get, get_timeout, post_json, Endpoint, DEFAULT_ADDR, DEFAULT_TIMEOUT};

/// Section of the status to show.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum StatusWhat {
    Peers,
    Connections,
    Ipam,
    /// Readiness (`GET /readyz`): prints "ready", or the reason and fails. The DaemonSet's
    /// readiness probe runs it, so the reason shows in `kubectl describe pod`.
    Ready,
}

/// `weft status [peers|connections|ipam|ready] [--json] [--addr URL]`
#[derive(Clone, Debug, clap::Args)]
pub struct StatusArgs {
    /// What to show (default: the summary).
    #[arg(value_enum)]
    pub what: Option<StatusWhat>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Status API of the router: http://HOST:PORT, unix:/path/to.sock or /path/to.sock.
    #[arg(long, default_value = DEFAULT_ADDR)]
    pub addr: String,
}

/// The API path for a section.
pub fn status_path(what: Option<StatusWhat>, json: bool) -> &'static str {
    match (what, json) {
        (None, false) => "/status",
        (None, true) => "/status.json",
        (Some(StatusWhat::Peers), false) => "/status/peers",
        (Some(StatusWhat::Peers), true) => "/status/peers?format=json",
        (Some(StatusWhat::Connections), false) => "/status/connections",
        (Some(StatusWhat::Connections), true) => "/status/connections?format=json",
        (Some(StatusWhat::Ipam), false) => "/status/ipam",
        (Some(StatusWhat::Ipam), true) => "/status/ipam?format=json",
        (Some(StatusWhat::Ready), _) => "/readyz",
    }
}

/// Pretty-prints a status answer in the field order of the status types when it parses into
/// them losslessly (a router of the same version), else as it came (keys sorted).
fn pretty_json(what: Option<StatusWhat>, body: &str) -> anyhow::Result<String> {
    use crate::status::{ConnInfo, IpamInfo, PeerInfo, Status};
    fn typed<T: serde::de::DeserializeOwned + serde::Serialize>(
        body: &str,
        v: &serde_json::Value,
    ) -> Option<String> {
        let t: T = serde_json::from_str(body).ok()?;
        if serde_json::to_value(&t).ok()? != *v {
            return None;
        }
        serde_json::to_string_pretty(&t).ok()
    }
    let v: serde_json::Value = serde_json::from_str(body)?;
    let ordered = match what {
        None => typed::<Status>(body, &v),
        Some(StatusWhat::Peers) => typed::<Vec<PeerInfo>>(body, &v),
        Some(StatusWhat::Connections) => typed::<Vec<ConnInfo>>(body, &v),
        Some(StatusWhat::Ipam) => typed::<IpamInfo>(body, &v),
        Some(StatusWhat::Ready) => None,
    };
    match ordered {
        Some(s) => Ok(s),
        None => Ok(serde_json::to_string_pretty(&v)?),
    }
}

/// Runs `weft status`: prints the chosen section; fails when the router is unreachable or
/// answers with an error.
pub async fn run_status(args: StatusArgs) -> anyhow::Result<()> {
    let path = status_path(args.what, args.json);
    if args.what == Some(StatusWhat::Ready) {
        return run_ready(&args.addr).await;
    }
    let (code, body) = get(&args.addr, path).await?;
    if code != 200 {
        bail!(
            "the weft router at {} answered {code} to GET {path}: {}",
            args.addr,
            body.trim()
        );
    }
    let mut out = if args.json {
        pretty_json(args.what, &body)
            .with_context(|| format!("the weft router at {} sent invalid JSON", args.addr))?
    } else {
        body
    };
    if !out.ends_with('\n') {
        out.push('\n');
    }
    print_stdout(&out)
}

/// `weft status ready`: "ready" and success when the router answers 200 to `/readyz`,
/// else a failure whose message is the router's reason ("not ready: waiting for ...").
/// Within 3 s, so that a probe with a few seconds' timeout gets the reason, not a kill.
async fn run_ready(addr: &str) -> anyhow::Result<()> {
    let (code, body) = get_timeout(addr, "/readyz", Duration::from_secs(3)).await?;
    match code {
        200 => print_stdout(&format!("{}\n", body.trim())),
        _ if body.trim().is_empty() => bail!("not ready (the router answered {code})"),
        _ => bail!("{}", body.trim()),
    }
}

/// Writes to stdout; a closed pipe (`weft status | head`) is not an error.
pub fn print_stdout(text: &str) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|_| stdout.flush())
    {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

/// `weft rmpeer`: asks the local router to take over a dead peer's address space.
pub async fn run_rmpeer(args: crate::cli::RmPeerArgs) -> anyhow::Result<()> {
    let body = serde_json::to_string(&crate::api::RmPeerRequest {
        peer: args.peer.clone(),
        force: args.force,
    })?;
    let (code, text) = post_json(
        &args.addr,
        "/ipam/v1/rmpeer",
        &body,
        Duration::from_secs(10),
    )
    .await?;
    if code != 200 {
        let msg = serde_json::from_str::<crate::api::ApiError>(&text)
            .map(|e| e.error)
            .unwrap_or(text);
        anyhow::bail!("rmpeer {}: {msg}", args.peer);
    }
    let r: crate::api::RmPeerReply = serde_json::from_str(&text)?;
    println!(
        "removed {}: {} addresses ({}) now belong to this router",
        r.peer,
        r.addresses,
        if r.blocks.is_empty() {
            "no blocks".to_string()
        } else {
            r.blocks.join(", ")
        }
    );
    Ok(())
}
