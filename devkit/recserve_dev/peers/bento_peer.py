"""BentoML peer: the same ONNX variant behind BentoML adaptive batching (run with
``bentoml serve recserve_dev.peers.bento_peer:Ranker`` from a Python that
has bentoml; the variant folder comes from $RECSERVE_VARIANT).

The batchable API takes the /v1/rank documents as a list (``{"requests": [doc]}``), so
BentoML's CORK dispatcher merges requests; ``max_batch_size`` 16 requests and
``max_latency_ms`` 25 (the SLO), as BentoML's docs recommend setting it to the target.
"""

from __future__ import annotations

import os
from typing import Any

import bentoml
import numpy as np


@bentoml.service(workers=1, traffic={"timeout": 10})
class Ranker:
    """Ranks candidates with onnxruntime, batching across requests."""

    def __init__(self) -> None:
        from recserve_runtime.server.model import load
        from recserve_runtime.server.protocol import Validator

        self.model = load(os.environ["RECSERVE_VARIANT"], "cpu", 1)
        self.validator = Validator(self.model.manifest, 4096)

    @bentoml.api(batchable=True, max_batch_size=16, max_latency_ms=25)
    def rank(self, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Score a merged batch of rank documents."""
        reqs = [self.validator.rank_doc(doc) for doc in requests]
        sizes = [r.batch.sparse.shape[0] for r in reqs]
        scores = self.model.run(
            np.concatenate([r.batch.sparse for r in reqs]),
            np.concatenate([r.batch.dense for r in reqs]),
        )
        out = []
        for r, s in zip(reqs, np.split(scores, np.cumsum(sizes)[:-1]), strict=True):
            order = np.argsort(-s, kind="stable")
            out.append({"items": [{"id": r.ids[i], "score": float(s[i])} for i in order.tolist()]})
        return out
