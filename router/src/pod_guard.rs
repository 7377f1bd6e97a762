//! The pod guard in force: the two nftables tables of [`weft_policy::guard`] (what each pod may
//! send from its port, and the node's own ports shut to the bridge), applied with `nft` by one
//! task, and the port locks (no learning, no flooding, the pod's MAC pinned) repaired with them.
//!
//! The event loop hands the task the whole desired guard after every change of the local
//! endpoints. A CNI attach waits for it: the plugin is told the pod is attached only once the
//! pod's port is guarded (until then the bridge drops everything from the port). Requests that
//! queue up while `nft` runs are answered by one apply of the newest guard. The tables are
//! also checked every [`CHECK_EVERY`] (their drop counters are read then) and written again
//! when someone removed them; a failed apply is retried then too.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tracing::{info, warn};
use weft_policy::guard::{Guard, COUNTERS};
use weft_policy::Nft;

/// How often the tables are checked and their counters read.
pub const CHECK_EVERY: Duration = Duration::from_secs(5);

/// What the guard looks like from outside (status, metrics, readiness).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct GuardView {
    /// The guard last asked for is in force.
    pub ok: bool,
    /// Why not (the last apply's error).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Pod ports guarded.
    pub ports: usize,
    /// Frames and packets dropped since the router started, by counter name (see
    /// [`weft_policy::guard::COUNTERS`]).
    #[serde(default)]
    pub drops: BTreeMap<String, u64>,
}

impl GuardView {
    /// One line for `weft status`.
    pub fn summary(&self) -> String {
        let dropped: u64 = self.drops.values().sum();
        match &self.error {
            None if self.ok => format!("in force on {} pod port(s); {dropped} dropped", self.ports),
            None => "not applied yet".to_string(),
            Some(e) => format!("NOT in force, no pod can be attached: {e}"),
        }
    }
}

/// Told the outcome of the apply that put a guard in force.
pub type Done = Box<dyn FnOnce(Result<(), String>) + Send>;

struct Job {
    guard: Guard,
    done: Vec<Done>,
}

/// The loop's handle on the guard task.
pub struct PodGuard {
    tx: mpsc::UnboundedSender<Job>,
    view: Arc<Mutex<GuardView>>,
}

impl PodGuard {
    /// Applies `initial` (awaited: the router serves no pod before its guard is in force, a
    /// failure is returned and retried by the task) and starts the task.
    pub async fn start(initial: Guard, nft: Nft) -> (PodGuard, Result<(), String>) {
        let view = Arc::new(Mutex::new(GuardView::default()));
        let mut task = Task {
            nft,
            current: initial,
            applied: false,
            view: view.clone(),
            totals: BTreeMap::new(),
            last: BTreeMap::new(),
        };
        let first = task.apply().await;
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(task.run(rx));
        (PodGuard { tx, view }, first)
    }

    /// Puts `guard` in force; `done` (if any) gets the outcome.
    pub fn set(&self, guard: Guard, done: Vec<Done>) {
        if let Err(mpsc::error::SendError(job)) = self.tx.send(Job { guard, done }) {
            for d in job.done {
                d(Err("the pod guard task has stopped".into()));
            }
        }
    }

    pub fn view(&self) -> GuardView {
        self.view.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

struct Task {
    nft: Nft,
    current: Guard,
    /// `current` is in force.
    applied: bool,
    view: Arc<Mutex<GuardView>>,
    /// Drops counted before the tables were last replaced (replacing resets the counters).
    totals: BTreeMap<String, u64>,
    /// The counters as last read from the current tables.
    last: BTreeMap<String, u64>,
}

impl Task {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Job>) {
        let mut check = tokio::time::interval(CHECK_EVERY);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                job = rx.recv() => {
                    let Some(job) = job else { return };
                    let mut done = job.done;
                    self.current = job.guard;
                    // Everything queued meanwhile is answered by one apply of the newest.
                    while let Ok(j) = rx.try_recv() {
                        self.current = j.guard;
                        done.extend(j.done);
                    }
                    let r = self.apply().await;
                    for d in done {
                        d(r.clone());
                    }
                }
                _ = check.tick() => {
                    let present = self.read_counters().await;
                    if !self.applied || !present {
                        if self.applied {
                            warn!("pod guard: the nftables tables are gone; writing them again");
                        }
                        let _ = self.apply().await;
                    }
                }
            }
        }
    }

    /// Replaces both tables with `current` and locks every port again.
    async fn apply(&mut self) -> Result<(), String> {
        // The counters of the tables about to be replaced count towards the totals.
        self.read_counters().await;
        for (k, v) in std::mem::take(&mut self.last) {
            *self.totals.entry(k).or_default() += v;
        }
        let guard = self.current.clone();
        let nft = self.nft.clone();
        let result = tokio::task::spawn_blocking(move || -> Result<(), String> {
            let script = guard.to_nft().map_err(|e| e.to_string())?;
            nft.apply_script(&script).map_err(|e| e.to_string())
        })
        .await
        .unwrap_or_else(|e| Err(format!("the nft task failed: {e}")));
        for p in &self.current.ports {
            if let Err(e) = weft_fastpath::pod::lock_host_port(&p.host_ifname, p.mac).await {
                // A port that is gone (its pod being deleted) is not worth a warning.
                if !matches!(e, weft_fastpath::Error::LinkNotFound { .. }) {
                    warn!(port = %p.host_ifname, error = %e, "pod guard: cannot lock the port");
                }
            }
        }
        let was = self.applied;
        self.applied = result.is_ok();
        match &result {
            Ok(()) if !was => info!(ports = self.current.ports.len(), "pod guard in force"),
            Ok(()) => {}
            Err(e) => warn!(error = %e, "pod guard: cannot apply the nftables tables"),
        }
        let mut v = self.view.lock().unwrap_or_else(|e| e.into_inner());
        v.ok = result.is_ok();
        v.error = result.as_ref().err().cloned();
        v.ports = self.current.ports.len();
        v.drops = self.drops();
        result
    }

    fn drops(&self) -> BTreeMap<String, u64> {
        let mut d: BTreeMap<String, u64> = COUNTERS
            .iter()
            .map(|(_, c, _)| (c.to_string(), 0))
            .collect();
        for (k, v) in self.totals.iter().chain(self.last.iter()) {
            *d.entry(k.clone()).or_default() += v;
        }
        d
    }

    /// Reads the named counters of both tables into `last`; false when a table is missing.
    async fn read_counters(&mut self) -> bool {
        let nft = self.nft.clone();
        let read = tokio::task::spawn_blocking(move || {
            let mut all = BTreeMap::new();
            for (family, table) in [
                ("bridge", weft_policy::guard::BRIDGE_TABLE),
                ("inet", weft_policy::guard::NODE_TABLE),
            ] {
                match nft.counters_of(family, table)? {
                    Some(c) => all.extend(c),
                    None => return Ok(None),
                }
            }
            Ok::<_, weft_policy::ApplyError>(Some(all))
        })
        .await;
        match read {
            Ok(Ok(Some(c))) => {
                self.last = c
                    .into_iter()
                    .map(|(k, (packets, _))| (k, packets))
                    .collect();
                let mut v = self.view.lock().unwrap_or_else(|e| e.into_inner());
                v.drops = self.drops();
                true
            }
            _ => false,
        }
    }
}
