#!/usr/bin/env bash
# Builds recserve's images (docker/Dockerfile: operator, server, builder) with podman, or
# docker where podman is missing, and prints each image's size and what dominates it.
#
#   hack/images.sh                   all three
#   hack/images.sh server operator   some of them
#   hack/images.sh --engine          set up the container engine only (podman, apt), print its name
#   hack/images.sh --base            print the base the images build FROM (made if needed)
#   hack/images.sh --local-base      make the local Debian base only, print its name
#
# Environment:
#   RECSERVE_IMAGE_BASE   the Dockerfile's BASE. Default: python:3.11-slim when a registry
#                         answers, else a Debian bookworm made here with debootstrap
#                         (localhost/debian:bookworm; its root filesystem is cached in
#                         $RECSERVE_TOOLS_CACHE, default ~/.cache/recserve).
#   RECSERVE_IMAGE_REPO   default docker.io/recserve (the chart's runtimeImages and image)
#   RECSERVE_IMAGE_TAG    default the project's version (pyproject.toml)
#   TORCH_INDEX_URL       the builder's torch index (default PyTorch's CPU index when it
#                         answers, else PyPI's wheel, which carries CUDA's libraries)
# podman reads hack/containers/containers.conf (runc, ulimits root may set), never /etc.
set -euo pipefail
cd "$(dirname "$0")/.."
log() { printf '[images] %s\n' "$*" >&2; }

CACHE=${RECSERVE_TOOLS_CACHE:-$HOME/.cache/recserve}
REPO=${RECSERVE_IMAGE_REPO:-docker.io/recserve}
TAG=${RECSERVE_IMAGE_TAG:-$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml | head -1)}
LOCAL_BASE=localhost/debian:bookworm
PACKAGES="podman buildah runc containernetworking-plugins fuse-overlayfs slirp4netns uidmap iptables debootstrap"
export CONTAINERS_CONF=${CONTAINERS_CONF:-$PWD/hack/containers/containers.conf}

# The engine: podman (daemonless; installed with apt where missing and we are root),
# else a docker whose daemon answers. Prints the command.
engine() {
  if ! command -v podman >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    log "installing podman with apt (~20 s)"
    # shellcheck disable=SC2086  # a word list
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q $PACKAGES >&2 \
      || { apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $PACKAGES >&2; }
  fi
  if command -v podman >/dev/null; then
    # kind mounts /lib/modules into its nodes; some VMs lack it
    [ -d /lib/modules ] || mkdir -p /lib/modules 2>/dev/null || true
    echo podman; return
  fi
  if command -v docker >/dev/null && docker info >/dev/null 2>&1; then echo docker; return; fi
  log "no container engine: podman is not installed (and cannot be: needs root and apt), no docker daemon answers"
  return 1
}

