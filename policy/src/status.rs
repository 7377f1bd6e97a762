//! The `/status/policy` summary: policies and the pods they select, what was rejected, the
//! table in force and the drop counters. Plain data, serializable; the router assembles it
//! from the [`Compiled`] policy, its rejections and the [`crate::Enforcer`].

use crate::apply::{ApplyReport, DropCount};
use crate::compile::{Compiled, Note};
use crate::render::Ruleset;
use serde::Serialize;

/// One object that was not accepted, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Rejected {
    /// `NetworkPolicy`, `Pod`, `Namespace`, or the file for YAML errors.
    pub kind: String,
    /// `namespace/name` (or what is known of it).
    pub object: String,
    pub reason: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct PolicySummary {
    pub namespace: String,
    pub name: String,
    /// `Ingress`, `Egress` (after defaulting).
    pub types: Vec<&'static str>,
    pub ingress_rules: usize,
    pub egress_rules: usize,
    /// `namespace/name` of every selected pod, cluster-wide.
    pub selected: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct TableSummary {
    pub table: String,
    pub groups: usize,
    /// Shared peer and named-port sets.
    pub shared_sets: usize,
    pub elements: usize,
    /// The most set lookups a group chain makes for one new connection (per direction).
    pub max_chain_lookups: usize,
    pub isolated_ingress_addresses: usize,
    pub isolated_egress_addresses: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct PolicyStatus {
    pub policies: Vec<PolicySummary>,
    pub rejected: Vec<Rejected>,
    pub notes: Vec<Note>,
    pub table: Option<TableSummary>,
    pub last_apply: Option<ApplyReport>,
    pub drops: Vec<DropCount>,
    /// Set when the counters could not be read.
    pub drops_error: Option<String>,
}

impl PolicyStatus {
    /// Assembles the summary. `drops` is the result of [`crate::Enforcer::drop_counts`].
    pub fn build(
        compiled: &Compiled,
        rejected: &[Rejected],
        applied: Option<&Ruleset>,
        last_apply: Option<&ApplyReport>,
        drops: Result<Vec<DropCount>, String>,
    ) -> Self {
        let pods = compiled.pods();
        let policies = compiled
            .policies()
            .iter()
            .map(|p| PolicySummary {
                namespace: p.namespace.clone(),
                name: p.name.clone(),
                types: [(p.types.ingress, "Ingress"), (p.types.egress, "Egress")]
                    .into_iter()
                    .filter_map(|(on, s)| on.then_some(s))
                    .collect(),
                ingress_rules: p.ingress.len(),
                egress_rules: p.egress.len(),
                selected: p.selected.iter().map(|&i| pods[i].key()).collect(),
            })
            .collect();
        let (drops, drops_error) = match drops {
            Ok(d) => (d, None),
            Err(e) => (Vec::new(), Some(e)),
        };
        PolicyStatus {
            policies,
            rejected: rejected.to_vec(),
            notes: compiled.notes().to_vec(),
            table: applied.map(|r| TableSummary {
                table: r.table.clone(),
                groups: r.groups.len(),
                shared_sets: r.peer_sets.len() + r.port_sets.len(),
                elements: r.elements(),
                max_chain_lookups: r.groups.values().map(|g| g.lookups()).max().unwrap_or(0),
                isolated_ingress_addresses: r.ingress.len(),
                isolated_egress_addresses: r.egress.len(),
            }),
            last_apply: last_apply.cloned(),
            drops,
            drops_error,
        }
    }
}
