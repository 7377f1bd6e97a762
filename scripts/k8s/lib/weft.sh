# shellcheck shell=bash
# Installing weft on the cluster the way docs/kubernetes.md tells users to, then cluster DNS.
# Sourced by scripts/k8s-cluster.sh.

# The docs' install steps, word for word but for the image: it is already in every node's
# containerd under the manifest's name (weft:0.1.0), as `kind load docker-image` would
# leave it, so step 1 (build and push) and the sed of step 3 are not needed.
install_weft() {
  log "installing weft from deploy/ (docs/kubernetes.md, Install)"
  kc apply -f "$REPO/deploy/00-namespace.yaml"
  kc -n weft create secret generic weft-password \
    --from-literal=password="$(head -c 32 /dev/urandom | base64)"
  kc apply -f "$REPO/deploy/"
  # Step 4 of the docs: the checks.
  kc -n weft rollout status ds/weft --timeout=300s
  wait_for 180 "every Node Ready with NetworkUnavailable=False" nodes_ready
  kc -n weft get pods -o wide
  kc get nodes -o custom-columns=NAME:.metadata.name,NET:'.status.conditions[?(@.type=="NetworkUnavailable")].status',READY:'.status.conditions[?(@.type=="Ready")].status',PODCIDR:.spec.podCIDR
  wait_for 120 "every router connected to every other node" mesh_complete
  local pod
  pod=$(kc -n weft get pods -l app.kubernetes.io/name=weft --field-selector spec.nodeName=cp -o name)
  kc -n weft exec "$pod" -- weft status
}

# nodes_ready: every Node Ready and NetworkUnavailable=False.
nodes_ready() {
  local out
  out=$(kc get nodes -o jsonpath='{range .items[*]}{.metadata.name} {.status.conditions[?(@.type=="Ready")].status} {.status.conditions[?(@.type=="NetworkUnavailable")].status}{"\n"}{end}')
  [ "$(echo "$out" | grep -c .)" = "${#NODES[@]}" ] || return 1
  ! echo "$out" | grep -qv ' True False$'
}

# mesh_complete: every weft pod's router reaches every other node's router: as a peer it
# can route to and, where the underlay lets the two talk directly (all of them in the flat
# topology), over an established connection of its own.
mesh_complete() {
  local pod others=$(( ${#NODES[@]} - 1 )) json reach est
  for pod in $(kc -n weft get pods -l app.kubernetes.io/name=weft -o name); do
    json=$(kc -n weft exec "$pod" -- weft status --json) || return 1
    reach=$(jq '. as $s | [.peers[] | select(.name != $s.name and .reachable)] | length' <<<"$json")
    est=$(jq '[.connections[] | select(.state == "established")] | length' <<<"$json")
    [ "$reach" -ge "$others" ] || return 1
    if [ "$TOPOLOGY" = flat ]; then [ "$est" -ge "$others" ] || return 1; fi
  done
}

install_coredns() {
  log "installing CoreDNS ($COREDNS_IMAGE)"
  sed -e "s|@IMAGE@|$COREDNS_IMAGE|" -e "s|@DNS_IP@|$DNS_SERVICE_IP|" "$K8S_MOD/manifests/coredns.yaml" | kc apply -f -
  kc -n kube-system rollout status deploy/coredns --timeout=180s
}
