"""Children's output as lines: splitting, decoding, and the log level a line claims."""

from __future__ import annotations

import re
from typing import Final

import attrs
from twisted.logger import LogLevel

#: Longer lines are cut into pieces of this size, so a child printing without newlines
#: cannot make the agent buffer without bound.
DEFAULT_LINE_LIMIT: Final = 16 * 1024


@attrs.define
class LineBuffer:
    """Bytes in, complete lines out (without their end of line), at most ``limit`` long."""

    limit: int = DEFAULT_LINE_LIMIT
    _pending: bytearray = attrs.field(factory=bytearray)
    #: How many lines were too long and went out in pieces.
    cut: int = 0

    def feed(self, data: bytes) -> list[bytes]:
        self._pending += data
        lines = []
        while True:
            end = self._pending.find(b"\n", 0, self.limit + 1)
            if end != -1:
                lines.append(bytes(self._pending[:end]))
                del self._pending[: end + 1]
            elif len(self._pending) > self.limit:
                lines.append(bytes(self._pending[: self.limit]))
                del self._pending[: self.limit]
                self.cut += 1
            else:
                return lines

    def flush(self) -> list[bytes]:
        """What remains once the stream has ended: a last line without its newline."""
        rest, self._pending = bytes(self._pending), bytearray()
        return [rest] if rest else []


def decode_line(raw: bytes) -> str:
    """Text for the log: CRLF tolerated, invalid UTF-8 replaced rather than fatal."""
    return raw.removesuffix(b"\r").decode("utf-8", errors="replace")


# klog (every Kubernetes component): "E0616 09:13:18.990884   31796 run.go:74] ..."
_KLOG = re.compile(r"([IWEF])\d{4} ")
_KLOG_LEVELS: Final = {
    "I": LogLevel.info,
    "W": LogLevel.warn,
    "E": LogLevel.error,
    "F": LogLevel.critical,
}
# zap JSON (etcd, containerd's logrus JSON too): {"level":"warn",...}
_JSON_LEVEL = re.compile(r'"level"\s*:\s*"(\w+)"')
_JSON_LEVELS: Final = {
    "debug": LogLevel.debug,
    "info": LogLevel.info,
    "warn": LogLevel.warn,
    "warning": LogLevel.warn,
    "error": LogLevel.error,
    "dpanic": LogLevel.critical,
    "panic": LogLevel.critical,
    "fatal": LogLevel.critical,
}


def line_level(line: str) -> LogLevel:
    """The level a line announces in klog or JSON form; ``info`` when it says nothing."""
    klog = _KLOG.match(line)
    if klog:
        return _KLOG_LEVELS[klog.group(1)]
    if line.startswith("{"):
        found = _JSON_LEVEL.search(line)
        if found:
            return _JSON_LEVELS.get(found.group(1).lower(), LogLevel.info)
    return LogLevel.info
