//! The router's integration tests, in one test binary: linking the router (with its
//! Kubernetes client) into one executable per suite cost minutes and gigabytes of disk.
//!
//! Each module is one suite: `cargo test -p weft --test e2e mesh::` runs one of them. Suites
//! with pods take the CNI plugin from beside the `weft` binary: build it first (`cargo build
//! -p weft-cni`, same profile; scripts/test.sh builds the whole workspace).
//! Tests that need root and network namespaces are `#[ignore]`d with that reason: a plain
//! `cargo test` lists them as ignored, `cargo test -- --include-ignored` (as root; what
//! scripts/test.sh runs) runs them, and a missing prerequisite then fails them. Each creates
//! uniquely named namespaces, so suites run side by side safely. Tests
//! that change the process environment live in the separate `env` binary.

#[path = "../common/mod.rs"]
mod common;
#[path = "../kube_support/mod.rs"]
mod kube_support;

mod cni_gc;
mod fastpath;
mod hostile_inputs;
mod hostile_pods;
mod kube_daemon;
mod kube_install_cni;
mod kube_node_status;
mod kube_nodes;
mod kube_outage;
mod kube_policy;
mod lab;
mod lab_segments;
mod libcni;
mod masq;
mod mesh;
mod podman;
mod pods;
mod policy;
mod sleeve;
mod startup;
mod status_api;
mod transport;
mod vxlan_guard;
