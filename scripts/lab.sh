#!/usr/bin/env bash
# The README's first command: everything a fresh machine needs for `weft lab`, then the lab.
# Installs what the lab uses and is missing (Debian/Ubuntu: iproute2 for the namespaces,
# nftables for the routers' pod guard, policy and masquerade tables; nothing else: the lab
# probes pods with its own ICMP echo), builds weft and its CNI plugin (release), and runs
# `weft lab ARGS` (default `up --nodes 3`). Needs root and Rust (cargo).
#   bash scripts/lab.sh                  # up --nodes 3
#   bash scripts/lab.sh up --nodes 5 --no-password
#   bash scripts/lab.sh down
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
  echo "weft lab needs root (it creates network namespaces): run it with sudo" >&2
  exit 1
fi
command -v cargo >/dev/null || {
  echo "cargo not found: install Rust (https://rustup.rs, or Debian's cargo package)" >&2
  exit 1
}
missing=()
command -v ip >/dev/null || missing+=(iproute2)
command -v nft >/dev/null || missing+=(nftables)
if [ ${#missing[@]} -gt 0 ]; then
  if command -v apt-get >/dev/null; then
    echo "installing ${missing[*]} (apt-get)" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "weft lab needs these packages, not installed here: ${missing[*]}" >&2
    exit 1
  fi
fi
cargo build --release -p weft -p weft-cni
if [ $# -eq 0 ]; then set -- up --nodes 3; fi
exec ./target/release/weft lab "$@"
