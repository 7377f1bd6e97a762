//! `weft-net`'s commands: the router API calls (HTTP/1.1 JSON on the unix socket, see
//! docs/pods.md) and the interface plumbing (through [`Plumbing`], in production
//! [`super::plumbing::NetlinkPlumbing`]), in an order that leaves nothing half-created.
//!
//! ADD: the namespace must exist and must not have `CNI_IFNAME` yet (spec: error, nothing
//! touched) → `POST /cni/v1/add` → plumbing → `POST /cni/v1/attached` (answered once the
//! router guards the pod's port) → gratuitous ARP → result. A failure
//! after the router allocated undoes what this run created: the interface, then the address
//! (`POST /cni/v1/del`).
//!
//! DEL: plumbing first (so an address is never released while still configured), then `POST
//! /cni/v1/del`. Gone namespaces and links are success. A router that cannot be reached is
//! code 11 *after* the interface is removed: the runtime retries, the retry finds the
//! interface gone and releases the address. Returning success instead would leak the address
//! until a GC.

use std::path::Path;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::Value;

use super::spec::{
    code, pod_result, version_json, CniError, CniVersion, Command, Env, NetConf, PodAttachment,
};
use weft_api::{AddReply, AddRequest, AttachedRequest, Attachment, GcReply, GcRequest};

/// Time limit of router requests other than ADD.
pub const ROUTER_TIMEOUT: Duration = Duration::from_secs(10);
/// Time limit of `POST /cni/v1/add`: the router itself waits up to 20 s for address space
/// ([`weft_api::ADD_DEADLINE`]) before answering code 11.
pub const ADD_TIMEOUT: Duration = Duration::from_secs(30);

/// What the plugin prints and how it exits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// Result or error JSON (empty for DEL, CHECK, STATUS and GC success).
    pub stdout: String,
    /// 0 on success, 1 on error.
    pub exit_code: i32,
}

impl Outcome {
    fn ok(stdout: String) -> Outcome {
        Outcome {
            stdout,
            exit_code: 0,
        }
    }

    fn err(e: &CniError, version: CniVersion) -> Outcome {
        Outcome {
            stdout: e.to_json(version),
            exit_code: 1,
        }
    }
}

/// The pod interface as the plugin asks for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodSpec {
    pub container_id: String,
    pub ifname: String,
    pub netns: String,
    /// `10.32.0.7/12`
    pub ip: String,
    pub gateway: String,
    pub mtu: u32,
    pub bridge: String,
}

/// What the plumbing made (or found, for CHECK).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodLinks {
    pub host_ifname: String,
    pub host_mac: String,
    pub pod_mac: String,
}

/// The interface plumbing (veth pair, netns, bridge, addresses, routes, MTU, gratuitous
/// ARP). Errors are already CNI errors (code 3, 102 or 103).
#[allow(async_fn_in_trait)]
pub trait Plumbing {
    /// Whether the namespace already has an interface `ifname`.
    async fn exists(&self, netns: &str, ifname: &str) -> Result<bool, CniError>;
    /// Creates the pod interface; fails, leaving nothing behind, when it cannot.
    async fn add(&self, spec: &PodSpec) -> Result<PodLinks, CniError>;
    /// Removes it; success when the namespace or the links are already gone.
    async fn del(
        &self,
        container_id: &str,
        ifname: &str,
        netns: Option<&str>,
    ) -> Result<(), CniError>;
    /// Verifies it is as `spec` says; code 103 when not.
    async fn check(&self, spec: &PodSpec) -> Result<PodLinks, CniError>;
    /// Announces the pod's address (gratuitous ARP) once the router has guarded its port;
    /// best effort: a failure is logged, not returned.
    async fn announce(&self, spec: &PodSpec);
}

