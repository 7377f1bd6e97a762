#!/usr/bin/env bash
# What the pod guard costs (the budget: under 5%), measured A/B in one run with one binary:
# a 2-node `weft lab` with two pods per node, one iperf3 TCP stream per path, alternating
# rounds with the guard in force and with its per-packet part taken out (the rules of
# `bridge weft-pods` flushed from its prerouting chain in both nodes; the router's periodic
# check re-writes the table only when it is gone, so the flush holds for the round and the
# next apply puts the rules back). The port lock (no learning, no flooding, pinned MAC) stays
# on in both: it has no per-packet cost. Paths:
#   same-node  pod -> bridge -> pod (the guard runs on the sender's port);
#   fastpath   pod -> bridge -> kernel VXLAN -> other node (plain mesh);
#   sleeve     pod -> bridge -> encrypted userspace sleeve -> other node (--no-fastpath).
# Usage: bench/pod-guard.sh [SECS=5] [ROUNDS=8]. Prints a markdown table: mean and standard
# deviation of ROUNDS streams per cell (single streams here vary by +-5%: many short rounds
# in ABBA order say more than a few long ones).
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-5}
ROUNDS=${2:-8}
ID=bpg
command -v iperf3 >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iperf3 >/dev/null; }
cargo build --release -q -p weft -p weft-cni --bins
BIN=./target/release/weft
trap '$BIN lab down --id $ID >/dev/null 2>&1 || true' EXIT

# shellcheck source=bench/lib.sh
. bench/lib.sh
mean() { printf '%s\n' "$@" | awk '$1+0 > 0 {s+=$1; n++} END{if (n) printf "%.2f", s/n; else print "fail"}'; }
sd() { printf '%s\n' "$@" | awk '$1+0 > 0 {s+=$1; q+=$1*$1; n++} END{if (n) {m=s/n; v=q/n-m*m; printf "%.2f", sqrt(v > 0 ? v : 0)} else print "-"}'; }
fails() { printf '%s\n' "$@" | grep -c fail || true; }
guard() { # on|off: the per-packet rules of bridge weft-pods in both nodes
  for n in 1 2; do
    if [ "$1" = off ]; then
      ip netns exec weft-$ID-n$n nft flush chain bridge weft-pods prerouting
    else
      # the router's own rules back: delete the table, its check re-writes it within 5 s
      ip netns exec weft-$ID-n$n nft delete table bridge weft-pods
    fi
  done
  if [ "$1" = on ]; then
    for _ in $(seq 100); do
      [ "$(in_force)" = yes ] && return 0
      sleep 0.1
    done
    echo "the router did not restore its pod guard" >&2
    exit 1
  fi
}
# The guard's CPU directly: the share of `perf record -a` samples in nf_tables' kernel code
# (nft_*) during one stream, guard in force against flushed; the difference is the rules'.
nft_share() { # $1 server ns, $2 client ns, $3 server ip -> "x.xx"
  command -v perf >/dev/null || { echo -; return; }
  ip netns exec "$1" timeout $((SECS + 15)) iperf3 -s -1 -p 5202 >/dev/null 2>&1 &
  sleep 0.5
  ip netns exec "$2" iperf3 -c "$3" -p 5202 -t "$SECS" >/dev/null 2>&1 &
  sleep 1
  perf record -q -a -o /tmp/weft-pod-guard.perf -- sleep $((SECS > 3 ? SECS - 2 : 1)) >/dev/null 2>&1
  wait || true
  perf report -i /tmp/weft-pod-guard.perf --sort sym --stdio 2>/dev/null |
    awk '/\[k\] (nft_|__nft_|nf_tables_)/ {gsub("%", "", $1); s += $1} END {printf "%.2f", s}'
  rm -f /tmp/weft-pod-guard.perf
}
in_force() { # -> yes when both nodes' prerouting chains hold the guard's rules
  for n in 1 2; do
    ip netns exec weft-$ID-n$n nft list chain bridge weft-pods prerouting 2>/dev/null |
      grep -q 'vmap @ports' || { echo no; return; }
  done
  echo yes
}

declare -A res cpu
for setup in plain encrypted; do
  if [ $setup = plain ]; then args=(--no-password); else args=(-- --no-fastpath); fi
  $BIN lab up --id $ID --nodes 2 --pods 2 "${args[@]}" >/dev/null
  a=weft-$ID-n1-p1; a2=weft-$ID-n1-p2; b=weft-$ID-n2-p1
  ip_of() { ip -n "$1" -4 -o addr show eth0 | awk '{print $4}' | cut -d/ -f1; }
  bip=$(ip_of "$b"); a2ip=$(ip_of "$a2")
  if [ $setup = plain ]; then
    for _ in $(seq 50); do
      ip netns exec weft-$ID-n1 $BIN status connections 2>/dev/null | grep -q fastpath && break
      sleep 0.2
    done
    paths="same-node fastpath"
  else
    paths="sleeve"
  fi
  ip netns exec "$a" ping -c 3 -W 1 "$bip" >/dev/null
  ip netns exec "$a" ping -c 3 -W 1 "$a2ip" >/dev/null
  for r in $(seq "$ROUNDS"); do
    # ABBA order: a drift over the run (heat, other load) does not favour either side
    if [ $((r % 2)) = 1 ]; then order="on off"; else order="off on"; fi
    for g in $order; do
      guard "$g"
      for p in $paths; do
        case $p in
          same-node) v=$(iperf "$a2" "$a" "$a2ip" "$SECS") ;;
          *) v=$(iperf "$b" "$a" "$bip" "$SECS") ;;
        esac
        # the guard must have stayed as set for the whole round
        [ "$(in_force)" = "$([ "$g" = on ] && echo yes || echo no)" ] || v=fail
        res[$p,$g]="${res[$p,$g]:-} $v"
      done
    done
  done
  for g in on off; do
    guard "$g"
    for p in $paths; do
      case $p in
        same-node) cpu[$p,$g]=$(nft_share "$a2" "$a" "$a2ip") ;;
        *) cpu[$p,$g]=$(nft_share "$b" "$a" "$bip") ;;
      esac
    done
  done
  guard on
  $BIN lab down --id $ID >/dev/null
done

echo "| path | guard in force (Gbit/s, mean +- sd) | guard rules flushed (Gbit/s, mean +- sd) | throughput cost | failed rounds | CPU in nf_tables, in force / flushed (% of all samples) |"
echo "|---|---|---|---|---|---|"
for p in same-node fastpath sleeve; do
  # shellcheck disable=SC2086
  on=$(mean ${res[$p,on]})
  # shellcheck disable=SC2086
  off=$(mean ${res[$p,off]})
  cost=$(awk -v a="$on" -v b="$off" 'BEGIN{ if (b+0 > 0) printf "%.1f%%", (b-a)/b*100; else print "n/a" }')
  # shellcheck disable=SC2086
  echo "| $p | $on +- $(sd ${res[$p,on]}) | $off +- $(sd ${res[$p,off]}) | $cost | $(($(fails ${res[$p,on]}) + $(fails ${res[$p,off]}))) | ${cpu[$p,on]} / ${cpu[$p,off]} |"
done
