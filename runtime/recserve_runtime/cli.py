"""`recserve`: the command-line entry point of the data plane and developer tools.

Subcommands that need heavy extras (torch, onnxruntime) live in their own modules,
listed in ``PLUGINS``: each exposes ``register(subparsers)``, which adds its parser and
sets ``handler``; it must import its heavy dependencies inside the handler, so that
`recserve --help` stays fast and works without the extras.

The developer tools (`recserve cluster`, `demo`, `bench`) live in the separate dev kit
(distribution ``recserve-dev``, package ``recserve_dev``, never in the product's images):
they are registered from ``recserve_dev.PLUGINS`` when it is installed; otherwise each
answers with a one-line pointer to install it and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from recserve_runtime import __version__

Handler = Callable[[argparse.Namespace], int]

# Modules that add subcommands (see the module docstring), in help order.
PLUGINS: list[str] = [
    "recserve_runtime.train",
    "recserve_runtime.optimize",
    "recserve_runtime.profile_cmd",
    "recserve_runtime.recalibrate",
    "recserve_runtime.server.cli",
    "recserve_runtime.router.cli",
]

# The dev kit's package, and the subcommands it adds (each with its one-line help).
DEVKIT = "recserve_dev"
DEVKIT_COMMANDS: dict[str, str] = {
    "cluster": "start/stop the local control plane",
    "demo": "the whole loop on the local control plane",
    "bench": "benchmarks that print ratios against baselines",
}
DEVKIT_MISSING = (
    "error: `recserve {command}` needs the recserve dev kit, which is not installed: "
    "run `make install` or `pip install -e ./devkit` in a recserve checkout"
)


def devkit_plugins() -> list[str] | None:
    """The dev kit's subcommand modules, or None when the dev kit is not installed."""
    if importlib.util.find_spec(DEVKIT) is None:
        return None
    plugins: list[str] = importlib.import_module(DEVKIT).PLUGINS
    return plugins


def _devkit_missing(command: str) -> int:
    print(DEVKIT_MISSING.format(command=command), file=sys.stderr)
    return 2


def _add_devkit_stubs(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Stand-ins for the dev kit's subcommands, so `recserve --help` lists them."""
    for command, summary in DEVKIT_COMMANDS.items():
        stub = sub.add_parser(command, help=f"{summary} (needs the dev kit)", add_help=False)
        stub.set_defaults(handler=lambda args: _devkit_missing(args.command))


def _cmd_crds(args: argparse.Namespace) -> int:
    from recserve_operator.api.crdgen import render, stale_files, write_all
    from recserve_operator.api.registry import KINDS

    root = Path(args.root)
    if args.print:
        sys.stdout.write("---\n".join(render(kind) for kind in KINDS))
        return 0
    if args.check:
        stale = stale_files(root)
        for path in stale:
            print(f"stale: {path} differs from what the API types generate", file=sys.stderr)
        if stale:
            print("run `make crds` and commit the result", file=sys.stderr)
            return 1
        print(f"CRDs and API reference are up to date ({len(KINDS)} kinds)")
        return 0
    changed = write_all(root)
    for path in changed:
        print(f"wrote {path}")
    if not changed:
        print("generated files were already up to date")
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from recserve_operator.api.validation import validate_files

    paths: list[Path] = []
    for raw in args.paths:
        path = Path(raw)
        if path.is_dir():
            paths += sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml"))
        elif path.exists():
            paths.append(path)
        else:
            print(f"error: {path} does not exist", file=sys.stderr)
            return 2
    good, bad = validate_files(paths)
    for resource in good:
        name = resource.metadata.get("name", "<unnamed>")
        print(f"valid: {resource.kind}/{name}")
    for error in bad:
        print(f"invalid: {error}", file=sys.stderr)
    return 1 if bad else 0


def bench_group(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> Any:
    """The sub-commands of `recserve bench`, created by whichever benchmark registers first."""
    existing = sub.choices.get("bench")
    if existing is None:
        bench = sub.add_parser("bench", help="benchmarks that print ratios against baselines")
        return bench.add_subparsers(dest="bench", metavar="BENCH")
    return next(a for a in existing._actions if isinstance(a, argparse._SubParsersAction))


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="recserve",
        description="Compress, measure, serve and route recommendation models.",
    )
    parser.add_argument("--version", action="version", version=f"recserve {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    crds = sub.add_parser(
        "crds",
        help="generate the CRDs and API reference from the API types",
        description="Write crds/, charts/recserve/crds/ and docs/api-reference.md from the "
        "pydantic types (default), check that the committed files match (--check), or "
        "print the CRDs (--print, e.g. `recserve crds --print | kubectl apply -f -`).",
    )
    mode = crds.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="exit 1 if committed files are stale")
    mode.add_argument("--print", action="store_true", help="print the CRD YAML to stdout")
    crds.add_argument("--root", default=".", help="repository root (default: .)")
    crds.set_defaults(handler=_cmd_crds)

    validate = sub.add_parser(
        "validate",
        help="validate recserve manifests against the API types",
        description="Check every YAML document in the given files or folders; print each "
        "problem with its field path; exit 1 if any is invalid.",
    )
    validate.add_argument("paths", nargs="+", help="YAML files or folders")
    validate.set_defaults(handler=_cmd_validate)

    for name in PLUGINS:
        importlib.import_module(name).register(sub)
    dev = devkit_plugins()
    if dev is None:
        _add_devkit_stubs(sub)
    else:
        for name in dev:
            importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `recserve` command; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # A dev-kit command without the dev kit: one line whatever its arguments (--help too).
    if argv and argv[0] in DEVKIT_COMMANDS and devkit_plugins() is None:
        return _devkit_missing(argv[0])
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
