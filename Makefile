# Developer entry points. `make demo` and `make test` work on a fresh machine: each
# installs what it needs first, into the project's virtual environment (never into the
# system interpreter: PEP 668 distributions refuse that, and a package installed by hand
# there could hide a missing dependency), then the Go-built cluster tools (cached).
#
#   VENV=DIR   the virtual environment to use (default .venv, created when missing);
#              .ci/run passes a brand-new one on every run.
BOOTSTRAP_PYTHON ?= python3
VENV ?= .venv
PYTHON := $(abspath $(VENV))/bin/python
UV := $(abspath $(VENV))/bin/uv
PYTEST_ARGS ?= --durations=20  # the slowest tests, to keep CI within its time
# Entry points (recserve, recserve-operator) that the local cluster's pods run come from
# the environment's bin/, so it leads PATH for every recipe.
export VIRTUAL_ENV := $(abspath $(VENV))
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: help install lock lock-check crds crds-check lint typecheck test test-kind test-unit test-integration reliability reliability-table bench demo tools images kind-up kind-down kind-node-image sbom cluster-up cluster-down clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(PYTHON):
	$(BOOTSTRAP_PYTHON) -m venv $(VENV)

# uv (from PyPI, into the venv itself, at the lock's version) resolves and links from its
# cache: a new venv with torch is seconds once the cache is warm.
$(UV): | $(PYTHON)
	$(PYTHON) -m pip install --quiet --disable-pip-version-check "$$(grep '^uv==' constraints.txt)"

# Every install takes its versions from the lock (constraints.txt): the versions CI
# tested, so a fresh machine months later gets the same torch, onnxruntime and numpy, not
# whatever PyPI has that day. `make lock` moves them forward, on purpose, in one commit.
LOCK := constraints.txt
LOCK_COMPILE = $(UV) pip compile --quiet --universal --python-version 3.11 --all-extras \
	--custom-compile-command 'make lock' pyproject.toml

# The dev kit (devkit/: local control plane, demo, test models, benchmarks) is its own
# distribution, recserve-dev; it is never in the product's images.
install: $(UV)  ## create/refresh $(VENV) with recserve and its dev kit (editable), dev and build extras, at the lock's versions (torch: several GB, once)
	$(UV) pip install --quiet --python $(PYTHON) -c $(LOCK) -e '.[dev,build]' -e ./devkit

lock: $(UV)  ## re-resolve constraints.txt to the newest versions pyproject.toml allows (PACKAGE=name: move that one only); then make test
	$(LOCK_COMPILE) $(if $(PACKAGE),--upgrade-package $(PACKAGE),--upgrade) -o $(LOCK)

lock-check: $(UV)  ## fail if constraints.txt is stale: pyproject.toml's requirements changed since make lock
	@tmp=$$(mktemp -d) && cp $(LOCK) $$tmp/lock.txt && $(LOCK_COMPILE) -o $$tmp/lock.txt \
	  && if diff -u $(LOCK) $$tmp/lock.txt; then rm -rf $$tmp; \
	  else rm -rf $$tmp; echo "$(LOCK) does not match pyproject.toml (above: what a resolve would change): run make lock, then make test" >&2; exit 1; fi

crds:  ## regenerate crds/, the chart's CRDs and docs/api-reference.md from the API types
	$(PYTHON) -m recserve_runtime.cli crds

crds-check:  ## fail if the committed CRDs differ from what the types generate
	$(PYTHON) -m recserve_runtime.cli crds --check

lint:  ## ruff (lint + format check) and mypy
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .
	$(PYTHON) -m mypy

typecheck:
	$(PYTHON) -m mypy

# make test, test-integration and reliability run on PYTEST_WORKERS pytest-xdist workers,
# a whole file to each (--dist loadfile: a file's tests share its module fixtures, like
# test_autoscaling.py's chart install); each worker that needs one starts its own local
# control plane. Most of the suite waits on clusters (cooldowns, probes, pod starts), so
# two workers use the two cores that one leaves idle. PYTEST_WORKERS=1: one process.
PYTEST_WORKERS ?= 2
XDIST = $(if $(filter-out 0 1,$(PYTEST_WORKERS)),-n $(PYTEST_WORKERS) --dist loadfile)

# pytest exits 5 when it collected no test: that means the suite is broken, not green.
define run_pytest
	$(PYTHON) -m pytest $(1) $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing on purpose" >&2; exit 1; fi; \
	exit $$rc
endef

# Every run of the fault tests (@pytest.mark.fault) writes what they measured here;
# `make reliability-table` turns it into docs/reliability.md's table.
RELIABILITY_JSON ?= build/reliability-run.json
export RECSERVE_RELIABILITY_JSON := $(abspath $(RELIABILITY_JSON))

test: install tools lint crds-check lock-check  ## the whole test suite (what CI runs)
	@mkdir -p $(dir $(RELIABILITY_JSON))
	$(call run_pytest,$(XDIST) -m "not bench and not gpu and not kind")

test-kind: kind-up  ## the kind e2e suite (tests/kind) on the cluster of kind-up
	$(call run_pytest,-m kind tests/kind)

reliability: install tools  ## run only the fault tests (about 15 min), then regenerate docs/reliability.md's table
	@mkdir -p $(dir $(RELIABILITY_JSON))
	$(call run_pytest,$(XDIST) -m "fault and not bench and not gpu and not kind")
	$(MAKE) reliability-table

reliability-table:  ## docs/reliability.md's table from the last run of the fault tests ($(RELIABILITY_JSON))
	$(PYTHON) -m tests.reliability $(RELIABILITY_JSON) docs/reliability.md

test-unit: install  ## unit tests only
	$(call run_pytest,-m unit)

test-integration: install tools  ## integration tests on a fresh local control plane
	$(call run_pytest,$(XDIST) -m integration)

bench: install tools  ## benchmarks (print ratios against in-run baselines)
	$(UV) pip install --quiet --python $(PYTHON) -c $(LOCK) -e '.[dev,build,bench]' -e ./devkit
	$(call run_pytest,-m bench -s)

# KIND=1: on the kind cluster of `make kind-up` instead of the local control plane.
demo: install tools  ## the main job: build, measure, place, serve and load the MovieLens model locally (KIND=1: on kind)
	$(PYTHON) -m recserve_runtime.cli validate examples/
	$(PYTHON) -m recserve_runtime.cli demo $(if $(KIND),--kind,--root .cluster)

tools:  ## build/locate etcd, kube-*, kubectl, kwok, prometheus, helm (cached in ~/.cache/recserve)
	bash hack/tools.sh

cluster-up: install tools  ## start the local control plane in .cluster/ and print KUBECONFIG
	$(PYTHON) -m recserve_runtime.cli cluster up --root .cluster

cluster-down:  ## stop the local control plane started by cluster-up
	$(PYTHON) -m recserve_runtime.cli cluster down --root .cluster

kind-up: install  ## a kind cluster (podman) with the images, a Prometheus and the chart (hack/kind.sh)
	bash hack/kind.sh up

kind-down:  ## delete the kind cluster
	bash hack/kind.sh down

kind-node-image:  ## the offline kind node image (no registry needed; cached)
	bash hack/kind-node-image.sh

images:  ## build the operator, server and builder images (podman, else docker; hack/images.sh)
	bash hack/images.sh

sbom:  ## list what is in the images (syft) into docs/images-sbom.md and build/sbom/
	bash hack/sbom.sh

clean:
	rm -rf .pytest_cache .mypy_cache .ruff_cache build *.egg-info
