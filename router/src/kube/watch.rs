//! The one watch loop every resource uses: kube's `watcher` (list, then watch from the last
//! resourceVersion; bookmarks on; a fresh list after `410 Gone`) feeding a reflector cache,
//! with our own backoff between failed attempts and the outcome reported on the [`Board`].

use std::fmt::Debug;
use std::hash::Hash;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::runtime::reflector::store::Writer;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Resource};
use rand::{rngs::StdRng, Rng, SeedableRng};
use serde::de::DeserializeOwned;
use tracing::{debug, info, warn};

use super::status::{Board, Watched};

/// Delay between failed attempts: doubles from `min` to `max`, plus up to 50% jitter so a
/// thousand routers do not all return to a recovering API server at the same moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    pub min: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            min: Duration::from_millis(800),
            max: Duration::from_secs(30),
        }
    }
}

/// Retry state for one loop.
pub(crate) struct Retry {
    cfg: Backoff,
    next: Duration,
    rng: StdRng,
}

impl Retry {
    pub(crate) fn new(cfg: Backoff) -> Retry {
        Retry {
            cfg,
            next: cfg.min,
            rng: StdRng::from_os_rng(),
        }
    }
    pub(crate) fn reset(&mut self) {
        self.next = self.cfg.min;
    }
    /// The delay before the next attempt (and doubles the one after).
    pub(crate) fn delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.cfg.max);
        d.mul_f64(1.0 + self.rng.random_range(0.0..0.5))
    }
}

/// Everything [`drive`] needs besides the API handle.
pub(crate) struct Drive<K: Resource + Clone + 'static>
where
    K::DynamicType: Eq + Hash + Clone,
{
    pub what: Watched,
    pub config: watcher::Config,
    pub writer: Writer<K>,
    /// Drops fields nobody reads before objects enter the cache.
    pub prune: fn(&mut K),
    pub board: Arc<Board>,
    pub backoff: Backoff,
}

/// Runs until the task is aborted. `on_change` is called after every event that changed
/// the cache (not during a relist, whose objects are buffered until the list is complete:
/// the cache keeps the last known state until then).
pub(crate) async fn drive<K>(api: Api<K>, d: Drive<K>, mut on_change: impl FnMut())
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Eq + Hash + Clone + Default,
{
    let Drive {
        what,
        config,
        writer,
        prune,
        board,
        backoff,
    } = d;
    let store = writer.as_reader();
    let stream = watcher::watcher(api, config).modify(prune).reflect(writer);
    let mut stream = std::pin::pin!(stream);
    let mut retry = Retry::new(backoff);
    let mut failing: Option<String> = None;
    let name = what.as_str();
    while let Some(item) = stream.next().await {
        match item {
            Ok(ev) => {
                if failing.take().is_some() {
                    info!(resource = name, "Kubernetes API reachable again");
                }
                retry.reset();
                let list_done = matches!(ev, Event::InitDone);
                board.ok(what, store.len(), list_done);
                match ev {
                    Event::Init => debug!(resource = name, "listing"),
                    Event::InitApply(_) => {}
                    Event::InitDone => {
                        debug!(resource = name, objects = store.len(), "list complete");
                        on_change();
                    }
                    Event::Apply(_) | Event::Delete(_) => on_change(),
                }
            }
            Err(e) => {
                let msg = describe_watch(&e);
                if is_gone(&e) {
                    info!(
                        resource = name,
                        "watch expired (410 Gone): listing everything again"
                    );
                } else if failing.as_deref() != Some(msg.as_str()) {
                    warn!(resource = name, error = %msg, "Kubernetes API request failed; retrying (the last known state stays in use)");
                } else {
                    debug!(resource = name, error = %msg, "Kubernetes API request failed again");
                }
                board.error(what, msg.clone(), Instant::now());
                failing = Some(msg);
                if !is_gone(&e) {
                    tokio::time::sleep(retry.delay()).await;
                }
            }
        }
    }
}

fn is_gone(e: &watcher::Error) -> bool {
    matches!(e, watcher::Error::WatchError(s) if s.code == 410)
}

/// A watcher error in one line, without the `Debug` dumps kube's own messages carry.
pub fn describe_watch(e: &watcher::Error) -> String {
    match e {
        watcher::Error::InitialListFailed(k) => format!("list failed: {}", describe(k)),
        watcher::Error::WatchStartFailed(k) => format!("watch failed to start: {}", describe(k)),
        watcher::Error::WatchFailed(k) => format!("watch failed: {}", describe(k)),
        watcher::Error::WatchError(s) => format!("watch ended: {}", status_text(s)),
        watcher::Error::NoResourceVersion => e.to_string(),
    }
}

/// A client error in one line: the API server's answer, or the chain of causes.
pub fn describe(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => status_text(s),
        other => chain(other),
    }
}

fn status_text(s: &kube::core::Status) -> String {
    let mut t = format!("the API server answered {}", s.code);
    if !s.reason.is_empty() {
        t += &format!(" {}", s.reason);
    }
    if !s.message.is_empty() {
        t += &format!(": {}", s.message);
    }
    if s.code == 403 {
        t += " (check the weft ClusterRole and ClusterRoleBinding)";
    }
    t
}

/// `e` and its sources, each cause added only when the text so far does not already say it.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let t = s.to_string();
        if !out.contains(&t) {
            out += ": ";
            out += &t;
        }
        cur = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_max_with_bounded_jitter() {
        let mut r = Retry::new(Backoff {
            min: Duration::from_millis(100),
            max: Duration::from_millis(400),
        });
        let d: Vec<Duration> = (0..5).map(|_| r.delay()).collect();
        let bounds = [100, 200, 400, 400, 400];
        for (d, b) in d.iter().zip(bounds) {
            let b = Duration::from_millis(b);
            assert!(*d >= b && *d < b.mul_f64(1.5), "{d:?} vs {b:?}");
        }
        r.reset();
        assert!(r.delay() < Duration::from_millis(150));
    }

    #[test]
    fn api_errors_read_well() {
        let s = kube::core::Status {
            code: 403,
            reason: "Forbidden".into(),
            message: "nodes is forbidden".into(),
            ..Default::default()
        };
        let e = watcher::Error::InitialListFailed(kube::Error::Api(Box::new(s.clone())));
        assert_eq!(
            describe_watch(&e),
            "list failed: the API server answered 403 Forbidden: nodes is forbidden (check the weft ClusterRole and ClusterRoleBinding)"
        );
        let gone = watcher::Error::WatchError(Box::new(kube::core::Status {
            code: 410,
            reason: "Expired".into(),
            message: "too old resource version".into(),
            ..Default::default()
        }));
        assert!(is_gone(&gone));
        assert!(!is_gone(&e));
    }
}
