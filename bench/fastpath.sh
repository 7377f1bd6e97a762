#!/usr/bin/env bash
# Fastpath benchmark, side by side with ../shared/bench/peers.sh in the same run:
#   1. the reference: peers.sh vxlan-bridge (pod netns -> veth -> bridge -> kernel VXLAN ->
#      veth underlay, the path a pod takes, set up by hand);
#   2. weft: a plain 2-node `weft lab` (no password: the kernel fastpath carries pod traffic),
#      one iperf3 TCP stream pod -> pod across the nodes.
# The failover/failback gaps are measured by router/tests/e2e/fastpath.rs (run it with
# --nocapture to see them).
# Usage: bench/fastpath.sh [SECS=10] [ROUNDS=3]. Prints a markdown table for docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-10}
ROUNDS=${2:-3}
PEERS_SH=${PEERS_SH:-$(realpath ../shared/bench/peers.sh 2>/dev/null || true)}
ID=bfp
command -v iperf3 >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iperf3 >/dev/null; }
cargo build --release -q -p weft -p weft-cni --bins
BIN=./target/release/weft
trap '$BIN lab down --id $ID >/dev/null 2>&1 || true' EXIT

# shellcheck source=bench/lib.sh
. bench/lib.sh

ref=() weft=()
for r in $(seq "$ROUNDS"); do
  if [ -n "$PEERS_SH" ] && [ -x "$PEERS_SH" ]; then
    line=$(bash "$PEERS_SH" "$SECS" vxlan-bridge 2>/dev/null | grep vxlan-bridge || true)
    ref+=("$(echo "$line" | awk '{print $2}')")
  fi
  $BIN lab up --id $ID --nodes 2 --pods 1 --no-password >/dev/null
  a=weft-$ID-n1-p1; b=weft-$ID-n2-p1
  bip=$(ip -n "$b" -4 -o addr show eth0 | awk '{print $4}' | cut -d/ -f1)
  for _ in $(seq 50); do
    ip netns exec weft-$ID-n1 $BIN status connections 2>/dev/null | grep -q fastpath && break
    sleep 0.2
  done
  ip netns exec "$a" ping -c 3 -W 1 "$bip" >/dev/null
  weft+=("$(iperf "$b" "$a" "$bip" "$SECS")")
  path=$(ip netns exec weft-$ID-n1 $BIN status connections | awk '{print $5}')
  $BIN lab down --id $ID >/dev/null
  echo "round $r: vxlan-bridge ${ref[-1]:-n/a} Gbit/s, weft fastpath ${weft[-1]} Gbit/s (path: $path)" >&2
done
med() { printf '%s\n' "$@" | grep -v '^$' | sort -n | awk '{a[NR]=$1} END{ if (NR) print a[int((NR+1)/2)]; else print "n/a"}'; }
echo "| path (one TCP stream, ${SECS}s, median of $ROUNDS rounds) | Gbit/s | rounds |"
echo "|---|---|---|"
echo "| kernel pod->bridge->VXLAN reference (peers.sh vxlan-bridge) | $(med "${ref[@]}") | ${ref[*]:-} |"
echo "| weft fastpath, pod -> pod across 2 nodes | $(med "${weft[@]}") | ${weft[*]} |"
