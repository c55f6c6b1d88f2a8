"""The WireGuard mesh under Kubernetes, driven by membership."""
