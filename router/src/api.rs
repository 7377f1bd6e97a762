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
use std::time::Instant;
use tokio::sync::{mpsc, oneshot};

pub use weft_api::{
    check_pod_name, check_pod_namespace, code, AddReply, AddRequest, ApiError, AttachedRequest,
    Attachment, GcReply, GcRequest, ADD_DEADLINE, MAX_CONTAINER_ID,
};

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

/// An error as the plugin reads it: `{"error","code"}` with [`ApiError::http_status`].
fn error_response(e: ApiError) -> Response {
    let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, Json(e)).into_response()
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
            .map_err(|_| ApiError::new(code::TRY_AGAIN_LATER, "the router is shutting down"))?;
        rx.await
            .map_err(|_| ApiError::new(code::TRY_AGAIN_LATER, "the router dropped the request"))?
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
                Json(ApiError::new(code::ROUTER_ERROR, msg.clone())),
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
                return error_response(ApiError::new(
                    code::TRY_AGAIN_LATER,
                    "no address space available yet (IPAM is still claiming a block); try again",
                ))
            }
            Err(e) => return error_response(e),
        }
    }
}

async fn attached(State(api): State<Api>, Json(req): Json<AttachedRequest>) -> Response {
    match api.ask(|r| ApiCommand::Attached(req, r)).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => error_response(e),
    }
}

async fn del(State(api): State<Api>, Json(req): Json<Attachment>) -> Response {
    match api.ask(|r| ApiCommand::Del(req, r)).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => error_response(e),
    }
}

async fn check(State(api): State<Api>, Query(q): Query<Attachment>) -> Response {
    match api.ask(|r| ApiCommand::Check(q, r)).await {
        Ok(Some(reply)) => Json(reply).into_response(),
        Ok(None) => (
            StatusCode::NOT_FOUND,
            Json(ApiError::new(code::ROUTER_ERROR, "no such attachment")),
        )
            .into_response(),
        Err(e) => error_response(e),
    }
}

async fn gc(State(api): State<Api>, Json(req): Json<GcRequest>) -> Response {
    match api.ask(|r| ApiCommand::Gc(req, r)).await {
        Ok(reply) => Json(reply).into_response(),
        Err(e) => error_response(e),
    }
}

async fn status(State(api): State<Api>) -> Response {
    match api.ask(ApiCommand::Status).await {
        Ok(()) => StatusCode::OK.into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, Json(e)).into_response(),
    }
}
