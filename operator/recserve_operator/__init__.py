"""recserve control plane: API types, kopf handlers, reconcilers, planner, autoscaler."""

__version__ = "0.1.0"
