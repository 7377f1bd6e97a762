#!/bin/sh
# weft-install-cni: installs the weft CNI plugin and network configuration on the node.
# Run by the DaemonSet's init container, with the node's /opt/cni/bin and /etc/cni/net.d
# mounted at /host/opt/cni/bin and /host/etc/cni/net.d (CNI_BIN_DIR / CNI_CONF_DIR to change).
#
# Every file is copied under a hidden temporary name in its target directory and renamed
# into place: rename(2) is atomic, so the kubelet and the container runtime see the old file
# or the new one, never a partial copy, and a running plugin keeps its old binary.
set -eu

BIN_DIR=${CNI_BIN_DIR:-/host/opt/cni/bin}
CONF_DIR=${CNI_CONF_DIR:-/host/etc/cni/net.d}
SRC_PLUGIN=${WEFT_NET_BINARY:-/usr/local/bin/weft-net}
SRC_CONF=${WEFT_CONFLIST:-/usr/local/share/weft/10-weft.conflist}
REF_PLUGINS=${REFERENCE_PLUGINS_DIR:-/usr/lib/cni}
CONF_NAME=10-weft.conflist

# install_atomic SRC DST MODE
install_atomic() {
    tmp="$(dirname "$2")/.$(basename "$2").weft-tmp"
    rm -f "$tmp"
    cp "$1" "$tmp"
    chmod "$3" "$tmp"
    mv -f "$tmp" "$2"
}

mkdir -p "$BIN_DIR" "$CONF_DIR"
install_atomic "$SRC_PLUGIN" "$BIN_DIR/weft-net" 755
echo "weft-install-cni: installed $BIN_DIR/weft-net"

# The conflist chains portmap and bandwidth (and runtimes use loopback for "lo"). Most nodes
# have them already; the node's own copies are never replaced.
for p in portmap bandwidth loopback; do
    if [ ! -e "$BIN_DIR/$p" ]; then
        if [ -x "$REF_PLUGINS/$p" ]; then
            install_atomic "$REF_PLUGINS/$p" "$BIN_DIR/$p" 755
            echo "weft-install-cni: installed the reference plugin $BIN_DIR/$p (the node had none)"
        else
            echo "weft-install-cni: WARNING: $BIN_DIR/$p is missing and this image has none: pods will fail to start" >&2
        fi
    fi
done

install_atomic "$SRC_CONF" "$CONF_DIR/$CONF_NAME" 644
echo "weft-install-cni: installed $CONF_DIR/$CONF_NAME"

# The runtime uses the configuration whose file name sorts first: another network's would
# win over weft's.
for f in "$CONF_DIR"/*.conf "$CONF_DIR"/*.conflist "$CONF_DIR"/*.json; do
    [ -e "$f" ] || continue
    name=$(basename "$f")
    [ "$name" = "$CONF_NAME" ] && continue
    if [ "$(printf '%s\n%s\n' "$name" "$CONF_NAME" | LC_ALL=C sort | head -n 1)" = "$name" ]; then
        echo "weft-install-cni: WARNING: $f sorts before $CONF_NAME and will be used instead of weft; remove the old network's configuration (see docs/kubernetes.md, migrating)" >&2
    fi
done
