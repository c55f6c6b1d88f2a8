"""Log observers: twistd's text by default, or one JSON object per line."""

from __future__ import annotations

import json
import sys
from typing import IO, Any, Final

from twisted.logger import FileLogObserver, ILogObserver, LogEvent, eventAsJSON, formatEvent
from twisted.logger._json import objectSaveHook

#: Not written: the logger object, and nothing a line needs twice.
_LEFT_OUT: Final = frozenset({"log_logger", "log_flattened"})


def _encodable(value: object) -> object:
    # As twisted.logger's own encoder: bytes as latin-1 text, its types (LogLevel) as
    # tagged objects, anything else marked unpersistable (log_text keeps its words).
    if isinstance(value, bytes):
        return value.decode("charmap")
    return objectSaveHook(value)


def _json_line(event: LogEvent) -> str:
    if "log_failure" in event:
        # Its traceback: twisted.logger's encoder keeps it, at the price of a round trip.
        fields: dict[str, Any] = json.loads(eventAsJSON(event))
    else:
        # Encoded once: eventAsJSON, then a second pass to add log_text, cost a third of
        # what an agent spent on a join's few lines.
        fields = {key: value for key, value in event.items() if key not in _LEFT_OUT}
    # log_text saves every reader a formatter.
    fields["log_text"] = formatEvent(event)
    for key in _LEFT_OUT:
        fields.pop(key, None)
    return json.dumps(fields, separators=(",", ":"), default=_encodable, skipkeys=True) + "\n"


def json_lines_observer(stream: IO[str] | None = None) -> ILogObserver:
    """An observer writing one JSON object per line (not RFC 7464's record separators)."""
    return FileLogObserver(stream or sys.stdout, _json_line)
