"""Errors that stop a node before it runs."""


class StartupError(Exception):
    """The node cannot start; the message says why in one sentence for the operator."""
