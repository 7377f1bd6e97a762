# shellcheck shell=bash
# weft's own tests on the cluster, after the upstream suites: what an operator does to a
# running weft (rolling update, deleting a router pod, losing a node, the Secret missing,
# a wrong password on one node, a NetworkPolicy) and faults around it (the API server
# restarted, etcd unavailable, a kubelet stopped, components started in the wrong order).
# Each check drives the real cluster and measures; the results go to $STATE/checks/ and a
# table to $STATE/checks/summary.md. Sourced by scripts/k8s-cluster.sh.
#
#   test --checks LIST   only these checks (comma separated names, see CHECKS below)
#   test --no-checks     none
#
# Probes run inside pods, as the pods' own command (so that they keep running while the
# API server is away), and print one line per attempt: "<epoch ms> ok|fail". The nodes
# share this machine's clock, so the harness compares those times with its own.

CHECK_NS=weft-checks
CHECKS=(policy_within_a_second rolling_update delete_router_pod secret_missing
  wrong_password apiserver_restart etcd_unavailable kubelet_restart wrong_start_order node_deleted)
# and relay_path in the segments topology (first)
CHECK_TAG=0

now_ms() { date +%s%3N; }

# --- pods --------------------------------------------------------------------------------
# pod NAME NODE LABEL CMD...: an agnhost-image pod on NODE running CMD (bash -c if one
# string), waits until it runs.
pod() {
  local name=$1 node=$2 label=$3
  shift 3
  # One JSON string per argument (not `jq --args`: jq 1.6 takes a "-c" among them for its
  # own option).
  local args a
  args=$(for a in "$@"; do jq -n --arg a "$a" '$a'; done | jq -sc .)
  kc -n "$CHECK_NS" apply -f - >/dev/null <<EOF
{"apiVersion": "v1", "kind": "Pod",
 "metadata": {"name": "$name", "labels": {"check": "$label"}},
 "spec": {"nodeName": "$node", "terminationGracePeriodSeconds": 1, "restartPolicy": "Never",
   "containers": [{"name": "c", "image": "$AGNHOST_IMAGE", "command": $args}]}}
EOF
  kc -n "$CHECK_NS" wait --for=condition=Ready "pod/$name" --timeout=120s >/dev/null
}

pod_ip() { kc -n "$CHECK_NS" get pod "$1" -o jsonpath='{.status.podIP}'; }

# A server on NODE: HTTP on 8080 (agnhost netexec), iperf (TCP) on 5001.
server() {
  pod "$1" "$2" server /bin/sh -c 'iperf -s -p 5001 >/dev/null 2>&1 & exec /agnhost netexec --http-port=8080'
}

# prober NAME NODE URL: HTTP GET every 100 ms (300 ms limit each), one line per attempt.
prober() {
  # shellcheck disable=SC2016 # the probe loop is the pod's script
  pod "$1" "$2" prober /bin/bash -c \
    'while :; do t=$(date +%s%3N); if curl -s -o /dev/null --max-time 0.3 "$0"; then echo "$t ok"; else echo "$t fail"; fi; sleep 0.1; done' "$3"
}

# probe_log POD: the probe lines so far (a copy stays in $STATE/checks/POD.probe).
probe_log() { kc -n "$CHECK_NS" logs "$1" | tee "$STATE/checks/$1.probe"; }

# longest_gap LOG FROM_MS TO_MS: the longest time (ms) without a successful probe in the
# window, and whether the last probe in it succeeded.
longest_gap() {
  awk -v from="$2" -v to="$3" '
    $1 < from { if ($2 == "ok") last = $1; next }
    $1 > to { exit }
    { if (last == "") last = from
      if ($2 == "ok") { if ($1 - last > gap) gap = $1 - last; last = $1; ok = 1 } else ok = 0
      lastt = $1 }
    END { if (last != "" && lastt - last > gap) gap = lastt - last; printf "%d %s\n", gap, (ok ? "ok" : "fail") }' <<<"$1"
}

