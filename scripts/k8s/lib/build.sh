# shellcheck shell=bash
# Building what the cluster runs: the Kubernetes programs, etcd, containerd, CoreDNS and the
# e2e suite from their Go modules, the pause program, weft, and the container images. Every
# step is skipped when its inputs are unchanged (a stamp per step in $CACHE); the Go module
# and build caches ($(go env GOMODCACHE), $(go env GOCACHE)) make a rebuild after a change
# cheap. Sourced by scripts/k8s-cluster.sh.

# Static binaries (as upstream builds them), the module's go.mod/go.sum as they are.
export CGO_ENABLED=0 GOFLAGS=-mod=readonly GOTOOLCHAIN=local
# The release's version in every binary (plain `go build` would say v0.0.0-master, which the
# e2e framework and the version-skew checks read).
K8S_LDFLAGS="-s -w"
for _v in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  K8S_LDFLAGS+=" -X $_v.gitVersion=$K8S_VERSION -X $_v.gitMajor=1 -X $_v.gitMinor=37"
  K8S_LDFLAGS+=" -X $_v.gitTreeState=clean"
done
unset _v

# stamp_ok NAME INPUT-TEXT: true when step NAME last ran with the same inputs.
stamp_ok() { [ -f "$CACHE/stamps/$1" ] && [ "$(cat "$CACHE/stamps/$1")" = "$(printf '%s' "$2" | sha256sum)" ]; }
stamp_set() { mkdir -p "$CACHE/stamps"; printf '%s' "$2" | sha256sum > "$CACHE/stamps/$1"; }

# timed NAME CMD...: runs CMD, logging how long it took (also into $CACHE/timings.log).
timed() {
  local name=$1 t0=$SECONDS
  shift
  "$@"
  log "built $name in $(( SECONDS - t0 ))s"
  printf '%s %s %ss\n' "$(date -u +%FT%TZ)" "$name" "$(( SECONDS - t0 ))" >> "$CACHE/timings.log"
}

go_inputs() {
  # Everything a Go build of this module depends on besides the module cache.
  cat "$K8S_MOD/go.mod" "$K8S_MOD/go.sum"
  find "$K8S_MOD/cmd" -type f -name '*.go' -print0 | sort -z | xargs -0 cat
  go version
  printf '%s %s\n' "$K8S_LDFLAGS" "$CGO_ENABLED"
}

# The programs from the Kubernetes module: one `go build` for all of them, so that the
# packages they share are compiled once.
build_kubernetes() {
  local inputs
  inputs=$(go_inputs)
  if stamp_ok kubernetes "$inputs" && [ -x "$BIN/kubelet" ] && [ -x "$BIN/etcd" ]; then return; fi
  log "building Kubernetes $K8S_VERSION, etcd, agnhost, ginkgo (go build; a cold build takes many minutes)"
  (cd "$K8S_MOD" && go build -trimpath -ldflags "$K8S_LDFLAGS" -o "$BIN/" \
    k8s.io/kubernetes/cmd/kube-apiserver \
    k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler \
    k8s.io/kubernetes/cmd/kubelet \
    k8s.io/kubernetes/cmd/kube-proxy \
    k8s.io/kubernetes/cmd/kubectl \
    go.etcd.io/etcd/server/v3 \
    k8s.io/kubernetes/test/images/agnhost \
    github.com/onsi/ginkgo/v2/ginkgo \
    ./cmd/weft-k8s-tool)
  # etcd's main package is go.etcd.io/etcd/server/v3: the binary is called "server".
  mv -f "$BIN/server" "$BIN/etcd"
  stamp_set kubernetes "$inputs"
}

build_e2e() {
  local inputs
  inputs=$(go_inputs)
  if stamp_ok e2e "$inputs" && [ -x "$BIN/e2e.test" ]; then return; fi
  log "building e2e.test (go test -c k8s.io/kubernetes/test/e2e)"
  (cd "$K8S_MOD" && go test -c -trimpath -ldflags "$K8S_LDFLAGS" -o "$BIN/e2e.test" k8s.io/kubernetes/test/e2e)
  stamp_set e2e "$inputs"
}

