//! The Node condition `NetworkUnavailable=False`, set through the `nodes/status` subresource.
//!
//! A strategic merge patch: Kubernetes merges `status.conditions` by `type`, so the patch
//! replaces only the `NetworkUnavailable` entry and leaves `Ready`, `MemoryPressure` and the
//! others as they are (a JSON merge patch would replace the whole list).

use std::time::SystemTime;

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use serde_json::{json, Value};

use super::peers::NETWORK_UNAVAILABLE;
use super::KubeError;

/// The `reason` weft writes.
pub const REASON: &str = "WeftIsUp";
/// The `message` weft writes.
pub const MESSAGE: &str = "weft router is running on this node";

/// The patch body (pure: `now` stamps the transition and heartbeat times).
pub fn network_available_patch(now: SystemTime) -> Value {
    let ts = Timestamp::try_from(now)
        .unwrap_or(Timestamp::UNIX_EPOCH)
        .round(k8s_openapi::jiff::Unit::Second)
        .unwrap_or(Timestamp::UNIX_EPOCH);
    let ts = ts.to_string();
    json!({
        "status": {
            "conditions": [{
                "type": NETWORK_UNAVAILABLE,
                "status": "False",
                "reason": REASON,
                "message": MESSAGE,
                "lastTransitionTime": ts,
                "lastHeartbeatTime": ts,
            }]
        }
    })
}

/// Sets `NetworkUnavailable=False` (reason `WeftIsUp`) on Node `node`. One attempt; the
/// [`super::Kube`] handle retries and re-asserts it ([`super::Kube::report_network_available`]).
pub async fn set_network_available(client: &Client, node: &str) -> Result<(), KubeError> {
    let api: Api<Node> = Api::all(client.clone());
    let patch = network_available_patch(SystemTime::now());
    api.patch_status(node, &PatchParams::default(), &Patch::Strategic(patch))
        .await
        .map(|_| ())
        .map_err(|e| match &e {
            kube::Error::Api(s) if s.code == 404 => KubeError::NodeNotFound(node.to_string()),
            _ => KubeError::Api(super::watch::describe(&e)),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn patch_body() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_400);
        let p = network_available_patch(t);
        let c = &p["status"]["conditions"];
        assert_eq!(c.as_array().unwrap().len(), 1);
        assert_eq!(c[0]["type"], "NetworkUnavailable");
        assert_eq!(c[0]["status"], "False");
        assert_eq!(c[0]["reason"], "WeftIsUp");
        // RFC 3339, whole seconds, UTC: what metav1.Time accepts
        assert_eq!(c[0]["lastTransitionTime"], "2023-11-14T22:13:20Z");
        assert_eq!(p.as_object().unwrap().len(), 1, "only status is patched");
    }
}
