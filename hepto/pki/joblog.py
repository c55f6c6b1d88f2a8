"""The log of the PKI's jobs, where the desk runs: structured events, kept for the answer.

The modules that do the PKI's work (:mod:`~hepto.pki.desk` and what it uses) run in the
worker process (:mod:`hepto.pki.worker`), which ships the events of each job to the agent
in its answer; the agent emits them with ``twisted.logger`` as its own
(:func:`hepto.pki.service.emit_events`).  So the worker never needs ``twisted.logger``,
whose import alone cost each worker start 0.19 CPU-s, more than ``cryptography.x509``
(0.13): every joining node starts one, and a master one per burst of work
(``docs/pki.rst``, "The worker process").

An event here is what crosses the pipe: the level's name, the namespace, the format
(``twisted.logger``'s, ``{field}`` style) and the fields that are JSON; a failure's
traceback is text.
"""

from __future__ import annotations

import json
import traceback
from typing import Any, Final

JobEvent = dict[str, Any]

_events: Final[list[JobEvent]] = []


def take() -> list[JobEvent]:
    """The events logged since the last call, oldest first."""
    taken = list(_events)
    _events.clear()
    return taken


class Logger:
    """``twisted.logger.Logger``'s methods, as the desk's modules use them."""

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace

    def debug(self, format: str, **fields: object) -> None:
        self._emit("debug", format, fields)

    def info(self, format: str, **fields: object) -> None:
        self._emit("info", format, fields)

    def warn(self, format: str, **fields: object) -> None:
        self._emit("warn", format, fields)

    def error(self, format: str, **fields: object) -> None:
        self._emit("error", format, fields)

    def failure(self, format: str, **fields: object) -> None:
        """As ``Logger.failure`` in an ``except`` block: critical, with the traceback."""
        self._emit("critical", format, fields, traceback.format_exc())

    def _emit(
        self, level: str, format: str, fields: dict[str, object], trace: str | None = None
    ) -> None:
        event: JobEvent = {
            "level": level,
            "namespace": self.namespace,
            "format": format,
            "fields": {key: value for key, value in fields.items() if _is_json(value)},
        }
        if trace is not None:
            event["traceback"] = trace
        _events.append(event)


def _is_json(value: object) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True
