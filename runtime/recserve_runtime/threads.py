"""Thread counts shared by the server and the profiler (one source, so they agree).

A server pod runs each onnxruntime call on ``SERVER_INTRA_OP_THREADS`` threads
(`recserve serve --intra-op-threads`), and the operator's per-pool profile Jobs measure
with the same count by default (`recserve profile --threads`). A profile taken with
every CPU the Job can see would overstate what one replica serves, and the planner
sizes replicas from those profiles.
"""

from __future__ import annotations

SERVER_INTRA_OP_THREADS = 1
