//! The manifests source (without Kubernetes): Kubernetes YAML (or JSON) text, several
//! documents per file, into the model. Namespaces, Pods (metadata, container ports, optional
//! `status.podIPs`) and NetworkPolicies are read; `List` objects are opened; other kinds are
//! ignored with a note. Every object stands alone: one that fails to parse or validate is
//! rejected with its file, name and reason, and the rest are used.
//!
//! Parsing is pure ([`parse`]); [`read_dir`] is the thin I/O helper the router calls on change.

use crate::k8s;
use crate::model::Cluster;
use crate::status::Rejected;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::networking::v1 as net;
use serde::Deserialize;
use std::path::Path;

/// What a set of files yielded.
#[derive(Clone, Debug, Default)]
pub struct Manifests {
    pub cluster: Cluster,
    pub rejected: Vec<Rejected>,
    /// Objects of other kinds, as `file: kind namespace/name`.
    pub ignored: Vec<String>,
}

fn describe(v: &serde_json::Value) -> String {
    let m = &v["metadata"];
    match (m["namespace"].as_str(), m["name"].as_str()) {
        (Some(ns), Some(n)) => format!("{ns}/{n}"),
        (None, Some(n)) => n.to_string(),
        _ => "(unnamed)".to_string(),
    }
}

impl Manifests {
    fn reject(&mut self, kind: &str, object: String, reason: String) {
        self.rejected.push(Rejected {
            kind: kind.to_string(),
            object,
            reason,
        });
    }

    fn object(&mut self, file: &str, v: serde_json::Value) {
        if v.is_null() {
            return; // an empty document
        }
        let kind = v["kind"].as_str().unwrap_or("").to_string();
        let api = v["apiVersion"].as_str().unwrap_or("").to_string();
        let who = describe(&v);
        match (api.as_str(), kind.as_str()) {
            ("v1", "List") => {
                if let serde_json::Value::Array(items) = v["items"].clone() {
                    for item in items {
                        self.object(file, item);
                    }
                }
            }
            ("v1", "Namespace") => match serde_json::from_value::<core::Namespace>(v) {
                Ok(o) => match k8s::namespace(&o) {
                    Ok(n) => self.cluster.namespaces.push(n),
                    Err(e) => self.reject("Namespace", who, format!("{file}: {e}")),
                },
                Err(e) => self.reject("Namespace", who, format!("{file}: {e}")),
            },
            ("v1", "Pod") => match serde_json::from_value::<core::Pod>(v) {
                Ok(o) => match k8s::pod(&o) {
                    Ok(Some(p)) => self.cluster.pods.push(p),
                    Ok(None) => self
                        .ignored
                        .push(format!("{file}: Pod {who} (host network or finished)")),
                    Err(e) => self.reject("Pod", who, format!("{file}: {e}")),
                },
                Err(e) => self.reject("Pod", who, format!("{file}: {e}")),
            },
            ("networking.k8s.io/v1", "NetworkPolicy") => {
                match serde_json::from_value::<net::NetworkPolicy>(v) {
                    Ok(o) => match k8s::network_policy(&o) {
                        Ok(p) => self.cluster.policies.push(p),
                        Err(e) => self.reject("NetworkPolicy", who, format!("{file}: {e}")),
                    },
                    Err(e) => self.reject("NetworkPolicy", who, format!("{file}: {e}")),
                }
            }
            ("", _) | (_, "") => self.reject(
                if kind.is_empty() { "(unknown)" } else { &kind },
                who,
                format!("{file}: apiVersion and kind are required"),
            ),
            _ => self.ignored.push(format!("{file}: {api} {kind} {who}")),
        }
    }

