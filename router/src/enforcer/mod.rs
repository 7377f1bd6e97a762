//! The policy enforcer: keeps this node's `inet weft-policy` nftables table in step with
//! the NetworkPolicies, Namespaces and Pods of a source and the pod addresses the mesh knows.
//!
//! Design note.
//! - **Inputs** ([`input`], pure). A source publishes a [`PolicyInput`]: a complete,
//!   validated snapshot (the manifests directory does through [`manifests`]; a Kubernetes
//!   reflector can through [`PolicyInput::from_objects`] and [`PolicyHandle::inputs`]). The
//!   daemon publishes an [`EndpointView`] (pod `namespace/name` → addresses from the local
//!   CNI records and the gossiped endpoint table, and this node's pod addresses) whenever
//!   the endpoint table changes. Both are `watch` channels: changes that arrive while an
//!   update runs coalesce into the next one.
//! - **The task** waits for a change, lets further changes settle for [`DEBOUNCE`], then
//!   resolves addresses, compiles, renders and applies in a blocking thread
//!   ([`state::Shared::update`]). `weft_policy::Enforcer` makes every change one nft
//!   transaction; a refused one leaves the previous rules in force, is shown in status and
//!   retried with a backoff. Rejected objects and compiler notes are logged once each.
//! - **Blocked connections** ([`blocked`]): an NFLOG reader thread logs (rate-limited) and
//!   counts them; the table's exact drop counters are read every [`COUNTERS_INTERVAL`] and
//!   soon after a logged drop.
//! - **Status**: `GET /status/policy` ([`serve`]) and a one-line summary for `/status.json`.
//!
//! The table stays in force when the router stops (a restart does not open the node); a
//! router started without a policy source removes a table a previous run left
//! ([`remove_table`]), and so does `weft router --reset`.

pub mod blocked;
pub mod input;
pub mod manifests;
pub mod metrics;
pub mod state;

pub use input::{EndpointView, PolicyInput};
pub use metrics::PolicyMetrics;
pub use state::PolicyReport;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use state::{Shared, Updated};
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify};
use tracing::{info, warn};
use weft_gossip::{Endpoint, PeerName};
use weft_policy::{Enforcer, LogSettings, Nft};

/// Changes arriving within this time of the first go into one update.
pub const DEBOUNCE: Duration = Duration::from_millis(50);
/// How often the table's drop counters are read (also soon after a logged drop).
pub const COUNTERS_INTERVAL: Duration = Duration::from_secs(5);
/// First retry after nft refused a change; doubles up to [`RETRY_MAX`].
const RETRY_MIN: Duration = Duration::from_secs(2);
const RETRY_MAX: Duration = Duration::from_secs(60);

/// Where the policy comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// `--manifests DIR`.
    Manifests(PathBuf),
    /// Someone else publishes inputs through [`PolicyHandle::inputs`] (a Kubernetes
    /// reflector, once its caches are synced).
    Fed,
}

type Inputs = watch::Sender<Option<Arc<PolicyInput>>>;

/// The daemon's handle on the running enforcer.
pub struct PolicyHandle {
    inputs: Inputs,
    endpoints: watch::Sender<Arc<EndpointView>>,
    summary: watch::Receiver<Option<String>>,
    view: PolicyView,
}

/// Read access for `/status/policy`.
#[derive(Clone)]
pub struct PolicyView(Arc<Mutex<Shared>>);

impl PolicyView {
    /// The report, with the drop counters read now. Blocking (waits for an update in
    /// progress, runs nft).
    pub fn report(&self) -> PolicyReport {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).report()
    }
}

impl PolicyHandle {
    /// Where a source publishes complete snapshots (`None` until it has one).
    pub fn inputs(&self) -> Inputs {
        self.inputs.clone()
    }

    /// Publishes the pod addresses the mesh knows: this node's endpoints and the whole
    /// gossiped table. Only a change wakes the enforcer.
    pub fn set_endpoints(&self, me: PeerName, local: &[Endpoint], all: &[(PeerName, Endpoint)]) {
        let v = EndpointView::new(me, local, all);
        self.endpoints.send_if_modified(|cur| {
            if **cur == v {
                false
            } else {
                *cur = Arc::new(v);
                true
            }
        });
    }

    /// One line for `/status.json`.
    pub fn summary(&self) -> Option<String> {
        self.summary.borrow().clone()
    }

