# shellcheck shell=bash
# The cluster on this machine: nodes, underlay, control plane, node components. Sourced by
# scripts/k8s-cluster.sh.
#
# A node is a network namespace ($PREFIX-NODE) plus a mount namespace of its own, held open
# by a "holder" process (sleep) that every process of the node joins with nsenter. The
# mount namespace gives the node private copies of the directories a node owns:
#   /run  /tmp  /var/log  /var/lib/kubelet  /var/lib/containerd  /var/lib/weft  /var/lib/cni
#   /etc/cni/net.d  /opt/cni/bin
# each a bind mount of $STATE/nodes/NODE/<dir>; everything else (/usr, /sys/fs/cgroup,
# /dev) is the machine's. Not `ip netns exec`: it remounts /sys, and the cgroup mounts the
# kubelet and runc need vanish with it.
#
# Underlay, like `weft lab`'s: each segment is a bridge in a switch namespace
# ($PREFIX-swK, 10.202.K.0/24, the bridge itself at .1 as every node's default gateway,
# which forwards nothing); each node has a veth on every segment it is on.
#   flat  (default): cp, w1, w2 on one segment.
#   segments: cp and w1 on segment 0, w2 on segment 1; cp is on both and routes between them
#          (w1 and w2 route only the other segment through it),
#          but drops weft's UDP ports (6783-6785) there, like a firewall between two sites
#          that lets only the cluster's own traffic through: w1 and w2 reach each other (and
#          the API server) through cp, and their weft routers must relay through cp's.
#
# Every process of the cluster is in cgroups under $PREFIX (the kubelets' cgroupRoots are
# /$PREFIX/NODE; the daemons are in /$PREFIX/daemons/NODE), so that `down` finds them all,
# freezes, kills and removes them whatever state a failure left.

CGROUP_ROOT=/sys/fs/cgroup
# The directories each node has of its own: host path -> name under $STATE/nodes/NODE.
NODE_DIRS=(/run:run /tmp:tmp /var/log:log /var/lib/kubelet:kubelet /var/lib/containerd:containerd
  /var/lib/weft:weft /var/lib/cni:cni-cache /etc/cni/net.d:cni-conf /opt/cni/bin:cni-bin)

topology_init() {
  NODES=(cp w1 w2)
  declare -gA NODE_IP NODE_LINKS NODE_ROUTES
  case $TOPOLOGY in
    flat)
      SEGMENTS=(0)
      NODE_LINKS=([cp]="0:10.202.0.10" [w1]="0:10.202.0.11" [w2]="0:10.202.0.12")
      NODE_ROUTES=([cp]="default via 10.202.0.1" [w1]="default via 10.202.0.1" [w2]="default via 10.202.0.1")
      ;;
    segments | relay) # relay: its first name
      TOPOLOGY=segments
      SEGMENTS=(0 1)
      NODE_LINKS=([cp]="0:10.202.0.10 1:10.202.1.10" [w1]="0:10.202.0.11" [w2]="1:10.202.1.12")
      # Only the other segment through cp; the default route is the segment's switch, which
      # forwards nothing: were cp w1's default gateway, w1's traffic to a Service IP that its
      # own kube-proxy has not programmed would be NATed by cp's kube-proxy instead.
      NODE_ROUTES=([cp]="default via 10.202.0.1"
        [w1]="default via 10.202.0.1;10.202.1.0/24 via 10.202.0.10"
        [w2]="default via 10.202.1.1;10.202.0.0/24 via 10.202.1.10")
      ;;
    *) die "topology $TOPOLOGY: flat or segments" ;;
  esac
  local n
  for n in "${NODES[@]}"; do
    NODE_IP[$n]=${NODE_LINKS[$n]%% *}
    NODE_IP[$n]=${NODE_IP[$n]#*:}
  done
  API_IP=${NODE_IP[cp]}
}

ns() { echo "$PREFIX-$1"; }
holder_pid() { cat "$STATE/nodes/$1/holder.pid"; }
# on NODE CMD...: runs CMD inside the node (its network and mount namespaces).
on() {
  local node=$1
  shift
  nsenter -t "$(holder_pid "$node")" -m -n -- "$@"
}

