#!/usr/bin/env bash
# Builds the local control plane's binaries from Go modules into a versioned cache
# outside the repo, only what is missing, and prints where they are.
#
#   hack/tools.sh            build what is missing (etcd, kube-*, kubectl, kwok, prometheus, helm), print KEY=PATH lines
#   hack/tools.sh --check    exit 1 if something is missing, build nothing
#   hack/tools.sh --with-keda   also the opt-in KEDA operator and metrics adapter (or RECSERVE_TOOLS_KEDA=1)
#   hack/tools.sh --with-kind   also what a kind cluster needs offline (or RECSERVE_TOOLS_KIND=1):
#                               kind, kubelet, kubeadm, kube-proxy, coredns, and the module
#                               sources of kind (its node base files) and Kubernetes (pause.c)
#   hack/tools.sh --with-sbom   also syft, which lists what is in the images (hack/sbom.sh;
#                               or RECSERVE_TOOLS_SBOM=1)
#
# KEDA (docs/keda.md) is never built by default: its ~1100-module dependency graph alone
# takes long enough on 2 cores to push the default cold build past CI's limit.
#
# Where a binary comes from, first match wins:
#   1. an explicit path:     RECSERVE_<NAME>=/path (e.g. RECSERVE_KUBE_APISERVER)
#   2. envtest's convention: $KUBEBUILDER_ASSETS/<name>
#   3. the cache:            $RECSERVE_TOOLS_CACHE (default ~/.cache/recserve)/<tool>-<version>/bin
#   4. a build from the Go module proxy into that cache.
# Nothing built here is committed. Cold builds take tens of minutes on 2 cores.
set -euo pipefail

K8S_VERSION=${K8S_VERSION:-v1.34.4}
ETCD_VERSION=${ETCD_VERSION:-v3.6.16}
KWOK_VERSION=${KWOK_VERSION:-v0.7.0}
HELM_VERSION=${HELM_VERSION:-v3.18.6}
# Prometheus 3.7.3 (its Go module is tagged v0.307.3). Debian's package cannot be used:
# it is built without kubernetes_sd_configs.
PROMETHEUS_VERSION=${PROMETHEUS_VERSION:-v0.307.3}
_p=${PROMETHEUS_VERSION#v0.}  # v0.307.3 -> Prometheus 3.7.3
PROMETHEUS_APP_VERSION="${_p:0:1}.$((10#${_p:1:2})).${_p#*.}"
CACHE=${RECSERVE_TOOLS_CACHE:-$HOME/.cache/recserve}
KEDA_VERSION=${KEDA_VERSION:-v2.21.0}
KIND_VERSION=${KIND_VERSION:-v0.33.0}
# kubeadm v1.34 asks for CoreDNS v1.12.1
COREDNS_VERSION=${COREDNS_VERSION:-v1.12.1}
SYFT_VERSION=${SYFT_VERSION:-v1.57.2}
CHECK_ONLY=0
WITH_KEDA=${RECSERVE_TOOLS_KEDA:-0}
WITH_KIND=${RECSERVE_TOOLS_KIND:-0}
WITH_SBOM=${RECSERVE_TOOLS_SBOM:-0}
for arg in "$@"; do
  case $arg in
    --check) CHECK_ONLY=1 ;;
    --with-keda) WITH_KEDA=1 ;;
    --with-kind) WITH_KIND=1 ;;
    --with-sbom) WITH_SBOM=1 ;;
    *) printf '[tools] unknown argument: %s\n' "$arg" >&2; exit 2 ;;
  esac
done

export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-buildvcs=false
log() { printf '[tools] %s\n' "$*" >&2; }

# Staging modules of k8s.io/kubernetes, replaced by their published v0.x versions.
STAGING="api apiextensions-apiserver apimachinery apiserver cli-runtime client-go
cloud-provider cluster-bootstrap code-generator component-base component-helpers
controller-manager cri-api cri-client csi-translation-lib dynamic-resource-allocation
endpointslice externaljwt kms kube-aggregator kube-controller-manager kube-proxy
kube-scheduler kubectl kubelet metrics mount-utils pod-security-admission sample-apiserver"

# resolve NAME ENVVAR CACHEDIR -> prints path if found
resolve() {
  local name=$1 var=$2 dir=$3
  local explicit=${!var:-}
  if [ -n "$explicit" ]; then
    [ -x "$explicit" ] || { log "$var=$explicit is not an executable"; exit 2; }
    echo "$explicit"; return
  fi
  if [ -n "${KUBEBUILDER_ASSETS:-}" ] && [ -x "$KUBEBUILDER_ASSETS/$name" ]; then
    echo "$KUBEBUILDER_ASSETS/$name"; return
  fi
  if [ -x "$dir/$name" ]; then echo "$dir/$name"; fi
}