weft_pods() { kc -n weft get pods -l app.kubernetes.io/name=weft -o name; }
weft_pod_on() { kc -n weft get pods -l app.kubernetes.io/name=weft --field-selector "spec.nodeName=$1" -o name; }
weft_status_on() { kc -n weft exec "$(weft_pod_on "$1")" -c weft -- weft status --json; }
weft_restarts() { kc -n weft get pods -l app.kubernetes.io/name=weft -o jsonpath='{range .items[*]}{.status.containerStatuses[0].restartCount}{" "}{end}'; }
weft_all_ready() {
  [ "$(kc -n weft get ds weft -o jsonpath='{.status.numberReady}')" = "${#NODES[@]}" ]
}

# Record a result: check_result NAME pass|FAIL DETAILS...
check_result() {
  local name=$1 res=$2
  shift 2
  printf '| %s | %s | %s |\n' "$name" "$res" "$*" >> "$STATE/checks/summary.md"
  log "check $name: $res: $*"
  [ "$res" = pass ]
}

# --- the checks --------------------------------------------------------------------------

# A NetworkPolicy created through the API is enforced within a second, on another node than
# the client's; deleting it opens the way again within a second.
check_policy_within_a_second() {
  server pw-srv w2
  prober pw-probe w1 "http://$(pod_ip pw-srv):8080/hostname"
  sleep 2
  local t0 t1 t2 log deny_ms open_ms
  t0=$(now_ms)
  kc -n "$CHECK_NS" apply -f - >/dev/null <<EOF
{"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
 "metadata": {"name": "pw-deny"},
 "spec": {"podSelector": {"matchLabels": {"check": "server"}}, "policyTypes": ["Ingress"]}}
EOF
  t1=$(now_ms)
  sleep 4
  t2=$(now_ms)
  kc -n "$CHECK_NS" delete networkpolicy pw-deny >/dev/null
  local t3
  t3=$(now_ms)
  sleep 4
  log=$(probe_log pw-probe)
  # Enforced: the first failing probe after the create, with no success after it (before
  # the delete). Opened: the first success after the delete.
  deny_ms=$(awk -v a="$t0" -v b="$t2" '$1 >= a && $1 < b { if ($2 == "fail") { if (f == "") f = $1 } else f = "" } END { print (f == "" ? -1 : f - a) }' <<<"$log")
  open_ms=$(awk -v a="$t2" '$1 >= a && $2 == "ok" { print $1 - a; exit }' <<<"$log")
  kc -n "$CHECK_NS" delete pod pw-srv pw-probe --now >/dev/null
  if [ "$deny_ms" -ge 0 ] && [ "$deny_ms" -le 1000 ] && [ -n "$open_ms" ] && [ "$open_ms" -le 1000 ]; then
    check_result policy_within_a_second pass "deny enforced ${deny_ms} ms after the create was sent (API call took $((t1 - t0)) ms); open again ${open_ms} ms after the delete (API call $((t3 - t2)) ms); probes every 100 ms"
  else
    check_result policy_within_a_second FAIL "deny after ${deny_ms} ms (-1: never), open after ${open_ms:-never} ms"
  fi
}

