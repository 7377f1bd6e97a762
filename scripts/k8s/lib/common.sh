# shellcheck shell=bash disable=SC2034 # the settings are used by the other parts
# Settings and helpers shared by every part of scripts/k8s-cluster.sh. Sourced, not run.

# --- versions: one Kubernetes release; the rest at what it is tested with -------------------
K8S_VERSION=v1.37.2                 # k8s.io/kubernetes; the staging modules at v0.37.2 (go.mod)
CONTAINERD_VERSION=v2.2.9           # github.com/containerd/containerd/v2 (a Go module)
COREDNS_VERSION=v1.14.7             # github.com/coredns/coredns (a Go module)
# The e2e images of this release (test/utils/image/manifest.go), under a repository name no
# registry answers for: KUBE_TEST_REPO_LIST points the suite at it, and every image is
# imported into every node's containerd under exactly these names.
IMAGE_REPO=weft-k8s.invalid
AGNHOST_IMAGE=$IMAGE_REPO/e2e-test-images/agnhost:2.66.1
BUSYBOX_IMAGE=$IMAGE_REPO/e2e-test-images/busybox:1.37.0-2
PAUSE_IMAGE=$IMAGE_REPO/pause:3.10.2
COREDNS_IMAGE=$IMAGE_REPO/coredns:${COREDNS_VERSION}
# The weft image, under the name deploy/02-daemonset.yaml uses (as `kind load` would).
WEFT_IMAGE=weft:0.1.0

# --- where things are ------------------------------------------------------------------------
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)
K8S_MOD=$REPO/scripts/k8s                       # the Go module and the image recipes
CACHE=${WEFT_K8S_CACHE:-$REPO/target/k8s}       # built programs and images: kept by `down`
BIN=$CACHE/bin
IMAGES=$CACHE/images
STATE=${WEFT_K8S_STATE:-/var/lib/weft-k8s}      # one cluster's state: removed by `down`
LOGS=$STATE/logs
PKI=$STATE/pki

# --- the cluster -----------------------------------------------------------------------------
PREFIX=weft-k8s                      # every namespace, cgroup and link name starts with it
TOPOLOGY=${WEFT_K8S_TOPOLOGY:-flat}  # flat | segments (see cluster.sh; `up --topology`)
API_PORT=${WEFT_K8S_API_PORT:-16443} # kubectl on this machine: 127.0.0.1:API_PORT
SERVICE_CIDR=10.96.0.0/16
API_SERVICE_IP=10.96.0.1
DNS_SERVICE_IP=10.96.0.10
CLUSTER_DOMAIN=cluster.local
# The cluster's pod CIDR is weft's default range: the controller-manager gives every Node a
# /24 of it (spec.podCIDR), which is what weft's podCIDR path uses.
CLUSTER_CIDR=10.32.0.0/12
NODE_CIDR_MASK=24

log() { printf '[k8s-cluster %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# wait_for SECONDS WHAT CMD...: runs CMD every second until it succeeds.
wait_for() {
  local secs=$1 what=$2 t0=$SECONDS
  shift 2
  until "$@" >/dev/null 2>&1; do
    if (( SECONDS - t0 >= secs )); then
      log "timed out after ${secs}s waiting for $what"
      return 1
    fi
    sleep 1
  done
  log "$what (after $(( SECONDS - t0 ))s)"
}

# The admin's kubectl, from this machine (through the API proxy).
kc() { "$BIN/kubectl" --kubeconfig "$STATE/admin.kubeconfig" "$@"; }