# --- machine-wide settings: raised for the cluster, restored by `down` -----------------------
# The kubelet sets some kernel parameters (vm.overcommit_memory, kernel.panic,
# kernel.panic_on_oops, ...) machine-wide when it starts, and several kubelets and
# containerds need more inotify instances than the default 128.
MACHINE_SYSCTLS=(vm/overcommit_memory vm/panic_on_oom kernel/panic kernel/panic_on_oops
  kernel/keys/root_maxkeys kernel/keys/root_maxbytes fs/inotify/max_user_instances
  fs/inotify/max_user_watches)

save_sysctls() {
  [ -f "$STATE/sysctls.saved" ] && return
  local s
  for s in "${MACHINE_SYSCTLS[@]}"; do
    printf '%s %s\n' "$s" "$(cat "/proc/sys/$s")"
  done > "$STATE/sysctls.saved"
  (( $(cat /proc/sys/fs/inotify/max_user_instances) >= 1024 )) || echo 1024 > /proc/sys/fs/inotify/max_user_instances
  (( $(cat /proc/sys/fs/inotify/max_user_watches) >= 524288 )) || echo 524288 > /proc/sys/fs/inotify/max_user_watches
}

restore_sysctls() {
  [ -f "$STATE/sysctls.saved" ] || return 0
  local s v
  while read -r s v; do
    [ "$(cat "/proc/sys/$s")" = "$v" ] || echo "$v" > "/proc/sys/$s" || log "could not restore $s=$v"
  done < "$STATE/sysctls.saved"
  rm -f "$STATE/sysctls.saved"
}

# --- cgroups ---------------------------------------------------------------------------------
cgroup_hierarchies() { awk '$3 == "cgroup" || $3 == "cgroup2" { print $2 }' /proc/mounts | grep "^$CGROUP_ROOT/"; }