# A rolling update of the DaemonSet (a WEFT_* variable changed) while a TCP stream runs
# from a pod on w1 to a pod on w2: the one connection survives; the longest stall is
# measured at the receiver (iperf 2 reports the bytes received every 0.1 s).
check_rolling_update() {
  pod ru-srv w2 server /bin/sh -c 'exec iperf -s -p 5001 -i 0.1 -f k'
  local ip
  ip=$(pod_ip ru-srv)
  # 20 Mbit/s in 16 KB writes; the connection must last throughout.
  pod ru-cli w1 stream /bin/sh -c "exec iperf -c $ip -p 5001 -t 3600 -b 20M -l 16K -f k"
  sleep 3
  local t0 limit
  limit=$(kc -n weft get ds weft -o json | jq -r '.spec.template.spec.containers[] | select(.name == "weft") | .env[] | select(.name == "WEFT_CONN_LIMIT") | .value')
  t0=$SECONDS
  kc -n weft set env ds/weft WEFT_CONN_LIMIT=$(( limit + 1 )) >/dev/null
  kc -n weft rollout status ds/weft --timeout=300s >/dev/null
  local rollout=$(( SECONDS - t0 ))
  sleep 5
  local log phase
  log=$(kc -n "$CHECK_NS" logs ru-srv | tee "$STATE/checks/ru-srv.iperf")
  phase=$(kc -n "$CHECK_NS" get pod ru-cli -o jsonpath='{.status.phase}')
  # Interval lines "[  1] 0.1000-0.2000 sec  256 KBytes  20971 Kbits/sec": the longest time
  # between the end of one interval that received bytes and the start of the next that did
  # (empty intervals and missing ones count), the number of intervals, the connections.
  local stall intervals conns
  read -r stall intervals < <(awk '/ sec / && /KBytes/ {
      split($3, iv, "-"); s = iv[1] + 0; e = iv[2] + 0
      for (i = 1; i <= NF; i++) if ($i == "KBytes") b = $(i-1) + 0
      n++
      if (b > 0) { if (have && s - last > m) m = s - last; last = e; have = 1 } }
      END { printf "%.1f %d\n", m, n }' <<<"$log")
  conns=$(grep -c 'connected with' <<<"$log" || true)
  kc -n "$CHECK_NS" delete pod ru-srv ru-cli --now >/dev/null
  # Back to the manifest's value (another rolling update, not measured).
  kc -n weft set env ds/weft WEFT_CONN_LIMIT="$limit" >/dev/null
  kc -n weft rollout status ds/weft --timeout=300s >/dev/null
  wait_for 120 "mesh complete again" mesh_complete
  if [ "$phase" = Running ] && [ "$conns" = 1 ] && [ "${intervals:-0}" -gt $(( rollout * 10 )) ]; then
    check_result rolling_update pass "one TCP connection w1->w2 (iperf, 20 Mbit/s) carried on through the rollout of ${#NODES[@]} routers (WEFT_CONN_LIMIT $limit -> $(( limit + 1 )), ${rollout}s); longest stall at the receiver ${stall}s (0.1 s resolution)"
  else
    check_result rolling_update FAIL "client pod $phase after the rollout, $conns connection(s), $intervals intervals of 0.1 s; longest stall ${stall:-?}s; log: $(tail -n 2 <<<"$log" | tr '\n' ' ')"
  fi
}

# kubectl delete pod of one router: the DaemonSet replaces it; pods on its node reach pods
# on another node again once it is ready.
check_delete_router_pod() {
  server dr-srv w2
  prober dr-probe w1 "http://$(pod_ip dr-srv):8080/hostname"
  sleep 2
  local t0 tready old
  old=$(weft_pod_on w1)
  t0=$(now_ms)
  kc -n weft delete "$old" --wait=false >/dev/null
  wait_for 120 "the router pod on w1 replaced and ready" sh -c "[ \"\$($BIN/kubectl --kubeconfig $STATE/admin.kubeconfig -n weft get pods -l app.kubernetes.io/name=weft --field-selector spec.nodeName=w1 -o jsonpath='{.items[0].metadata.name}{.items[0].status.containerStatuses[0].ready}')\" != \"${old#pod/}true\" ] && [ \"\$($BIN/kubectl --kubeconfig $STATE/admin.kubeconfig -n weft get pods -l app.kubernetes.io/name=weft --field-selector spec.nodeName=w1 -o jsonpath='{.items[0].status.containerStatuses[0].ready}')\" = true ]"
  tready=$(now_ms)
  sleep 3
  local gap last
  read -r gap last < <(longest_gap "$(probe_log dr-probe)" "$t0" "$(now_ms)")
  kc -n "$CHECK_NS" delete pod dr-srv dr-probe --now >/dev/null
  if [ "$last" = ok ]; then
    check_result delete_router_pod pass "new router ready $(( (tready - t0) / 1000 ))s after the delete; pod traffic w1->w2 paused at most ${gap} ms"
  else
    check_result delete_router_pod FAIL "pod traffic w1->w2 not back (longest gap ${gap} ms)"
  fi
}