    pub fn view(&self) -> PolicyView {
        self.view.clone()
    }
}

/// Starts the enforcer (inside the tokio runtime, in the router's network namespace).
pub fn start(source: Source, metrics: PolicyMetrics) -> anyhow::Result<PolicyHandle> {
    let log = LogSettings::default();
    let mut shared = Shared::new(Enforcer::new(Nft::new()));
    match weft_policy::apply::ensure_br_netfilter() {
        Ok(true) => info!(
            "policy: enabled br_netfilter (bridged pod traffic goes through the policy table)"
        ),
        Ok(false) => {}
        Err(e) => {
            let msg = format!("{e}: traffic between pods on this node's bridge bypasses the policy table (load the br_netfilter module)");
            warn!(error = %msg, "policy: cannot enable br_netfilter");
            shared.br_netfilter_error = Some(msg);
        }
    }
    let (names_tx, names_rx) = watch::channel(Arc::new(BTreeMap::new()));
    let counters = Arc::new(Notify::new());
    if let Err(e) = blocked::start(
        log.group,
        blocked::Reader {
            metrics: metrics.clone(),
            names: names_rx,
            counters: counters.clone(),
        },
    ) {
        let msg = format!("cannot read NFLOG group {}: {e}", log.group);
        warn!(error = %msg, "policy: blocked connections are counted but not logged");
        shared.nflog_error = Some(msg);
    }
    let (inputs, inputs_rx) = watch::channel(None);
    if let Source::Manifests(dir) = &source {
        manifests::start(dir.clone(), inputs.clone())?;
    }
    let (endpoints, endpoints_rx) = watch::channel(Arc::new(EndpointView::default()));
    let (summary_tx, summary) = watch::channel(None);
    let view = PolicyView(Arc::new(Mutex::new(shared)));
    let task = Task {
        shared: view.0.clone(),
        log,
        metrics,
        names: names_tx,
        summary: summary_tx,
        counters,
        seen: BTreeSet::new(),
    };
    tokio::spawn(task.run(inputs_rx, endpoints_rx));
    Ok(PolicyHandle {
        inputs,
        endpoints,
        summary,
        view,
    })
}

/// Removes the policy table (`--reset`, or a router started without a policy source).
pub fn remove_table() -> anyhow::Result<()> {
    Enforcer::new(Nft::new())
        .remove()
        .map_err(|e| anyhow::anyhow!("removing the policy table: {e}"))
}

