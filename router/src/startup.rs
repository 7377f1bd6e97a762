//! Starting `weft router`: flags, then the network password, then the daemon.
//!
//! A password *file* that is missing, unreadable or blank is waited for, not fatal. In a
//! cluster the file comes from a Secret: exiting would put the router in a crash loop whose
//! back-off grows to minutes, while the kubelet refreshes a mounted Secret within about a
//! minute of it being fixed. So the router stays up and serves its status API while it waits:
//! `weft status` and `GET /readyz` (503) say what it waits for, `GET /healthz` says it is
//! alive (the liveness probe does not restart it), and the CNI plugin is told to try again
//! later, with the reason. It re-reads the file every [`RECHECK`] and starts the mesh as soon
//! as the file holds a password. Nothing runs without encryption meanwhile: no mesh, no sleeve.
//!
//! A blank `WEFT_PASSWORD` is still an error at once (an environment value cannot change),
//! and so is every other bad flag.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;
use tracing::{error, info};
use zeroize::Zeroizing;

use crate::api::{code, ApiError};
use crate::cli::RouterArgs;
use crate::daemon::{self, RouterConfig};
use crate::status::{self, Status};
use crate::transport::{self, PasswordError, PASSWORD_ENV};

/// How often a missing or blank password file is read again.
pub const RECHECK: Duration = Duration::from_secs(2);

/// Runs the router: waits for the password file if needed (see the module note).
pub async fn run_router(args: &RouterArgs) -> anyhow::Result<()> {
    let mut cfg = RouterConfig::from_args_except_password(args)?;
    let env = std::env::var(PASSWORD_ENV).ok();
    let from_file = env.is_none() && args.password_file.is_some();
    let password = match transport::read_password(args.password_file.as_deref(), env) {
        Ok(p) => p,
        Err(e) if from_file && waitable(&e) => match wait_for_password(&cfg, args, e).await? {
            Some(p) => Some(p),
            None => return Ok(()), // told to stop while waiting
        },
        Err(e) => return Err(anyhow::Error::new(e).context("reading the network password")),
    };
    cfg.set_password(password.as_deref().map(Vec::as_slice), &args.cluster);
    drop(password);
    daemon::run(cfg).await
}

/// Errors a change of the file can cure. (Both sources set is a configuration error.)
fn waitable(e: &PasswordError) -> bool {
    matches!(
        e,
        PasswordError::Read { .. } | PasswordError::Empty(_) | PasswordError::TooLarge(_)
    )
}

/// Serves the waiting status until the password file holds a password (returned) or the
/// router is told to stop (`None`).
async fn wait_for_password(
    cfg: &RouterConfig,
    args: &RouterArgs,
    first: PasswordError,
) -> anyhow::Result<Option<Zeroizing<Vec<u8>>>> {
    let mut why = first.to_string();
    error!(
        reason = %why,
        "waiting for the network password; the mesh starts when the file holds one"
    );
    let (tx, rx) = watch::channel(Arc::new(waiting_status(cfg, &why)));
    let reason = Arc::new(std::sync::Mutex::new(why.clone()));
    let api = status::api_router(rx);
    let tcp = tokio::net::TcpListener::bind(cfg.status_addr)
        .await
        .with_context(|| format!("binding the status API on {}", cfg.status_addr))?;
    let unix = status::bind_unix(&cfg.api_socket)
        .with_context(|| format!("binding the API socket {}", cfg.api_socket.display()))?;
    let servers = [
        tokio::spawn(status::serve_tcp(tcp, api.clone())),
        tokio::spawn(status::serve_unix_listener(
            unix,
            api.merge(cni_refusals(reason.clone())),
        )),
    ];
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let found = loop {
        tokio::select! {
            _ = tokio::time::sleep(RECHECK) => {}
            _ = sigterm.recv() => break None,
            _ = sigint.recv() => break None,
        }
        match transport::read_password(args.password_file.as_deref(), None) {
            Ok(Some(p)) => break Some(p),
            Ok(None) => unreachable!("a password file is configured"),
            Err(e) => {
                let now = e.to_string();
                if now != why {
                    error!(reason = %now, "still waiting for the network password");
                    why = now;
                    *reason.lock().unwrap_or_else(|p| p.into_inner()) = why.clone();
                    tx.send_replace(Arc::new(waiting_status(cfg, &why)));
                }
            }
        }
    };
    for s in servers {
        s.abort();
        let _ = s.await;
    }
    match &found {
        Some(_) => info!("the network password file now holds a password: starting the mesh"),
        None => info!("stopped while waiting for the network password"),
    }
    let _ = std::fs::remove_file(&cfg.api_socket);
    Ok(found)
}

/// The status while waiting: identity and settings, no mesh. Encrypted: a password file is
/// configured (the password is not set yet), and the mesh never starts without one.
fn waiting_status(cfg: &RouterConfig, why: &str) -> Status {
    let mut st = daemon::config_status(cfg, cfg.listen.to_string());
    st.encryption = true;
    st.pod_mtu = 0;
    st.ipam.error = Some("not started: waiting for the network password".into());
    st.not_ready = Some(format!("waiting for the network password: {why}"));
    st
}

/// The CNI routes while waiting: every call is told to try again later, with the reason.
fn cni_refusals(reason: Arc<std::sync::Mutex<String>>) -> Router {
    let refuse = move || {
        let reason = reason.clone();
        async move {
            let why = reason.lock().unwrap_or_else(|p| p.into_inner()).clone();
            let e = ApiError::new(
                code::TRY_AGAIN_LATER,
                format!("the weft router is waiting for the network password: {why}"),
            );
            (StatusCode::SERVICE_UNAVAILABLE, Json(e)).into_response()
        }
    };
    Router::new()
        .route("/cni/v1/add", post(refuse.clone()))
        .route("/cni/v1/attached", post(refuse.clone()))
        .route("/cni/v1/del", post(refuse.clone()))
        .route("/cni/v1/check", get(refuse.clone()))
        .route("/cni/v1/gc", post(refuse.clone()))
        .route("/cni/v1/status", get(refuse))
}