# The password Secret missing: routers (restarted) wait, not ready, and say why in their
# status, their log and kubectl describe; created, the Secret is picked up without a restart.
check_secret_missing() {
  local pw
  pw=$(kc -n weft get secret weft-password -o jsonpath='{.data.password}' | base64 -d)
  kc -n weft delete secret weft-password >/dev/null
  kc -n weft delete pod -l app.kubernetes.io/name=weft >/dev/null
  wait_for 120 "routers restarted without a password" sh -c "[ \"\$($BIN/kubectl --kubeconfig $STATE/admin.kubeconfig -n weft get pods -l app.kubernetes.io/name=weft -o jsonpath='{range .items[*]}{.status.phase}{end}')\" = RunningRunningRunning ]"
  sleep 5
  local st describe logs restarts
  st=$(weft_status_on w1 | jq -r '.not_ready // "ready"')
  logs=$(kc -n weft logs "$(weft_pod_on w1)" -c weft | grep -c 'network password' || true)
  describe=$(kc -n weft describe "$(weft_pod_on w1)" | grep -m1 'Readiness probe failed' || true)
  restarts=$(weft_restarts)
  local t0
  t0=$SECONDS
  kc -n weft create secret generic weft-password --from-literal=password="$pw" >/dev/null
  wait_for 180 "every router ready after the Secret was created" weft_all_ready
  local took=$(( SECONDS - t0 ))
  wait_for 60 "mesh complete again" mesh_complete
  if [[ $st == *"waiting for the network password"* ]] && [ "$logs" -gt 0 ] && [ "$(weft_restarts)" = "$restarts" ]; then
    check_result secret_missing pass "without the Secret: not ready, status \"${st:0:90}\", $logs log lines, describe: \"${describe:0:120}\"; Secret created: all ready after ${took}s, no restart"
  else
    check_result secret_missing FAIL "status \"$st\", log lines $logs, restarts $restarts -> $(weft_restarts)"
  fi
}

# One node given the wrong password (a second DaemonSet with another Secret runs its
# router): refused by the others, the reason in their status and in kubectl describe of its
# pod; back to the right password, it joins again.
check_wrong_password() {
  local n=w2
  kc label node "$n" weft-k8s-check/password=wrong --overwrite >/dev/null
  # The manifest's DaemonSet leaves that node...
  kc -n weft patch ds weft --type=merge -p '{"spec":{"template":{"spec":{"affinity":{"nodeAffinity":{"requiredDuringSchedulingIgnoredDuringExecution":{"nodeSelectorTerms":[{"matchExpressions":[{"key":"weft-k8s-check/password","operator":"DoesNotExist"}]}]}}}}}}}' >/dev/null
  wait_for 120 "the manifest's router gone from $n" sh -c "[ -z \"\$($BIN/kubectl --kubeconfig $STATE/admin.kubeconfig -n weft get pods -l app.kubernetes.io/component=router --field-selector spec.nodeName=$n -o name)\" ]"
  # ...and a copy of it with another Secret runs there.
  kc -n weft create secret generic weft-password-wrong --from-literal=password="$(head -c 32 /dev/urandom | base64)" >/dev/null
  kc -n weft get ds weft -o json | jq '
      .metadata = {name: "weft-wrong", namespace: "weft"}
      | .spec.selector.matchLabels["app.kubernetes.io/component"] = "router-wrong"
      | .spec.template.metadata.labels["app.kubernetes.io/component"] = "router-wrong"
      | .spec.template.spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions[0] = {key: "weft-k8s-check/password", operator: "Exists"}
      | (.spec.template.spec.volumes[] | select(.name == "password") | .secret.secretName) = "weft-password-wrong"
      | del(.status)' | kc apply -f - >/dev/null
  kc -n weft rollout status ds/weft --timeout=300s >/dev/null
  local wpod
  wait_for 120 "the wrong-password router on $n running" sh -c "$BIN/kubectl --kubeconfig $STATE/admin.kubeconfig -n weft get pods -l app.kubernetes.io/component=router-wrong -o jsonpath='{.items[0].status.phase}' | grep -q Running"
  wpod=$(kc -n weft get pods -l app.kubernetes.io/component=router-wrong -o name)
  sleep 15
  local reason not_ready describe
  reason=$(weft_status_on cp | jq -r --arg ip "${NODE_IP[$n]}" '[.connections[] | select(.address | startswith($ip + ":")) | .reason // empty] | first // ""')
  not_ready=$(kc -n weft exec "$wpod" -c weft -- weft status --json | jq -r '.not_ready // "ready"')
  describe=$(kc -n weft describe "$wpod" | grep -m1 -A1 'Readiness probe failed' | tr -s ' \n' ' ' || true)
  # Undo: the copy goes, the manifest's DaemonSet runs everywhere again.
  kc -n weft delete ds weft-wrong --wait=true >/dev/null
  kc -n weft delete secret weft-password-wrong >/dev/null
  kc -n weft patch ds weft --type=json -p '[{"op":"remove","path":"/spec/template/spec/affinity"}]' >/dev/null
  kc label node "$n" weft-k8s-check/password- >/dev/null
  kc -n weft rollout status ds/weft --timeout=300s >/dev/null
  wait_for 120 "mesh complete again" mesh_complete
  if [[ $reason == *"wrong network password"* ]] && [[ $not_ready != ready ]] && [[ $describe == *password* ]]; then
    check_result wrong_password pass "cp's status for $n: \"${reason:0:100}\"; $n: not ready: \"${not_ready:0:100}\"; describe: \"${describe:0:140}\""
  else
    check_result wrong_password FAIL "cp's status for $n: \"$reason\"; $n: \"$not_ready\"; describe: \"$describe\""
  fi
}

