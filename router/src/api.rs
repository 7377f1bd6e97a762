//! The router API the CNI plugin uses (`/cni/v1/*`, see docs/pods.md), served on the unix
//! socket next to the status routes. Handlers do no work themselves: they send an
//! [`ApiCommand`] to the event loop, which owns the mesh and its IPAM, and wait for the reply.
//! An allocation that waits for a block to settle is retried here until it succeeds or
//! [`ADD_DEADLINE`] passes (then the plugin gets code 11, "try again later").

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// How long an ADD may wait for address space to become available.
pub const ADD_DEADLINE: Duration = Duration::from_secs(20);

/// CNI error codes the router hands to the plugin.
pub mod code {
    /// Try again later (router not ready, IPAM settling).
    pub const TRY_AGAIN: u32 = 11;
    /// The address range is exhausted.
    pub const EXHAUSTED: u32 = 100;
    /// Any other router-side failure.
    pub const ROUTER: u32 = 101;
    /// A request the router refuses as invalid (the CNI code for invalid environment).
    pub const INVALID: u32 = 4;
}

/// Longest container ID accepted (runtimes use 64 hex digits).
pub const MAX_CONTAINER_ID: usize = 255;

/// A Kubernetes namespace name: a DNS-1123 label (at most 63 of `a-z`, `0-9`, `-`, starting
/// and ending with a letter or digit). Empty means "not given".
pub fn check_pod_namespace(s: &str) -> Result<(), String> {
    if s.is_empty() || (s.len() <= 63 && dns_label(s)) {
        return Ok(());
    }
    Err(format!(
        "K8S_POD_NAMESPACE {:?} is not a Kubernetes namespace name (a DNS-1123 label: at most 63 lowercase letters, digits or '-')",
        shorten(s)
    ))
}

/// A Kubernetes pod name: a DNS-1123 subdomain (at most 253 bytes of dot-separated labels).
/// Empty means "not given".
pub fn check_pod_name(s: &str) -> Result<(), String> {
    if s.is_empty() || (s.len() <= 253 && s.split('.').all(dns_label)) {
        return Ok(());
    }
    Err(format!(
        "K8S_POD_NAME {:?} is not a Kubernetes pod name (a DNS-1123 subdomain: at most 253 lowercase letters, digits, '-' or '.')",
        shorten(s)
    ))
}

fn dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// A value for an error message: at most 80 characters, control characters escaped (by
/// `{:?}`), so that no input forges log lines or floods them.
fn shorten(s: &str) -> String {
    s.chars().take(80).collect()
}

