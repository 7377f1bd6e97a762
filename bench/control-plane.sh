#!/usr/bin/env bash
# Control-plane benchmarks. Needs root and iproute2.
#   1. time for a 3-node `weft lab` mesh to be fully established after the routers start
#      (as printed by `weft lab up`), over RUNS runs;
#   2. router RSS after IDLE seconds idle in a 3-node mesh (VmRSS of each router);
#   3. the 1,000-peer simulation (virtual time), for SEEDS seeds.
# Usage: bench/control-plane.sh [RUNS=5] [IDLE=60] [SEEDS="1 2 3"]
# Prints a markdown table for docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-5}
IDLE=${2:-60}
SEEDS=${3:-"1 2 3"}
ID=bench
cargo build --release -q -p weft -p weft-cni -p weft-gossip --examples --bins
BIN=./target/release/weft
trap '$BIN lab down --id $ID >/dev/null 2>&1 || true' EXIT

times=()
for r in $(seq "$RUNS"); do
  out=$($BIN lab up --id $ID --nodes 3)
  t=$(sed -n 's/^mesh of 3 nodes established in \([0-9.]*\) s.*/\1/p' <<<"$out")
  times+=("$t")
  if [ "$r" -lt "$RUNS" ]; then $BIN lab down --id $ID >/dev/null; fi
done
echo "waiting ${IDLE}s idle..." >&2
sleep "$IDLE"
rss=()
for pid in $(pgrep -f "weft router .*--api-socket /run/weft-lab/$ID/"); do
  rss+=("$(awk '/VmRSS/{printf "%.1f", $2/1024}' /proc/"$pid"/status)")
done
n1=$(pgrep -f "weft router .*--api-socket /run/weft-lab/$ID/n1" | head -1)
# utime + stime in clock ticks (fields 14 and 15 of /proc/PID/stat)
cpu=$(awk -v hz="$(getconf CLK_TCK)" '{printf "%.2f s", ($14+$15)/hz}' /proc/"$n1"/stat)
$BIN lab down --id $ID >/dev/null

echo
echo "| measure | result |"
echo "|---|---|"
echo "| 3-node lab mesh established (s, $RUNS runs) | $(IFS=' '; echo "${times[*]}") |"
echo "| router RSS after ${IDLE} s idle, 3-node mesh (MB, each router) | $(IFS=' '; echo "${rss[*]}") |"
echo "| router n1 CPU time, start + ${IDLE} s idle | $cpu |"
for s in $SEEDS; do
  start=$(date +%s)
  line=$(./target/release/examples/simulate --peers 1000 --seed "$s")
  echo "| simulate --peers 1000 --seed $s (wall $(( $(date +%s) - start )) s) | \`$line\` |"
done
