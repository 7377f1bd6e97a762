#!/usr/bin/env bash
# Where a sleeve round trip spends its time (added latency at low load).
# A 2-node encrypted `weft lab` (--no-fastpath, one pod per node); a pod on n1 pings the pod on
# n2 COUNT times, INTERVAL apart, while tcpdump records the frames with kernel timestamps on
# both nodes' TAP and underlay interfaces. Each round trip crosses eight capture points:
#   n1 TAP out (frame handed to the sleeve)  -> n1 eth0 out (datagram sent)
#   -> n2 eth0 in -> n2 TAP in (frame written) -> n2 TAP out (pod's reply) -> n2 eth0 out
#   -> n1 eth0 in -> n1 TAP in (reply written to n1's TAP).
# The script prints the median, mean and p90 of each stage, the ping RTT pod -> pod and the
# underlay RTT node -> node. Stages "n1 send", "n2 receive", "n2 reply sent" and "n1 receive"
# are the sleeve's own (thread wake-up, syscalls, crypto); the rest is the kernel.
# Needs root, iproute2, tcpdump (installed if missing).
# Usage: bench/sleeve-latency.sh [COUNT=200] [INTERVAL=0.02]
set -euo pipefail
cd "$(dirname "$0")/.."
COUNT=${1:-200}
INTERVAL=${2:-0.02}
ID=bsll
command -v tcpdump >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq tcpdump >/dev/null; }
cargo build --release -q -p weft -p weft-cni --bins
BIN=./target/release/weft
DIR=$(mktemp -d /tmp/weft-latency.XXXXXX)
cleanup() {
  pkill -f "tcpdump .*$DIR" 2>/dev/null || true
  $BIN lab down --id $ID >/dev/null 2>&1 || true
  rm -rf "$DIR"
}
trap cleanup EXIT

rtt() { # $1 ns, $2 ip -> "mean p50 p90" in µs
  ip netns exec "$1" ping -c "$COUNT" -i "$INTERVAL" -W 1 "$2" 2>/dev/null |
    sed -n 's/.*time=\([0-9.]*\) ms/\1/p' | sort -n |
    awk '{a[NR]=$1; s+=$1} END{printf "%.0f %.0f %.0f", s/NR*1000, a[int((NR+1)/2)]*1000, a[int(NR*0.9)]*1000}'
}

$BIN lab up --id $ID --nodes 2 --pods 1 -- --no-fastpath >/dev/null
a=weft-$ID-n1-p1; b=weft-$ID-n2-p1
bip=$(ip -n "$b" -4 -o addr show eth0 | awk '{print $4}' | cut -d/ -f1)
n2ip=$(ip -n weft-$ID-n2 -4 -o addr show eth0 | awk '{print $4}' | cut -d/ -f1)
ip netns exec "$a" ping -c 3 -W 1 "$bip" >/dev/null

read -r under_mean under_p50 under_p90 <<<"$(rtt weft-$ID-n1 "$n2ip")"

for n in n1 n2; do
  for dev in eth0 weft-tap; do
    ip netns exec weft-$ID-$n tcpdump -i $dev -nn -Q inout --time-stamp-precision=nano \
      -w "$DIR/$n-$dev.pcap" "icmp or udp port 6784" 2>/dev/null &
  done
done
sleep 1.5
read -r pod_mean pod_p50 pod_p90 <<<"$(rtt "$a" "$bip")"
sleep 0.5
pkill -INT -f "tcpdump .*$DIR" || true
sleep 0.5

for f in "$DIR"/*.pcap; do
  tag=$(basename "$f" .pcap)
  tcpdump -r "$f" -nn -tt --time-stamp-precision=nano 2>/dev/null |
    awk -v t="$tag" '
      / ICMP echo request/ { print $1, t, "req"; next }
      / ICMP echo reply/   { print $1, t, "rep"; next }
      /\.6784 > /         { print $1, t, "udp" }'
done | sort -n >"$DIR/events"

python3 - "$DIR/events" <<'EOF'
import statistics as st, sys
order = [("n1-weft-tap", "req"), ("n1-eth0", "udp"), ("n2-eth0", "udp"), ("n2-weft-tap", "req"),
         ("n2-weft-tap", "rep"), ("n2-eth0", "udp"), ("n1-eth0", "udp"), ("n1-weft-tap", "rep")]
names = ["n1 send: TAP -> wire (sleeve)", "underlay n1 -> n2", "n2 receive: wire -> TAP (sleeve)",
         "pod on n2 answers (kernel)", "n2 reply sent: TAP -> wire (sleeve)", "underlay n2 -> n1",
         "n1 receive: wire -> TAP (sleeve)"]
ev = [l.split() for l in open(sys.argv[1])]
cycles, cur = [], []
for t, tag, kind in ev:
    step = order[len(cur)] if len(cur) < 8 else None
    if (tag, kind) == order[0]:
        cur = [float(t)]
    elif cur and step == (tag, kind):
        cur.append(float(t))
        if len(cur) == 8:
            cycles.append(cur)
            cur = []
if not cycles:
    sys.exit("no complete round trip captured")
print(f"{len(cycles)} round trips captured\n")
print("| stage | median µs | mean µs | p90 µs |")
print("|---|---|---|---|")
own = 0.0
for i, name in enumerate(names):
    d = sorted((c[i + 1] - c[i]) * 1e6 for c in cycles)
    med = st.median(d)
    if "(sleeve)" in name:
        own += med
    print(f"| {name} | {med:.1f} | {st.mean(d):.1f} | {d[int(len(d) * 0.9)]:.1f} |")
tot = sorted((c[7] - c[0]) * 1e6 for c in cycles)
print(f"| n1 TAP -> n1 TAP, whole | {st.median(tot):.1f} | {st.mean(tot):.1f} | {tot[int(len(tot) * 0.9)]:.1f} |")
print(f"\nsum of the sleeve's own stages (medians): {own:.0f} µs")
EOF
echo
echo "ping pod -> pod (with the capture running): mean / median / p90 = $pod_mean / $pod_p50 / $pod_p90 µs"
echo "ping node -> node underlay (before it):     mean / median / p90 = $under_mean / $under_p50 / $under_p90 µs"
echo "$COUNT pings ${INTERVAL}s apart, $(nproc) cores, kernel $(uname -r)"
