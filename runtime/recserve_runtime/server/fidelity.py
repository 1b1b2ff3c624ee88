"""Fidelity of a compressed variant to its FP32 reference, on a sample of live requests.

A server of a compressed variant (``--reference-variant``) also scores a share of its
requests (``--fidelity-sample-bp``) with the reference, on a thread of its own after the
answer has gone: the request path never waits for it, and when the thread falls behind
a sample is dropped (counted), never queued without bound. For each sampled request it
counts the candidate pairs the reference orders strictly and how many of them the served
variant orders the same way (pairwise order agreement, the share of concordant pairs of
Kendall's tau); the operator's fidelity drift detector reads their rates. numpy does the
counting: a request ranks tens to hundreds of candidates, a few thousand pairs.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable

import numpy as np

from recserve_runtime.offpath import OffPathWorker
from recserve_runtime.server.metrics import ServerMetrics

log = logging.getLogger("recserve.fidelity")
MAX_ROWS = 256  # rows compared per sample (pairs grow with their square)

Run = Callable[[np.ndarray, np.ndarray], np.ndarray]


def pairwise_agreement(served: np.ndarray, reference: np.ndarray) -> tuple[int, int]:
    """(pairs the reference orders strictly, of them the pairs ``served`` orders alike)."""
    n = len(served)
    if n < 2:
        return 0, 0
    i, j = np.triu_indices(n, 1)
    ref = np.sign(reference[i] - reference[j])
    mine = np.sign(served[i] - served[j])
    strict = ref != 0
    return int(strict.sum()), int((mine[strict] == ref[strict]).sum())


class FidelitySampler(OffPathWorker[tuple[np.ndarray, np.ndarray, np.ndarray]]):
    """Scores a sample of requests with the reference model, off the request path."""

    def __init__(
        self,
        reference: Run,
        share: float,
        metrics: ServerMetrics,
        queue_size: int = 16,
        seed: int | None = None,
    ) -> None:
        super().__init__("fidelity", queue_size)
        self.reference = reference
        self.share = share
        self.metrics = metrics
        self._rng = random.Random(seed)

    def offer(self, sparse: np.ndarray, dense: np.ndarray, scores: np.ndarray) -> None:
        """Take this answered request as a sample with probability ``share``."""
        if self.share <= 0 or self._rng.random() >= self.share:
            return
        if len(scores) > MAX_ROWS:
            keep = np.sort(np.random.default_rng().choice(len(scores), MAX_ROWS, replace=False))
            sparse, dense, scores = sparse[keep], dense[keep], scores[keep]
        if not self._put((sparse, dense, np.asarray(scores, np.float32))):
            self.metrics.fidelity_samples.labels("dropped").inc()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            sparse, dense, served = item
            try:
                reference = np.asarray(self.reference(sparse, dense), np.float32).reshape(-1)
            except Exception as exc:  # a reference failure costs a sample, not the server
                log.warning("reference scoring failed: %s", exc)
                self.metrics.fidelity_samples.labels("failed").inc()
                continue
            pairs, agreeing = pairwise_agreement(served.reshape(-1), reference)
            self.metrics.fidelity_pairs.inc(pairs)
            self.metrics.fidelity_agreeing_pairs.inc(agreeing)
            self.metrics.fidelity_samples.labels("scored").inc()