# containerd and CoreDNS are modules of their own: `go install MODULE/PKG@VERSION` builds
# them with their own go.mod and checksums.
build_containerd() {
  local inputs
  inputs="$CONTAINERD_VERSION $(go version) $CGO_ENABLED"
  if stamp_ok containerd "$inputs" && [ -x "$BIN/containerd" ]; then return; fi
  log "building containerd $CONTAINERD_VERSION (go install)"
  GOFLAGS="" GOBIN=$BIN go install -trimpath -ldflags "-s -w -X github.com/containerd/containerd/v2/version.Version=$CONTAINERD_VERSION" \
    "github.com/containerd/containerd/v2/cmd/containerd@$CONTAINERD_VERSION" \
    "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2@$CONTAINERD_VERSION" \
    "github.com/containerd/containerd/v2/cmd/ctr@$CONTAINERD_VERSION"
  stamp_set containerd "$inputs"
}

build_coredns() {
  local inputs
  inputs="$COREDNS_VERSION $(go version) $CGO_ENABLED"
  if stamp_ok coredns "$inputs" && [ -x "$BIN/coredns" ]; then return; fi
  log "building CoreDNS $COREDNS_VERSION (go install)"
  GOFLAGS="" GOBIN=$BIN go install -trimpath -ldflags "-s -w" "github.com/coredns/coredns@$COREDNS_VERSION"
  stamp_set coredns "$inputs"
}

# The pause program, from the release's own source in the module cache.
build_pause() {
  local src
  src="$(cd "$K8S_MOD" && go list -m -f '{{.Dir}}' k8s.io/kubernetes)/build/pause/linux/pause.c"
  local inputs
  inputs="$(cat "$src") $(gcc --version | head -n 1)"
  if stamp_ok pause "$inputs" && [ -x "$BIN/pause" ]; then return; fi
  log "building pause from $src"
  gcc -Os -Wall -static -DVERSION="$K8S_VERSION" -o "$BIN/pause" "$src"
  strip "$BIN/pause"
  stamp_set pause "$inputs"
}

# image NAME DOCKERFILE CONTEXT [--host-stages]: builds $IMAGES/NAME.tar.
# Its output (mmdebstrap, apt, cargo) goes to $CACHE/logs/image-NAME.log, shown on failure.
image() {
  local name=$1 file=$2 ctx=$3 tag=$4
  shift 4
  mkdir -p "$CACHE/logs"
  if ! "$BIN/weft-k8s-tool" image --file "$file" --context "$ctx" --tag "$tag" \
    --cache "$CACHE/image-cache" --out "$IMAGES/$name.tar" "$@" > "$CACHE/logs/image-$name.log" 2>&1; then
    tail -n 40 "$CACHE/logs/image-$name.log" >&2
    die "image $name failed (whole log: $CACHE/logs/image-$name.log)"
  fi
}

# The test images' programs are copied into one context directory (COPY names them).
build_test_images() {
  local ctx=$CACHE/image-context
  mkdir -p "$ctx" "$IMAGES"
  cp -f "$BIN/agnhost" "$BIN/pause" "$BIN/coredns" "$ctx/"
  cp -f "$(command -v busybox)" "$ctx/busybox"
  local n tag inputs
  for n in agnhost busybox pause coredns; do
    case $n in
      agnhost) tag=$AGNHOST_IMAGE ;; busybox) tag=$BUSYBOX_IMAGE ;;
      pause) tag=$PAUSE_IMAGE ;; coredns) tag=$COREDNS_IMAGE ;;
    esac
    inputs="$tag $(cat "$K8S_MOD/images/$n.Dockerfile") $(sha256sum "$ctx/$n" "$BIN/weft-k8s-tool" | cut -c1-64)"
    if stamp_ok "image-$n" "$inputs" && [ -f "$IMAGES/$n.tar" ]; then continue; fi
    timed "image $n" image "$n" "$K8S_MOD/images/$n.Dockerfile" "$ctx" "$tag"
    stamp_set "image-$n" "$inputs"
  done
}

# The weft image from deploy/Dockerfile, as users build it: its build stage (cargo build)
# runs on this machine in the checkout, its runtime stage is made from Debian packages.
build_weft_image() {
  timed "image weft" image weft "$REPO/deploy/Dockerfile" "$REPO" "$WEFT_IMAGE" --host-stages
}

build_all() {
  mkdir -p "$BIN" "$IMAGES"
  command -v go >/dev/null || die "go is missing (Debian: golang-go; or a Go >= 1.26 on PATH)"
  timed kubernetes build_kubernetes
  timed e2e.test build_e2e
  timed containerd build_containerd
  timed coredns build_coredns
  timed pause build_pause
  build_test_images
  build_weft_image
}