    /// Adds the documents of one file (`name` is used in messages only).
    pub fn add_file(&mut self, name: &str, text: &str) {
        for (i, doc) in serde_norway::Deserializer::from_str(text).enumerate() {
            match serde_json::Value::deserialize(doc) {
                Ok(v) => self.object(name, v),
                Err(e) => {
                    // A syntax error ends the stream: nothing after it in this file is read.
                    self.reject(
                        "(document)",
                        format!("{name} #{}", i + 1),
                        format!("{name}: {e}"),
                    );
                    break;
                }
            }
        }
    }
}

/// Parses named texts (file name, contents).
pub fn parse<'a>(files: impl IntoIterator<Item = (&'a str, &'a str)>) -> Manifests {
    let mut m = Manifests::default();
    for (name, text) in files {
        m.add_file(name, text);
    }
    m
}

/// Reads every `*.yaml`, `*.yml` and `*.json` file directly in `dir`, in name order.
pub fn read_dir(dir: &Path) -> std::io::Result<Manifests> {
    let mut files: Vec<_> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.is_file()
                && matches!(
                    p.extension().and_then(|e| e.to_str()),
                    Some("yaml" | "yml" | "json")
                )
        })
        .collect();
    files.sort();
    let mut m = Manifests::default();
    for f in files {
        let name = f
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        match std::fs::read_to_string(&f) {
            Ok(text) => m.add_file(&name, &text),
            Err(e) => m.reject("(file)", name.clone(), format!("{name}: {e}")),
        }
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Protocol;

    const TEXT: &str = r#"
apiVersion: v1
kind: Namespace
metadata:
  name: shop
  labels: {team: a}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: shop, labels: {app: web}}
spec:
  containers:
  - name: c
    image: nginx
    ports: [{name: http, containerPort: 8080}]
status:
  podIPs: [{ip: 10.32.0.5}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: bad, namespace: shop}
spec:
  ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/99}}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress: [{ports: [{port: http}]}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop}
---
"#;

    #[test]
    fn multi_document_files_with_per_object_errors() {
        let list = r#"{"apiVersion": "v1", "kind": "List", "items": [
            {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "db", "namespace": "shop"}, "spec": {"containers": []}},
            {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}, "spec": {"containers": "wrong"}}
        ]}"#;
        let m = parse([
            ("a.yaml", TEXT),
            ("b.json", list),
            ("c.yaml", "key: [unclosed"),
        ]);
        assert_eq!(m.cluster.namespaces.len(), 1);
        assert_eq!(m.cluster.pods.len(), 2, "web and db");
        assert_eq!(
            m.cluster.pods[0].named_ports["http"].protocol,
            Protocol::Tcp
        );
        assert_eq!(
            m.cluster.policies.len(),
            1,
            "the valid policy survives the bad one"
        );
        assert_eq!(m.cluster.policies[0].name, "web");
        let reasons: Vec<String> = m
            .rejected
            .iter()
            .map(|r| format!("{} {} {}", r.kind, r.object, r.reason))
            .collect();
        assert_eq!(m.rejected.len(), 3, "{reasons:#?}");
        assert!(
            reasons[0]
                .starts_with("NetworkPolicy shop/bad a.yaml: spec.ingress[0].from[0].ipBlock.cidr"),
            "{reasons:#?}"
        );
        assert!(reasons[1].starts_with("Pod x b.json"), "{reasons:#?}");
        assert!(reasons[2].contains("c.yaml"), "{reasons:#?}");
        assert_eq!(
            m.ignored,
            vec!["a.yaml: apps/v1 Deployment shop/web".to_string()]
        );
    }

    #[test]
    fn read_dir_reads_yaml_files_in_order() {
        let dir =
            std::env::temp_dir().join(format!("weft-policy-manifests-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("b.yaml"), TEXT).unwrap();
        std::fs::write(dir.join("notes.txt"), "not yaml: [").unwrap();
        let m = read_dir(&dir);
        std::fs::remove_dir_all(&dir).unwrap();
        let m = m.unwrap();
        assert_eq!(m.cluster.policies.len(), 1);
        assert_eq!(m.rejected.len(), 1);
    }
}