# stop_for NODE COMPONENT SECONDS: a component stopped for a while, then started again
# with the same command line. Halfway, what the API server answers this machine's kubectl
# is recorded in $STATE/checks/FAULT_NAME.api (proof that the fault was real).
stop_for() {
  stop "$1" "$2"
  sleep $(( $3 / 2 ))
  { timeout 10 "$BIN/kubectl" --kubeconfig "$STATE/admin.kubeconfig" --request-timeout=5s get --raw /readyz 2>&1 \
      || true; } | tail -n 1 | cut -c1-160 > "$STATE/checks/${FAULT_NAME:-fault}.api"
  sleep $(( $3 - $3 / 2 ))
  restart "$1" "$2"
}

# status_sampler NODE FILE: NODE's router status (from inside the node: no API server
# needed) every second, one JSON line each, until killed.
status_sampler() {
  while :; do
    on "$1" curl -s --max-time 1 http://127.0.0.1:6784/status.json 2>/dev/null \
      | jq -c --arg t "$(now_ms)" '{t: ($t | tonumber), connected: .kube.connected, synced: .kube.synced,
          error: (.kube.last_error // "" | sub("^[a-z]+: "; "") | .[0:90]), not_ready: (.not_ready // "" | .[0:110])}' >> "$2" 2>/dev/null || true
    sleep 1
  done
}

# status_story FILE: the distinct states FILE went through, in order, with how many
# samples each: "connected synced (N)" or "NOT connected: <error> (N)" ...
status_story() {
  jq -rs '[.[] | "\(if .connected then "connected" else "NOT connected" end), \(if .synced then "synced" else "not synced" end)\(if .connected then "" else ": " + .error end)\(if .not_ready != "" then "; not ready: " + .not_ready else "" end)"]
    | reduce .[] as $s ([]; if length > 0 and .[-1].s == $s then .[-1].n += 1 else . + [{s: $s, n: 1}] end)
    | map("\(.s) (\(.n) s)") | join(" -> ")' "$1"
}

# fault_check NAME DESCRIPTION ACTION...: pod traffic w1->w2 keeps flowing through ACTION
# (no gap of 2 s or more; FAULT_MAX_GAP_MS changes that, for faults that restart a router
# on purpose); afterwards the routers are connected and synced again without a restart
# (other than ACTION's own); what w1's router said meanwhile (sampled every second) is
# recorded, and with FAULT_EXPECT_DISCONNECT=1 it must have said that it lost the API.
fault_check() {
  local name=$1 what=$2 max_gap=${FAULT_MAX_GAP_MS:-2000} own_restart=${FAULT_RESTARTS_ROUTER:-0}
  local expect_disconnect=${FAULT_EXPECT_DISCONNECT:-0}
  shift 2
  server "f-srv-$CHECK_TAG" w2
  prober "f-probe-$CHECK_TAG" w1 "http://$(pod_ip "f-srv-$CHECK_TAG"):8080/hostname"
  sleep 2
  local restarts t0 story samples=$STATE/checks/$name.status
  restarts=$(weft_restarts)
  rm -f "$samples"
  FAULT_NAME=$name
  rm -f "$STATE/checks/$name.api"
  status_sampler w1 "$samples" &
  local sampler=$!
  t0=$(now_ms)
  "$@"
  wait_for 180 "API reachable again" kc get --raw /readyz
  local tapi=$SECONDS
  # The routers retry the API with client-go's backoff (0.8 s doubling to 30 s, plus
  # jitter), so they may take that long after the API server answers again.
  wait_for 120 "every router's Kubernetes caches synced again" routers_synced
  local resync=$(( SECONDS - tapi ))
  kill "$sampler" 2>/dev/null || true
  wait "$sampler" 2>/dev/null || true
  story=$(status_story "$samples" 2>/dev/null || echo '?')
  local api=""
  [ -s "$STATE/checks/$name.api" ] && api="; meanwhile kubectl got: \"$(cat "$STATE/checks/$name.api")\""
  local gap last
  read -r gap last < <(longest_gap "$(probe_log "f-probe-$CHECK_TAG")" "$t0" "$(now_ms)")
  kc -n "$CHECK_NS" delete pod "f-srv-$CHECK_TAG" "f-probe-$CHECK_TAG" --now >/dev/null
  CHECK_TAG=$(( CHECK_TAG + 1 ))
  local restarted=no said=yes
  [ "$(weft_restarts)" = "$restarts" ] || restarted=yes
  if [ "$expect_disconnect" = 1 ] && ! jq -se 'any(.[]; .connected == false and .error != "")' "$samples" >/dev/null 2>&1; then
    said=no
  fi
  if [ "$last" = ok ] && [ "$gap" -lt "$max_gap" ] && [ "$said" = yes ] \
    && { [ "$restarted" = no ] || [ "$own_restart" = 1 ]; }; then
    check_result "$name" pass "$what; pod traffic w1->w2 longest gap ${gap} ms; router containers restarted: $restarted$api; every router connected and synced ${resync}s after the API answered again; w1's router status meanwhile: $story"
  else
    check_result "$name" FAIL "$what; longest gap ${gap} ms (last probe $last); restarts $restarts -> $(weft_restarts); said it lost the API: $said$api; status meanwhile: $story"
  fi
}

routers_synced() {
  local pod
  for pod in $(weft_pods); do
    kc -n weft exec "$pod" -c weft -- weft status --json | jq -e '.kube.connected and .kube.synced' >/dev/null || return 1
  done
}

check_apiserver_restart() {
  FAULT_EXPECT_DISCONNECT=1 fault_check apiserver_restart "kube-apiserver stopped for 20 s and started again" stop_for cp kube-apiserver 20
}

check_etcd_unavailable() {
  fault_check etcd_unavailable "etcd stopped for 20 s and started again" stop_for cp etcd 20
}

check_kubelet_restart() {
  fault_check kubelet_restart "w1's kubelet stopped for 20 s and started again" stop_for w1 kubelet 20
}

# A node whose router starts before kube-proxy has programmed the kubernetes Service (the
# router reaches the API through it): the router waits and says so, then carries on
# without a restart once kube-proxy runs.
wrong_order() {
  stop w1 kube-proxy
  on w1 "$BIN/kube-proxy" --cleanup >/dev/null 2>&1 || true
  kc -n weft delete "$(weft_pod_on w1)" >/dev/null
  wait_for 60 "w1's new router running" sh -c "[ \"\$($BIN/kubectl --kubeconfig $STATE/admin.kubeconfig -n weft get pods -l app.kubernetes.io/name=weft --field-selector spec.nodeName=w1 -o jsonpath='{.items[0].status.phase}')\" = Running ]"
  sleep 10
  on w1 curl -s http://127.0.0.1:6784/status.json | jq -c '{kube: (.kube | {connected, synced, last_error}), not_ready}' > "$STATE/checks/wrong_start_order.before-proxy" || true
  restart w1 kube-proxy
}

check_wrong_start_order() {
  # The router itself is replaced here: pod traffic between nodes pauses while no router
  # runs on w1 (the encrypted sleeve is in the router), so the gap is reported, not bounded.
  FAULT_MAX_GAP_MS=120000 fault_check wrong_start_order "w1's router started while its kube-proxy was down (rules flushed), kube-proxy started 10 s later" wrong_order
  log "w1's router before kube-proxy ran: $(cat "$STATE/checks/wrong_start_order.before-proxy" 2>/dev/null)"
  if ! grep -q '"synced":false' "$STATE/checks/wrong_start_order.before-proxy" 2>/dev/null; then
    check_result wrong_start_order_status FAIL "the router did not say it was waiting for the API: $(cat "$STATE/checks/wrong_start_order.before-proxy" 2>/dev/null)"
  else
    check_result wrong_start_order_status pass "before kube-proxy: $(cat "$STATE/checks/wrong_start_order.before-proxy")"
  fi
}

# A Node deleted: its machine gone (every process killed, its namespaces and files
# removed), then `kubectl delete node`. The remaining routers reclaim its IP space (the
# cluster frees its pod CIDR); a fresh machine of the same name joins again and gets a
# working pod network.
# space_reclaimed NODE PEER CIDR: on every router but NODE's, PEER (NODE's old router)
# holds no IPAM record, nobody holds CIDR, none still has a reclaim of PEER pending, and one
# of them says it reclaimed PEER's space (kube.reclaimed). Writes who did it to
# $STATE/checks/node_deleted.reclaimer.
space_reclaimed() {
  local n=$1 peer=$2 cidr=$3 pod js by=""
  for pod in $(kc -n weft get pods -l app.kubernetes.io/name=weft -o jsonpath='{range .items[*]}{.metadata.name} {.spec.nodeName}{"\n"}{end}' | awk -v n="$n" '$2 != n { print $1 }'); do
    js=$(kc -n weft exec "$pod" -c weft -- weft status --json) || return 1
    jq -e --arg p "$peer" --arg c "$cidr" '[.ipam.peers[] | select(.name == $p or (.blocks | index($c)))] | length == 0' <<<"$js" >/dev/null || return 1
    # and none of them still waits to reclaim it (a router that saw another do it first)
    jq -e --arg p "$peer" '[(.kube.reclaim_pending // [])[] | select(startswith($p))] | length == 0' <<<"$js" >/dev/null || return 1
    by+=$(jq -r --arg p "$peer" --arg c "$cidr" '. as $s | .kube.reclaimed[] | select(startswith($p) and contains("freed " + $c)) | "\($s.nickname): \(.)"' <<<"$js" | tr '\n' ';')
  done
  [ -n "$by" ] && echo "$by" > "$STATE/checks/node_deleted.reclaimer"
}

# A Node deleted: its machine gone (every process killed, its namespaces and files
# removed), then `kubectl delete node`. The remaining routers reclaim its IP space (the
# cluster frees its pod CIDR): its router's IPAM record goes and its block is free on every
# remaining router; a fresh machine of the same name joins again and gets a working pod
# network.
check_node_deleted() {
  local n=w2 name cidr
  name=$(weft_status_on cp | jq -r --arg n "$n" '.peers[] | select(.nickname == $n) | .name')
  cidr=$(kc get node "$n" -o jsonpath='{.spec.podCIDR}')
  rm -f "$STATE/checks/node_deleted.reclaimer"
  node_gone "$n"
  local t0=$SECONDS
  kc delete node "$n" >/dev/null
  local reclaimed="" by=""
  if wait_for 300 "$n's space ($name, $cidr) reclaimed by the remaining routers" space_reclaimed "$n" "$name" "$cidr"; then
    reclaimed="reclaimed $(( SECONDS - t0 ))s after the Node was deleted"
    by=$(cat "$STATE/checks/node_deleted.reclaimer")
  fi
  local pending
  pending=$(weft_status_on cp | jq -c '.kube.reclaim_pending')
  # A fresh machine of the same name.
  node_net_up "$n"
  node_up "$n"
  wait_for 120 "Node $n registered again" kc get node "$n"
  wait_for 180 "every Node Ready with NetworkUnavailable=False" nodes_ready
  wait_for 180 "every router ready" weft_all_ready
  wait_for 120 "mesh complete again" mesh_complete
  local newcidr
  newcidr=$(kc get node "$n" -o jsonpath='{.spec.podCIDR}')
  server nd-srv "$n"
  local ok=fail
  if pod nd-cli w1 check /bin/sh -c "sleep 3600" && kc -n "$CHECK_NS" exec nd-cli -- curl -s --max-time 5 "http://$(pod_ip nd-srv):8080/hostname" >/dev/null; then ok=ok; fi
  kc -n "$CHECK_NS" delete pod nd-srv nd-cli --now >/dev/null
  if [ -n "$reclaimed" ] && [ "$ok" = ok ]; then
    check_result node_deleted pass "$n (router $name, podCIDR $cidr): $reclaimed (${by%;}; cp's pending reclaims then: $pending); a fresh $n joined with podCIDR $newcidr and its pods are reachable from w1"
  else
    check_result node_deleted FAIL "reclaim: ${reclaimed:-not seen in 300 s}; cp's pending reclaims: $pending; fresh $n: podCIDR $newcidr, pod traffic $ok"
  fi
}

# The segments topology only: w1 and w2 share no segment and cp's underlay drops weft's
# ports between them, so w1's router reaches w2's only through cp's (next hop cp, no
# connection of its own to w2), and pod traffic w1->w2 is carried by that relay: HTTP and
# a 20 MB TCP transfer. cp's drop counter shows that the direct way was tried and refused.
check_relay_path() {
  local w2name cpname js hop direct
  js=$(weft_status_on w1)
  w2name=$(jq -r '.peers[] | select(.nickname == "w2") | .name' <<<"$js")
  cpname=$(jq -r '.peers[] | select(.nickname == "cp") | .name' <<<"$js")
  hop=$(jq -r --arg p "$w2name" '.peers[] | select(.name == $p) | (.next_hop // "none")' <<<"$js")
  direct=$(jq -r --arg ip "${NODE_IP[w2]}" '[.connections[] | select((.address | startswith($ip + ":")) and .state == "established")] | length' <<<"$js")
  server rp-srv w2
  pod rp-cli w1 check /bin/sh -c "sleep 3600"
  local ip t0 http=fail bulk=fail secs
  ip=$(pod_ip rp-srv)
  if kc -n "$CHECK_NS" exec rp-cli -- curl -s --max-time 5 "http://$ip:8080/hostname" | grep -qx rp-srv; then http=ok; fi
  t0=$(now_ms)
  if kc -n "$CHECK_NS" exec rp-cli -- iperf -c "$ip" -p 5001 -n 20M -f m > "$STATE/checks/relay_path.iperf" 2>&1 \
    && grep -q 'Mbits/sec' "$STATE/checks/relay_path.iperf"; then bulk=ok; fi
  secs=$(( ($(now_ms) - t0) / 1000 ))
  kc -n "$CHECK_NS" delete pod rp-srv rp-cli --now >/dev/null
  local drops
  drops=$(ip netns exec "$(ns cp)" nft -j list table inet "$PREFIX-underlay" 2>/dev/null \
    | jq '[.nftables[] | .rule? // empty | .expr[] | .counter? // empty | .packets] | add // 0' 2>/dev/null || echo 0)
  local rate
  rate=$(grep -o '[0-9.]* Mbits/sec' "$STATE/checks/relay_path.iperf" | tail -n 1)
  if [ -n "$w2name" ] && [ "$hop" = "$cpname" ] && [ "$direct" = 0 ] && [ "$http" = ok ] && [ "$bulk" = ok ] && [ "${drops:-0}" -gt 0 ]; then
    check_result relay_path pass "w1's router: w2 reachable via next hop cp, no connection of its own to w2; pod w1->w2 HTTP ok, 20 MB TCP in ${secs}s (${rate:-?}); cp dropped $drops direct weft packets between the segments"
  else
    check_result relay_path FAIL "w1's router: w2 ($w2name) next hop $hop (cp is $cpname), $direct established connection(s) of its own to w2; pod HTTP $http, 20 MB TCP $bulk; cp's drops $drops"
  fi
}

run_checks() {
  local only=${CHECKS_ONLY:-} c failed=0
  mkdir -p "$STATE/checks"
  printf '| check | result | measured |\n|---|---|---|\n' > "$STATE/checks/summary.md"
  kc create namespace "$CHECK_NS" --dry-run=client -o yaml | kc apply -f - >/dev/null
  local list=("${CHECKS[@]}")
  # relay_path first: before the other checks restart routers (its next hop must be the
  # one the routers found by themselves).
  if [ "$TOPOLOGY" = segments ] || [[ ,$only, == *,relay_path,* ]]; then list=(relay_path "${list[@]}"); fi
  for c in "${list[@]}"; do
    if [ -n "$only" ] && [[ ,$only, != *",$c,"* ]]; then continue; fi
    log "check $c"
    "check_$c" || failed=$(( failed + 1 ))
    kc -n "$CHECK_NS" delete pods --all --now >/dev/null 2>&1 || true
  done
  kc delete namespace "$CHECK_NS" --wait=false >/dev/null
  cat "$STATE/checks/summary.md" >&2
  [ "$failed" = 0 ] || { log "$failed weft cluster check(s) FAILED"; return 1; }
}
