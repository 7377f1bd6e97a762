# shellcheck shell=bash
# weft's own tests on the cluster (after the upstream suites). Sourced by
# scripts/k8s-cluster.sh.

run_checks() {
  log "weft cluster checks: (none yet)"
}
