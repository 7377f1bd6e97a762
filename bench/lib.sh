# shellcheck shell=bash
# Shared by the bench scripts (sourced).

# One iperf3 TCP stream from namespace $2 to a one-shot server in $1 -> Gbit/s ("fail").
iperf() { # $1 server ns, $2 client ns, $3 server ip, $4 seconds -> Gbit/s
  ip netns exec "$1" timeout $(($4 + 15)) iperf3 -s -1 -p 5201 >/dev/null 2>&1 &
  sleep 0.5
  ip netns exec "$2" iperf3 -c "$3" -p 5201 -t "$4" -J 2>/dev/null | python3 -c 'import json,sys
try: print("%.2f" % (json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/1e9))
except Exception: print("fail")'
  wait || true
}
