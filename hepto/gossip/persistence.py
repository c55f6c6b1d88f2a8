"""What gossip keeps across restarts, so that a member never goes back in time.

One JSON file in the node's directory, replaced atomically: the last incarnation, this
member's last signed record (hence its version), the members last known (to rejoin
through any of them when the anchors are gone) and the identities pinned to names.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import attrs

from hepto.config import ConfigError, Endpoint, parse_endpoint
from hepto.errors import StartupError
from hepto.gossip.identity import write_private

STATE_FILE: Final = "gossip-state.json"
FORMAT: Final = 1


class PersistenceError(StartupError):
    """The saved state cannot be read; the message says why and what to do."""


@attrs.frozen
class KnownMember:
    name: str
    address: Endpoint
    role: str


@attrs.frozen
class SavedState:
    incarnation: int = 0
    record: bytes | None = None
    members: tuple[KnownMember, ...] = ()
    pins: Mapping[str, bytes] = attrs.field(factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "incarnation": self.incarnation,
            "record": None if self.record is None else base64.b64encode(self.record).decode(),
            "members": [
                {"name": member.name, "address": str(member.address), "role": member.role}
                for member in self.members
            ],
            "pins": {name: key.hex() for name, key in sorted(self.pins.items())},
        }

    @classmethod
    def from_json(cls, document: Any) -> SavedState:
        if not isinstance(document, dict) or document.get("format") != FORMAT:
            raise ValueError(f"not a format {FORMAT} gossip state")
        incarnation = document["incarnation"]
        if type(incarnation) is not int or incarnation < 0:
            raise ValueError(f"incarnation {incarnation!r}")
        record = document["record"]
        members = tuple(
            KnownMember(
                str(item["name"]),
                parse_endpoint("members", str(item["address"]), 0),
                str(item["role"]),
            )
            for item in document["members"]
        )
        return cls(
            incarnation=incarnation,
            record=None if record is None else base64.b64decode(record, validate=True),
            members=members,
            pins={str(name): bytes.fromhex(key) for name, key in document["pins"].items()},
        )


@attrs.define
class StateFile:
    path: Path

    def load(self) -> SavedState:
        """The saved state, or an empty one on first start."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return SavedState()
        except OSError as error:
            raise PersistenceError(f"cannot read {self.path}: {error.strerror}") from None
        try:
            return SavedState.from_json(json.loads(text))
        except (ValueError, KeyError, TypeError, AttributeError, ConfigError) as error:
            # Starting afresh would reuse old versions and forget pins: the operator decides.
            raise PersistenceError(
                f"{self.path} is unreadable ({error!r}); restore it, or delete it to rejoin "
                "as if new (the record version is then recovered from the other members, "
                "but the identities pinned here are forgotten)"
            ) from None

    def save(self, saved: SavedState) -> None:
        # Compact: with an indent, json.dumps takes its pure-Python encoder, four times
        # slower, and every member rewrites the file at each join (``jq`` shows it
        # indented).
        data = json.dumps(saved.as_json(), sort_keys=True).encode("utf-8") + b"\n"
        write_private(self.path, data)
