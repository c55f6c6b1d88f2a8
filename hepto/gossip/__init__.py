"""Cluster membership and replicated state over encrypted SWIM gossip."""
