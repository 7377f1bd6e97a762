#!/usr/bin/env bash
# How long pod traffic to another node stops while a router restarts (upgrades).
# A 2-node `weft lab` with one pod per node; a pod on n1 pings the pod on n2 every 10 ms
# while n1's router gets SIGTERM and the same command is started again as soon as the old
# process has exited (a rolling upgrade without the kubelet's part). Prints, per round, how
# long the router took to exit and the longest gap between replies. Both data paths: an
# encrypted mesh (the sleeve; this kernel has no ESP) and a plain one (the kernel fastpath).
# Needs root and iproute2.
# Usage: bench/restart-pause.sh [ROUNDS=3]
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
ID=brp
cargo build --release -q -p weft -p weft-cni --bins
BIN=./target/release/weft
trap '$BIN lab down --id $ID >/dev/null 2>&1 || true' EXIT

# The old process counts as gone once it is a zombie: it has closed everything by then, and
# who reaps it (here PID 1 of the machine, which can take a second) is not the router's part.
exited() { [ ! -e "/proc/$1" ] || [ "$(awk '/^State/{print $2}' "/proc/$1/status" 2>/dev/null)" = Z ]; }

round() { # $1 mode -> "exit_s gap_s"
  local pid cmd bip t0 t1 log
  pid=$(pgrep -f "weft router .*--api-socket /run/weft-lab/$ID/n1.sock")
  cmd=$(tr '\0' ' ' <"/proc/$pid/cmdline")
  bip=$(ip -n "weft-$ID-n2-p1" -4 -o addr show eth0 | awk '{print $4}' | cut -d/ -f1)
  log=$(mktemp)
  ip netns exec "weft-$ID-n1-p1" ping -D -i 0.01 -c 500 -W 1 "$bip" >"$log" 2>&1 &
  local ping=$!
  sleep 1
  t0=$(date +%s.%N)
  kill "$pid"
  while ! exited "$pid"; do sleep 0.005; done
  t1=$(date +%s.%N)
  # shellcheck disable=SC2086
  ip netns exec "weft-$ID-n1" setsid $cmd >>"/run/weft-lab/$ID/n1.log" 2>&1 </dev/null &
  wait "$ping" || true
  python3 - "$t0" "$t1" "$log" <<'EOF'
import re, sys
t0, t1, log = float(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
ts = [float(m.group(1)) for m in (re.search(r"\[(\d+\.\d+)\].*icmp_seq=", l) for l in open(log)) if m]
gap = max(b - a for a, b in zip(ts, ts[1:]))
print(f"{t1 - t0:.3f} {gap:.3f} {len(ts)}")
EOF
  rm -f "$log"
}

echo "| data path | round | router exit (s) | longest reply gap (s) | replies of 500 |"
echo "|---|---|---|---|---|"
for mode in sleeve fastpath; do
  if [ $mode = fastpath ]; then pw=(--no-password); else pw=(); fi
  $BIN lab up --id $ID --nodes 2 --pods 1 "${pw[@]}" >/dev/null
  for _ in $(seq 50); do
    ip netns exec weft-$ID-n1 $BIN status connections 2>/dev/null | grep -q " $mode " && break
    sleep 0.2
  done
  for r in $(seq "$ROUNDS"); do
    read -r ex gap n <<<"$(round $mode)"
    echo "| $mode | $r | $ex | $gap | $n |"
    sleep 3 # back on its path (the fastpath needs 2 s of heartbeats)
  done
  $BIN lab down --id $ID >/dev/null
done
echo
echo "$(nproc) cores, kernel $(uname -r), $(date -u +%F)"
