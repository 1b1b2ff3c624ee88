"""recserve's development kit (distribution ``recserve-dev``, source root ``devkit/``).

The local control plane, the demo, synthetic test models, server test helpers, the load
generator, and the benchmark harnesses with their serving peers. Never part of the
product's images: the `recserve` CLI registers ``cluster``, ``demo`` and ``bench`` from
:data:`PLUGINS` only when this package is importable.
"""

# Modules that add `recserve` subcommands (each exposes ``register(subparsers)``).
PLUGINS: list[str] = [
    "recserve_dev.bench.variants",
    "recserve_dev.localcluster.cli",
    "recserve_dev.demo",
    "recserve_dev.bench.serving",
    "recserve_dev.bench.autoscale",
    "recserve_dev.bench.soak",
    "recserve_dev.bench.drift",
]
