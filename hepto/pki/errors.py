"""The PKI's exceptions, apart from the code that raises them.

The resident agent handles these without importing ``cryptography`` (see
:mod:`hepto.pki.worker`), so they live in a module that imports nothing heavy.
"""

from __future__ import annotations

from hepto.errors import StartupError


class AuthorityError(StartupError):
    """The master's CA files (or a member's pinned CA) exist but cannot be used.

    The message says which file and why, in one sentence for the operator.
    """


class Refused(Exception):
    """A CSR, certificate or CA that policy turns down, and why."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason

    def __str__(self) -> str:
        return self.reason


class WorkerError(Exception):
    """The PKI worker process died, hung or answered something that is no answer."""
