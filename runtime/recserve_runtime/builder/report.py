"""The variant table, the JSON report and the Pareto plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from recserve_runtime.artifacts import BuildReport
from recserve_runtime.builder.pipeline import Variant


def variant_row(v: Variant, slo_batch: int) -> dict[str, Any]:
    """One variant as a JSON-able dict."""
    return {
        "name": v.name,
        "location": v.location,
        "recipe": v.recipe.model_dump(by_alias=True, mode="json"),
        "sizeBytes": v.size_bytes,
        "metrics": {k: round(x, 6) for k, x in v.metrics.items()},
        "accepted": v.accepted,
        "pareto": v.pareto,
        "profile": v.profile.model_dump(by_alias=True, mode="json") if v.profile else None,
        "p99UsAtSloBatch": round(v.point(slo_batch).p99_us, 1) if v.profile else None,
    }


def table(variants: list[Variant], slo_batch: int, selected: str | None) -> str:
    """A fixed-width text table of all variants."""
    head = (
        f"{'variant':<40} {'size MB':>8} {'-size%':>6} {'AUC':>7} {'logloss':>7} "
        f"{'drop%':>6} {'p50 b1':>7} {'p99 b1':>7} {f'p50 b{slo_batch}':>9} "
        f"{f'p99 b{slo_batch}':>9} {f'thr b{slo_batch}':>9} {'thr b1024':>9}  status"
    )
    lines = [head, "-" * len(head)]
    for v in variants:
        m, b1, bs = v.metrics, v.point(1), v.point(slo_batch)
        big = v.point(1024) if any(p.batch_size == 1024 for p in v.profile.points) else bs  # type: ignore[union-attr]
        status = "rejected" if not v.accepted else "ok"
        status += " pareto" if v.pareto else ""
        status += " SELECTED" if v.name == selected else ""
        lines.append(
            f"{v.name:<40} {v.size_bytes / 1e6:>8.2f} {m['sizeReductionPct']:>6.1f} "
            f"{m['auc']:>7.4f} {m['logLoss']:>7.4f} {m['aucDropRelPct']:>6.2f} "
            f"{b1.p50_us:>7.0f} {b1.p99_us:>7.0f} {bs.p50_us:>9.0f} {bs.p99_us:>9.0f} "
            f"{bs.samples_per_second:>9.0f} {big.samples_per_second:>9.0f}  {status}"
        )
    lines.append("latency in µs (onnxruntime, this machine); throughput in samples/s")
    return "\n".join(lines)


def write_json(path: Path, report: dict[str, Any] | BuildReport) -> None:
    """Write the report atomically, through its type (what the operator reads)."""
    typed = report if isinstance(report, BuildReport) else BuildReport.model_validate(report)
    typed.write(path)


def plot(path: Path, variants: list[Variant], slo_batch: int, budget_bp: int) -> None:
    """Pareto plot: p99 at the SLO batch vs relative AUC drop, marker area ~ size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 6))
    biggest = max(v.size_bytes for v in variants)
    for v in variants:
        x, y = v.point(slo_batch).p99_us / 1000, v.metrics["aucDropRelPct"]
        size = 30 + 400 * v.size_bytes / biggest
        color = "tab:green" if v.pareto and v.accepted else "tab:blue"
        marker = "x" if not v.accepted else "o"
        ax.scatter([x], [y], s=size, c=color, marker=marker, alpha=0.7)
        ax.annotate(v.name, (x, y), fontsize=7, xytext=(4, 4), textcoords="offset points")
    ax.axhline(budget_bp / 100, color="tab:red", ls="--", lw=1, label="accuracy budget")
    ax.set_xscale("log")
    ax.set_xlabel(f"p99 latency at batch {slo_batch} (ms, log scale)")
    ax.set_ylabel("relative AUC drop vs teacher (%)")
    ax.set_title("recserve variants: green = Pareto-optimal, x = rejected, area ~ size")
    ax.legend(loc="upper right")
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
