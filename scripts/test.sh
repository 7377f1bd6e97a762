#!/usr/bin/env bash
# Runs every test of weft: formatting, lints, unit and property tests, the deterministic
# simulations, the namespace tests (real routers in network namespaces; need root), and a
# real Kubernetes cluster with the upstream e2e suites (scripts/k8s-cluster.sh; root).
# Installs missing system packages first (Debian). Builds once (release) and reuses it.
set -euo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)
step() { printf '\n=== %s (%ss)\n' "$*" "$(( $(date +%s) - started ))"; }

step "system packages"
missing=()
command -v ip >/dev/null || missing+=(iproute2)
command -v ping >/dev/null || missing+=(iputils-ping)
command -v pkill >/dev/null || missing+=(procps)
command -v nft >/dev/null || missing+=(nftables)
# libcni test (router/tests/e2e/libcni.rs): Go + Debian's CNI library build the driver offline;
# the reference portmap/bandwidth plugins (in /usr/lib/cni) chain after weft-net.
command -v go >/dev/null || missing+=(golang-go)
[ -d /usr/share/gocode/src/github.com/containernetworking/cni/libcni ] || missing+=(golang-github-appc-cni-dev)
[ -x /usr/lib/cni/portmap ] && [ -x /usr/lib/cni/bandwidth ] || missing+=(containernetworking-plugins)
command -v iptables >/dev/null || missing+=(iptables)
# podman test (router/tests/e2e/podman.rs): podman 4 with its CNI backend (no netavark: weft-net
# is the plugin), runc, and a static busybox for the locally imported image.
command -v podman >/dev/null || missing+=(podman)
command -v runc >/dev/null || missing+=(runc)
[ -x /bin/busybox ] && ! ldd /bin/busybox >/dev/null 2>&1 || missing+=(busybox-static)
# manifest validation (scripts/validate-manifests.sh): a Python venv for kubernetes-validate.
command -v python3 >/dev/null || missing+=(python3)
python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
  else
    echo "missing packages: ${missing[*]} (run as root to install them)" >&2
  fi
fi
if [ "$(id -u)" != 0 ]; then
  echo "note: not root: the namespace tests will be skipped" >&2
fi

step "Kubernetes manifests (kubernetes-validate --strict + our checks)"
bash scripts/validate-manifests.sh

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --release -- -D warnings

step "build (release, all targets)"
cargo build --workspace --all-targets --release

step "tests (unit, property, simulation, namespace)"
# one test binary at a time for the namespace suites is not needed: each test uses its own
# uniquely named namespaces; threads are limited only to keep timing on 2 cores sane.
# The tests that need root are #[ignore]d with that reason: as root they are included (and a
# missing prerequisite fails them); otherwise the run lists them as ignored. The policy
# benchmark (also ignored) is bench/policy.sh's, not a test.
if [ "$(id -u)" = 0 ]; then
  cargo test --workspace --release -- --test-threads=2 --include-ignored --skip bench_10k_pods_1k_policies
else
  cargo test --workspace --release -- --test-threads=2
fi

# Kernel features this machine may lack (IPsec ESP) and a kernel without VXLAN: the tests
# that need them run again in a VM with Debian's stock kernel (../shared/vm/run-in-vm.sh,
# software-emulated, about a minute). A failing test fails the run; a VM that cannot start
# is reported as not run. WEFT_VM_TESTS=0 skips the step.
vm_runner=${WEFT_VM_RUNNER:-../shared/vm/run-in-vm.sh}
if [ "${WEFT_VM_TESTS:-1}" != 0 ] && [ "$(id -u)" = 0 ] && [ -x "$vm_runner" ]; then
  step "ESP fastpath, VXLAN guard and a kernel without VXLAN (VM, Debian stock kernel)"
  exe() { # $1 package, $2 test target -> the test binary cargo built
    cargo test --release -q -p "$1" --test "$2" --no-run --message-format=json 2>/dev/null |
      python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == sys.argv[1]:
        print(m["executable"])' "$2" | tail -n 1
  }
  e2e=$(exe weft e2e); esp=$(exe weft-fastpath esp)
  # The guest runs a script from the checkout (the VM mounts it read-write). It prints a
  # marker first: without the marker the VM itself did not start.
  cat > target/weft-vm-tests.sh <<VMEOF