# The offline base: Debian bookworm minbase from Debian's mirror, trimmed (apt lists,
# docs, man pages, locales), cached as a tarball, imported as $LOCAL_BASE.
local_base() {
  local eng=$1 tarball=$CACHE/debian-bookworm-minbase.tar
  if "$eng" image exists "$LOCAL_BASE" 2>/dev/null || "$eng" image inspect "$LOCAL_BASE" >/dev/null 2>&1; then
    echo "$LOCAL_BASE"; return
  fi
  if [ ! -s "$tarball" ]; then
    command -v debootstrap >/dev/null || { log "debootstrap is missing (apt-get install debootstrap)"; return 1; }
    local root; root=$(mktemp -d)
    log "debootstrap bookworm minbase into $root (~45 s)"
    debootstrap --variant=minbase bookworm "$root" >&2
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/usr/share/doc/* \
      "$root"/usr/share/man/* "$root"/usr/share/locale/* "$root"/var/log/*
    mkdir -p "$CACHE"
    tar -C "$root" -cf "$tarball.tmp" . && mv "$tarball.tmp" "$tarball"
    rm -rf "$root"
  fi
  log "importing $tarball as $LOCAL_BASE"
  "$eng" import - "$LOCAL_BASE" <"$tarball" >/dev/null
  echo "$LOCAL_BASE"
}

base() {
  local eng=$1
  if [ -n "${RECSERVE_IMAGE_BASE:-}" ]; then echo "$RECSERVE_IMAGE_BASE"; return; fi
  if "$eng" image inspect python:3.11-slim >/dev/null 2>&1 \
    || timeout 300 "$eng" pull -q docker.io/library/python:3.11-slim >/dev/null 2>&1; then
    echo python:3.11-slim; return
  fi
  log "no registry answers: building FROM a local Debian base"
  local_base "$eng"
}

main() {
  local eng
  eng=$(engine)
  case ${1:-} in
    --engine) echo "$eng"; return ;;
    --base) base "$eng"; return ;;
    --local-base) local_base "$eng"; return ;;
  esac
  local targets=("$@") from args=()
  [ ${#targets[@]} -gt 0 ] || targets=(operator server builder)
  from=$(base "$eng")
  args+=(--build-arg "BASE=$from")
  if [ -z "${TORCH_INDEX_URL+set}" ]; then
    if ! timeout 20 curl -sfI https://download.pytorch.org/whl/cpu/ >/dev/null 2>&1; then
      log "PyTorch's CPU index does not answer: the builder gets PyPI's torch (with CUDA's libraries)"
      TORCH_INDEX_URL=""
    fi
  fi
  [ -z "${TORCH_INDEX_URL+set}" ] || args+=(--build-arg "TORCH_INDEX_URL=$TORCH_INDEX_URL")
  # Where HTTPS is intercepted, pip in the build trusts only the host's CA bundle.
  local ca=/etc/ssl/certs/ca-certificates.crt
  if [ "$eng" = podman ] && [ -s "$ca" ]; then
    args+=(-v "$ca:/run/host-ca.crt:ro" --build-arg PIP_CERT=/run/host-ca.crt)
  fi
  # podman: the installs read and fill this machine's uv cache (the one `make install`
  # filled) instead of the build's own cache mount, which starts empty on a new machine:
  # the cold build then copies torch and the rest from disk instead of downloading them
  # again. docker has no build volumes: it keeps the Dockerfile's cache mount.
  local uv_cache=${UV_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/uv}
  if [ "$eng" = podman ] && [ -d "$uv_cache" ]; then
    args+=(-v "$uv_cache:/var/cache/host-uv" --build-arg UV_CACHE_DIR=/var/cache/host-uv)
  fi
  local t start since
  since=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  for t in "${targets[@]}"; do
    case $t in operator | server | builder) ;; *) log "unknown image: $t"; return 2 ;; esac
    start=$SECONDS
    log "building $REPO/recserve-$t:$TAG FROM $from"
    "$eng" build -q -f docker/Dockerfile --target "$t" "${args[@]}" -t "$REPO/recserve-$t:$TAG" . >/dev/null
    log "built $REPO/recserve-$t:$TAG in $((SECONDS - start)) s"
  done
  # Stale stages of earlier builds (the builder's are gigabytes): this build's stay, as
  # the next build's cache.
  if [ "$eng" = podman ]; then
    podman image prune -f --filter label=io.recserve.image=true --filter "until=$since" >/dev/null || true
  fi
  for t in "${targets[@]}"; do
    local size top
    size=$("$eng" image inspect -f '{{.Size}}' "$REPO/recserve-$t:$TAG")
    # What dominates: the largest installed distributions.
    top=$("$eng" run --rm --entrypoint sh "$REPO/recserve-$t:$TAG" -c \
      'cd /opt/recserve/lib/python3*/site-packages && du -sm -- * | sort -rn | head -4 | awk "{printf \"%s %s MB, \", \$2, \$1}"')
    printf '%s/recserve-%s:%s  %d MB  (largest: %s)\n' "$REPO" "$t" "$TAG" $((size / 1000000)) "${top%, }"
  done
}

main "$@"
