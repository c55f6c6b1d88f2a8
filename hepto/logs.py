"""Log observers: twistd's text by default, or one JSON object per line."""

from __future__ import annotations

import json
import sys
from typing import IO, Any

from twisted.logger import FileLogObserver, ILogObserver, LogEvent, eventAsJSON, formatEvent


def _json_line(event: LogEvent) -> str:
    # eventAsJSON keeps the structured fields; log_text saves every reader a formatter.
    fields: dict[str, Any] = json.loads(eventAsJSON(event))
    fields["log_text"] = formatEvent(event)
    fields.pop("log_logger", None)
    return json.dumps(fields, separators=(",", ":"), default=repr) + "\n"


def json_lines_observer(stream: IO[str] | None = None) -> ILogObserver:
    """An observer writing one JSON object per line (not RFC 7464's record separators)."""
    return FileLogObserver(stream or sys.stdout, _json_line)
