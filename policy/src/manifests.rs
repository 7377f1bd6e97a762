//! The manifests source (without Kubernetes): Kubernetes YAML (or JSON) text, several
//! documents per file, into the model. Namespaces, Pods (metadata, container ports, optional
//! `status.podIPs`) and NetworkPolicies are read; `List` objects are opened; other kinds are
//! ignored with a note. Every object stands alone: one that fails to parse or validate is
//! rejected with its file, name and reason, and the rest are used.
//!
//! Parsing is pure ([`parse`], [`LastGood::update`]); [`LastGood::read_dir`] is the thin I/O
//! helper the router calls on change. [`LastGood`] keeps bad edits from opening the node.

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

    /// Adds the documents of one file (`name` is used in messages only). False when the file
    /// has a syntax error: a syntax error ends the stream, so nothing after it was read.
    pub fn add_file(&mut self, name: &str, text: &str) -> bool {
        for (i, doc) in serde_norway::Deserializer::from_str(text).enumerate() {
            match serde_json::Value::deserialize(doc) {
                Ok(v) => self.object(name, v),
                Err(e) => {
                    self.reject(
                        "(document)",
                        format!("{name} #{}", i + 1),
                        format!("{name}: {e}"),
                    );
                    return false;
                }
            }
        }
        true
    }

    fn extend(&mut self, other: Manifests) {
        self.cluster.namespaces.extend(other.cluster.namespaces);
        self.cluster.pods.extend(other.cluster.pods);
        self.cluster.policies.extend(other.cluster.policies);
        self.rejected.extend(other.rejected);
        self.ignored.extend(other.ignored);
    }
}

/// What survives a bad edit, per file. A directory of manifests is edited by hand: a typo
/// must not open the node. So:
/// - a file that cannot be read or has a YAML syntax error keeps its previous content (the
///   last that parsed) in force, and is reported;
/// - a NetworkPolicy whose new version is invalid keeps its previous valid version in force
///   (from the same file), and is reported; one without a previous version is rejected;
/// - a file that is removed takes its objects with it, as does a policy removed from a file.
#[derive(Debug, Default)]
pub struct LastGood {
    /// File name → its objects the last time it parsed whole (rejections and notes removed).
    files: std::collections::BTreeMap<String, Manifests>,
}

impl LastGood {
    /// The manifests of `files` (name, text or why it could not be read), each file held to
    /// its last good content as described above. Files that are not given are forgotten.
    pub fn update(&mut self, files: Vec<(String, Result<String, String>)>) -> Manifests {
        let mut out = Manifests::default();
        let mut seen = std::collections::BTreeMap::new();
        for (name, text) in files {
            let mut m = Manifests::default();
            let whole = match &text {
                Ok(t) => m.add_file(&name, t),
                Err(e) => {
                    m.reject("(file)", name.clone(), format!("{name}: {e}"));
                    false
                }
            };
            let previous = self.files.get(&name);
            if !whole {
                if let Some(prev) = previous {
                    // Keep the last good content whole; report what is wrong now.
                    let mut kept = prev.clone();
                    for r in m.rejected.iter_mut().filter(|r| r.kind.starts_with('(')) {
                        r.reason
                            .push_str("; the file's previous content stays in force");
                    }
                    kept.rejected = m.rejected;
                    out.extend(kept);
                    seen.insert(name, prev.clone());
                    continue;
                }
            }
            // A policy edited into something invalid: its previous version stays.
            if let Some(prev) = previous {
                for r in m.rejected.iter_mut().filter(|r| r.kind == "NetworkPolicy") {
                    let accepted_now = m.cluster.policies.iter().any(|p| p.key() == r.object);
                    let before = prev.cluster.policies.iter().find(|p| p.key() == r.object);
                    if let (false, Some(p)) = (accepted_now, before) {
                        m.cluster.policies.push(p.clone());
                        r.reason.push_str("; its previous version stays in force");
                    }
                }
            }
            if whole {
                let mut good = m.clone();
                good.rejected.clear();
                good.ignored.clear();
                seen.insert(name, good);
            }
            out.extend(m);
        }
        self.files = seen;
        out
    }