/// `GET /status/policy`: the report as JSON; 404 when no policy source is configured.
pub async fn serve(State(view): State<Option<PolicyView>>) -> Response {
    let Some(view) = view else {
        return (
            StatusCode::NOT_FOUND,
            Json(serde_json::json!({
                "error": "policy enforcement is off: start the router with --manifests DIR"
            })),
        )
            .into_response();
    };
    match tokio::task::spawn_blocking(move || view.report()).await {
        Ok(r) => Json(r).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

struct Task {
    shared: Arc<Mutex<Shared>>,
    log: LogSettings,
    metrics: PolicyMetrics,
    names: watch::Sender<Arc<BTreeMap<IpAddr, String>>>,
    summary: watch::Sender<Option<String>>,
    counters: Arc<Notify>,
    /// Rejections, notes and source errors already logged.
    seen: BTreeSet<String>,
}

impl Task {
    async fn run(
        mut self,
        mut inputs: watch::Receiver<Option<Arc<PolicyInput>>>,
        mut endpoints: watch::Receiver<Arc<EndpointView>>,
    ) {
        let mut dirty = false;
        let mut retry: Option<(Instant, Duration)> = None;
        let mut counters_due = Instant::now() + COUNTERS_INTERVAL;
        loop {
            let wake = retry.map_or(counters_due, |(t, _)| t.min(counters_due));
            tokio::select! {
                r = inputs.changed() => match r {
                    Ok(()) => dirty = true,
                    Err(_) => return,
                },
                r = endpoints.changed() => match r {
                    Ok(()) => dirty = true,
                    Err(_) => return,
                },
                _ = self.counters.notified() => {
                    counters_due = counters_due.min(Instant::now() + Duration::from_millis(200));
                }
                _ = tokio::time::sleep_until(wake.into()) => {}
            }
            let now = Instant::now();
            let retry_due = retry.is_some_and(|(t, _)| now >= t);
            if dirty || retry_due {
                if dirty {
                    tokio::time::sleep(DEBOUNCE).await;
                }
                dirty = false;
                let input = inputs.borrow_and_update().clone();
                let eps = endpoints.borrow_and_update().clone();
                if let Some(input) = input {
                    match self.update(input, eps).await {
                        Ok(()) => retry = None,
                        Err(()) => {
                            let wait = retry.map_or(RETRY_MIN, |(_, w)| (w * 2).min(RETRY_MAX));
                            retry = Some((Instant::now() + wait, wait));
                        }
                    }
                }
            }
            if Instant::now() >= counters_due {
                self.read_counters().await;
                counters_due = Instant::now() + COUNTERS_INTERVAL;
            }
        }
    }

    /// Logs what has not been logged yet (once each).
    fn log_once(&mut self, key: String, f: impl FnOnce()) {
        if self.seen.insert(key) {
            f();
        }
    }

    /// One update; `Err` when nft refused it.
    async fn update(&mut self, input: Arc<PolicyInput>, eps: Arc<EndpointView>) -> Result<(), ()> {
        if let Some(e) = input.error.clone() {
            self.log_once(format!("source error {e}"), || {
                warn!(error = %e, "policy source unreadable: its last good content stays in force")
            });
        }
        for r in &input.rejected {
            let (kind, object, reason) = (&r.kind, &r.object, &r.reason);
            if self
                .seen
                .insert(format!("rejected {kind} {object} {reason}"))
            {
                warn!(%kind, %object, %reason, "policy: object rejected");
            }
        }
        let shared = self.shared.clone();
        let log = self.log.clone();
        let job = tokio::task::spawn_blocking(move || {
            let mut s = shared.lock().unwrap_or_else(|p| p.into_inner());
            s.update(&input, &eps, &log)
        });
        let u: Updated = match job.await {
            Ok(u) => u,
            Err(e) => {
                warn!(error = %e, "policy update panicked");
                return Err(());
            }
        };
        for n in &u.notes {
            if self.seen.insert(format!("note {} {}", n.object, n.note)) {
                warn!(object = %n.object, note = %n.note, "policy");
            }
        }
        let m = &self.metrics;
        m.policies.set(u.policies as i64);
        m.rejected.set(u.rejected as i64);
        m.selected_pods.set(u.selected_pods as i64);
        m.apply_seconds.set(u.micros as f64 / 1e6);
        self.names.send_replace(Arc::new(u.names));
        let ok = match &u.result {
            Ok(r) => {
                m.applied(r.mode);
                m.table_elements.set(r.elements as i64);
                if r.mode != weft_policy::ApplyMode::Unchanged {
                    info!(
                        mode = ?r.mode, added = r.added, deleted = r.deleted,
                        elements = r.elements, groups = r.groups,
                        policies = u.policies, ms = u.micros / 1000,
                        "policy applied"
                    );
                }
                self.summary.send_replace(Some(format!(
                    "{} policies ({} rejected objects), {} pods selected; table: {} groups, {} elements",
                    u.policies, u.rejected, u.selected_pods, r.groups, r.elements
                )));
                true
            }
            Err(e) => {
                m.apply_failures.inc();
                warn!(error = %e, "policy: nftables refused the update; the previous rules stay in force");
                self.summary.send_replace(Some(format!(
                    "{} policies ({} rejected objects); LAST UPDATE FAILED, previous rules in force: {e}",
                    u.policies, u.rejected
                )));
                false
            }
        };
        // The counters of a replaced table are folded in by the enforcer: read them soon.
        self.counters.notify_one();
        if ok {
            Ok(())
        } else {
            Err(())
        }
    }

    async fn read_counters(&self) {
        let shared = self.shared.clone();
        let job = tokio::task::spawn_blocking(move || {
            let s = shared.lock().unwrap_or_else(|p| p.into_inner());
            s.enforcer
                .applied()
                .is_some()
                .then(|| s.enforcer.drop_counts())
        });
        match job.await {
            Ok(Some(Ok(drops))) => self.metrics.set_drops(&drops),
            Ok(Some(Err(e))) => tracing::debug!(error = %e, "policy: reading the drop counters"),
            _ => {}
        }
    }
}