# mk_cgroup PATH: creates $PREFIX/PATH in every hierarchy (cpuset ones get the parent's CPUs
# and memory nodes, without which no task can join).
mk_cgroup() {
  local h d part cur
  for h in $(cgroup_hierarchies); do
    cur=$h
    for part in $PREFIX ${1//\// }; do
      d=$cur/$part
      if [ ! -d "$d" ]; then
        mkdir "$d"
        if [ -f "$d/cpuset.cpus" ]; then
          cat "$cur/cpuset.cpus" > "$d/cpuset.cpus"
          cat "$cur/cpuset.mems" > "$d/cpuset.mems"
        fi
      fi
      cur=$d
    done
  done
}

# cgroup_procs: every process in any $PREFIX cgroup.
cgroup_procs() {
  local h
  for h in $(cgroup_hierarchies); do
    [ -d "$h/$PREFIX" ] && find "$h/$PREFIX" -name cgroup.procs -exec cat {} + 2>/dev/null
  done | sort -un
}

# --- starting processes ----------------------------------------------------------------------
# start NODE NAME CMD...: runs CMD in the background inside NODE (or on this machine for
# NODE=host), in the cgroup /$PREFIX/daemons/NODE, logging to $LOGS/NODE-NAME.log.
start() {
  local node=$1 name=$2
  shift 2
  mk_cgroup "daemons/$node"
  local join="" h
  for h in $(cgroup_hierarchies); do join+=" $h/$PREFIX/daemons/$node/cgroup.procs"; done
  local enter=()
  [ "$node" = host ] || enter=(nsenter -t "$(holder_pid "$node")" -m -n --)
  # setsid: its own session, so that nothing of the harness's terminal reaches it.
  # shellcheck disable=SC2016 # $$ and "$@" are the inner shell's
  setsid "${enter[@]}" /bin/sh -c 'for f in '"$join"'; do echo $$ > "$f"; done; exec "$@"' sh "$@" \
    >> "$LOGS/$node-$name.log" 2>&1 < /dev/null &
  echo $! > "$STATE/pids/$node-$name"
  printf '%s\0' "$@" > "$STATE/pids/$node-$name.cmd" # for restart
}

# restart NODE NAME: starts a stopped component again with its last command line.
restart() {
  local cmd=()
  mapfile -d '' -t cmd < "$STATE/pids/$1-$2.cmd"
  start "$1" "$2" "${cmd[@]}"
}

# stop NODE NAME: SIGTERM, then SIGKILL after 10 s.
stop() {
  local f=$STATE/pids/$1-$2 pid
  [ -f "$f" ] || return 0
  pid=$(cat "$f")
  kill "$pid" 2>/dev/null || true
  local k
  for k in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$f"
}

running() { [ -f "$STATE/pids/$1-$2" ] && kill -0 "$(cat "$STATE/pids/$1-$2")" 2>/dev/null; }

# --- underlay and nodes ----------------------------------------------------------------------
net_up() {
  local k n
  for k in "${SEGMENTS[@]}"; do
    ip netns add "$(ns "sw$k")"
    ip -n "$(ns "sw$k")" link set lo up
    ip -n "$(ns "sw$k")" link add br0 type bridge
    ip -n "$(ns "sw$k")" addr add "10.202.$k.1/24" dev br0
    ip -n "$(ns "sw$k")" link set br0 up
  done
  for n in "${NODES[@]}"; do node_net_up "$n"; done
}

# node_net_up NODE: the node's network namespace, its legs on the segments, its routes.
node_net_up() {
  local n=$1 link seg addr
  ip netns add "$(ns "$n")"
  ip -n "$(ns "$n")" link set lo up
  for link in ${NODE_LINKS[$n]}; do
    seg=${link%%:*} addr=${link#*:}
    ip -n "$(ns "sw$seg")" link add "$n" type veth peer name "eth$seg" netns "$(ns "$n")"
    ip -n "$(ns "sw$seg")" link set "$n" master br0 up
    ip -n "$(ns "$n")" addr add "$addr/24" dev "eth$seg"
    ip -n "$(ns "$n")" link set "eth$seg" up
  done
  local route routes
  IFS=';' read -r -a routes <<<"${NODE_ROUTES[$n]}"
  for route in "${routes[@]}"; do
    # shellcheck disable=SC2086 # a route is a word list
    ip -n "$(ns "$n")" route add $route
  done
  # What every Kubernetes node needs (kubeadm checks it): forwarding on.
  # (bridge-nf-call-iptables is 1 in a new namespace already.)
  ip netns exec "$(ns "$n")" sysctl -q -w net.ipv4.ip_forward=1
  if [ "$TOPOLOGY" = segments ] && [ "$n" = cp ]; then
    # cp routes between the segments but passes none of weft's UDP ports.
    ip netns exec "$(ns cp)" nft -f - <<EOF
table inet $PREFIX-underlay {
  chain forward {
    type filter hook forward priority -10; policy accept;
    iifname { "eth0", "eth1" } oifname { "eth0", "eth1" } udp dport { 6783, 6784, 6785 } counter drop
  }
}
EOF
  fi
}

node_dirs_up() {
  local n=$1 pair dst
  for pair in "${NODE_DIRS[@]}"; do
    mkdir -p "$STATE/nodes/$n/${pair#*:}"
  done
  chmod 1777 "$STATE/nodes/$n/tmp"
  mkdir -p "$STATE/nodes/$n/etc"
  # Mount points the machine lacks are made, and recorded so that `down` removes them.
  for pair in "${NODE_DIRS[@]}"; do
    dst=${pair%%:*}
    if [ ! -d "$dst" ]; then
      local missing=$dst
      while [ ! -d "$(dirname "$missing")" ]; do missing=$(dirname "$missing"); done
      mkdir -p "$dst"
      grep -qxF "$missing" "$STATE/created-dirs" 2>/dev/null || echo "$missing" >> "$STATE/created-dirs"
    fi
  done
}

# under_node_dir PATH: prints the node directory (NODE_DIRS) that PATH is in, if any.
under_node_dir() {
  local pair d
  for pair in "${NODE_DIRS[@]}"; do
    d=${pair%%:*}
    case $1/ in "$d"/*) echo "$d"; return 0 ;; esac
  done
  return 1
}

# The holder: enters the node's network namespace, makes a private mount namespace with the
# node's directories bound in, and sleeps; the node's processes join it (`on`, `start`).
# The build output (binaries, image archives) may lie in one of those directories (a
# checkout under /tmp, WEFT_K8S_CACHE=/tmp/...): it is bound in first under the node's state
# and bound back over the node's private copy, so that the node sees the machine's.
holder_up() {
  local n=$1 binds="" pair
  if under_node_dir "$CACHE" >/dev/null; then
    mkdir -p "$STATE/nodes/$n/cache-view"
    binds+="mount --bind $CACHE $STATE/nodes/$n/cache-view; "
  fi
  for pair in "${NODE_DIRS[@]}"; do
    binds+="mount --bind $STATE/nodes/$n/${pair#*:} ${pair%%:*}; "
  done
  if under_node_dir "$CACHE" >/dev/null; then
    binds+="mkdir -p $CACHE; mount --bind $STATE/nodes/$n/cache-view $CACHE; "
  fi
  mk_cgroup "daemons/$n"
  local join="" h
  for h in $(cgroup_hierarchies); do join+=" $h/$PREFIX/daemons/$n/cgroup.procs"; done
  rm -f "$STATE/nodes/$n/holder.ready"
  setsid nsenter --net="/run/netns/$(ns "$n")" -- unshare --mount --propagation private -- \
    /bin/sh -c "for f in $join; do echo \$\$ > \$f; done; set -e; $binds touch $STATE/nodes/$n/holder.ready; exec sleep infinity" \
    >> "$LOGS/$n-holder.log" 2>&1 < /dev/null &
  echo $! > "$STATE/nodes/$n/holder.pid"
  wait_for 10 "node $n: namespaces ready" test -f "$STATE/nodes/$n/holder.ready"
}

# --- configuration files ---------------------------------------------------------------------
write_pki() {
  local args=() n
  for n in "${NODES[@]}"; do args+=(--node "$n=${NODE_IP[$n]}"); done
  "$BIN/weft-k8s-tool" pki --dir "$PKI" --apiserver "$API_IP" --service-ip "$API_SERVICE_IP" \
    --cluster-domain "$CLUSTER_DOMAIN" "${args[@]}"
  # The admin's kubeconfigs: one for this machine (through the API proxy), one for inside
  # the control-plane node (the e2e suite runs there).
  sed "s|server: https://.*|server: https://127.0.0.1:$API_PORT|" "$PKI/admin.kubeconfig" > "$STATE/admin.kubeconfig"
  cp "$PKI/admin.kubeconfig" "$STATE/admin-in-cluster.kubeconfig"
  chmod 600 "$STATE/admin.kubeconfig" "$STATE/admin-in-cluster.kubeconfig"
}

write_node_config() {
  local n=$1 d=$STATE/nodes/$1/etc
  # No upstream DNS exists inside the cluster's namespaces: pods with dnsPolicy Default
  # (weft's, CoreDNS's) get a resolv.conf without name servers.
  echo "# weft-k8s: this node has no upstream name server" > "$d/resolv.conf"
  cat > "$d/containerd.toml" <<EOF
# containerd of node $n (config version 3: containerd 2.x). Its root and state are the
# node's own /var/lib/containerd and /run/containerd (bind mounts, see cluster.sh).
version = 3
root = "/var/lib/containerd"
state = "/run/containerd"
[grpc]
  address = "/run/containerd/containerd.sock"
[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = "$PAUSE_IMAGE"
  [plugins.'io.containerd.cri.v1.images'.registry]
    config_path = ""
[plugins.'io.containerd.cri.v1.runtime']
  enable_selinux = false
  # This machine's root lacks CAP_SYS_RESOURCE (the sandbox drops it): an oom_score_adj
  # below containerd's own (the kubelet asks -998 for sandboxes) cannot be set; keep the
  # kubelet's scores but no lower than that.
  restrict_oom_score_adj = true
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = "runc"
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        BinaryName = "$(command -v runc)"
        SystemdCgroup = false
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ["/opt/cni/bin"]
    conf_dir = "/etc/cni/net.d"
EOF
  cat > "$d/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: ${NODE_IP[$n]}
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $PKI/ca.crt}
authorization: {mode: Webhook}
tlsCertFile: $PKI/kubelet-$n-serving.crt
tlsPrivateKeyFile: $PKI/kubelet-$n-serving.key
containerRuntimeEndpoint: unix:///run/containerd/containerd.sock
# This machine has cgroup v1 and no systemd; several kubelets share it, each with a cgroup
# root of its own.
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: /$PREFIX/$n
failSwapOn: false
clusterDNS: [$DNS_SERVICE_IP]
clusterDomain: $CLUSTER_DOMAIN
resolvConf: $d/resolv.conf
# The nodes share one disk: evict only when it is really full, and never collect the
# imported images (no registry to pull them again from).
evictionHard: {memory.available: 100Mi, nodefs.available: 1%, imagefs.available: 1%, nodefs.inodesFree: 1%}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
EOF
  cat > "$d/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $PKI/kube-proxy.kubeconfig}
hostnameOverride: $n
mode: iptables
clusterCIDR: $CLUSTER_CIDR
metricsBindAddress: 127.0.0.1:10249
healthzBindAddress: 0.0.0.0:10256
# nf_conntrack_max is machine-wide: leave it alone.
conntrack: {maxPerCore: 0, min: 0}
EOF
}

# --- control plane ---------------------------------------------------------------------------
start_etcd() {
  mkdir -p "$STATE/etcd"
  # --unsafe-no-fsync: a test cluster on a shared disk; nothing here must survive a crash.
  start cp etcd "$BIN/etcd" --name cp --data-dir "$STATE/etcd" \
    --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
    --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
    --initial-cluster cp=http://127.0.0.1:2380 --unsafe-no-fsync --log-level warn
  wait_for 60 "etcd healthy" on cp curl -sf http://127.0.0.1:2379/health
}

start_apiserver() {
  start cp kube-apiserver "$BIN/kube-apiserver" \
    --advertise-address="$API_IP" --bind-address=0.0.0.0 --secure-port=6443 \
    --etcd-servers=http://127.0.0.1:2379 \
    --tls-cert-file="$PKI/apiserver.crt" --tls-private-key-file="$PKI/apiserver.key" \
    --client-ca-file="$PKI/ca.crt" \
    --authorization-mode=Node,RBAC \
    --enable-admission-plugins=NodeRestriction \
    --service-cluster-ip-range="$SERVICE_CIDR" \
    --service-account-issuer="https://kubernetes.default.svc.$CLUSTER_DOMAIN" \
    --service-account-key-file="$PKI/sa.pub" \
    --service-account-signing-key-file="$PKI/sa.key" \
    --kubelet-client-certificate="$PKI/apiserver-kubelet-client.crt" \
    --kubelet-client-key="$PKI/apiserver-kubelet-client.key" \
    --kubelet-certificate-authority="$PKI/ca.crt" \
    --kubelet-preferred-address-types=InternalIP \
    --allow-privileged=true --profiling=false
  wait_for 120 "kube-apiserver ready" on cp curl -sf --cacert "$PKI/ca.crt" \
    --cert "$PKI/admin.crt" --key "$PKI/admin.key" "https://$API_IP:6443/readyz"
}

start_controllers() {
  start cp kube-controller-manager "$BIN/kube-controller-manager" \
    --kubeconfig="$PKI/kube-controller-manager.kubeconfig" \
    --authentication-kubeconfig="$PKI/kube-controller-manager.kubeconfig" \
    --authorization-kubeconfig="$PKI/kube-controller-manager.kubeconfig" \
    --bind-address=127.0.0.1 --leader-elect=false \
    --allocate-node-cidrs --cluster-cidr="$CLUSTER_CIDR" --node-cidr-mask-size="$NODE_CIDR_MASK" \
    --service-cluster-ip-range="$SERVICE_CIDR" \
    --service-account-private-key-file="$PKI/sa.key" --root-ca-file="$PKI/ca.crt" \
    --use-service-account-credentials \
    --cluster-signing-cert-file="$PKI/ca.crt" --cluster-signing-key-file="$PKI/ca.key" \
    --controllers='*,bootstrapsigner,tokencleaner' --profiling=false
  start cp kube-scheduler "$BIN/kube-scheduler" \
    --kubeconfig="$PKI/kube-scheduler.kubeconfig" \
    --authentication-kubeconfig="$PKI/kube-scheduler.kubeconfig" \
    --authorization-kubeconfig="$PKI/kube-scheduler.kubeconfig" \
    --bind-address=127.0.0.1 --leader-elect=false --profiling=false
}

# kubectl on this machine reaches the API server through 127.0.0.1:$API_PORT.
start_api_proxy() {
  start host api-proxy "$BIN/weft-k8s-tool" proxy --listen "127.0.0.1:$API_PORT" \
    --netns "/run/netns/$(ns cp)" --to "$API_IP:6443"
  wait_for 20 "API proxy on 127.0.0.1:$API_PORT" kc get --raw /readyz
}

# --- node components -------------------------------------------------------------------------
start_containerd() {
  local n=$1
  start "$n" containerd env PATH="$BIN:$PATH" "$BIN/containerd" --config "$STATE/nodes/$n/etc/containerd.toml"
  wait_for 60 "node $n: containerd up" on "$n" "$BIN/ctr" --address /run/containerd/containerd.sock version
}

# Every image into the node's containerd, under its name, pinned (never garbage-collected).
# ctr's own warnings (cgroup v1 is deprecated, ...) go to the node's ctr log.
node_ctr() {
  local n=$1
  shift
  on "$n" "$BIN/ctr" --address /run/containerd/containerd.sock -n k8s.io "$@" 2>> "$LOGS/$n-ctr.log"
}

import_images() {
  local n=$1 tar name
  for tar in "$IMAGES"/*.tar; do
    node_ctr "$n" images import "$tar" >/dev/null
  done
  for name in $(node_ctr "$n" images ls -q | grep -v '^sha256:'); do
    node_ctr "$n" images label "$name" io.cri-containerd.pinned=pinned >/dev/null
  done
  log "node $n: images imported: $(node_ctr "$n" images ls -q | grep -cv '^sha256:')"
}

# The control-plane node takes ordinary pods too (no control-plane taint): three nodes
# for the tests' pods, and some e2e tests need three schedulable nodes.
start_kubelet() {
  local n=$1
  start "$n" kubelet env PATH="$BIN:$PATH" "$BIN/kubelet" --config "$STATE/nodes/$n/etc/kubelet.yaml" \
    --kubeconfig "$PKI/kubelet-$n.kubeconfig" --hostname-override "$n" --node-ip "${NODE_IP[$n]}" --v=2
}

start_kube_proxy() {
  local n=$1
  start "$n" kube-proxy "$BIN/kube-proxy" --config "$STATE/nodes/$n/etc/kube-proxy.yaml"
}

node_up() {
  local n=$1
  mk_cgroup "$n"
  node_dirs_up "$n"
  holder_up "$n"
  write_node_config "$n"
  start_containerd "$n"
  import_images "$n"
  start_kubelet "$n"
  start_kube_proxy "$n"
}

# node_gone NODE: the node's machine is gone: every process of it (daemons, containers)
# killed, its network namespace and its files removed. The Node object stays (the
# cluster sees a node that stopped answering). node_net_up, then node_up, bring a fresh
# machine of the same name back.
node_cgroups() {
  local h
  for h in $(cgroup_hierarchies); do
    echo "$h/$PREFIX/daemons/$1" "$h/$PREFIX/$1"
  done
}

node_gone() {
  local n=$1 d pids k
  for d in $(node_cgroups "$n"); do
    if [ -f "$d/freezer.state" ]; then echo FROZEN > "$d/freezer.state"; fi
  done
  for k in $(seq 1 50); do
    pids=$(for d in $(node_cgroups "$n"); do
      if [ -d "$d" ]; then find "$d" -name cgroup.procs -exec cat {} + 2>/dev/null; fi
    done | sort -un)
    [ -z "$pids" ] && break
    # shellcheck disable=SC2086
    kill -9 $pids 2>/dev/null || true
    for d in $(node_cgroups "$n"); do
      if [ -f "$d/freezer.state" ]; then echo THAWED > "$d/freezer.state"; fi
    done
    sleep 0.1
  done
  for d in $(node_cgroups "$n"); do
    if [ -d "$d" ]; then find "$d" -depth -type d -exec rmdir {} \; 2>/dev/null || true; fi
  done
  rm -f "$STATE"/pids/"$n"-*
  ip netns del "$(ns "$n")"
  rm -rf "${STATE:?}/nodes/$n"
}

# --- teardown --------------------------------------------------------------------------------
# Everything of the cluster, whatever state it is in; safe to run again.
teardown() {
  local h pids k
  # Stop the kubelets first so that they do not restart what dies next.
  for f in "$STATE"/pids/*-kubelet; do
    if [ -f "$f" ]; then kill "$(cat "$f")" 2>/dev/null || true; fi
  done
  # Freeze everything in our cgroups (no new forks), kill it, thaw so the kills land.
  for h in $(cgroup_hierarchies); do
    if [ -f "$h/$PREFIX/freezer.state" ]; then
      echo FROZEN > "$h/$PREFIX/freezer.state" 2>/dev/null || true
    fi
  done
  pids=$(cgroup_procs)
  # shellcheck disable=SC2086
  if [ -n "$pids" ]; then kill -9 $pids 2>/dev/null || true; fi
  for h in $(cgroup_hierarchies); do
    if [ -f "$h/$PREFIX/freezer.state" ]; then echo THAWED > "$h/$PREFIX/freezer.state" 2>/dev/null || true; fi
  done
  for k in $(seq 1 100); do
    [ -z "$(cgroup_procs)" ] && break
    # shellcheck disable=SC2046
    kill -9 $(cgroup_procs) 2>/dev/null || true
    sleep 0.1
  done
  [ -z "$(cgroup_procs)" ] || log "WARNING: processes left in cgroups $PREFIX: $(cgroup_procs | tr '\n' ' ')"
  log "down: processes gone (${SECONDS}s)"
  # Anything still in our network namespaces (should be nothing), then the namespaces.
  local netns
  for netns in $(ip netns list | awk '{print $1}' | grep "^$PREFIX-" || true); do
    pids=$(ip netns pids "$netns" 2>/dev/null || true)
    # shellcheck disable=SC2086
    if [ -n "$pids" ]; then kill -9 $pids 2>/dev/null || true; fi
  done
  sleep 0.2
  for netns in $(ip netns list | awk '{print $1}' | grep "^$PREFIX-" || true); do
    ip netns del "$netns" || log "WARNING: could not delete network namespace $netns"
  done
  log "down: network namespaces gone (${SECONDS}s)"
  # The cgroups, deepest first.
  for h in $(cgroup_hierarchies); do
    if [ -d "$h/$PREFIX" ]; then find "$h/$PREFIX" -depth -type d -exec rmdir {} \; 2>/dev/null || true; fi
    [ -d "$h/$PREFIX" ] && log "WARNING: cgroup $h/$PREFIX is left"
  done
  restore_sysctls
  # Mount points made on the machine for the nodes (only if empty).
  if [ -f "$STATE/created-dirs" ]; then
    tac "$STATE/created-dirs" | while read -r d; do
      find "$d" -depth -type d -empty -delete 2>/dev/null || true
    done
  fi
  # The nodes' mounts lived in their mount namespaces, gone with their processes: what is
  # under $STATE is plain files now. Refuse to delete if anything is still mounted there.
  if grep -q " $STATE" /proc/mounts; then
    log "WARNING: still mounted under $STATE:"; grep " $STATE" /proc/mounts >&2
    return 1
  fi
  rm -rf "$STATE"
}
