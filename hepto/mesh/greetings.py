"""Which end of a new tunnel greets its peer, and when.

A device greets a peer given a persistent keepalive at once: its handshake brings the
tunnel up as the peer appears, not at the first packet (``docs/mesh.rst``, Keepalives).
When both ends greet within a round trip of each other, the two handshakes cross.
WireGuard's protocol survives that at the price of a retry five seconds later, but
wireguard-go (0.0.20220316 here; the code is unchanged up to 0.0.20250522) checks the
handshake's state before its own work and sets it after, without checking again: two
handshake messages processed at once on two cores can leave one end holding the new
keys under an index the other does not send to, and one direction of the tunnel is lost
until WireGuard gives up on it and shakes hands again, 15 s later. Two nodes that start
together meet exactly so.

So one end greets at once: the one whose name sorts first (both ends know both names,
so both agree without a word). The other waits :data:`GREETING_DELAY`, then greets too:
the first greeting is lost if it arrived before this end had the key (a joiner's device
misses those of the members that saw its record first), and the first end would only
try again five seconds later. By then a greeting that arrived has made the tunnel, and
the late one is a keepalive, not a handshake.

A peer that needs no keepalive (it reaches this node unprompted) is greeted with one
empty datagram to its mesh address instead (:class:`Greeter`): a device shakes hands for
any packet it has no session for, just as for a keepalive, and there is no keepalive to
set on the device, then take off again, at every join: two writes to the device and a
pass fewer on every member.

:class:`Greetings` keeps the waiting ends' times; it is plain logic, driven by the mesh
service's passes and clock.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from collections.abc import Collection, Iterable
from functools import partial
from typing import Final

import attrs
from twisted.logger import Logger

#: Seconds the end of a new tunnel whose name sorts last waits before greeting: well
#: above a round trip and a busy member's pass, well under wireguard-go's retry (5 s).
GREETING_DELAY: Final = 1.0
#: Where a greeting datagram goes on the peer's mesh address: the discard port, which
#: nothing of hepto's listens on (whatever answers, the handshake is what it was for).
GREETING_PORT: Final = 9


def greets_first(own: str, peer: str) -> bool:
    """Whether this end (``own``) greets ``peer`` as it adds it."""
    return own < peer


@attrs.define
class Greetings:
    """When this end greets each new peer that greets it first."""

    delay: float = GREETING_DELAY
    _due: dict[str, float] = attrs.field(factory=dict, init=False)

    def note(self, own: str, peers: Iterable[str], greeted: Collection[str], now: float) -> None:
        """``peers`` are those a pass would have; ``greeted`` those the device has.

        A new peer that greets first gets its time; a name that is no longer a peer
        loses its own (it is new again when it comes back).
        """
        peers = set(peers)
        for name in peers:
            if name not in greeted and name not in self._due and not greets_first(own, name):
                self._due[name] = now + self.delay
        for name in self._due.keys() - peers:
            del self._due[name]

    def waiting(self, now: float) -> frozenset[str]:
        """Peers this end does not greet yet: their keepalive waits."""
        return frozenset(name for name, due in self._due.items() if due > now)

    def due(self, now: float) -> frozenset[str]:
        """Peers this end greets now, whatever else their keepalive would be."""
        return frozenset(name for name, due in self._due.items() if due <= now)

    def greeted(self, names: Iterable[str]) -> None:
        """``names`` had their greeting (a datagram, or a keepalive a pass set): from now
        on their keepalive is the usual."""
        for name in names:
            self._due.pop(name, None)

    def next_due(self, now: float) -> float | None:
        """When the next waiting peer is due, if any."""
        return min((due for due in self._due.values() if due > now), default=None)

    def clear(self) -> None:
        self._due.clear()


@attrs.define(eq=False)
class Greeter:
    """Greets peers with one empty datagram each, through the mesh.

    The socket is made at the first greeting, in the namespace the agent runs in, whose
    routes send the peers' mesh addresses through the mesh link; :meth:`close` at stop.
    """

    port: int = GREETING_PORT
    log: Logger = attrs.field(factory=partial(Logger, namespace=__name__))
    #: Greetings sent, and those the kernel refused (say, no route yet).
    sent: int = attrs.field(default=0, init=False)
    failed: int = attrs.field(default=0, init=False)
    _socket: socket.socket | None = attrs.field(default=None, init=False)

    def greet(self, address: ipaddress.IPv6Address) -> None:
        if self._socket is None:
            self._socket = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
            self._socket.setblocking(False)
        try:
            self._socket.sendto(b"", (str(address), self.port))
        except OSError as error:
            self.failed += 1
            self.log.warn(
                "Could not greet {address} through the mesh: {error}",
                address=str(address),
                error=errno.errorcode.get(error.errno or 0, str(error)),
            )
        else:
            self.sent += 1

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None
