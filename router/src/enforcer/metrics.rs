//! The policy enforcer's Prometheus metrics, registered in the router's registry by
//! [`crate::metrics::Metrics::new`].
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `weft_policy_policies` | gauge | |
//! | `weft_policy_rejected_objects` | gauge | |
//! | `weft_policy_selected_pods` | gauge | |
//! | `weft_policy_table_elements` | gauge | |
//! | `weft_policy_applies_total` | counter | `mode` = full, diff |
//! | `weft_policy_apply_failures_total` | counter | |
//! | `weft_policy_apply_seconds` | gauge | |
//! | `weft_policy_blocked_packets_total` | counter | `direction`, `namespace` |
//! | `weft_policy_blocked_logged_total` | counter | `direction`, `namespace` |

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use weft_policy::apply::DropCount;
use weft_policy::{ApplyMode, Direction};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BlockedLabels {
    pub direction: &'static str,
    pub namespace: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModeLabels {
    pub mode: &'static str,
}

/// Handles on the policy metrics (cheap clones of what the registry holds).
#[derive(Clone, Debug, Default)]
pub struct PolicyMetrics {
    /// NetworkPolicies accepted from the source.
    pub policies: Gauge,
    /// Objects (or files) the source could not use.
    pub rejected: Gauge,
    /// Pods (cluster-wide) selected by at least one policy.
    pub selected_pods: Gauge,
    /// Set and map elements of the table in force.
    pub table_elements: Gauge,
    pub applies: Family<ModeLabels, Counter>,
    pub apply_failures: Counter,
    /// Duration of the last apply (compile, render and nft).
    pub apply_seconds: Gauge<f64, AtomicU64>,
    /// Every packet the table dropped (its named counters).
    pub blocked_packets: Family<BlockedLabels, Counter>,
    /// Blocked packets logged through NFLOG (rate-limited in the kernel).
    pub blocked_logged: Family<BlockedLabels, Counter>,
    last_drops: Arc<Mutex<BTreeMap<(Direction, String), u64>>>,
}

impl PolicyMetrics {
    pub fn register(r: &mut Registry) -> Self {
        let m = PolicyMetrics::default();
        r.register(
            "weft_policy_policies",
            "NetworkPolicies accepted from the policy source",
            m.policies.clone(),
        );
        r.register(
            "weft_policy_rejected_objects",
            "Objects or files of the policy source that were rejected",
            m.rejected.clone(),
        );
        r.register(
            "weft_policy_selected_pods",
            "Pods selected by at least one NetworkPolicy, cluster-wide",
            m.selected_pods.clone(),
        );
        r.register(
            "weft_policy_table_elements",
            "Set and map elements of the policy table in force",
            m.table_elements.clone(),
        );
        r.register(
            "weft_policy_applies",
            "Changes of the policy table put in force, by mode",
            m.applies.clone(),
        );
        r.register(
            "weft_policy_apply_failures",
            "Policy table changes nftables refused (the previous rules stayed in force)",
            m.apply_failures.clone(),
        );
        r.register(
            "weft_policy_apply_seconds",
            "Duration of the last policy update: compile, render and apply",
            m.apply_seconds.clone(),
        );
        r.register(
            "weft_policy_blocked_packets",
            "Packets dropped by NetworkPolicy, by direction and policy namespace",
            m.blocked_packets.clone(),
        );
        r.register(
            "weft_policy_blocked_logged",
            "Blocked packets logged (rate-limited), by direction and policy namespace",
            m.blocked_logged.clone(),
        );
        for mode in ["full", "diff"] {
            let _ = m.applies.get_or_create(&ModeLabels { mode });
        }
        m
    }

    /// Counts one applied change.
    pub fn applied(&self, mode: ApplyMode) {
        let mode = match mode {
            ApplyMode::Full => "full",
            ApplyMode::Diff => "diff",
            ApplyMode::Unchanged => return,
        };
        self.applies.get_or_create(&ModeLabels { mode }).inc();
    }

    /// Counts one logged blocked packet.
    pub fn logged(&self, direction: Direction, namespace: &str) {
        self.blocked_logged
            .get_or_create(&BlockedLabels {
                direction: direction.as_str(),
                namespace: namespace.to_string(),
            })
            .inc();
    }

    /// Takes the table's running drop totals and adds what is new to the counters (all of
    /// a total that went down: its source restarted).
    pub fn set_drops(&self, drops: &[DropCount]) {
        let mut last = self.last_drops.lock().unwrap_or_else(|p| p.into_inner());
        for d in drops {
            let key = (d.direction, d.namespace.clone());
            let before = last.get(&key).copied().unwrap_or(0);
            let delta = if d.packets >= before {
                d.packets - before
            } else {
                d.packets
            };
            self.blocked_packets
                .get_or_create(&BlockedLabels {
                    direction: d.direction.as_str(),
                    namespace: d.namespace.clone(),
                })
                .inc_by(delta);
            last.insert(key, d.packets);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_totals_become_monotonic_counters() {
        let mut r = Registry::default();
        let m = PolicyMetrics::register(&mut r);
        let d = |p| DropCount {
            direction: Direction::Ingress,
            namespace: "shop".into(),
            packets: p,
            bytes: 0,
        };
        m.set_drops(&[d(3)]);
        m.set_drops(&[d(5)]);
        m.set_drops(&[d(2)]); // the table's counters restarted
        m.logged(Direction::Egress, "shop");
        m.applied(ApplyMode::Diff);
        m.applied(ApplyMode::Unchanged);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &r).unwrap();
        assert!(
            out.contains(
                "weft_policy_blocked_packets_total{direction=\"ingress\",namespace=\"shop\"} 7"
            ),
            "{out}"
        );
        assert!(out.contains(
            "weft_policy_blocked_logged_total{direction=\"egress\",namespace=\"shop\"} 1"
        ));
        assert!(out.contains("weft_policy_applies_total{mode=\"diff\"} 1"));
        assert!(out.contains("weft_policy_applies_total{mode=\"full\"} 0"));
    }
}
