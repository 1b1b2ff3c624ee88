"""`recserve route`: one entry point spreading requests over backends by live latency."""
