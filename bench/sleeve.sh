#!/usr/bin/env bash
# Sleeve benchmarks, side by side with the peers of ../shared/bench/peers.sh
# in the same run. Needs root, iproute2, iperf3 (installed if missing).
#   1. the peers: veth underlay, boringtun, wireguard-go (one iperf3 TCP stream each);
#   2. weft: a 2-node `weft lab` with one pod per node, one iperf3 TCP stream pod -> pod
#      across the nodes over the sleeve, encrypted and plain; ping RTT pod -> pod against
#      the underlay RTT node -> node (the sleeve's added latency: mean, median, p90 of 200);
#   3. router RSS before and after a SUSTAIN-second encrypted stream.
# Usage: bench/sleeve.sh [SECS=10] [SUSTAIN=60] [PEERS="veth boringtun wireguard-go"]
# Prints a markdown table for docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-10}
SUSTAIN=${2:-60}
PEERS=${3:-"veth boringtun wireguard-go"}
PEERS_SH=${PEERS_SH:-$(realpath ../shared/bench/peers.sh 2>/dev/null || true)}
ID=bsl
command -v iperf3 >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iperf3 >/dev/null; }
cargo build --release -q -p weft -p weft-cni --bins
BIN=./target/release/weft
trap '$BIN lab down --id $ID >/dev/null 2>&1 || true' EXIT

peer_lines=""
if [ -n "$PEERS_SH" ] && [ -x "$PEERS_SH" ]; then
  # shellcheck disable=SC2086
  peer_lines=$(bash "$PEERS_SH" "$SECS" $PEERS 2>/dev/null || true)
else
  echo "peers.sh not found (set PEERS_SH): measuring weft only" >&2
fi

# shellcheck source=bench/lib.sh
. bench/lib.sh
rtt_us() { # $1 ns, $2 ip -> "avg p50 p90" RTT in µs over 200 pings, 20 ms apart
  ip netns exec "$1" ping -c 200 -i 0.02 -W 1 "$2" 2>/dev/null |
    sed -n 's/.*time=\([0-9.]*\) ms/\1/p' | sort -n |
    awk '{a[NR]=$1; s+=$1} END{printf "%.0f %.0f %.0f", s/NR*1000, a[int((NR+1)/2)]*1000, a[int(NR*0.9)]*1000}'
}
rss_mb() { awk '/VmRSS/{printf "%.1f", $2/1024}' /proc/"$1"/status; }

declare -A gbps rtt p50 p90
for mode in encrypted plain; do
  if [ $mode = plain ]; then pw=(--no-password); else pw=(); fi
  # --no-fastpath: a plain mesh would otherwise carry pod traffic over the kernel VXLAN path.
  $BIN lab up --id $ID --nodes 2 --pods 1 "${pw[@]}" -- --no-fastpath >/dev/null
  a=weft-$ID-n1-p1; b=weft-$ID-n2-p1
  bip=$(ip -n "$b" -4 -o addr show eth0 | awk '{print $4}' | cut -d/ -f1)
  ip netns exec "$a" ping -c 3 -W 1 "$bip" >/dev/null
  gbps[$mode]=$(iperf "$b" "$a" "$bip" "$SECS")
  read -r rtt[$mode] p50[$mode] p90[$mode] <<<"$(rtt_us "$a" "$bip")"
  if [ $mode = encrypted ]; then
    read -r under under50 under90 <<<"$(rtt_us weft-$ID-n1 10.201.0.12)"
    n1=$(pgrep -f "weft router .*--api-socket /run/weft-lab/$ID/n1" | head -1)
    n2=$(pgrep -f "weft router .*--api-socket /run/weft-lab/$ID/n2" | head -1)
    before="$(rss_mb "$n1") / $(rss_mb "$n2")"
    sustained=$(iperf "$b" "$a" "$bip" "$SUSTAIN")
    after="$(rss_mb "$n1") / $(rss_mb "$n2")"
  fi
  $BIN lab down --id $ID >/dev/null
done

echo
echo "One iperf3 TCP stream, ${SECS} s, same run, $(nproc) cores, kernel $(uname -r):"
echo
echo "| path | Gbit/s | ping RTT |"
echo "|---|---|---|"
while read -r name g _ _ r _; do
  [ -n "$name" ] && echo "| $name | $g | ${r} ms |"
done <<<"$peer_lines"
echo "| weft sleeve, encrypted (pod -> pod, 2 nodes) | ${gbps[encrypted]} | ${rtt[encrypted]} µs |"
echo "| weft sleeve, plain (pod -> pod, 2 nodes) | ${gbps[plain]} | ${rtt[plain]} µs |"
echo
echo "| measure | result |"
echo "|---|---|"
echo "| underlay RTT node -> node: mean / median / p90 | ${under} / ${under50} / ${under90} µs |"
echo "| sleeve RTT pod -> pod, encrypted: mean / median / p90 | ${rtt[encrypted]} / ${p50[encrypted]} / ${p90[encrypted]} µs |"
echo "| added by the sleeve: mean / median | $((rtt[encrypted] - under)) / $((p50[encrypted] - under50)) µs |"
echo "| router RSS n1 / n2 before a ${SUSTAIN} s stream (MB) | $before |"
echo "| router RSS n1 / n2 after it (MB) | $after (stream: ${sustained} Gbit/s) |"