/// Runs one invocation: `get` reads the environment, `stdin` is the network configuration.
pub fn run<P: Plumbing>(
    get: impl Fn(&str) -> Option<String>,
    stdin: &[u8],
    plumbing: &P,
) -> Outcome {
    tracing::debug!(
        env = ?super::spec::env_snapshot(&get),
        stdin = %String::from_utf8_lossy(stdin),
        "invocation"
    );
    let version = super::spec::reply_version(stdin);
    let env = match Env::from_lookup(&get) {
        Ok(env) => env,
        Err(e) => return fail(e, version, None),
    };
    if env.command == Command::Version {
        return Outcome::ok(version_json(requested_version(stdin)));
    }
    let conf = match NetConf::parse(stdin, env.command) {
        Ok(c) => c,
        Err(e) => return fail(e, version, Some(&env)),
    };
    if !env.args.unknown.is_empty() {
        tracing::debug!(args = ?env.args.unknown, "ignoring unknown CNI_ARGS (IgnoreUnknown)");
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let e = CniError::new(code::IO_FAILURE, "cannot start the async runtime")
                .with_details(e.to_string());
            return fail(e, conf.cni_version, Some(&env));
        }
    };
    let router = Router::new(&conf.socket);
    let result = rt.block_on(async {
        match env.command {
            Command::Add => cmd_add(&env, &conf, &router, plumbing).await.map(Some),
            Command::Del => cmd_del(&env, &router, plumbing).await.map(|()| None),
            Command::Check => cmd_check(&env, &conf, &router, plumbing)
                .await
                .map(|()| None),
            Command::Status => cmd_status(&router).await.map(|()| None),
            Command::Gc => cmd_gc(&conf, &router).await.map(|()| None),
            Command::Version => unreachable!("handled above"),
        }
    });
    match result {
        Ok(out) => {
            tracing::info!(
                command = %env.command,
                container = %env.container_id,
                ifname = %env.ifname,
                result = out.as_deref().unwrap_or(""),
                "done"
            );
            Outcome::ok(out.unwrap_or_default())
        }
        Err(e) => fail(e, conf.cni_version, Some(&env)),
    }
}

fn fail(e: CniError, version: CniVersion, env: Option<&Env>) -> Outcome {
    match env {
        Some(env) if env.command.is_attachment() => tracing::error!(
            command = %env.command,
            container = %env.container_id,
            ifname = %env.ifname,
            "{e}"
        ),
        Some(env) => tracing::error!(command = %env.command, "{e}"),
        None => tracing::error!("{e}"),
    }
    Outcome::err(&e, version)
}

/// VERSION's input: `{"cniVersion": ...}` (or nothing).
fn requested_version(stdin: &[u8]) -> Option<CniVersion> {
    let v: Value = serde_json::from_slice(stdin).ok()?;
    CniVersion::parse(v.get("cniVersion")?.as_str()?)
}

// ---------------------------------------------------------------------------------------------
// Commands

