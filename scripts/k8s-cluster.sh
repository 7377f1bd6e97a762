#!/usr/bin/env bash
# A real Kubernetes cluster on this machine, with weft installed from deploy/ as a user
# installs it, and the upstream e2e networking and NetworkPolicy suites run against it.
#
#   bash scripts/k8s-cluster.sh up [--topology flat|segments]
#                                       build what is missing, start the cluster, install
#                                       weft and cluster DNS; ends by printing
#                                       KUBECONFIG=<path> and KUBECTL=<path>. segments: w2
#                                       on a second network segment, reached only through
#                                       cp, so that weft relays (lib/cluster.sh)
#   bash scripts/k8s-cluster.sh test    the upstream suites, then weft's own cluster tests
#                                       (docs/conformance.md has the results and options)
#   bash scripts/k8s-cluster.sh down    remove everything: processes, namespaces, cgroups,
#                                       files (also after a failed `up`; safe to repeat)
#   bash scripts/k8s-cluster.sh build   only build (binaries and images)
#   bash scripts/k8s-cluster.sh status  nodes, pods, weft status
#
# Everything is real and built here from source: etcd, kube-apiserver, kube-controller-
# manager, kube-scheduler, kubelet, kube-proxy, kubectl and e2e.test from the Kubernetes
# Go modules (scripts/k8s/go.mod, one release), containerd and CoreDNS from theirs, runc
# from Debian; the images from Dockerfiles (deploy/Dockerfile for weft, scripts/k8s/images/
# for the test images) without a registry. scripts/k8s/lib/*.sh has the parts; each says
# how it works.
#
# Settings (environment): WEFT_K8S_TOPOLOGY=flat|segments (as --topology), WEFT_K8S_STATE
# (cluster state, default /var/lib/weft-k8s), WEFT_K8S_CACHE (build output, default
# target/k8s), WEFT_K8S_API_PORT (default 16443), WEFT_K8S_KEEP=1 (a failed `up` leaves
# the cluster for inspection instead of removing it). Needs root, Linux with network
# namespaces, veth, bridge, VXLAN, tun, nftables, overlayfs; Debian packages are installed
# when missing.
set -euo pipefail

# shellcheck source=scripts/k8s/lib/common.sh
source "$(dirname "$0")/k8s/lib/common.sh"
# shellcheck source=scripts/k8s/lib/build.sh
source "$K8S_MOD/lib/build.sh"
# shellcheck source=scripts/k8s/lib/cluster.sh
source "$K8S_MOD/lib/cluster.sh"
# shellcheck source=scripts/k8s/lib/weft.sh
source "$K8S_MOD/lib/weft.sh"
# shellcheck source=scripts/k8s/lib/e2e.sh
source "$K8S_MOD/lib/e2e.sh"
# shellcheck source=scripts/k8s/lib/checks.sh
source "$K8S_MOD/lib/checks.sh"

preflight() {
  [ "$(id -u)" = 0 ] || die "needs root (network namespaces, mounts, cgroups)"
  local missing=()
  command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
  command -v runc >/dev/null || missing+=(runc)
  command -v iptables >/dev/null || missing+=(iptables)
  command -v nft >/dev/null || missing+=(nftables)
  command -v ip >/dev/null || missing+=(iproute2)
  command -v curl >/dev/null || missing+=(curl)
  command -v jq >/dev/null || missing+=(jq)
  command -v nsenter >/dev/null || missing+=(util-linux)
  command -v gcc >/dev/null || missing+=(gcc)
  [ -f /usr/lib/x86_64-linux-gnu/libc.a ] || missing+=(libc6-dev)
  if ! busybox_static; then missing+=(busybox-static); fi
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing Debian packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
  grep -qw overlay /proc/filesystems || die "the kernel has no overlayfs (containerd's snapshotter)"
  [ -c /dev/net/tun ] || die "/dev/net/tun is missing (weft's sleeve)"
  [ -e /proc/sys/net/bridge/bridge-nf-call-iptables ] || die "br_netfilter is missing (kube-proxy, NetworkPolicy on bridged traffic)"
  [ -d "$CGROUP_ROOT/memory" ] || [ -f "$CGROUP_ROOT/cgroup.controllers" ] || die "no cgroup hierarchy at $CGROUP_ROOT"
}

busybox_static() {
  local b
  b=$(command -v busybox) || return 1
  ! ldd "$b" >/dev/null 2>&1
}

cmd_build() {
  preflight
  build_all
}

# `up` fails with exit 75 when the build fails (packages, Go modules, Debian archives: often
# the machine's network or a registry), with 1 for anything after it (the cluster, weft).
UP_PHASE=cluster

