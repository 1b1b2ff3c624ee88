#!/usr/bin/env bash
# Builds a kind node image without any registry: localhost/recserve/kind-node:$K8S_VERSION.
# Users with registry access use the official kindest/node image instead (hack/kind.sh
# tries it first). Needs podman (hack/images.sh --engine) and the binaries of
# `hack/tools.sh --with-kind` (built when missing: ~15 min cold on 2 cores, then cached).
#
#   hack/kind-node-image.sh          build it when missing or when its inputs changed; print its name
#
# What it holds (hack/kind/): a kindest/base look-alike from Debian's packages
# (base.Dockerfile, with kind's own node files from its Go module), the Kubernetes node
# binaries, the control-plane images kubeadm asks for (thin images over binaries built
# here, component.Dockerfile) in one archive containerd imports at boot, and a pod network
# service in place of kindnetd (pod-network.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
log() { printf '[kind-node] %s\n' "$*" >&2; }

K8S_VERSION=${K8S_VERSION:-v1.34.4}
NODE=localhost/recserve/kind-node:$K8S_VERSION
KIND_BASE=localhost/recserve/kind-base:bookworm
ENGINE=$(bash hack/images.sh --engine)
[ "$ENGINE" = podman ] || { log "the offline node image is built with podman; found $ENGINE"; exit 1; }
export CONTAINERS_CONF=${CONTAINERS_CONF:-$PWD/hack/containers/containers.conf}

tools_env=$(mktemp)
trap 'rm -f "$tools_env"' EXIT
TOOLS_ENV_OUT=$tools_env bash hack/tools.sh --with-kind
# shellcheck disable=SC1090  # KEY=PATH lines
. "$tools_env"

# The image is rebuilt only when what goes into it changed.
stamp=$( { cat hack/kind/* ; echo "$K8S_VERSION"; cksum "$RECSERVE_KUBELET" "$RECSERVE_KUBE_APISERVER" "$RECSERVE_ETCD" "$RECSERVE_COREDNS" | cut -d' ' -f1,2; } | sha256sum | cut -c1-16)
if [ "$(podman image inspect -f '{{index .Labels "recserve.stamp"}}' "$NODE" 2>/dev/null)" = "$stamp" ]; then
  echo "$NODE"; exit 0
fi
start=$SECONDS
debian=$(bash hack/images.sh --local-base)

log "base image $KIND_BASE (Debian's containerd, runc, systemd; kind's node files)"
podman build -q -f "$PWD/hack/kind/base.Dockerfile" --build-arg "BASE=$debian" -t "$KIND_BASE" \
  "$RECSERVE_KIND_SOURCE/images/base" >/dev/null

ctx=$(mktemp -d)
trap 'rm -f "$tools_env"; rm -rf "$ctx"' EXIT
mkdir -p "$ctx/bin"
cp "$RECSERVE_KUBELET" "$RECSERVE_KUBEADM" "$RECSERVE_KUBECTL" "$ctx/bin/"
cp hack/kind/pod-network.sh hack/kind/*.service hack/kind/default-cni.yaml "$ctx/"

# component_dir NAME BINARY: the context folder c/NAME, with the binary and an
# `entrypoint` link to it (component.Dockerfile)
component_dir() {
  mkdir -p "$ctx/c/$1"
  cp "$2" "$ctx/c/$1/$1"
  ln -sf "$1" "$ctx/c/$1/entrypoint"
}
component_dir kube-apiserver "$RECSERVE_KUBE_APISERVER"
component_dir kube-controller-manager "$RECSERVE_KUBE_CONTROLLER_MANAGER"
component_dir kube-scheduler "$RECSERVE_KUBE_SCHEDULER"
component_dir kube-proxy "$RECSERVE_KUBE_PROXY"
component_dir etcd "$RECSERVE_ETCD"
component_dir coredns "$RECSERVE_COREDNS"
log "pause from Kubernetes' pause.c (gcc -static)"
gcc -Os -static -o "$ctx/pause" -DVERSION="v3.10-recserve" "$RECSERVE_K8S_SOURCE/build/pause/linux/pause.c"
component_dir pause "$ctx/pause"

log "kube-proxy's base (iptables, conntrack)"
podman build -q -f "$PWD/hack/kind/iptables.Dockerfile" --build-arg "BASE=$debian" -t localhost/recserve/iptables:bookworm "$ctx" >/dev/null
images=()
for name in $("$RECSERVE_KUBEADM" config images list --kubernetes-version "$K8S_VERSION") registry.k8s.io/pause:3.10; do
  short=${name##*/}; short=${short%%:*}
  base=scratch
  [ "$short" != kube-proxy ] || base=localhost/recserve/iptables:bookworm
  log "image $name"
  podman build -q -f "$PWD/hack/kind/component.Dockerfile" --build-arg "BASE=$base" \
    --build-arg "COMPONENT=$short" -t "$name" "$ctx" >/dev/null
  images+=("$name")
done
podman save -q --multi-image-archive -o "$ctx/images.tar" "${images[@]}"

log "node image $NODE"
podman build -q -f "$PWD/hack/kind/node.Dockerfile" --build-arg "BASE=$KIND_BASE" \
  --build-arg "K8S_VERSION=$K8S_VERSION" --label "recserve.stamp=$stamp" -t "$NODE" "$ctx" >/dev/null
log "built $NODE in $((SECONDS - start)) s ($(podman image inspect -f '{{.Size}}' "$NODE" | awk '{printf "%d MB", $1/1e6}'))"
echo "$NODE"