    /// Reads every `*.yaml`, `*.yml` and `*.json` file directly in `dir`, in name order,
    /// through [`LastGood::update`].
    pub fn read_dir(&mut self, dir: &Path) -> std::io::Result<Manifests> {
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
        let files = files
            .into_iter()
            .map(|f| {
                let name = f
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let text = std::fs::read_to_string(&f).map_err(|e| e.to_string());
                (name, text)
            })
            .collect();
        Ok(self.update(files))
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

/// Reads every `*.yaml`, `*.yml` and `*.json` file directly in `dir`, in name order, with no
/// memory of earlier reads (a watcher keeps a [`LastGood`] instead).
pub fn read_dir(dir: &Path) -> std::io::Result<Manifests> {
    LastGood::default().read_dir(dir)
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

    /// The fuzz target `policy_manifests` starts from these seeds; they must stay valid, or
    /// the fuzzer spends its time on text the parser rejects at the first line.
    #[test]
    fn the_fuzz_seeds_parse_without_rejections() {
        let m = parse([
            (
                "shop.yaml",
                include_str!("../../fuzz/seeds/policy_manifests/shop.yaml"),
            ),
            (
                "list.json",
                include_str!("../../fuzz/seeds/policy_manifests/list.json"),
            ),
        ]);
        assert!(m.rejected.is_empty(), "{:#?}", m.rejected);
        assert_eq!(m.cluster.namespaces.len(), 3);
        assert_eq!(m.cluster.pods.len(), 5);
        assert_eq!(m.cluster.policies.len(), 3);
        assert!(m.cluster.pods.iter().all(|p| !p.ips.is_empty()));
    }

    const DENY: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny, namespace: shop}
spec: {podSelector: {}, ingress: [{ports: [{protocol: TCP, port: 80}]}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: other, namespace: shop}
spec: {podSelector: {}}
"#;

    fn update(lg: &mut LastGood, files: &[(&str, Result<&str, &str>)]) -> Manifests {
        lg.update(
            files
                .iter()
                .map(|(n, t)| (n.to_string(), t.map(str::to_string).map_err(str::to_string)))
                .collect(),
        )
    }

    fn policy_ports(m: &Manifests, name: &str) -> Option<String> {
        m.cluster
            .policies
            .iter()
            .find(|p| p.name == name)
            .map(|p| format!("{:?}", p.ingress))
    }

    #[test]
    fn a_bad_edit_keeps_what_was_in_force() {
        let mut lg = LastGood::default();
        let good = update(&mut lg, &[("p.yaml", Ok(DENY))]);
        assert_eq!(good.cluster.policies.len(), 2);
        assert!(good.rejected.is_empty());
        let before = policy_ports(&good, "deny").unwrap();

        // One policy edited into an invalid one (lower-case protocol): its previous version
        // stays, the other policy of the file takes its new content.
        let bad_policy = DENY
            .replace("protocol: TCP", "protocol: tcp")
            .replace("{podSelector: {}}", "{podSelector: {matchLabels: {a: b}}}");
        let m = update(&mut lg, &[("p.yaml", Ok(&bad_policy))]);
        assert_eq!(policy_ports(&m, "deny").as_deref(), Some(before.as_str()));
        assert_eq!(m.rejected.len(), 1, "{:?}", m.rejected);
        assert!(
            m.rejected[0]
                .reason
                .ends_with("its previous version stays in force"),
            "{:?}",
            m.rejected
        );
        let other = m
            .cluster
            .policies
            .iter()
            .find(|p| p.name == "other")
            .unwrap();
        assert!(
            !other.pod_selector.match_labels.is_empty(),
            "the valid edit is taken"
        );

        // A YAML syntax error: the file's last content that parsed (the edit above, with the
        // kept version of `deny`) stays whole.
        let m = update(&mut lg, &[("p.yaml", Ok("key: [unclosed"))]);
        assert_eq!(m.cluster.policies.len(), 2, "{:?}", m.rejected);
        assert!(m.rejected[0]
            .reason
            .ends_with("the file's previous content stays in force"));
        // Unreadable: the same.
        let m = update(&mut lg, &[("p.yaml", Err("Permission denied"))]);
        assert_eq!(m.cluster.policies.len(), 2);
        assert!(m.rejected[0].reason.contains("Permission denied"));

        // Fixed: the new content, no rejections.
        let m = update(&mut lg, &[("p.yaml", Ok(DENY))]);
        assert_eq!(m.cluster.policies.len(), 2);
        assert!(m.rejected.is_empty());
        // Removed from the file, or the file removed: gone.
        let only_other = DENY.split("---").nth(1).unwrap();
        let m = update(&mut lg, &[("p.yaml", Ok(only_other))]);
        assert_eq!(m.cluster.policies.len(), 1);
        let m = update(&mut lg, &[]);
        assert!(m.cluster.policies.is_empty());
        // A new file that is broken from the start keeps nothing and is reported.
        let m = update(&mut lg, &[("q.yaml", Ok(&bad_policy))]);
        assert_eq!(m.cluster.policies.len(), 1, "only the valid one");
        assert_eq!(m.rejected.len(), 1);
        assert!(!m.rejected[0].reason.contains("stays in force"));
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
