//! Blocked connections: a thread reads the policy table's NFLOG group, counts every logged
//! packet in `weft_policy_blocked_logged_total`, logs it (rate-limited again here, so a
//! flood across many namespaces cannot flood the log) with the pods' names, and nudges the
//! enforcer task to read the table's exact drop counters.

use super::metrics::PolicyMetrics;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify};
use tracing::{info, warn};
use weft_policy::nflog::{Blocked, NflogReader};

/// Log lines per second for blocked connections, after a burst.
pub const LOG_RATE: u32 = 5;
pub const LOG_BURST: u32 = 20;

/// A token bucket for log lines (pure: the caller passes `now`).
#[derive(Clone, Debug)]
pub struct LogLimiter {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Option<Instant>,
    suppressed: u64,
}

impl LogLimiter {
    pub fn new(rate_per_second: u32, burst: u32) -> Self {
        LogLimiter {
            rate: f64::from(rate_per_second),
            burst: f64::from(burst.max(1)),
            tokens: f64::from(burst.max(1)),
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(n)`: log this event; `n` events were suppressed since the last one logged.
    /// `None`: suppress it.
    pub fn admit(&mut self, now: Instant) -> Option<u64> {
        if let Some(last) = self.last {
            let dt = now.saturating_duration_since(last).as_secs_f64();
            self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        }
        self.last = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }
}

/// IP protocol number → name.
pub fn proto_name(p: u8) -> String {
    match p {
        1 => "icmp".into(),
        6 => "tcp".into(),
        17 => "udp".into(),
        58 => "icmpv6".into(),
        132 => "sctp".into(),
        n => n.to_string(),
    }
}

/// `10.32.0.5 (shop/web)`, or the bare address for one that is not a known pod.
fn label(ip: IpAddr, names: &BTreeMap<IpAddr, String>) -> String {
    match names.get(&ip) {
        Some(n) => format!("{ip} ({n})"),
        None => ip.to_string(),
    }
}

/// The log line's fields for one event.
pub fn describe(b: &Blocked, names: &BTreeMap<IpAddr, String>) -> (String, String, String) {
    let dst = match b.port {
        Some(p) => format!("{}:{p}", label(b.dst, names)),
        None => label(b.dst, names),
    };
    (label(b.src, names), dst, proto_name(b.protocol))
}

/// What the reader thread works with.
pub struct Reader {
    pub metrics: PolicyMetrics,
    /// Pod names by address (from the last compile).
    pub names: watch::Receiver<Arc<BTreeMap<IpAddr, String>>>,
    /// Nudged after events: the enforcer task then reads the drop counters.
    pub counters: Arc<Notify>,
}

/// Binds the NFLOG `group` in this network namespace and starts the reader thread. The
/// thread ends when the enforcer is gone (its name map closed).
pub fn start(group: u16, r: Reader) -> std::io::Result<()> {
    let reader = NflogReader::open(group)?;
    reader.set_timeout(Some(Duration::from_secs(1)))?;
    std::thread::Builder::new()
        .name("weft-policy-log".into())
        .spawn(move || run(reader, r))?;
    Ok(())
}

fn run(mut reader: NflogReader, r: Reader) {
    let mut limiter = LogLimiter::new(LOG_RATE, LOG_BURST);
    let mut overrun_logged = false;
    loop {
        match reader.recv() {
            Ok(events) => {
                if events.is_empty() {
                    continue;
                }
                let names = r.names.borrow().clone();
                for b in &events {
                    r.metrics.logged(b.direction, &b.namespace);
                    if let Some(skipped) = limiter.admit(Instant::now()) {
                        let (src, dst, proto) = describe(b, &names);
                        info!(
                            direction = b.direction.as_str(),
                            namespace = %b.namespace,
                            %src, %dst, %proto,
                            not_logged_before = skipped,
                            "policy blocked a connection"
                        );
                    }
                }
                r.counters.notify_one();
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                if r.names.has_changed().is_err() {
                    return; // the enforcer is gone
                }
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                // The kernel dropped log messages we did not read in time: only the log
                // and the logged counter miss them; the table's counters are exact.
                if !overrun_logged {
                    warn!("policy log: messages lost (reader too slow); drop counters stay exact");
                    overrun_logged = true;
                }
            }
            Err(e) => {
                warn!(error = %e, "policy log: reading NFLOG failed; retrying in 1 s");
                std::thread::sleep(Duration::from_secs(1));
                if r.names.has_changed().is_err() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_policy::Direction;

    #[test]
    fn limiter_allows_a_burst_then_the_rate_and_counts_the_rest() {
        let t0 = Instant::now();
        let mut l = LogLimiter::new(2, 3);
        assert_eq!(l.admit(t0), Some(0));
        assert_eq!(l.admit(t0), Some(0));
        assert_eq!(l.admit(t0), Some(0));
        assert_eq!(l.admit(t0), None);
        assert_eq!(l.admit(t0 + Duration::from_millis(100)), None);
        // Half a second later one token (2/s) is back: logged, with the two suppressed.
        assert_eq!(l.admit(t0 + Duration::from_millis(600)), Some(2));
        assert_eq!(l.admit(t0 + Duration::from_millis(600)), None);
        // A long pause refills only up to the burst.
        let later = t0 + Duration::from_secs(60);
        assert_eq!(l.admit(later), Some(1));
        assert_eq!(l.admit(later), Some(0));
        assert_eq!(l.admit(later), Some(0));
        assert_eq!(l.admit(later), None);
    }

    #[test]
    fn events_are_described_with_pod_names() {
        let names = BTreeMap::from([("10.32.0.5".parse().unwrap(), "shop/web".to_string())]);
        let b = Blocked {
            direction: Direction::Ingress,
            namespace: "shop".into(),
            src: "10.32.1.9".parse().unwrap(),
            dst: "10.32.0.5".parse().unwrap(),
            protocol: 6,
            port: Some(8080),
        };
        assert_eq!(
            describe(&b, &names),
            (
                "10.32.1.9".to_string(),
                "10.32.0.5 (shop/web):8080".to_string(),
                "tcp".to_string()
            )
        );
        assert_eq!(proto_name(132), "sctp");
        assert_eq!(proto_name(47), "47");
    }
}
