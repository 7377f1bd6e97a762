#!/usr/bin/env bash
# Policy benchmarks: 10,000 pods in 100 namespaces on 100 nodes and
# 1,000 NetworkPolicies. Measures compile, render and apply (real nft in a throwaway network
# namespace: whole table on a node with 100 and with 1,000 local pods, element updates for one
# pod added/removed), nft -f of text against JSON, and new-flow rate pod -> pod through the
# rules with no table, 10 policies and 1,000 policies (per-packet cost must not depend on the
# number of policies). Repeated measurements are given as median (range). Needs root and nft.
# Prints a markdown table for docs/policy.md.
# Usage: bench/policy.sh
set -euo pipefail
cd "$(dirname "$0")/.."
command -v nft >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nftables >/dev/null; }
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}
out=$(mktemp)
trap 'rm -f "$out"' EXIT
cargo test --release -q -p weft-policy --test bench -- --ignored --nocapture --test-threads=1 >"$out" 2>&1 || { cat "$out"; exit 1; }
grep '^|' "$out"
echo
echo "(targets: compile <= 1 s, apply <= 1 s; machine: $(nproc) cores, kernel $(uname -r), $(nft --version))"
