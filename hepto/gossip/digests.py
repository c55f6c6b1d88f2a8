"""Record digests on the membership's gossip: which version of a record its sender holds.

Records never ride the gossip (:mod:`hepto.gossip.store` fetches them over TCP); only
their digests do, ``Digest(name, version)``, in the same broadcast queue as membership
news, piggybacked on the same datagrams.  :class:`Digests` is the membership's side of
that: it queues the digests of the records the store holds, and hands each digest heard
to the store with the member that sent it, whom the store fetches the record from.
``docs/gossip.rst`` ("Dissemination") says why digests are sent twice as often as news,
and why a digest heard counts as one sent.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

import attrs
from twisted.logger import Logger

from hepto.config import Endpoint
from hepto.gossip.broadcast import BroadcastQueue
from hepto.gossip.droplog import Drop
from hepto.gossip.messages import Digest, Message
from hepto.gossip.table import MemberState

#: Digests are sent this many times the retransmit limit: they are small (18 bytes
#: with an 8-character name) and rare (a record changes when a certificate or key does),
#: and a member that misses one waits for a push/pull; doubling the sends squares the
#: chance to miss (about N * exp(-2L * (1 - loss))).
DIGEST_WEIGHT: Final = 2

#: Told ``(holder, name, version)`` of each digest heard from another member.
DigestHandler = Callable[[MemberState, str, int], None]


@attrs.define(eq=False)
class Digests:
    """One member's record digests, sent and heard.

    ``queue`` is the membership's broadcast queue, ``member_at`` its table by address
    (a digest is only worth as much as the member that can serve the record), and
    ``drop`` and ``log`` its own, so that what goes wrong is filed with the rest of
    what the membership logs.
    """

    name: str
    queue: BroadcastQueue
    member_at: Callable[[Endpoint], MemberState | None]
    drop: Drop
    log: Logger
    #: Whether a digest heard counts as one of our sends of the same (``Profile``).
    feedback: bool = True
    #: The record store's; None until it subscribes.
    handler: DigestHandler | None = None

    def broadcast(self, name: str, version: int) -> None:
        """Tell everyone that we hold record ``name`` at ``version``."""
        key = ("digest", name)
        queued = self.queue.get(key)
        if isinstance(queued, Digest) and queued.version >= version:
            return
        self.queue.put(key, Digest(name, version), weight=DIGEST_WEIGHT)

    def receive(self, sender: Endpoint, message: Message) -> None:
        """A digest arrived from ``sender``: the store hears of it with its holder."""
        assert isinstance(message, Digest)
        holder = self.member_at(sender)
        if holder is None:
            self.drop("digest from an unknown sender", sender=sender)
            return
        if self.feedback:
            self.queue.heard(("digest", message.name), message)
        if self.handler is not None and holder.name != self.name:
            try:
                self.handler(holder, message.name, message.version)
            except Exception:
                self.log.failure("Digest handler failed on {digest}", digest=message)