async fn cmd_add<P: Plumbing>(
    env: &Env,
    conf: &NetConf,
    router: &Router,
    plumbing: &P,
) -> Result<String, CniError> {
    let netns = env.netns.clone().unwrap_or_default();
    netns_must_exist(&netns)?;
    // The spec: an interface of the requested name already in the container is an error.
    // Checked before anything is allocated, so that the failure touches nothing (in
    // particular not the address of the live attachment a repeated ADD would find).
    if plumbing.exists(&netns, &env.ifname).await? {
        return Err(CniError::new(
            code::INTERFACE,
            format!("interface {} already exists in {netns}", env.ifname),
        )
        .with_details(format!(
            "container {} already has {}: DEL the attachment first",
            env.container_id, env.ifname
        )));
    }
    let reply = router
        .add(&AddRequest {
            container_id: env.container_id.clone(),
            ifname: env.ifname.clone(),
            netns: netns.clone(),
            pod_namespace: env.args.pod_namespace.clone(),
            pod_name: env.args.pod_name.clone(),
        })
        .await?;
    // From here on a failure releases the address (the interface did not exist, so no live
    // attachment uses it) and removes whatever this run created.
    let release = || async {
        if let Err(e) = router.del(&env.container_id, &env.ifname).await {
            tracing::error!("releasing the address after a failed ADD: {e}");
        }
    };
    let spec = PodSpec {
        container_id: env.container_id.clone(),
        ifname: env.ifname.clone(),
        netns: netns.clone(),
        ip: reply.ip.clone(),
        gateway: reply.gateway.clone(),
        mtu: reply.mtu,
        bridge: reply.bridge.clone(),
    };
    if let Err(e) = validate_reply(&reply) {
        release().await;
        return Err(e);
    }
    let links = match plumbing.add(&spec).await {
        Ok(links) => links,
        Err(e) => {
            release().await;
            return Err(e);
        }
    };
    let attached = router
        .attached(&AttachedRequest {
            container_id: env.container_id.clone(),
            ifname: env.ifname.clone(),
            mac: links.pod_mac.clone(),
            host_ifname: links.host_ifname.clone(),
        })
        .await;
    if let Err(e) = attached {
        match plumbing
            .del(&env.container_id, &env.ifname, Some(&netns))
            .await
        {
            Ok(()) => release().await,
            // Still configured: keep the address (the runtime's DEL after the failed ADD
            // retries both, in order).
            Err(undo) => tracing::error!("removing the interface after a failed ADD: {undo}"),
        }
        return Err(e);
    }
    plumbing.announce(&spec).await;
    let ours = pod_result(
        &PodAttachment {
            host_ifname: links.host_ifname,
            host_mac: links.host_mac,
            pod_ifname: env.ifname.clone(),
            pod_mac: links.pod_mac,
            netns,
            ip: reply.ip,
            gateway: reply.gateway,
            mtu: reply.mtu,
        },
        conf.dns.clone(),
    );
    let result = match conf.prev_result.clone() {
        Some(prev) => prev.merged_with(ours),
        None => ours,
    };
    Ok(result.to_json(conf.cni_version))
}

async fn cmd_del<P: Plumbing>(env: &Env, router: &Router, plumbing: &P) -> Result<(), CniError> {
    plumbing
        .del(&env.container_id, &env.ifname, env.netns.as_deref())
        .await?;
    router.del(&env.container_id, &env.ifname).await
}

async fn cmd_check<P: Plumbing>(
    env: &Env,
    conf: &NetConf,
    router: &Router,
    plumbing: &P,
) -> Result<(), CniError> {
    let netns = env.netns.clone().unwrap_or_default();
    let prev = conf.prev_result.as_ref().ok_or_else(|| {
        CniError::new(
            code::INVALID_CONFIG,
            "invalid network configuration: CHECK needs prevResult (the result of ADD)",
        )
    })?;
    netns_must_exist(&netns)?;
    let failed = |msg: String| CniError::new(code::CHECK_FAILED, msg);
    let reply = router
        .check(&env.container_id, &env.ifname)
        .await?
        .ok_or_else(|| {
            failed(format!(
                "the weft router has no address for container {} interface {}",
                env.container_id, env.ifname
            ))
        })?;
    let index = prev
        .find_sandbox_interface(&env.ifname, &netns)
        .ok_or_else(|| {
            failed(format!(
                "prevResult has no interface {} in {netns}",
                env.ifname
            ))
        })?;
    let addresses: Vec<&str> = prev
        .ips
        .iter()
        .filter(|ip| ip.interface == Some(index))
        .map(|ip| ip.address.as_str())
        .collect();
    if !addresses.contains(&reply.ip.as_str()) {
        return Err(failed(format!(
            "the weft router holds {} for {}, prevResult says {}",
            reply.ip,
            env.ifname,
            if addresses.is_empty() {
                "no address".to_string()
            } else {
                addresses.join(", ")
            }
        )));
    }
    let spec = PodSpec {
        container_id: env.container_id.clone(),
        ifname: env.ifname.clone(),
        netns: netns.clone(),
        ip: reply.ip,
        gateway: reply.gateway,
        mtu: reply.mtu,
        bridge: reply.bridge,
    };
    let links = plumbing.check(&spec).await?;
    let expected_mac = &prev.interfaces[index].mac;
    if !expected_mac.is_empty() && !expected_mac.eq_ignore_ascii_case(&links.pod_mac) {
        return Err(failed(format!(
            "{} in {netns} has MAC {}, prevResult says {expected_mac}",
            env.ifname, links.pod_mac
        )));
    }
    Ok(())
}

