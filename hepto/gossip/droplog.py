"""What the membership protocol drops: gossip that decodes but makes no sense.

A ping for another member, an absurd incarnation, a forged Alive: each is counted by
reason and logged, at most once a minute per reason, so that a flood of nonsense costs a
counter increment rather than a log line each.  The transport's own refusals (what does
not decrypt or decode) are :class:`~hepto.gossip.crypto.Drops`'; these are the protocol
logic's, with the fields that say what the nonsense was.
"""

from __future__ import annotations

from collections import Counter
from typing import Final, Protocol

import attrs
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

#: Seconds between two log lines about drops of the same reason.
DROP_LOG_INTERVAL: Final = 60.0


class Drop(Protocol):
    """Count (and log, now and then) input dropped for ``reason``."""

    def __call__(self, reason: str, **fields: object) -> None: ...


@attrs.define(eq=False)
class DropLog:
    """A :class:`Drop` that counts by reason and logs each reason once a minute at most.

    ``log`` is its owner's, so that the warnings are filed with the rest of what it logs.
    """

    clock: IReactorTime
    log: Logger
    #: Dropped input by reason; never reset.
    counts: Counter[str] = attrs.field(factory=Counter)
    _logged: dict[str, float] = attrs.field(factory=dict)

    def __call__(self, reason: str, **fields: object) -> None:
        self.counts[reason] += 1
        now = self.clock.seconds()
        last = self._logged.get(reason)
        if last is None or now - last >= DROP_LOG_INTERVAL:
            self._logged[reason] = now
            self.log.warn(
                "Dropped gossip: {reason} ({count} so far) {fields}",
                reason=reason,
                count=self.counts[reason],
                fields=fields,
            )
