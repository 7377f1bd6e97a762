//! `NetworkUnavailable=False` on this node's Node: the patch (strategic merge on the
//! `nodes/status` subresource, other conditions untouched), only once asked, set again when
//! something flips it back, and a clear error for a Node that does not exist.

use crate::kube_support;

use std::time::Duration;

use k8s_openapi::api::core::v1::NodeCondition;
use kube_support::{obj, options, FakeApi, Kind};
use weft::kube::{Kube, KubeError};

fn me_with_unavailable() -> k8s_openapi::api::core::v1::Node {
    let mut n = obj::internal("me", "10.0.0.1");
    n.status
        .as_mut()
        .unwrap()
        .conditions
        .as_mut()
        .unwrap()
        .push(NodeCondition {
            type_: "NetworkUnavailable".into(),
            status: "True".into(),
            reason: Some("NoRouteCreated".into()),
            ..Default::default()
        });
    n
}

fn condition(api: &FakeApi, node: &str, ty: &str) -> Option<serde_json::Value> {
    let n = api.object(Kind::Nodes, node)?;
    n["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == ty)
        .cloned()
}

#[tokio::test]
async fn network_available_is_set_and_kept() {
    let api = FakeApi::start().await;
    api.apply(Kind::Nodes, me_with_unavailable());
    api.apply(Kind::Nodes, obj::internal("n2", "10.0.0.2"));
    let kube = Kube::start(api.client(), options("me"));
    kube_support::eventually(5, "synced", || kube.status().synced).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        api.patches().is_empty(),
        "nothing is patched before the router says so"
    );
    assert!(!kube.status().network_available);

    kube.report_network_available();
    kube_support::eventually(5, "condition False", || {
        condition(&api, "me", "NetworkUnavailable").is_some_and(|c| c["status"] == "False")
    })
    .await;
    let c = condition(&api, "me", "NetworkUnavailable").unwrap();
    assert_eq!(c["reason"], "WeftIsUp");
    let ready = condition(&api, "me", "Ready").expect("Ready condition kept");
    assert_eq!(ready["status"], "True");
    assert_eq!(ready["reason"], "KubeletReady");
    assert!(
        condition(&api, "n2", "NetworkUnavailable").is_none(),
        "only this node"
    );

    let patches = api.patches();
    assert_eq!(patches.len(), 1, "{patches:?}");
    let p = &patches[0];
    assert_eq!(p.path, "/api/v1/nodes/me/status");
    assert_eq!(
        p.content_type.as_deref(),
        Some("application/strategic-merge-patch+json")
    );
    let body = p.body.as_ref().unwrap();
    assert_eq!(body.as_object().unwrap().len(), 1, "{body}");
    let conds = body["status"]["conditions"].as_array().unwrap();
    assert_eq!(conds.len(), 1, "only NetworkUnavailable is sent: {body}");
    assert_eq!(conds[0]["type"], "NetworkUnavailable");
    assert_eq!(conds[0]["status"], "False");
    assert!(conds[0]["lastTransitionTime"]
        .as_str()
        .unwrap()
        .ends_with('Z'));
    kube_support::eventually(5, "status shows it", || kube.status().network_available).await;

    // the Node is re-registered by someone with NetworkUnavailable=True: set again
    api.apply(Kind::Nodes, me_with_unavailable());
    kube_support::eventually(5, "condition False again", || {
        condition(&api, "me", "NetworkUnavailable").is_some_and(|c| c["status"] == "False")
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(api.patches().len(), 2, "one patch per flip, no loop");
}

#[tokio::test]
async fn patch_retries_through_an_outage() {
    let api = FakeApi::start().await;
    api.apply(Kind::Nodes, me_with_unavailable());
    let kube = Kube::start(api.client(), options("me"));
    kube_support::eventually(5, "synced", || kube.status().synced).await;
    api.set_down(true);
    kube.report_network_available();
    // the cached view still says True; the patch fails with 503 and is retried
    kube_support::eventually(5, "failed patches", || api.patches().len() >= 2).await;
    let st = kube.status();
    assert!(
        st.last_error.as_deref().unwrap_or("").contains("503"),
        "{st:?}"
    );
    api.set_down(false);
    kube_support::eventually(5, "condition False after the outage", || {
        condition(&api, "me", "NetworkUnavailable").is_some_and(|c| c["status"] == "False")
    })
    .await;
}

#[tokio::test]
async fn missing_node_is_a_clear_error() {
    let api = FakeApi::start().await;
    api.apply(Kind::Nodes, obj::internal("n2", "10.0.0.2"));
    let err = weft::kube::set_network_available(&api.client(), "ghost")
        .await
        .unwrap_err();
    assert!(matches!(err, KubeError::NodeNotFound(ref n) if n == "ghost"));
    assert!(err.to_string().contains("NODE_NAME"), "{err}");

    // with a wrong NODE_NAME the router finds no Node: it says so, and patches nothing
    let before = api.patches().len();
    let kube = Kube::start(api.client(), options("ghost"));
    kube.report_network_available();
    kube_support::eventually(5, "synced", || kube.status().synced).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let st = kube.status();
    assert!(!st.this_node_found);
    assert!(st.summary().contains("(no such Node)"), "{}", st.summary());
    assert_eq!(api.patches().len(), before);
}