async fn cmd_status(router: &Router) -> Result<(), CniError> {
    router.status().await
}

async fn cmd_gc(conf: &NetConf, router: &Router) -> Result<(), CniError> {
    let valid = conf
        .valid_attachments
        .as_deref()
        .unwrap_or_default()
        .iter()
        .map(|a| Attachment {
            container_id: a.container_id.clone(),
            ifname: a.ifname.clone(),
        })
        .collect();
    let released = router.gc(&GcRequest { valid }).await?;
    tracing::info!(released, "GC");
    Ok(())
}

fn netns_must_exist(netns: &str) -> Result<(), CniError> {
    match std::fs::metadata(Path::new(netns)) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(CniError::new(
            code::UNKNOWN_CONTAINER,
            format!("network namespace {netns} does not exist"),
        )),
        Err(e) => Err(CniError::new(
            code::IO_FAILURE,
            format!("cannot open the network namespace {netns}: {e}"),
        )),
    }
}

/// The router's answer must be usable before anything is created from it.
fn validate_reply(r: &AddReply) -> Result<(), CniError> {
    let bad = |what: String| {
        CniError::new(
            code::ROUTER_ERROR,
            "the weft router answered an unusable ADD",
        )
        .with_details(what)
    };
    let (addr, prefix) =
        r.ip.split_once('/')
            .ok_or_else(|| bad(format!("ip {:?} has no prefix length", r.ip)))?;
    let addr: std::net::IpAddr = addr
        .parse()
        .map_err(|_| bad(format!("ip {:?} is not an address", r.ip)))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    match prefix.parse::<u8>() {
        Ok(p) if p <= max => {}
        _ => return Err(bad(format!("ip {:?} has an invalid prefix length", r.ip))),
    }
    let gw: std::net::IpAddr = r
        .gateway
        .parse()
        .map_err(|_| bad(format!("gateway {:?} is not an address", r.gateway)))?;
    if gw.is_ipv4() != addr.is_ipv4() {
        return Err(bad(format!(
            "gateway {} and ip {} are of different families",
            r.gateway, r.ip
        )));
    }
    if !(576..=65535).contains(&r.mtu) {
        return Err(bad(format!("mtu {} is out of range", r.mtu)));
    }
    if !super::spec::valid_ifname(&r.bridge) {
        return Err(bad(format!(
            "bridge {:?} is not an interface name",
            r.bridge
        )));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Router API client

/// The router API (`/cni/v1/*`) on its unix socket.
#[derive(Clone, Debug)]
pub struct Router {
    socket: String,
}

impl Router {
    pub fn new(socket: &str) -> Router {
        Router {
            socket: socket.to_string(),
        }
    }

    /// `POST /cni/v1/add`
    pub async fn add(&self, req: &AddRequest) -> Result<AddReply, CniError> {
        let (status, body) = self.post("/cni/v1/add", to_json(req), ADD_TIMEOUT).await?;
        expect_json(status, &body, 200, "POST /cni/v1/add")
    }

    /// `POST /cni/v1/attached`
    pub async fn attached(&self, req: &AttachedRequest) -> Result<(), CniError> {
        let (status, body) = self
            .post("/cni/v1/attached", to_json(req), ROUTER_TIMEOUT)
            .await?;
        expect_empty(status, &body, "POST /cni/v1/attached")
    }

    /// `POST /cni/v1/del`
    pub async fn del(&self, container_id: &str, ifname: &str) -> Result<(), CniError> {
        let req = Attachment {
            container_id: container_id.to_string(),
            ifname: ifname.to_string(),
        };
        let (status, body) = self
            .post("/cni/v1/del", to_json(&req), ROUTER_TIMEOUT)
            .await?;
        expect_empty(status, &body, "POST /cni/v1/del")
    }

    /// `GET /cni/v1/check?container_id=&ifname=`: `None` when the router knows no such
    /// attachment (404).
    pub async fn check(
        &self,
        container_id: &str,
        ifname: &str,
    ) -> Result<Option<AddReply>, CniError> {
        let path = format!(
            "/cni/v1/check?container_id={}&ifname={}",
            percent_encode(container_id),
            percent_encode(ifname)
        );
        let (status, body) = self.get(&path).await?;
        if status == 404 {
            return Ok(None);
        }
        expect_json(status, &body, 200, "GET /cni/v1/check").map(Some)
    }

    /// `POST /cni/v1/gc`: the number of addresses released.
    pub async fn gc(&self, req: &GcRequest) -> Result<usize, CniError> {
        let (status, body) = self.post("/cni/v1/gc", to_json(req), ADD_TIMEOUT).await?;
        expect_json::<GcReply>(status, &body, 200, "POST /cni/v1/gc").map(|r| r.released)
    }

    /// `GET /cni/v1/status`: unreachable or not ready is code 50 (51 when the router says so).
    pub async fn status(&self) -> Result<(), CniError> {
        let (status, body) = self
            .get("/cni/v1/status")
            .await
            .map_err(|e| CniError::new(code::NOT_AVAILABLE, e.msg).with_details(e.details))?;
        if (200..300).contains(&status) {
            return Ok(());
        }
        let e = http_error(status, &body, "GET /cni/v1/status");
        let code = if e.code == code::LIMITED_CONNECTIVITY {
            e.code
        } else {
            code::NOT_AVAILABLE
        };
        Err(CniError { code, ..e })
    }

    async fn get(&self, path: &str) -> Result<(u16, String), CniError> {
        weft_api::client::get_timeout(&self.socket, path, ROUTER_TIMEOUT)
            .await
            .map_err(|e| self.unreachable(e, "GET", path))
    }

    async fn post(
        &self,
        path: &str,
        json: String,
        timeout: Duration,
    ) -> Result<(u16, String), CniError> {
        tracing::debug!(path, body = %json, "router request");
        weft_api::client::post_json(&self.socket, path, &json, timeout)
            .await
            .map_err(|e| self.unreachable(e, "POST", path))
    }

    /// No HTTP answer: the router is down, restarting, or not where the configuration says.
    fn unreachable(&self, e: anyhow::Error, method: &str, path: &str) -> CniError {
        CniError::new(
            code::TRY_AGAIN_LATER,
            format!("cannot reach the weft router at {}", self.socket),
        )
        .with_details(format!("{method} {path}: {e:#}"))
    }
}

fn to_json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("request JSON serializes")
}

/// The router's error: `{"error","code"}`; without a code, 503 means try again later and
/// anything else a router error.
fn http_error(status: u16, body: &str, what: &str) -> CniError {
    #[derive(serde::Deserialize)]
    struct ErrBody {
        #[serde(default)]
        error: String,
        #[serde(default)]
        code: Option<u32>,
    }
    let parsed = serde_json::from_str::<ErrBody>(body).ok();
    let code = parsed
        .as_ref()
        .and_then(|b| b.code)
        .filter(|c| *c != 0)
        .unwrap_or(if status == 503 {
            code::TRY_AGAIN_LATER
        } else {
            code::ROUTER_ERROR
        });
    let msg = match parsed.filter(|b| !b.error.is_empty()) {
        Some(b) => format!("weft router: {}", b.error),
        None => format!("weft router: HTTP {status}"),
    };
    CniError::new(code, msg).with_details(format!("{what} answered HTTP {status}: {}", body.trim()))
}

fn expect_json<T: DeserializeOwned>(
    status: u16,
    body: &str,
    want: u16,
    what: &str,
) -> Result<T, CniError> {
    if status != want {
        return Err(http_error(status, body, what));
    }
    serde_json::from_str(body).map_err(|e| {
        CniError::new(
            code::ROUTER_ERROR,
            "the weft router sent an unreadable answer",
        )
        .with_details(format!("{what}: {e}: {}", body.trim()))
    })
}

fn expect_empty(status: u16, body: &str, what: &str) -> Result<(), CniError> {
    if (200..300).contains(&status) {
        Ok(())
    } else {
        Err(http_error(status, body, what))
    }
}

/// Percent-encodes all but RFC 3986 unreserved characters, for query values.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
#[path = "plugin_tests.rs"]
mod tests;
