//! Tests that change the process environment (`std::env::set_var`), kept out of the `e2e`
//! binary so that no router or plugin started by another test inherits their variables.
//! The two suites touch disjoint variables.

#[path = "../kube_support/mod.rs"]
mod kube_support;

mod kube_config;
mod kube_env;
