"""Prometheus configuration for the local cluster: discover pods through the API server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

# Short enough for the autoscaler's reaction time (its fast window is 3 scrapes); the
# operator is told it (chart value prometheus.scrapeIntervalSeconds). A cluster may
# scrape more often (LocalCluster(scrape_seconds=...); the autoscale benchmark uses 1 s).
SCRAPE_INTERVAL_SECONDS = 5


def prometheus_config(
    kubeconfig: Path, scrape_seconds: int = SCRAPE_INTERVAL_SECONDS
) -> dict[str, Any]:
    """Scrape every pod annotated ``prometheus.io/scrape: "true"`` at its podIP, every
    ``scrape_seconds``.

    Honours ``prometheus.io/port`` and ``prometheus.io/path`` like the common
    kubernetes-pods job of the Prometheus Helm chart, and labels series with
    namespace, pod and node.
    """
    meta = "__meta_kubernetes_pod_"
    interval = f"{scrape_seconds}s"
    return {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "scrape_configs": [
            {
                "job_name": "kubernetes-pods",
                "kubernetes_sd_configs": [{"role": "pod", "kubeconfig_file": str(kubeconfig)}],
                "relabel_configs": [
                    {
                        "source_labels": [f"{meta}annotation_prometheus_io_scrape"],
                        "action": "keep",
                        "regex": "true",
                    },
                    {"source_labels": [f"{meta}phase"], "action": "keep", "regex": "Running"},
                    {
                        "source_labels": [f"{meta}ip", f"{meta}annotation_prometheus_io_port"],
                        "regex": r"(.+);(\d+)",
                        "replacement": "$1:$2",
                        "target_label": "__address__",
                    },
                    {
                        "source_labels": [f"{meta}annotation_prometheus_io_path"],
                        "regex": "(.+)",
                        "target_label": "__metrics_path__",
                    },
                    {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
                    {"source_labels": [f"{meta}name"], "target_label": "pod"},
                    {"source_labels": [f"{meta}node_name"], "target_label": "node"},
                    {"action": "labelmap", "regex": f"{meta}label_(.+)"},
                ],
            }
        ],
    }
