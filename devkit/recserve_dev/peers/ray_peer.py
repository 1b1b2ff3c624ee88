"""Ray Serve peer: the same ONNX variant behind ``@serve.batch`` (run with a Python that has
``ray[serve]``; the bench uses ~/.cache/recserve/peers-venv).

    python -m recserve_dev.peers.ray_peer --variant DIR --port P

Batching settings: ``max_batch_size`` requests (default 16 = 1024 rows of 64 candidates)
and ``batch_wait_timeout_s`` (default 0.002), i.e. Ray's documented knobs set for a
25 ms target rather than the defaults (10, 0.01 s), which would spend 10 ms waiting.
"""

from __future__ import annotations

import argparse
import os
import signal
import time
from typing import Any

import numpy as np
import orjson


def main() -> None:
    """Start Ray, deploy, block until SIGTERM."""
    import ray
    from ray import serve
    from starlette.requests import Request
    from starlette.responses import Response

    p = argparse.ArgumentParser()
    p.add_argument("--variant", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--max-batch-size", type=int, default=16)
    p.add_argument("--batch-wait-timeout-s", type=float, default=0.002)
    args = p.parse_args()

    @serve.deployment(max_ongoing_requests=256, ray_actor_options={"num_cpus": 1})
    class Ranker:
        def __init__(self, variant: str) -> None:
            from recserve_runtime.server.model import load
            from recserve_runtime.server.protocol import Validator

            self.model = load(variant, "cpu", 1)
            self.validator = Validator(self.model.manifest, 4096)

        @serve.batch(
            max_batch_size=args.max_batch_size, batch_wait_timeout_s=args.batch_wait_timeout_s
        )
        async def score(self, reqs: list[tuple[np.ndarray, np.ndarray]]) -> list[np.ndarray]:
            sizes = [r[0].shape[0] for r in reqs]
            out = self.model.run(
                np.concatenate([r[0] for r in reqs]), np.concatenate([r[1] for r in reqs])
            )
            return np.split(out, np.cumsum(sizes)[:-1])

        async def __call__(self, request: Request) -> Any:
            from recserve_runtime.server.protocol import BadInput

            try:
                req = self.validator.rank_request(await request.body())
            except BadInput as exc:
                return Response(orjson.dumps({"error": str(exc)}), status_code=400)
            scores = await self.score((req.batch.sparse, req.batch.dense))
            order = np.argsort(-scores, kind="stable")
            items = [{"id": req.ids[i], "score": float(scores[i])} for i in order.tolist()]
            return Response(orjson.dumps({"items": items}), media_type="application/json")

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": args.port})
    app = Ranker.bind(args.variant)  # type: ignore[attr-defined]
    serve.run(app, route_prefix="/v1/rank", name="ranker")
    print("ready", flush=True)
    stop = False

    def _stop(*_: Any) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    while not stop:
        time.sleep(0.2)
    serve.shutdown()
    ray.shutdown()
    os._exit(0)


if __name__ == "__main__":
    main()
