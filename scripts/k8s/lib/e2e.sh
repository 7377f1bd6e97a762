# shellcheck shell=bash
# The upstream e2e suites, run by the real e2e.test (built from k8s.io/kubernetes/test/e2e
# of the cluster's release) through the ginkgo CLI. Sourced by scripts/k8s-cluster.sh.
#
#   test            the CI selection (E2E_CI_FOCUS below)
#   test --full     every networking, Services and NetworkPolicy test (docs/conformance.md)
#   test --focus RE [--skip RE]   any selection
# E2E_PROCS (default 3) parallel ginkgo processes. Reports (JUnit, ginkgo JSON, the log)
# go to $STATE/e2e/; a summary table to $STATE/e2e/summary.md.

# The suites: Networking (pod-to-pod, node-to-pod, UDP, HTTP, Services granular checks),
# Services (pod networking through kube-proxy), and every NetworkPolicy test.
E2E_FULL_FOCUS='\[sig-network\] (Networking|Services|Netpol|NetworkPolicy)'
# What cannot run here, whatever the network plugin: pattern, then the reason (the summary
# gives it for every test it leaves out). Anything else that cannot run here is skipped by
# the suite itself, with its own reason (no SSH to nodes, components not run as pods, ...).
E2E_SKIPS=(
  'SCTP' 'this kernel has no SCTP'
  'Feature:LoadBalancer' 'needs a cloud provider load balancer'
  'Feature:Networking-IPv6|IPv6DualStack' 'IPv4-only cluster (weft is IPv4-only so far)'
  'Feature:Networking-IPv4|Feature:Networking-DNS' 'needs the Internet (8.8.8.8, google.com), which the cluster cannot reach'
)
E2E_SKIP=$(for ((i = 0; i < ${#E2E_SKIPS[@]}; i += 2)); do printf '%s|' "${E2E_SKIPS[i]}"; done)
E2E_SKIP=${E2E_SKIP%|}
# CI (about 5 minutes of the suite on 2 cores, chosen from the measured times of a full run,
# docs/conformance.md): every NetworkPolicy test, the pod-to-pod and node-to-pod granular
# checks (TCP and UDP), the Services Conformance tests, and three granular Services checks
# (pod to ClusterIP over HTTP, node to ClusterIP over HTTP, endpoints over UDP).
E2E_CI_FOCUS='\[sig-network\] Netpol |\[sig-network\] Networking Granular Checks: Pods |\[sig-network\] Services .*\[Conformance\]|\[sig-network\] Networking Granular Checks: Services should function for (pod-Service: http|node-Service: http|endpoint-Service: udp)'

write_repo_list() {
  cat > "$STATE/e2e/repo-list.yaml" <<EOF
# The e2e images' registry names (KUBE_TEST_REPO_LIST): nothing is pulled; every image is
# in every node's containerd under these names already.
promoterE2eRegistry: $IMAGE_REPO/e2e-test-images
buildImageRegistry: $IMAGE_REPO/build-image
gcEtcdRegistry: $IMAGE_REPO
gcRegistry: $IMAGE_REPO
sigStorageRegistry: $IMAGE_REPO/sig-storage
privateRegistry: $IMAGE_REPO/private
dockerLibraryRegistry: $IMAGE_REPO/library
cloudProviderGcpRegistry: $IMAGE_REPO/cloud-provider-gcp
invalidRegistry: invalid.registry.k8s.io/invalid
EOF
}

run_e2e() {
  local focus=$E2E_CI_FOCUS skip=$E2E_SKIP label=ci
  while [ $# -gt 0 ]; do
    case $1 in
      --full) focus=$E2E_FULL_FOCUS label=full ;;
      --focus) focus=$2 label=custom; shift ;;
      --skip) skip=$2; shift ;;
      --no-e2e) return 0 ;;
      *) die "test: unknown option $1" ;;
    esac
    shift
  done
  local out=$STATE/e2e
  rm -rf "$out"
  mkdir -p "$out"
  write_repo_list
  log "e2e ($label): focus: $focus"
  log "e2e: skip: $skip"
  local t0=$SECONDS rc=0
  # In the control-plane node's network namespace (it reaches the API server and the nodes
  # as a machine of the cluster's network would); the files stay this machine's.
  KUBE_TEST_REPO_LIST=$out/repo-list.yaml nsenter --net="/run/netns/$(ns cp)" -- \
    "$BIN/ginkgo" --procs="${E2E_PROCS:-3}" --timeout=4h --no-color --poll-progress-after=300s \
    --focus="$focus" --skip="$skip" \
    --junit-report=junit.xml --json-report=report.json --output-dir="$out" \
    "$BIN/e2e.test" -- \
    --kubeconfig="$STATE/admin-in-cluster.kubeconfig" --kubectl-path="$BIN/kubectl" \
    --provider=skeleton --num-nodes="${#NODES[@]}" \
    --e2e-output-dir="$out" --report-dir="$out" --disable-log-dump \
    --dump-logs-on-failure=false \
    > "$out/e2e.log" 2>&1 || rc=$?
  log "e2e ($label) finished in $(( SECONDS - t0 ))s (exit $rc); log: $out/e2e.log"
  e2e_summary "$out/report.json" "$E2E_FULL_FOCUS" > "$out/summary.md" || true
  head -n 1 "$out/summary.md" >&2 || true
  grep -E '\| (failed|timedout|panicked|interrupted)' "$out/summary.md" >&2 || true
  return "$rc"
}

# e2e_summary REPORT.json FOCUS: every test of the suites in FOCUS: passed, failed (with
# the first line of the failure) or skipped (with the reason: the suite's own, or the one
# of E2E_SKIPS that left it out).
e2e_summary() {
  local reasons
  reasons=$(for ((i = 0; i < ${#E2E_SKIPS[@]}; i += 2)); do
    jq -n --arg re "${E2E_SKIPS[i]}" --arg why "${E2E_SKIPS[i+1]}" '{re: $re, why: $why}'
  done | jq -s .)
  jq -r --arg focus "$2" --argjson reasons "$reasons" '
    def name: (.ContainerHierarchyTexts + [.LeafNodeText] | join(" ")) + (if (.LeafNodeLabels // []) | length > 0 then "" else "" end);
    def line1: split("\n") | map(select(length > 0)) | first // "" | .[0:200] | gsub("\\|"; "/");
    [.[].SpecReports[] | select(.LeafNodeType == "It") | select(name | test($focus))] as $specs
    | ($specs | map(select(.State == "passed")) | length) as $p
    | ($specs | map(select(.State == "failed" or .State == "timedout" or .State == "panicked" or .State == "interrupted")) | length) as $f
    | ($specs | map(select(.State == "skipped" or .State == "pending")) | length) as $s
    | "passed \($p), failed \($f), skipped \($s) (of \($specs | length) tests)",
      "",
      "| test | result | seconds |",
      "|---|---|---|",
      ($specs | sort_by(name)[]
        | . as $t
        | (if .State == "passed" then "passed"
           elif .State == "skipped" then
             "skipped: " + ((.Failure.Message // "" | line1) as $m
               | if $m != "" then $m
                 else ([$reasons[] | select(. as $r | $t | name | test($r.re)) | .why] | first // "not selected") end)
           else .State + ": " + (.Failure.Message // "" | line1) end) as $res
        | "| \(name | gsub("\\|"; "/")) | \($res) | \((.RunTime / 1e9) | floor) |")
  ' "$1"
}
