//! Caches of Pods, Namespaces and NetworkPolicies for the policy enforcer.
//!
//! Every Pod of the cluster is watched, not only this node's: a policy on this node selects
//! peers anywhere by their labels and IPs. To keep that affordable, objects are pruned before
//! they are cached ([`prune_pod`] and friends): a Pod keeps its name, namespace, labels,
//! node, host-network flag, phase, IPs and its containers' ports (for named ports); env,
//! volumes, images, probes, annotations and managed fields are dropped. What remains is a
//! few hundred bytes plus labels per Pod. The caches are `kube` reflector stores: a consumer
//! takes a [`PolicySnapshot`] (cheap: `Arc`s) whenever [`PolicySources::changes`] ticks.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{Container, ContainerPort, Namespace, Pod, PodSpec, PodStatus};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::runtime::reflector::Store;
use tokio::sync::watch;

use super::status::{Board, Watched};

/// Read access to the three caches.
#[derive(Clone)]
pub struct PolicySources {
    pub(crate) pods: Store<Pod>,
    pub(crate) namespaces: Store<Namespace>,
    pub(crate) policies: Store<NetworkPolicy>,
    pub(crate) changes: watch::Receiver<u64>,
    pub(crate) board: Arc<Board>,
}

/// The caches at one moment.
#[derive(Clone, Debug, Default)]
pub struct PolicySnapshot {
    pub pods: Vec<Arc<Pod>>,
    pub namespaces: Vec<Arc<Namespace>>,
    pub policies: Vec<Arc<NetworkPolicy>>,
    /// All three caches have been listed completely at least once. Before that a snapshot
    /// is partial: enforcing policy from it could cut traffic a complete view allows.
    pub synced: bool,
}

impl PolicySources {
    /// The current content of the caches.
    pub fn snapshot(&self) -> PolicySnapshot {
        PolicySnapshot {
            synced: self.is_synced(),
            pods: self.pods.state(),
            namespaces: self.namespaces.state(),
            policies: self.policies.state(),
        }
    }

    /// A counter that increases after every change to any of the caches. Wait on it with
    /// `changed().await`, then take a [`snapshot`](Self::snapshot); changes that arrive
    /// while the consumer works coalesce into one tick.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.clone()
    }

    pub fn is_synced(&self) -> bool {
        [Watched::Pods, Watched::Namespaces, Watched::NetworkPolicies]
            .iter()
            .all(|w| self.board.is_synced(*w))
    }
}

fn slim_meta(meta: ObjectMeta) -> ObjectMeta {
    ObjectMeta {
        name: meta.name,
        namespace: meta.namespace,
        uid: meta.uid,
        labels: meta.labels,
        resource_version: meta.resource_version,
        deletion_timestamp: meta.deletion_timestamp,
        ..Default::default()
    }
}

fn slim_container(c: Container) -> Container {
    Container {
        name: c.name,
        ports: c.ports.map(|p| {
            p.into_iter()
                .map(|p| ContainerPort { host_ip: None, ..p })
                .collect()
        }),
        // An init container with `restartPolicy: Always` is a sidecar: its named ports count.
        restart_policy: c.restart_policy,
        ..Default::default()
    }
}

/// Keeps what NetworkPolicy needs of a Pod (see the module note).
pub fn prune_pod(pod: &mut Pod) {
    pod.metadata = slim_meta(std::mem::take(&mut pod.metadata));
    pod.spec = pod.spec.take().map(|s| PodSpec {
        node_name: s.node_name,
        host_network: s.host_network,
        containers: s.containers.into_iter().map(slim_container).collect(),
        // restartable init containers (sidecars) can serve named ports too
        init_containers: s
            .init_containers
            .map(|v| v.into_iter().map(slim_container).collect()),
        ..Default::default()
    });
    pod.status = pod.status.take().map(|s| PodStatus {
        phase: s.phase,
        pod_ip: s.pod_ip,
        pod_ips: s.pod_ips,
        host_ip: s.host_ip,
        ..Default::default()
    });
}

