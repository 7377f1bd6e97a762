//! The enforcer's inputs, pure: the policy snapshot a source produces ([`PolicyInput`]), the
//! pod addresses the mesh knows ([`EndpointView`]), and how the two are merged into the
//! cluster the compiler sees ([`resolve`]).
//!
//! A source (the manifests directory, the Kubernetes API) only has to produce a
//! [`PolicyInput`]; everything after that is the same for every source.

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::networking::v1 as net;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use weft_gossip::{Endpoint, PeerName};
use weft_policy::manifests::Manifests;
use weft_policy::status::Rejected;
use weft_policy::{k8s, Cluster, Pod};

/// One complete view of Namespaces, Pods and NetworkPolicies from a source, validated.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PolicyInput {
    /// Where it came from, for status and logs (`manifests /etc/weft/policy`, `kubernetes`).
    pub source: String,
    /// The valid objects. Pods may carry addresses from the source (`status.podIPs`); the
    /// mesh's endpoint table overrides them ([`resolve`]).
    pub cluster: Cluster,
    /// Objects (or files) that were refused, with the reason.
    pub rejected: Vec<Rejected>,
    /// Objects of kinds policy does not use, or pods it does not apply to.
    pub ignored: Vec<String>,
    /// The source could not be read at all; `cluster` is then the last good view.
    pub error: Option<String>,
}

impl PolicyInput {
    /// From a manifests directory's content.
    pub fn from_manifests(source: impl Into<String>, m: Manifests) -> Self {
        PolicyInput {
            source: source.into(),
            cluster: m.cluster,
            rejected: m.rejected,
            ignored: m.ignored,
            error: None,
        }
    }

    /// From Kubernetes API objects (a reflector's caches), validated the way the API server
    /// does; an invalid object is rejected alone. Output order does not depend on the order
    /// the objects come in.
    pub fn from_objects<'a>(
        source: impl Into<String>,
        namespaces: impl IntoIterator<Item = &'a core::Namespace>,
        pods: impl IntoIterator<Item = &'a core::Pod>,
        policies: impl IntoIterator<Item = &'a net::NetworkPolicy>,
    ) -> Self {
        let mut out = PolicyInput {
            source: source.into(),
            ..Default::default()
        };
        let who = |m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| match (
            &m.namespace,
            &m.name,
        ) {
            (Some(ns), Some(n)) => format!("{ns}/{n}"),
            (None, Some(n)) => n.clone(),
            _ => "(unnamed)".to_string(),
        };
        let mut reject = |kind: &str, object: String, reason: String| {
            out.rejected.push(Rejected {
                kind: kind.to_string(),
                object,
                reason,
            })
        };
        for ns in namespaces {
            match k8s::namespace(ns) {
                Ok(n) => out.cluster.namespaces.push(n),
                Err(e) => reject("Namespace", who(&ns.metadata), e.to_string()),
            }
        }
        for p in pods {
            match k8s::pod(p) {
                Ok(Some(pod)) => out.cluster.pods.push(pod),
                Ok(None) => out.ignored.push(format!(
                    "Pod {} (host network or finished)",
                    who(&p.metadata)
                )),
                Err(e) => reject("Pod", who(&p.metadata), e.to_string()),
            }
        }
        for np in policies {
            match k8s::network_policy(np) {
                Ok(pol) => out.cluster.policies.push(pol),
                Err(e) => reject("NetworkPolicy", who(&np.metadata), e.to_string()),
            }
        }
        out.cluster.namespaces.sort_by(|a, b| a.name.cmp(&b.name));
        out.cluster.pods.sort_by_key(|p| p.key());
        out.cluster.policies.sort_by_key(|p| p.key());
        out.rejected
            .sort_by(|a, b| (&a.kind, &a.object).cmp(&(&b.kind, &b.object)));
        out.ignored.sort();
        out
    }
}

/// Pod addresses as the mesh knows them: this node's CNI records and the gossiped endpoint
/// table of every node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EndpointView {
    /// `namespace/name` → addresses, for endpoints that carry a pod name.
    pub pods: BTreeMap<String, Vec<IpAddr>>,
    /// Addresses of this node's pod interfaces (named or not): the table is built for these.
    pub local: Vec<IpAddr>,
}

