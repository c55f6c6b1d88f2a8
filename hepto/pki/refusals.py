"""Refusals kept for ``hepto status``: what was turned down, from whom, why, how often.

Entries are keyed by member and subject (a certificate name, ``ca`` or ``record``) so a
member repeating the same bad request updates one entry; the table is bounded so that a
member inventing names cannot grow it without limit.
"""

from __future__ import annotations

import datetime
from collections import OrderedDict
from typing import Any, Final

import attrs

from hepto.pki.errors import Refused

#: Far more than members times certificates in any cluster hepto aims at.
MAX_ENTRIES: Final = 512


@attrs.define
class Refusal:
    member: str
    subject: str
    code: str
    reason: str
    count: int
    first: datetime.datetime
    last: datetime.datetime

    def as_json(self) -> dict[str, Any]:
        return {
            "member": self.member,
            "subject": self.subject,
            "code": self.code,
            "reason": self.reason,
            "count": self.count,
            "first": self.first.isoformat(),
            "last": self.last.isoformat(),
        }


@attrs.define
class RefusalLog:
    limit: int = MAX_ENTRIES
    _entries: OrderedDict[tuple[str, str], Refusal] = attrs.field(factory=OrderedDict)
    #: Entries pushed out by the limit, so that status still shows something was lost.
    evicted: int = 0

    def add(self, member: str, subject: str, refused: Refused, now: datetime.datetime) -> bool:
        """Record a refusal; ``True`` when it is news (first time, or another reason)."""
        key = (member, subject)
        entry = self._entries.pop(key, None)
        news = entry is None or entry.code != refused.code or entry.reason != refused.reason
        if entry is None:
            entry = Refusal(member, subject, refused.code, refused.reason, 0, now, now)
        entry.code, entry.reason, entry.last = refused.code, refused.reason, now
        entry.count += 1
        self._entries[key] = entry
        while len(self._entries) > self.limit:
            self._entries.popitem(last=False)
            self.evicted += 1
        return news

    def clear(self, member: str, subject: str | None = None) -> None:
        """Forget a resolved refusal, or all of ``member``'s when ``subject`` is None."""
        for key in [key for key in self._entries if key[0] == member]:
            if subject is None or key[1] == subject:
                del self._entries[key]

    def get(self, member: str, subject: str) -> Refusal | None:
        return self._entries.get((member, subject))

    def __len__(self) -> int:
        return len(self._entries)

    def as_json(self) -> list[dict[str, Any]]:
        return [entry.as_json() for entry in self._entries.values()]

    @classmethod
    def from_json(cls, entries: list[dict[str, Any]], evicted: int = 0) -> RefusalLog:
        """The log :meth:`as_json` described, in the same order."""
        log = cls(evicted=evicted)
        for entry in entries:
            refusal = Refusal(
                member=entry["member"],
                subject=entry["subject"],
                code=entry["code"],
                reason=entry["reason"],
                count=entry["count"],
                first=datetime.datetime.fromisoformat(entry["first"]),
                last=datetime.datetime.fromisoformat(entry["last"]),
            )
            log._entries[refusal.member, refusal.subject] = refusal
        return log