/// Keeps a Namespace's name and labels (namespaceSelector reads only labels).
pub fn prune_namespace(ns: &mut Namespace) {
    ns.metadata = slim_meta(std::mem::take(&mut ns.metadata));
    ns.spec = None;
    ns.status = None;
}

/// Keeps a NetworkPolicy's spec; drops annotations (often a full copy of the last applied
/// object) and managed fields.
pub fn prune_policy(np: &mut NetworkPolicy) {
    np.metadata = slim_meta(std::mem::take(&mut np.metadata));
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{EnvVar, PodIP};

    #[test]
    fn pod_pruning_keeps_selector_and_port_facts() {
        let mut pod = Pod {
            metadata: ObjectMeta {
                name: Some("web-1".into()),
                namespace: Some("shop".into()),
                labels: Some([("app".to_string(), "web".to_string())].into()),
                annotations: Some([("big".to_string(), "x".repeat(10_000))].into()),
                resource_version: Some("42".into()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: Some("n2".into()),
                containers: vec![Container {
                    name: "app".into(),
                    image: Some("registry/app:1".into()),
                    env: Some(vec![EnvVar {
                        name: "SECRET".into(),
                        value: Some("s".into()),
                        ..Default::default()
                    }]),
                    ports: Some(vec![ContainerPort {
                        name: Some("http".into()),
                        container_port: 8080,
                        protocol: Some("TCP".into()),
                        ..Default::default()
                    }]),
                    ..Default::default()
                }],
                service_account_name: Some("sa".into()),
                ..Default::default()
            }),
            status: Some(PodStatus {
                phase: Some("Running".into()),
                pod_ip: Some("10.32.0.5".into()),
                pod_ips: Some(vec![PodIP {
                    ip: "10.32.0.5".into(),
                }]),
                message: Some("m".into()),
                ..Default::default()
            }),
        };
        prune_pod(&mut pod);
        assert_eq!(pod.metadata.labels.as_ref().unwrap()["app"], "web");
        assert!(pod.metadata.annotations.is_none());
        assert_eq!(pod.metadata.resource_version.as_deref(), Some("42"));
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(spec.node_name.as_deref(), Some("n2"));
        assert!(spec.service_account_name.is_none());
        let c = &spec.containers[0];
        assert!(c.image.is_none() && c.env.is_none());
        let port = &c.ports.as_ref().unwrap()[0];
        assert_eq!(
            (port.name.as_deref(), port.container_port),
            (Some("http"), 8080)
        );
        let st = pod.status.as_ref().unwrap();
        assert_eq!(st.pod_ip.as_deref(), Some("10.32.0.5"));
        assert!(st.message.is_none());
        let size = serde_json::to_vec(&pod).unwrap().len();
        assert!(size < 600, "pruned pod is {size} bytes");
    }

    #[test]
    fn namespace_and_policy_pruning() {
        let mut ns = Namespace {
            metadata: ObjectMeta {
                name: Some("shop".into()),
                labels: Some([("team".to_string(), "a".to_string())].into()),
                annotations: Some([("x".to_string(), "y".to_string())].into()),
                ..Default::default()
            },
            ..Default::default()
        };
        prune_namespace(&mut ns);
        assert_eq!(ns.metadata.labels.as_ref().unwrap()["team"], "a");
        assert!(ns.metadata.annotations.is_none());
        let mut np = NetworkPolicy {
            metadata: ObjectMeta {
                name: Some("deny".into()),
                namespace: Some("shop".into()),
                annotations: Some([("x".to_string(), "y".to_string())].into()),
                ..Default::default()
            },
            spec: Some(Default::default()),
        };
        prune_policy(&mut np);
        assert!(np.spec.is_some());
        assert!(np.metadata.annotations.is_none());
        assert_eq!(np.metadata.namespace.as_deref(), Some("shop"));
    }
}
