#!/usr/bin/env bash
# What is in recserve's images: syft lists each image's packages (Python, Debian, ...)
# into build/sbom/<image>.cdx.json (CycloneDX) and the list goes to docs/images-sbom.md.
#
#   hack/sbom.sh                     the three images `make images` built
#   hack/sbom.sh server operator     some of them
#
# syft is built from its Go module the first time (hack/tools.sh --with-sbom).
set -euo pipefail
cd "$(dirname "$0")/.."
log() { printf '[sbom] %s\n' "$*" >&2; }

REPO=${RECSERVE_IMAGE_REPO:-docker.io/recserve}
TAG=${RECSERVE_IMAGE_TAG:-$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml | head -1)}
PYTHON=${PYTHON:-.venv/bin/python}
export CONTAINERS_CONF=${CONTAINERS_CONF:-$PWD/hack/containers/containers.conf}
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(operator server builder)

SYFT=$(hack/tools.sh --with-sbom | sed -n 's/^RECSERVE_SYFT=//p')
[ -x "$SYFT" ] || { log "syft did not build"; exit 1; }
eng=$(hack/images.sh --engine)
mkdir -p build/sbom
args=()
for t in "${targets[@]}"; do
  image=$REPO/recserve-$t:$TAG
  if ! "$eng" image exists "$image" 2>/dev/null && ! "$eng" image inspect "$image" >/dev/null 2>&1; then
    log "no image $image: run \`make images\` first"; exit 1
  fi
  archive=$(mktemp --suffix=.tar)
  trap 'rm -f "$archive"' EXIT
  log "listing $image"
  "$eng" save -o "$archive" "$image" >/dev/null
  SYFT_CHECK_FOR_APP_UPDATE=false "$SYFT" scan "docker-archive:$archive" -q \
    -o "cyclonedx-json=build/sbom/$t.cdx.json"
  rm -f "$archive"
  args+=("recserve-$t:$TAG=build/sbom/$t.cdx.json")
done
"$PYTHON" -m recserve_dev.sbom docs/images-sbom.md "${args[@]}"
log "wrote docs/images-sbom.md and build/sbom/"
