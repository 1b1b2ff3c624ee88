"""`recserve serve`: the inference server (OIP v2 over HTTP, /v1/rank, adaptive batching)."""
