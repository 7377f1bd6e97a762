//! What the enforcer keeps between updates, behind one mutex shared by the enforcer task
//! (which holds it while nft runs) and the `/status/policy` handler; and one update:
//! resolve addresses, compile, render, apply. Blocking: called off the async runtime.

use super::input::{resolve, AddressSources, EndpointView, PolicyInput};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;
use weft_policy::compile::Note;
use weft_policy::{ApplyReport, Compiled, Enforcer, LogSettings, PolicyStatus, Ruleset};

/// The enforcer's state.
pub struct Shared {
    pub enforcer: Enforcer,
    pub compiled: Option<Compiled>,
    pub input: Option<Arc<PolicyInput>>,
    pub addresses: AddressSources,
    pub local_addresses: usize,
    pub applies: u64,
    pub apply_failures: u64,
    /// Why bridged traffic may bypass the table (`br_netfilter` could not be enabled).
    pub br_netfilter_error: Option<String>,
    /// Why blocked connections are not logged.
    pub nflog_error: Option<String>,
}

/// What one update did, for the task to log and publish.
pub struct Updated {
    pub result: Result<ApplyReport, String>,
    pub policies: usize,
    pub selected_pods: usize,
    pub rejected: usize,
    pub notes: Vec<Note>,
    pub micros: u64,
    /// Pod names by address, for the log of blocked connections.
    pub names: BTreeMap<IpAddr, String>,
}

impl Shared {
    pub fn new(enforcer: Enforcer) -> Self {
        Shared {
            enforcer,
            compiled: None,
            input: None,
            addresses: AddressSources::default(),
            local_addresses: 0,
            applies: 0,
            apply_failures: 0,
            br_netfilter_error: None,
            nflog_error: None,
        }
    }

    /// Puts `input` with the addresses of `eps` in force.
    pub fn update(
        &mut self,
        input: &Arc<PolicyInput>,
        eps: &EndpointView,
        log: &LogSettings,
    ) -> Updated {
        let start = Instant::now();
        let (cluster, addresses) = resolve(input, eps);
        let compiled = Compiled::new(&cluster);
        let ruleset = Ruleset::build(&compiled, &eps.local, log);
        let result = self.enforcer.apply(&ruleset).map_err(|e| e.to_string());
        match &result {
            Ok(r) if r.mode != weft_policy::ApplyMode::Unchanged => self.applies += 1,
            Ok(_) => {}
            Err(_) => self.apply_failures += 1,
        }
        let summary = PolicyStatus::build(
            &compiled,
            &input.rejected,
            self.enforcer.applied(),
            self.enforcer.last_report(),
            Ok(Vec::new()),
        );
        let selected: BTreeSet<&String> =
            summary.policies.iter().flat_map(|p| &p.selected).collect();
        let mut names: BTreeMap<IpAddr, String> = eps
            .pods
            .iter()
            .flat_map(|(k, ips)| ips.iter().map(move |ip| (*ip, k.clone())))
            .collect();
        for p in &cluster.pods {
            for ip in &p.ips {
                names.entry(*ip).or_insert_with(|| p.key());
            }
        }
        let updated = Updated {
            result,
            policies: summary.policies.len(),
            selected_pods: selected.len(),
            rejected: input.rejected.len(),
            notes: summary.notes.clone(),
            micros: start.elapsed().as_micros() as u64,
            names,
        };
        self.compiled = Some(compiled);
        self.input = Some(input.clone());
        self.addresses = addresses;
        self.local_addresses = eps.local.len();
        updated
    }

    /// The `/status/policy` report, with the drop counters read now.
    pub fn report(&self) -> PolicyReport {
        let status = self.compiled.as_ref().map(|c| {
            let drops = self.enforcer.drop_counts().map_err(|e| e.to_string());
            PolicyStatus::build(
                c,
                self.input
                    .as_ref()
                    .map(|i| i.rejected.as_slice())
                    .unwrap_or(&[]),
                self.enforcer.applied(),
                self.enforcer.last_report(),
                drops,
            )
        });
        let last_failed = self
            .enforcer
            .last_report()
            .is_some_and(|r| r.error.is_some());
        PolicyReport {
            state: match (&status, last_failed) {
                (None, _) => "waiting for the policy source",
                (Some(_), true) => "last update failed; the previous rules are in force",
                (Some(_), false) => "enforcing",
            },
            source: self.input.as_ref().map(|i| i.source.clone()),
            source_error: self.input.as_ref().and_then(|i| i.error.clone()),
            br_netfilter_error: self.br_netfilter_error.clone(),
            nflog_error: self.nflog_error.clone(),
            applies: self.applies,
            apply_failures: self.apply_failures,
            local_addresses: self.local_addresses,
            addresses: self.addresses,
            ignored: self
                .input
                .as_ref()
                .map(|i| i.ignored.clone())
                .unwrap_or_default(),
            status,
        }
    }
}

/// `GET /status/policy`.
#[derive(Clone, Debug, Serialize)]
pub struct PolicyReport {
    /// `enforcing`, `waiting for the policy source`, or that the last update failed.
    pub state: &'static str,
    pub source: Option<String>,
    /// The source could not be read; the last good view is in force.
    pub source_error: Option<String>,
    pub br_netfilter_error: Option<String>,
    pub nflog_error: Option<String>,
    /// Changes put in force (element updates and replacements) since the router started.
    pub applies: u64,
    pub apply_failures: u64,
    /// This node's pod addresses the table was built for.
    pub local_addresses: usize,
    /// Where the pods' addresses came from.
    pub addresses: AddressSources,
    pub ignored: Vec<String>,
    /// Policies, selected pods, rejections, the table, the last apply and the drop
    /// counters (absent while waiting for the source).
    #[serde(flatten)]
    pub status: Option<PolicyStatus>,
}
