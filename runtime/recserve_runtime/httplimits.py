"""What the HTTP servers (`recserve serve`, `recserve route`) accept from a client: the
limits on a request's size and on the time it takes to arrive. Light (no imports), so
the command lines can show the defaults without loading the servers."""

from __future__ import annotations

# The largest request body read: a full 4096-row batch is about 2 MB as JSON; anything
# far larger is refused (413) before it is buffered, not after it filled the memory.
MAX_BODY_BYTES = 16 << 20

# Request line and headers of one request, at most (nginx answers 400 past 32 KiB, Go's
# net/http 431 past 1 MiB). httptools has no limit of its own: a client could make the
# parser buffer a header of any size (a 1 MB header was answered 200 before this).
MAX_HEAD_BYTES = 64 * 1024

# How long a request may take to arrive, from the connection (or, on a kept-alive one,
# the request's first byte) to its body's last byte. uvicorn has no such limit: it
# times out only idle kept-alive connections, so a client that opens connections and
# sends nothing, or trickles a head or a body a byte at a time (slowloris), held each
# one, and its file descriptor, for ever. nginx's defaults are 60 s per read of the
# head and of the body; one deadline for the whole request is stricter, since a trickle
# of one byte every few seconds passes a per-read timeout. A cluster client sends a 2 MB
# body in milliseconds.
READ_TIMEOUT_S = 30.0
