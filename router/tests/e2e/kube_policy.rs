//! The policy enforcer's caches (Pods, Namespaces, NetworkPolicies) against the fake API
//! server: complete snapshots, change ticks, pruned objects, and recovery after `410 Gone`.

use crate::kube_support;

use std::time::Duration;

use kube_support::{obj, options, FakeApi, Kind};
use serde_json::json;
use weft::kube::Kube;

fn pod(ns: &str, name: &str, ip: &str, app: &str) -> serde_json::Value {
    json!({
        "metadata": {
            "name": name, "namespace": ns, "labels": {"app": app},
            "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "x".repeat(4000)},
            "managedFields": [{"manager": "kubectl", "operation": "Apply"}],
        },
        "spec": {
            "nodeName": "n2",
            "containers": [{
                "name": "c", "image": "registry/app:1",
                "env": [{"name": "TOKEN", "value": "secret"}],
                "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
            }],
        },
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]},
    })
}

#[tokio::test]
async fn policy_caches_follow_the_api() {
    let api = FakeApi::start().await;
    api.apply(Kind::Nodes, obj::internal("me", "10.0.0.1"));
    api.apply(
        Kind::Namespaces,
        json!({"metadata": {"name": "shop", "labels": {"team": "a"}}}),
    );
    api.apply(Kind::Pods, pod("shop", "web-1", "10.32.0.5", "web"));
    api.apply(Kind::Pods, pod("shop", "db-1", "10.32.0.6", "db"));
    api.apply(
        Kind::NetworkPolicies,
        json!({
            "metadata": {"name": "db-from-web", "namespace": "shop"},
            "spec": {
                "podSelector": {"matchLabels": {"app": "db"}},
                "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "web"}}}]}],
            },
        }),
    );
    let mut opts = options("me");
    opts.watch_policy = true;
    let kube = Kube::start(api.client(), opts);
    let src = kube.policy_sources().expect("policy sources");
    let mut changes = src.changes();
    kube_support::eventually(5, "policy caches synced", || src.is_synced()).await;
    let snap = src.snapshot();
    assert!(snap.synced);
    assert_eq!(
        (snap.pods.len(), snap.namespaces.len(), snap.policies.len()),
        (2, 1, 1)
    );
    let web = snap
        .pods
        .iter()
        .find(|p| p.metadata.name.as_deref() == Some("web-1"))
        .unwrap();
    assert_eq!(web.metadata.labels.as_ref().unwrap()["app"], "web");
    assert_eq!(
        web.status.as_ref().unwrap().pod_ip.as_deref(),
        Some("10.32.0.5")
    );
    let port = &web.spec.as_ref().unwrap().containers[0]
        .ports
        .as_ref()
        .unwrap()[0];
    assert_eq!(port.name.as_deref(), Some("http"));
    assert!(web.metadata.annotations.is_none(), "pruned");
    assert!(web.metadata.managed_fields.is_none(), "pruned");
    assert!(
        web.spec.as_ref().unwrap().containers[0].env.is_none(),
        "pruned"
    );
    let np = &snap.policies[0];
    assert!(np.spec.as_ref().unwrap().ingress.is_some());

    // a new pod ticks the counter and shows in the next snapshot
    changes.borrow_and_update();
    api.apply(Kind::Pods, pod("shop", "web-2", "10.32.0.7", "web"));
    tokio::time::timeout(Duration::from_secs(5), changes.changed())
        .await
        .expect("change tick")
        .unwrap();
    kube_support::eventually(5, "web-2 in snapshot", || src.snapshot().pods.len() == 3).await;
    // a namespace label change, a deleted policy
    api.apply(
        Kind::Namespaces,
        json!({"metadata": {"name": "shop", "labels": {"team": "b"}}}),
    );
    api.delete(Kind::NetworkPolicies, "shop/db-from-web");
    kube_support::eventually(5, "label and deletion seen", || {
        let s = src.snapshot();
        s.policies.is_empty() && s.namespaces[0].metadata.labels.as_ref().unwrap()["team"] == "b"
    })
    .await;

    // an outage with compaction: the caches keep their content until the relist completes
    api.set_down(true);
    api.delete(Kind::Pods, "shop/db-1");
    api.compact();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(src.snapshot().pods.len(), 3, "last known state kept");
    assert!(src.is_synced());
    api.set_down(false);
    kube_support::eventually(5, "relisted", || src.snapshot().pods.len() == 2).await;
    assert_eq!(api.lists(Kind::Pods), 2);

    let st = kube.status();
    let names: Vec<&str> = st.resources.iter().map(|r| r.resource.as_str()).collect();
    assert_eq!(names, ["nodes", "pods", "namespaces", "networkpolicies"]);
    kube_support::eventually(5, "connected", || kube.status().connected).await;
    assert!(
        kube.status().summary().contains("2 pods"),
        "{}",
        kube.status().summary()
    );
}
