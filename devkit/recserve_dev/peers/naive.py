"""The naive baseline: torch eager FP32, one forward per request, same HTTP stack.

The same uvicorn + raw ASGI + orjson stack and the same /v1/rank decoding as the real
server, but no batcher: each request runs its own forward pass inline in the handler.

    python -m recserve_dev.peers.naive --variant DIR --port P
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from recserve_runtime import artifacts
from recserve_runtime.server.asgi import ASGIApp, run_uvicorn
from recserve_runtime.server.protocol import BadInput, Validator
from recserve_runtime.server.service import Response, error, json_response


class NaiveServer:
    """One torch forward per /v1/rank request."""

    def __init__(self, variant: Path, threads: int) -> None:
        import torch

        from recserve_dev.testmodel import torch_model

        # default 1: measured, its best setting here; torch's default (one thread per core)
        # oversubscribes a 2-core machine shared with the load generator and its goodput
        # collapsed (0-14 requests/s against 354 with one thread)
        torch.set_num_threads(threads)
        self.torch = torch
        self.manifest = artifacts.load_manifest(variant)
        artifacts.verify(variant, self.manifest)
        self.model: Any = torch_model(variant)
        self.validator = Validator(self.manifest, 4096)

    async def handle(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> Response:
        """/v1/rank and health only."""
        if path in ("/v2/health/ready", "/v2/health/live"):
            return json_response(200, {"ready": True})
        if path != "/v1/rank" or method != "POST":
            return error(404, f"no route for {path}")
        try:
            req = self.validator.rank_request(body)
        except BadInput as exc:
            return error(400, str(exc))
        with self.torch.inference_mode():
            scores = self.model(
                self.torch.from_numpy(req.batch.sparse), self.torch.from_numpy(req.batch.dense)
            ).numpy()
        order = np.argsort(-scores, kind="stable")
        items = [{"id": req.ids[i], "score": float(scores[i])} for i in order.tolist()]
        return json_response(200, {"model_name": self.manifest.name, "items": items})


def main() -> None:
    """Entry point."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--variant", type=Path, required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    args = p.parse_args()
    server = NaiveServer(args.variant, args.threads)
    run_uvicorn(ASGIApp(server.handle), args.host, args.port, 5)


if __name__ == "__main__":
    main()
