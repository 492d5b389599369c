"""dindind: turn a Kubernetes build into docker-in-docker test clusters."""

__version__ = "0.1.0"
