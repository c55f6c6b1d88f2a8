"""hepto: an opinionated Kubernetes distribution for geo-distributed clusters."""

__version__ = "0.1.0"
