"""Log observers: twistd's text by default, or one JSON object per line."""

from __future__ import annotations

import functools
import json
import sys
from typing import IO, Any, Final

from twisted.logger import (
    FileLogObserver,
    ILogObserver,
    LogEvent,
    LogLevel,
    eventAsJSON,
    formatEvent,
)

#: Not written: the logger object, and nothing a line needs twice.
_LEFT_OUT: Final = frozenset({"log_logger", "log_flattened"})
#: The levels are constants of LogLevel, not instances of it.
_LEVELS: Final = frozenset(LogLevel.iterconstants())


@functools.cache
def _level(level: object) -> object:
    # As twisted.logger's encoder writes it (a tagged object), worked out once per level.
    return json.loads(eventAsJSON({"log_level": level}))["log_level"]


def _encodable(value: object) -> object:
    # As twisted.logger's own encoder: bytes as latin-1 text, anything else it does not
    # know marked unpersistable (log_text keeps its words).
    if isinstance(value, bytes):
        return value.decode("charmap")
    try:
        known = value in _LEVELS
    except TypeError:  # unhashable: not a level
        known = False
    if known:
        return _level(value)
    return {"unpersistable": True}


def _json_line(event: LogEvent) -> str:
    if "log_failure" in event:
        # Its traceback: twisted.logger's encoder keeps it, at the price of a round trip.
        fields: dict[str, Any] = json.loads(eventAsJSON(event))
        for key in _LEFT_OUT:
            fields.pop(key, None)
    else:
        # Encoded once: eventAsJSON, then a second pass to add log_text, cost a third of
        # what an agent spent on a join's few lines.
        fields = {key: value for key, value in event.items() if key not in _LEFT_OUT}
    # log_text saves every reader a formatter.
    fields["log_text"] = formatEvent(event)
    return json.dumps(fields, separators=(",", ":"), default=_encodable, skipkeys=True) + "\n"


def json_lines_observer(stream: IO[str] | None = None) -> ILogObserver:
    """An observer writing one JSON object per line (not RFC 7464's record separators)."""
    return FileLogObserver(stream or sys.stdout, _json_line)