cmd_up() {
  while [ $# -gt 0 ]; do
    case $1 in
      --topology) TOPOLOGY=${2:-}; shift ;;
      --topology=*) TOPOLOGY=${1#*=} ;;
      *) die "up: unknown option $1 (--topology flat|segments)" ;;
    esac
    shift
  done
  topology_init # refuses an unknown topology before anything is built
  local d
  if d=$(under_node_dir "$STATE"); then
    die "the cluster's state ($STATE, WEFT_K8S_STATE) is under $d, which every node has a private copy of: choose another place"
  fi
  # The build as a process of its own, so that any failure in it is the environment's.
  bash "$0" build || exit 75
  if [ -e "$STATE" ]; then
    die "$STATE exists: a cluster is up (or a failed one is left): run 'bash scripts/k8s-cluster.sh down' first"
  fi
  mkdir -p "$STATE" "$LOGS" "$STATE/pids"
  echo "$TOPOLOGY" > "$STATE/topology"
  trap up_failed EXIT
  local t0=$SECONDS
  topology_init
  save_sysctls
  log "underlay ($TOPOLOGY): nodes ${NODES[*]}"
  net_up
  local n
  for n in "${NODES[@]}"; do
    mk_cgroup "$n"
    node_dirs_up "$n"
    holder_up "$n"
  done
  write_pki
  log "control plane on cp ($API_IP)"
  start_etcd
  start_apiserver
  start_controllers
  start_api_proxy
  for n in "${NODES[@]}"; do
    log "node $n (${NODE_IP[$n]})"
    write_node_config "$n"
    start_containerd "$n"
    import_images "$n"
    start_kubelet "$n"
    start_kube_proxy "$n"
  done
  for n in "${NODES[@]}"; do
    wait_for 120 "Node $n registered" kc get node "$n"
  done
  kc label node cp node-role.kubernetes.io/control-plane= --overwrite >/dev/null
  UP_PHASE=weft
  install_weft
  install_coredns
  trap - EXIT
  log "cluster up in $(( SECONDS - t0 ))s (not counting builds)"
  echo "KUBECONFIG=$STATE/admin.kubeconfig"
  echo "KUBECTL=$BIN/kubectl"
}

# A failed `up`: show why, then remove what it made (unless WEFT_K8S_KEEP=1).
up_failed() {
  local rc=$?
  trap - EXIT
  log "up FAILED (exit $rc, while setting up the $UP_PHASE); last lines of the logs in $LOGS:"
  local f
  for f in "$LOGS"/*.log; do
    [ -s "$f" ] || continue
    printf '\n--- %s\n' "$f" >&2
    tail -n 15 "$f" >&2
  done
  if [ -s "$STATE/admin.kubeconfig" ] && running host api-proxy; then
    kc get nodes -o wide >&2 || true
    kc get pods -A -o wide >&2 || true
  fi
  if [ "${WEFT_K8S_KEEP:-0}" = 1 ]; then
    log "WEFT_K8S_KEEP=1: the cluster is left as it is; 'bash scripts/k8s-cluster.sh down' removes it"
  else
    teardown || true
  fi
  exit "$rc"
}

cmd_down() {
  [ "$(id -u)" = 0 ] || die "needs root"
  teardown
  log "down: nothing of the cluster is left"
}

cmd_status() {
  [ -f "$STATE/topology" ] || die "no cluster is up"
  kc get nodes -o wide
  kc get pods -A -o wide
  local pod
  for pod in $(kc -n weft get pods -l app.kubernetes.io/name=weft -o name); do
    echo "--- $pod"
    kc -n weft exec "$pod" -- weft status || true
  done
}

cmd_test() {
  [ -f "$STATE/topology" ] || die "no cluster is up: run 'bash scripts/k8s-cluster.sh up' first"
  TOPOLOGY=$(cat "$STATE/topology")
  topology_init
  # Options for the checks are taken out here; the rest are the e2e selection's.
  local e2e_args=() checks=1 rc=0
  while [ $# -gt 0 ]; do
    case $1 in
      --no-checks) checks=0 ;;
      --checks) CHECKS_ONLY=$2; shift ;;
      *) e2e_args+=("$1") ;;
    esac
    shift
  done
  run_e2e "${e2e_args[@]}" || rc=$?
  if [ "$checks" = 1 ]; then run_checks || rc=1; fi
  return "$rc"
}

case ${1:-} in
  up) shift; cmd_up "$@" ;;
  down) shift; cmd_down "$@" ;;
  test) shift; cmd_test "$@" ;;
  build) shift; cmd_build "$@" ;;
  status) shift; cmd_status "$@" ;;
  *) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2 ;;
esac