impl AddRequest {
    /// What the router checks of an ADD before allocating anything: the same rules as the
    /// plugin's (which reports them as code 4), for any other client of the socket.
    pub fn validate(&self) -> Result<(), ApiError> {
        let bad = |m: String| Err(ApiError::new(code::INVALID, m));
        if !crate::cni::spec::valid_container_id(&self.container_id) {
            return bad(format!(
                "invalid container ID {:?} (at most {MAX_CONTAINER_ID} letters, digits, '_', '.', '-')",
                shorten(&self.container_id)
            ));
        }
        if !crate::cni::spec::valid_ifname(&self.ifname) {
            return bad(format!(
                "invalid interface name {:?}",
                shorten(&self.ifname)
            ));
        }
        if !self.netns.starts_with('/') || self.netns.len() > 4096 || self.netns.contains('\0') {
            return bad(format!("invalid netns path {:?}", shorten(&self.netns)));
        }
        if let Some(ns) = &self.pod_namespace {
            check_pod_namespace(ns).map_err(|e| ApiError::new(code::INVALID, e))?;
        }
        if let Some(n) = &self.pod_name {
            check_pod_name(n).map_err(|e| ApiError::new(code::INVALID, e))?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Attachment {
    pub container_id: String,
    pub ifname: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AddRequest {
    pub container_id: String,
    pub ifname: String,
    pub netns: String,
    #[serde(default)]
    pub pod_namespace: Option<String>,
    #[serde(default)]
    pub pod_name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AddReply {
    /// `10.32.0.7/12`
    pub ip: String,
    pub gateway: String,
    pub mtu: u32,
    pub bridge: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AttachedRequest {
    pub container_id: String,
    pub ifname: String,
    /// `aa:bb:cc:dd:ee:ff`
    pub mac: String,
    pub host_ifname: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GcRequest {
    pub valid: Vec<Attachment>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GcReply {
    pub released: usize,
}

/// A failure with the CNI code the plugin should report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    pub error: String,
    pub code: u32,
}

impl ApiError {
    pub fn new(code: u32, error: impl Into<String>) -> Self {
        ApiError {
            error: error.into(),
            code,
        }
    }

    fn status(&self) -> StatusCode {
        match self.code {
            code::TRY_AGAIN => StatusCode::SERVICE_UNAVAILABLE,
            code::EXHAUSTED => StatusCode::INSUFFICIENT_STORAGE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status(), Json(self)).into_response()
    }
}

/// The loop's answer to an ADD: done, or wait until the instant and ask again.
#[derive(Debug)]
pub enum AddOutcome {
    Done(AddReply),
    RetryAt(Instant),
}

/// Where the event loop sends its answer to one command.
pub type Reply<T> = oneshot::Sender<Result<T, ApiError>>;

/// What the handlers ask of the event loop.
#[derive(Debug)]
pub enum ApiCommand {
    Add(AddRequest, Reply<AddOutcome>),
    Attached(AttachedRequest, Reply<()>),
    Del(Attachment, Reply<()>),
    Check(Attachment, Reply<Option<AddReply>>),
    Gc(GcRequest, Reply<GcReply>),
    Status(Reply<()>),
    RmPeer(RmPeerRequest, Reply<RmPeerReply>),
}

/// `weft rmpeer`: give a dead peer's address space to this router.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RmPeerRequest {
    /// Peer name (`02:..`) or nickname.
    pub peer: String,
    #[serde(default)]
    pub force: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RmPeerReply {
    pub peer: String,
    pub blocks: Vec<String>,
    pub addresses: u64,
}

#[derive(Clone)]
struct Api {
    tx: mpsc::Sender<ApiCommand>,
}

impl Api {
    async fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> ApiCommand) -> Result<T, ApiError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(make(tx))
            .await
            .map_err(|_| ApiError::new(code::TRY_AGAIN, "the router is shutting down"))?;
        rx.await
            .map_err(|_| ApiError::new(code::TRY_AGAIN, "the router dropped the request"))?
    }
}

/// Routes of the CNI API; merge them into the unix-socket router.
pub fn cni_router(tx: mpsc::Sender<ApiCommand>) -> Router {
    Router::new()
        .route("/cni/v1/add", post(add))
        .route("/cni/v1/attached", post(attached))
        .route("/cni/v1/del", post(del))
        .route("/cni/v1/check", get(check))
        .route("/cni/v1/gc", post(gc))
        .route("/cni/v1/status", get(status))
        .with_state(Api { tx })
}

/// Administrative routes that change state: served only on the unix socket (root-owned,
/// mode 0600), never on the TCP status address, which any local user and any hostNetwork
/// pod can reach.
pub fn admin_router(tx: mpsc::Sender<ApiCommand>) -> Router {
    Router::new()
        .route("/ipam/v1/rmpeer", post(rmpeer))
        .with_state(Api { tx })
}

/// What the TCP status address answers for the routes of [`admin_router`]: 403, naming the
/// socket to use instead.
pub fn admin_refusal(socket: &std::path::Path) -> Router {
    let msg = format!(
        "state-changing requests are served only on the API socket unix:{} (root only)",
        socket.display()
    );
    Router::new().route(
        "/ipam/v1/rmpeer",
        post(move || async move {
            (
                StatusCode::FORBIDDEN,
                Json(ApiError::new(code::ROUTER, msg.clone())),
            )
        }),
    )
}

/// `GET /status/policy` (the policy enforcer's report, see [`crate::enforcer`]); served
/// with the status routes. `None`: no policy source, the route answers 404.
pub fn policy_router(view: Option<crate::enforcer::PolicyView>) -> Router {
    Router::new()
        .route("/status/policy", get(crate::enforcer::serve))
        .with_state(view)
}

async fn rmpeer(State(api): State<Api>, Json(req): Json<RmPeerRequest>) -> Response {
    match api.ask(|r| ApiCommand::RmPeer(req, r)).await {
        Ok(reply) => Json(reply).into_response(),
        Err(e) => (StatusCode::BAD_REQUEST, Json(e)).into_response(),
    }
}

async fn add(State(api): State<Api>, Json(req): Json<AddRequest>) -> Response {
    if let Err(e) = req.validate() {
        return (StatusCode::BAD_REQUEST, Json(e)).into_response();
    }
    let deadline = Instant::now() + ADD_DEADLINE;
    loop {
        match api.ask(|r| ApiCommand::Add(req.clone(), r)).await {
            Ok(AddOutcome::Done(reply)) => return Json(reply).into_response(),
            Ok(AddOutcome::RetryAt(at)) if at < deadline => {
                tokio::time::sleep_until(at.into()).await;
            }
            Ok(AddOutcome::RetryAt(_)) => {
                return ApiError::new(
                    code::TRY_AGAIN,
                    "no address space available yet (IPAM is still claiming a block); try again",
                )
                .into_response()
            }
            Err(e) => return e.into_response(),
        }
    }
}

async fn attached(State(api): State<Api>, Json(req): Json<AttachedRequest>) -> Response {
    match api.ask(|r| ApiCommand::Attached(req, r)).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => e.into_response(),
    }
}

async fn del(State(api): State<Api>, Json(req): Json<Attachment>) -> Response {
    match api.ask(|r| ApiCommand::Del(req, r)).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => e.into_response(),
    }
}

async fn check(State(api): State<Api>, Query(q): Query<Attachment>) -> Response {
    match api.ask(|r| ApiCommand::Check(q, r)).await {
        Ok(Some(reply)) => Json(reply).into_response(),
        Ok(None) => (
            StatusCode::NOT_FOUND,
            Json(ApiError::new(code::ROUTER, "no such attachment")),
        )
            .into_response(),
        Err(e) => e.into_response(),
    }
}

async fn gc(State(api): State<Api>, Json(req): Json<GcRequest>) -> Response {
    match api.ask(|r| ApiCommand::Gc(req, r)).await {
        Ok(reply) => Json(reply).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn status(State(api): State<Api>) -> Response {
    match api.ask(ApiCommand::Status).await {
        Ok(()) => StatusCode::OK.into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, Json(e)).into_response(),
    }
}
