"""recserve data plane: model zoo, variant builder, profiler, server, router."""

__version__ = "0.1.0"