with_retries() {  # the module proxy sometimes times out; network steps get 3 tries
  local n
  for n in 1 2 3; do "$@" && return 0; log "attempt $n failed: $*"; sleep $((n * 5)); done
  return 1
}

# build_k8s OUT CMD...: Kubernetes commands (k8s.io/kubernetes/cmd/CMD) built into OUT,
# through a wrapper module whose replace lines pin the staging modules, version stamped
# as Kubernetes' own build does. Packages compile side by side (go build's default, one per
# CPU), except where memory is short: one at a time (-p 1) leaves a third of 2 cores idle
# (vmstat during a cold build), two at a time peak at a few GB.
build_k8s() {
  local out=$1 work; shift
  work=$(mktemp -d)
  local minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
  local patch=${K8S_VERSION#v1.$minor.}
  {
    echo "module recserve.local/k8s-tools"; echo; echo "go 1.24"; echo
    echo "require k8s.io/kubernetes $K8S_VERSION"; echo
    for m in $STAGING; do echo "replace k8s.io/$m => k8s.io/$m v0.$minor.$patch"; done
  } >"$work/go.mod"
  echo 'package tools' >"$work/doc.go"
  local ld="-s -w"
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld="$ld -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor"
    ld="$ld -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
  done
  local pkgs=() c
  for c in "$@"; do pkgs+=("k8s.io/kubernetes/cmd/$c"); done
  local par=() avail_kb
  avail_kb=$(awk '/^MemAvailable:/ {print $2}' /proc/meminfo 2>/dev/null || echo 0)
  [ "${avail_kb:-0}" -ge $((6 * 1024 * 1024)) ] || par=(-p 1)
  log "building $* $K8S_VERSION (cold: 5-10 min each on 2 cores)"
  (cd "$work" && with_retries go mod download k8s.io/kubernetes \
    && with_retries go get "${pkgs[@]/%/@$K8S_VERSION}" \
    && mkdir -p "$out.tmp" \
    && go build "${par[@]}" -mod=mod -trimpath -tags selinux,notest -ldflags "$ld" -o "$out.tmp/" "${pkgs[@]}")
  rm -rf "$work"
}

# build_wrapped OUT MODULE VERSION PACKAGE BINARY [LDFLAGS]: modules whose own go.mod has
# replace/exclude directives refuse `go install`; a throwaway wrapper module requires
# them instead (their directives are then ignored) and builds one binary.
build_wrapped() {
  local out=$1 module=$2 version=$3 package=$4 binary=$5 ldflags=${6:-} work
  work=$(mktemp -d)
  printf 'module recserve.local/%s-tools\n\ngo 1.24\n\nrequire %s %s\n' "$binary" "$module" "$version" >"$work/go.mod"
  echo 'package tools' >"$work/doc.go"
  log "building $binary $version"
  (cd "$work" && with_retries go get "$package@$version" \
    && mkdir -p "$out.tmp" \
    && go build -mod=mod -trimpath -ldflags "-s -w $ldflags" -o "$out.tmp/$binary" "$package")
  rm -rf "$work"
}

build_goinstall() {  # out pkg@version [extra ldflags]
  log "building $2"
  mkdir -p "$1.tmp"
  with_retries env GOBIN="$1.tmp" go install -trimpath -ldflags "-s -w ${3:-}" "$2"
}

# kind_source / k8s_source: where the Go module cache holds kind's and Kubernetes'
# sources (hack/kind-node-image.sh reads kind's node base files and pause.c there).
mod_dir() { with_retries go mod download -json "$1" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",*$/\1/p'; }
kind_source() { mod_dir "sigs.k8s.io/kind@$KIND_VERSION"; }
k8s_source() { mod_dir "k8s.io/kubernetes@$K8S_VERSION"; }

# build_keda OUT: KEDA's go.mod carries a replace (nexus-rpc/nexus-proto-annotations) and
# an exclude that a wrapper module (build_wrapped) would drop, so its module source is
# copied out of the module cache and built in place, under its own go.mod and go.sum.
# Binary names follow KEDA's Makefile: keda (cmd/operator), keda-adapter (cmd/adapter).
build_keda() {
  local out=$1 module=github.com/kedacore/keda/v2 work src
  work=$(mktemp -d)
  log "building keda, keda-adapter $KEDA_VERSION (cold: tens of minutes)"
  src=$(with_retries go mod download -json "$module@$KEDA_VERSION" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",*$/\1/p')
  [ -n "$src" ] || { log "go mod download $module@$KEDA_VERSION gave no source dir"; rm -rf "$work"; return 1; }
  cp -R "$src/." "$work/" && chmod -R u+w "$work"
  local ld="-s -w -X=$module/version.Version=${KEDA_VERSION#v} -X=$module/version.GitCommit=$KEDA_VERSION"
  local rc=0
  (cd "$work" && with_retries go list -deps ./cmd/operator ./cmd/adapter >/dev/null \
    && mkdir -p "$out.tmp" \
    && go build -trimpath -ldflags "$ld" -o "$out.tmp/keda" ./cmd/operator \
    && go build -trimpath -ldflags "$ld" -o "$out.tmp/keda-adapter" ./cmd/adapter) || rc=$?
  chmod -R u+w "$work"; rm -rf "$work"
  return $rc
}

# ensure_keda_crds DIR: KEDA's CRDs (config/crd/bases of the same module version), which
# the local cluster applies before it starts KEDA; RECSERVE_KEDA_CRDS=/dir overrides.
ensure_keda_crds() {
  local dir=$1 src
  if [ -n "${RECSERVE_KEDA_CRDS:-}" ]; then dir=$RECSERVE_KEDA_CRDS
  elif ! [ -s "$dir/keda.sh_scaledobjects.yaml" ]; then
    if [ $CHECK_ONLY = 1 ]; then log "missing: keda CRDs"; MISSING=1; return; fi
    src=$(with_retries go mod download -json "github.com/kedacore/keda/v2@$KEDA_VERSION" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",*$/\1/p')
    [ -n "$src" ] || { log "no module source for keda $KEDA_VERSION"; exit 1; }
    rm -rf "$dir.tmp"; mkdir -p "$dir.tmp"
    cp "$src"/config/crd/bases/*.yaml "$dir.tmp/" && chmod u+w "$dir.tmp"/*.yaml
    rm -rf "$dir"; mv "$dir.tmp" "$dir"
  fi
  echo "RECSERVE_KEDA_CRDS=$dir"
}

# build_prometheus OUT: Prometheus with the one service discovery the local cluster and
# kind use (kubernetes_sd_configs), the way Prometheus' own Makefile selects them: its
# plugins.yml lists the discovery packages and `go generate -tags plugins ./plugins` writes
# the imports. The 23 others (AWS, Azure, GCE, OpenStack, Consul, xDS...) were most of the
# cold build: their SDKs' packages. Built in a copy of the module source under its own
# go.mod (its exclude lines kept), as Prometheus' release build does.
build_prometheus() {
  local out=$1 module=github.com/prometheus/prometheus work src rc=0
  work=$(mktemp -d)
  log "building prometheus $PROMETHEUS_VERSION (kubernetes service discovery only)"
  src=$(mod_dir "$module@$PROMETHEUS_VERSION")
  [ -n "$src" ] || { log "go mod download $module@$PROMETHEUS_VERSION gave no source dir"; rm -rf "$work"; return 1; }
  cp -R "$src/." "$work/" && chmod -R u+w "$work"
  echo "- $module/discovery/kubernetes" >"$work/plugins.yml"
  (cd "$work" && with_retries go generate -tags plugins ./plugins \
    && grep -q discovery/kubernetes plugins/plugins.go && ! grep -q discovery/aws plugins/plugins.go \
    && with_retries go list -deps ./cmd/prometheus >/dev/null \
    && mkdir -p "$out.tmp" \
    && go build -trimpath -ldflags "-s -w -X github.com/prometheus/common/version.Version=$PROMETHEUS_APP_VERSION" \
      -o "$out.tmp/prometheus" ./cmd/prometheus) || rc=$?
  chmod -R u+w "$work"; rm -rf "$work"
  return $rc
}

# Helm's own Makefile stamps its version and the Kubernetes version it assumes for
# `helm template`; without them a go-installed helm claims Kubernetes v1.20.
HELM_LDFLAGS="-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
HELM_LDFLAGS="$HELM_LDFLAGS -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1"
HELM_LDFLAGS="$HELM_LDFLAGS -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=34"

# tool  var  cachedir  builder  args
ensure() {
  local name=$1 var=$2 dir=$3; shift 3
  local path
  path=$(resolve "$name" "$var" "$dir")
  if [ -z "$path" ]; then
    if [ $CHECK_ONLY = 1 ]; then log "missing: $name"; MISSING=1; return; fi
    rm -rf "$dir.tmp"
    "$@"
    mkdir -p "$dir"; cp "$dir.tmp"/* "$dir/"; rm -rf "$dir.tmp"
    path="$dir/$name"
  fi
  echo "$var=$path"
}

MISSING=0
K8S_DIR=$CACHE/k8s-$K8S_VERSION/bin
# KEY=PATH lines go to TOOLS_ENV_OUT when set, else to stdout as it is: reopening
# /dev/stdout would truncate a log file that stdout is redirected to.
if [ -n "${TOOLS_ENV_OUT:-}" ]; then exec 3>"$TOOLS_ENV_OUT"; else exec 3>&1; fi
{
  CONTROL_PLANE="kube-apiserver kube-controller-manager kube-scheduler kubectl"
  ensure kube-apiserver RECSERVE_KUBE_APISERVER "$K8S_DIR" build_k8s "$K8S_DIR" $CONTROL_PLANE
  ensure kube-controller-manager RECSERVE_KUBE_CONTROLLER_MANAGER "$K8S_DIR" build_k8s "$K8S_DIR" $CONTROL_PLANE
  ensure kube-scheduler RECSERVE_KUBE_SCHEDULER "$K8S_DIR" build_k8s "$K8S_DIR" $CONTROL_PLANE
  ensure kubectl RECSERVE_KUBECTL "$K8S_DIR" build_k8s "$K8S_DIR" $CONTROL_PLANE
  ensure etcd RECSERVE_ETCD "$CACHE/etcd-$ETCD_VERSION/bin" build_wrapped "$CACHE/etcd-$ETCD_VERSION/bin" \
    go.etcd.io/etcd/server/v3 "$ETCD_VERSION" go.etcd.io/etcd/server/v3 etcd
  ensure kwok RECSERVE_KWOK "$CACHE/kwok-$KWOK_VERSION/bin" build_goinstall "$CACHE/kwok-$KWOK_VERSION/bin" "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
  ensure prometheus RECSERVE_PROMETHEUS "$CACHE/prometheus-$PROMETHEUS_VERSION/bin" build_prometheus "$CACHE/prometheus-$PROMETHEUS_VERSION/bin"
  ensure helm RECSERVE_HELM "$CACHE/helm-$HELM_VERSION/bin" build_goinstall "$CACHE/helm-$HELM_VERSION/bin" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" "$HELM_LDFLAGS"
  if [ "$WITH_KIND" = 1 ]; then  # opt-in, see the header
    NODE="kubelet kubeadm kube-proxy"
    ensure kubelet RECSERVE_KUBELET "$K8S_DIR" build_k8s "$K8S_DIR" $NODE
    ensure kubeadm RECSERVE_KUBEADM "$K8S_DIR" build_k8s "$K8S_DIR" $NODE
    ensure kube-proxy RECSERVE_KUBE_PROXY "$K8S_DIR" build_k8s "$K8S_DIR" $NODE
    ensure kind RECSERVE_KIND "$CACHE/kind-$KIND_VERSION/bin" build_goinstall "$CACHE/kind-$KIND_VERSION/bin" "sigs.k8s.io/kind@$KIND_VERSION"
    ensure coredns RECSERVE_COREDNS "$CACHE/coredns-$COREDNS_VERSION/bin" build_goinstall "$CACHE/coredns-$COREDNS_VERSION/bin" "github.com/coredns/coredns@$COREDNS_VERSION"
    echo "RECSERVE_KIND_SOURCE=$(kind_source)"
    echo "RECSERVE_K8S_SOURCE=$(k8s_source)"
  fi
  if [ "$WITH_SBOM" = 1 ]; then  # opt-in, see the header
    ensure syft RECSERVE_SYFT "$CACHE/syft-$SYFT_VERSION/bin" build_goinstall "$CACHE/syft-$SYFT_VERSION/bin" \
      "github.com/anchore/syft/cmd/syft@$SYFT_VERSION" "-X main.version=$SYFT_VERSION"
  fi
  if [ "$WITH_KEDA" = 1 ]; then  # opt-in, see the header
    KEDA_DIR=$CACHE/keda-$KEDA_VERSION/bin
    ensure keda RECSERVE_KEDA_OPERATOR "$KEDA_DIR" build_keda "$KEDA_DIR"
    ensure keda-adapter RECSERVE_KEDA_ADAPTER "$KEDA_DIR" build_keda "$KEDA_DIR"
    ensure_keda_crds "$CACHE/keda-$KEDA_VERSION/crds"
  fi
} >&3
exit $MISSING