/// Whether an endpoint's `pod` is a `namespace/name` (the CNI plugin records the container
/// id instead when the runtime gave no Kubernetes names).
fn pod_key(pod: Option<&str>) -> Option<&str> {
    pod.filter(|p| {
        p.split_once('/')
            .is_some_and(|(ns, n)| !ns.is_empty() && !n.is_empty() && !n.contains('/'))
    })
}

impl EndpointView {
    /// From this node's endpoints (`local`) and the whole gossiped table (`all`, which also
    /// holds this node's record, owned by `me`).
    pub fn new(me: PeerName, local: &[Endpoint], all: &[(PeerName, Endpoint)]) -> Self {
        let mut pods: BTreeMap<String, BTreeSet<IpAddr>> = BTreeMap::new();
        let mut local_ips: BTreeSet<IpAddr> = BTreeSet::new();
        let local_iter = local.iter().map(|e| (me, e));
        for (owner, e) in all.iter().map(|(o, e)| (*o, e)).chain(local_iter) {
            if owner == me {
                local_ips.extend(e.ips.iter().copied());
            }
            if let Some(k) = pod_key(e.pod.as_deref()) {
                pods.entry(k.to_string())
                    .or_default()
                    .extend(e.ips.iter().copied());
            }
        }
        EndpointView {
            pods: pods
                .into_iter()
                .map(|(k, v)| (k, v.into_iter().collect()))
                .collect(),
            local: local_ips.into_iter().collect(),
        }
    }
}

/// Where the resolved pods' addresses came from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct AddressSources {
    /// Pods whose addresses come from the endpoint table (CNI records, gossip).
    pub from_endpoints: usize,
    /// Pods not in the endpoint table whose addresses come from the source
    /// (`status.podIPs`).
    pub from_source: usize,
    /// Pods without any address: selected, but nothing to match.
    pub without_address: usize,
    /// Pods the source does not list, known from the endpoint table only: they are added
    /// without labels (so `podSelector: {}` selects them, a label selector does not).
    pub unlisted: usize,
}

/// The cluster to compile: the input's pods with the endpoint table's addresses where it
/// knows the pod. Addresses a source gives for a pod are dropped when the endpoint table
/// says they belong to another pod (a stale `status.podIPs`). Pods of the endpoint table
/// the source does not list are added without labels: they exist, and a policy selecting
/// every pod of their namespace applies to them.
pub fn resolve(input: &PolicyInput, eps: &EndpointView) -> (Cluster, AddressSources) {
    let claimed: BTreeMap<IpAddr, &str> = eps
        .pods
        .iter()
        .flat_map(|(k, ips)| ips.iter().map(move |ip| (*ip, k.as_str())))
        .collect();
    let mut stats = AddressSources::default();
    let mut cluster = input.cluster.clone();
    for pod in &mut cluster.pods {
        let key = pod.key();
        match eps.pods.get(&key) {
            Some(ips) => {
                pod.ips = ips.clone();
                stats.from_endpoints += 1;
            }
            None => {
                pod.ips
                    .retain(|ip| claimed.get(ip).is_none_or(|owner| *owner == key));
                if !pod.ips.is_empty() {
                    stats.from_source += 1;
                }
            }
        }
        if pod.ips.is_empty() {
            stats.without_address += 1;
        }
    }
    let listed: BTreeSet<String> = cluster.pods.iter().map(|p| p.key()).collect();
    for (key, ips) in &eps.pods {
        if listed.contains(key) {
            continue;
        }
        let Some((namespace, name)) = key.split_once('/') else {
            continue;
        };
        cluster.pods.push(Pod {
            namespace: namespace.to_string(),
            name: name.to_string(),
            labels: Default::default(),
            ips: ips.clone(),
            named_ports: Default::default(),
        });
        stats.unlisted += 1;
    }
    (cluster, stats)
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_policy::manifests;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn ep(mac: u8, ips: &[&str], pod: Option<&str>) -> Endpoint {
        Endpoint {
            mac: [2, 0, 0, 0, 0, mac],
            ips: ips.iter().map(|s| ip(s)).collect(),
            pod: pod.map(String::from),
        }
    }

    const PODS: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: shop, labels: {app: web}}