set -e
echo WEFT-VM-TESTS-STARTED
# A minimal /dev: nft -f - reads through /dev/stdin.
ln -sf /proc/self/fd/0 /dev/stdin; ln -sf /proc/self/fd/1 /dev/stdout; ln -sf /proc/self/fd/2 /dev/stderr
modprobe tun; modprobe nf_tables; modprobe esp4
echo 'install vxlan /bin/false' > /etc/modprobe.d/weft-no-vxlan.conf
$e2e --test-threads 1 --include-ignored fastpath::a_kernel_without_vxlan
rm /etc/modprobe.d/weft-no-vxlan.conf; modprobe vxlan
$esp --test-threads 1 --include-ignored
$e2e --test-threads 1 --include-ignored fastpath::an_encrypted vxlan_guard::
VMEOF
  set +e
  "$vm_runner" -c 2 -- sh target/weft-vm-tests.sh 2>&1 | tee target/weft-vm-tests.log
  vm=${PIPESTATUS[0]}
  set -e
  if [ "$vm" != 0 ]; then
    if grep -q WEFT-VM-TESTS-STARTED target/weft-vm-tests.log; then
      echo "VM tests FAILED (exit $vm)" >&2
      exit 1
    fi
    echo "WARNING: VM tests NOT RUN: the VM did not start (exit $vm)" >&2
  fi
else
  echo "note: VM tests skipped (WEFT_VM_TESTS=0, not root, or no $vm_runner)" >&2
fi

step "simulation smoke (300 peers)"
cargo run --release -q -p weft-gossip --example simulate -- --peers 300 --seed 7

# Fuzz smoke: every parser target runs briefly (WEFT_FUZZ_SECONDS=0 skips; longer runs: fuzz/README.md).
fuzz_secs=${WEFT_FUZZ_SECONDS:-20}
if [ "$fuzz_secs" -gt 0 ]; then
  step "fuzz smoke (${fuzz_secs}s per target)"
  command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
  for t in $(cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz list); do
    # Seeds (fuzz/seeds/TARGET, in git) join the working corpus (fuzz/corpus/TARGET, not in
    # git), which is listed first so that libFuzzer writes what it finds there.
    seeds=()
    if [ -d "fuzz/seeds/$t" ]; then mkdir -p "fuzz/corpus/$t"; seeds=("corpus/$t" "seeds/$t"); fi
    (cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run "$t" "${seeds[@]}" -- -max_total_time="$fuzz_secs" 2>&1 | tail -n 3)
  done
fi

# A real Kubernetes cluster built on this machine (scripts/k8s-cluster.sh, docs/conformance.md):
# everything built from source (a cold build is most of the step's time), weft installed from
# deploy/ as users install it, the upstream e2e suites' CI selection and weft's own cluster
# checks, then everything removed. Any failure fails the run, a build that could not be done
# (exit 75: packages, Go modules or Debian archives not fetched or built) included, as a
# cargo build that cannot fetch its crates does. WEFT_K8S_TESTS=0 skips the step.
if [ "${WEFT_K8S_TESTS:-1}" != 0 ] && [ "$(id -u)" = 0 ]; then
  step "Kubernetes cluster: build, up, upstream e2e (CI selection) + weft cluster checks, down"
  bash scripts/k8s-cluster.sh down >/dev/null 2>&1 || true # leftovers of an earlier run
  set +e
  bash scripts/k8s-cluster.sh up
  up=$?
  k8s=$up
  if [ "$up" = 0 ]; then
    bash scripts/k8s-cluster.sh test
    k8s=$?
  fi
  bash scripts/k8s-cluster.sh down
  down=$?
  set -e
  if [ "$up" = 75 ]; then
    echo "Kubernetes cluster tests FAILED: the cluster's programs or images could not be built (see above)" >&2
    exit 1
  elif [ "$k8s" != 0 ]; then
    echo "Kubernetes cluster tests FAILED (exit $k8s; results in the log above)" >&2
    exit 1
  elif [ "$down" != 0 ]; then
    echo "Kubernetes cluster: 'down' could not remove everything (exit $down)" >&2
    exit 1
  fi
  step "Kubernetes cluster tests passed"
else
  echo "note: Kubernetes cluster tests skipped (WEFT_K8S_TESTS=0 or not root)" >&2
fi

step "done"
