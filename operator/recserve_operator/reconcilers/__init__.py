"""One idempotent reconcile function per kind: spec + observed state -> actions + status."""