spec: {containers: []}
status: {podIPs: [{ip: 10.32.0.9}]}
---
apiVersion: v1
kind: Pod
metadata: {name: db, namespace: shop}
spec: {containers: []}
status: {podIPs: [{ip: 10.32.0.5}]}
---
apiVersion: v1
kind: Pod
metadata: {name: idle, namespace: shop}
spec: {containers: []}
"#;

    #[test]
    fn endpoint_view_names_pods_and_finds_local_addresses() {
        let me = PeerName::try_from(1).unwrap();
        let other = PeerName::try_from(2).unwrap();
        let local = [
            ep(1, &["10.32.0.2"], Some("shop/web")),
            ep(2, &["10.32.0.3"], Some("0123abcd")), // container id: not a pod name
        ];
        let all = vec![
            (me, local[0].clone()),
            (other, ep(3, &["10.32.1.2"], Some("shop/db"))),
            (other, ep(4, &["10.32.1.3"], Some("a/b/c"))),
        ];
        let v = EndpointView::new(me, &local, &all);
        assert_eq!(v.local, vec![ip("10.32.0.2"), ip("10.32.0.3")]);
        assert_eq!(v.pods.len(), 2, "{:?}", v.pods);
        assert_eq!(v.pods["shop/web"], vec![ip("10.32.0.2")]);
        assert_eq!(v.pods["shop/db"], vec![ip("10.32.1.2")]);
    }

    #[test]
    fn endpoint_addresses_override_stale_source_addresses() {
        let input = PolicyInput::from_manifests("test", manifests::parse([("p.yaml", PODS)]));
        assert_eq!(input.cluster.pods.len(), 3);
        // web is known to the mesh at a new address; its old status address 10.32.0.9 is
        // not reused. db's status address 10.32.0.5 now belongs to another pod.
        let eps = EndpointView {
            pods: BTreeMap::from([
                ("shop/web".to_string(), vec![ip("10.32.0.2")]),
                ("other/x".to_string(), vec![ip("10.32.0.5")]),
            ]),
            local: vec![ip("10.32.0.2")],
        };
        let (c, stats) = resolve(&input, &eps);
        let by: BTreeMap<String, Vec<IpAddr>> =
            c.pods.iter().map(|p| (p.key(), p.ips.clone())).collect();
        assert_eq!(by["shop/web"], vec![ip("10.32.0.2")]);
        assert!(by["shop/db"].is_empty(), "{by:?}");
        assert!(by["shop/idle"].is_empty());
        // other/x is not in the manifests: added, without labels.
        assert_eq!(by["other/x"], vec![ip("10.32.0.5")]);
        let x = c.pods.iter().find(|p| p.name == "x").unwrap();
        assert!(x.labels.is_empty() && x.namespace == "other");
        assert_eq!(
            stats,
            AddressSources {
                from_endpoints: 1,
                from_source: 0,
                without_address: 2,
                unlisted: 1,
            }
        );
        // Without the conflicting endpoint, db keeps its status address.
        let eps = EndpointView {
            pods: BTreeMap::new(),
            local: vec![],
        };
        let (c, stats) = resolve(&input, &eps);
        assert_eq!(c.pods[0].ips, vec![ip("10.32.0.9")]);
        assert_eq!(stats.from_source, 2);
    }

    #[test]
    fn objects_are_validated_one_by_one_and_ordered() {
        let np = |name: &str, cidr: &str| -> net::NetworkPolicy {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": name, "namespace": "shop"},
                "spec": {"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": cidr}}]}]},
            }))
            .unwrap()
        };
        let pod: core::Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "h", "namespace": "shop"},
            "spec": {"hostNetwork": true, "containers": []},
        }))
        .unwrap();
        let ns: core::Namespace =
            serde_json::from_value(serde_json::json!({"metadata": {"name": "Bad_Name"}})).unwrap();
        let pols = [
            np("z", "10.0.0.0/8"),
            np("bad", "10.0.0.0/99"),
            np("a", "::/0"),
        ];
        let input = PolicyInput::from_objects("kubernetes", [&ns], [&pod], pols.iter());
        let names: Vec<&str> = input
            .cluster
            .policies
            .iter()
            .map(|p| p.name.as_str())
            .collect();
        assert_eq!(names, ["a", "z"]);
        let rejected: Vec<(&str, &str)> = input
            .rejected
            .iter()
            .map(|r| (r.kind.as_str(), r.object.as_str()))
            .collect();
        assert_eq!(
            rejected,
            [("Namespace", "Bad_Name"), ("NetworkPolicy", "shop/bad")]
        );
        assert!(
            input.rejected[1].reason.contains("cidr"),
            "{:?}",
            input.rejected
        );
        assert_eq!(input.ignored.len(), 1);
    }
}
