"""Upstream Kubernetes components: their command lines, files and readiness."""
