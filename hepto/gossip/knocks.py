"""Knocks: whether a member reaches this node unprompted, asked of the member itself.

A stateful firewall (or a NAT) in front of a host lets a datagram in only if the host
sent one on the same path lately: to the same address and port, from the same port.
Gossip cannot tell such a host from an open one, since members answer each other all
the time.  So this node asks: it sends member X a :class:`KnockRequest` from its gossip
port, and X answers with a :class:`Knock` from a port of its own, one this node never
sent to.  Only a host that admits datagrams nobody asked for receives it; a knock that
arrives proves that X reaches this node unprompted, the one thing that a WireGuard
tunnel's persistent keepalives are for (``docs/mesh.rst``, "Keepalives").

The knock is sealed like any datagram (a key holder could knock unasked, and learn
nothing by it), must come from X's own address and name the request it answers; any
other is counted and dropped.  Answers go only to the address a request came from, one
per second and requester at most: a knock is no bigger than its request.

Protocol logic only: :class:`Knocks` sends through two callables and keeps time with an
``IReactorTime``, so that a :class:`~twisted.internet.task.Clock` drives it in tests.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Final

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from hepto.config import Endpoint
from hepto.gossip.messages import KNOCK_MESSAGES, Knock, KnockRequest, Message

#: Seconds to wait for a knock before counting the request unanswered: a round trip and
#: a half on any path gossip works on (its own probes wait 0.5 s).
KNOCK_TIMEOUT: Final = 5.0
#: Seconds between two answers to the same requester (address and port).
ANSWER_SPACING: Final = 1.0
#: Addresses remembered for the spacing; beyond it, the oldest answers are forgotten.
ANSWERED_MEMORY: Final = 4096
#: Drop reasons (the gossip drop counter): a knock nobody asked for, or from elsewhere.
UNEXPECTED_KNOCK: Final = "unexpected-knock"
KNOCK_REQUEST_TOO_SOON: Final = "knock-request-too-soon"

Send = Callable[[Endpoint, Sequence[Message]], None]
_KNOCK_TYPES: Final = frozenset(KNOCK_MESSAGES)


@attrs.define(eq=False)
class _Pending:
    name: str
    address: Endpoint
    answered: Deferred[bool]
    timeout: IDelayedCall


@attrs.define(eq=False)
class Knocks:
    """Asks members to knock, answers their requests, and passes other datagrams on.

    ``send`` sends a datagram from the gossip port; ``send_aside`` from a port of its own,
    used once.  ``passing`` gets the datagrams that are not about knocks (Membership's
    ``receive``); ``count_drop`` is the gossip drop counter's ``count``.
    """

    name: str
    clock: IReactorTime
    send: Send
    send_aside: Send
    passing: Callable[[Endpoint, Sequence[Message]], None]
    count_drop: Callable[[str, object, str], None]
    timeout: float = KNOCK_TIMEOUT
    log: Logger = attrs.field(factory=lambda: Logger(namespace="hepto.gossip.knocks"))
    _seqs: itertools.count[int] = attrs.field(factory=lambda: itertools.count(1), init=False)
    _pending: dict[int, _Pending] = attrs.field(factory=dict, init=False)
    _answered: dict[object, float] = attrs.field(factory=dict, init=False)

    def ask(self, name: str, address: Endpoint) -> Deferred[bool]:
        """Ask ``name``, at its gossip ``address``, to knock: fires True when the knock
        arrives, False if none did within the timeout.  Cancel it to stop waiting."""
        seq = next(self._seqs) % 2**32
        answered: Deferred[bool] = Deferred(lambda _: self._forget(seq))
        timeout = self.clock.callLater(self.timeout, self._unanswered, seq)
        self._pending[seq] = _Pending(name, address, answered, timeout)
        self.send(address, [KnockRequest(seq, self.name)])
        return answered

    def stop(self) -> None:
        """Every pending request is unanswered."""
        for seq in list(self._pending):
            self._unanswered(seq)

    def receive(self, sender: Endpoint, messages: Sequence[Message]) -> None:
        """The transport's receiver: knocks handled here, everything else passed on."""
        if not any(type(message) in _KNOCK_TYPES for message in messages):
            self.passing(sender, messages)  # Nearly every datagram: passed as it came.
            return
        others = []
        for message in messages:
            if isinstance(message, KNOCK_MESSAGES):
                self._receive(sender, message)
            else:
                others.append(message)
        if others:
            self.passing(sender, others)

    def _receive(self, sender: Endpoint, message: KnockRequest | Knock) -> None:
        if isinstance(message, KnockRequest):
            self._answer(sender, message)
            return
        pending = self._pending.get(message.seq)
        if (
            pending is None
            or pending.name != message.source
            or pending.address.host != sender.host
            or pending.address.port == sender.port
        ):
            # A knock from the gossip port proves nothing: our request opened that path.
            self.count_drop(UNEXPECTED_KNOCK, sender, f"knock {message.seq} of {message.source}")
            return
        del self._pending[message.seq]
        pending.timeout.cancel()
        pending.answered.callback(True)

    def _answer(self, sender: Endpoint, request: KnockRequest) -> None:
        now = self.clock.seconds()
        last = self._answered.get(sender)
        if last is not None and now - last < ANSWER_SPACING:
            self.count_drop(KNOCK_REQUEST_TOO_SOON, sender, f"from {request.source}")
            return
        self._answered.pop(sender, None)
        self._answered[sender] = now
        if len(self._answered) > ANSWERED_MEMORY:
            del self._answered[next(iter(self._answered))]
        self.send_aside(sender, [Knock(request.seq, self.name)])

    def _unanswered(self, seq: int) -> None:
        pending = self._pending.pop(seq, None)
        if pending is None:
            return
        if pending.timeout.active():
            pending.timeout.cancel()
        pending.answered.callback(False)

    def _forget(self, seq: int) -> None:
        pending = self._pending.pop(seq, None)
        if pending is not None and pending.timeout.active():
            pending.timeout.cancel()
