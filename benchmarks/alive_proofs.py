"""What the proofs of Alive messages cost: bytes, and CPU per datagram received.

    .venv/bin/python benchmarks/alive_proofs.py
    .venv/bin/python benchmarks/alive_proofs.py --repeat 20000 --rounds 7

Prints, each figure the median of ``--rounds`` rounds of ``--repeat`` operations:

* Ed25519 signing and checking one proof (PyNaCl, as the agent does);
* an Alive's size on the wire with and without its proof, and how many fit in one
  datagram beside a ping, for a member name of 8 characters;
* the CPU of receiving one sealed datagram, from the bytes to the membership's view
  (open the envelope, decode, ``Membership.receive``), for a datagram of news that is
  old to the receiver (the common case: no proof is checked) and for a full one of new
  Alives of members it knows, with the proofs checked against pinned identities and,
  side by side, with no identity pinned (nothing checked: the cost without proofs).

The figures for real agents (CPU per datagram and per member at 100 members, with and
without proofs, side by side) come from ``benchmarks/agents.py --tree``; see
``docs/gossip.rst``.
"""

from __future__ import annotations

import argparse
import functools
import ipaddress
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twisted.internet.task import Clock

from hepto.config import Endpoint
from hepto.gossip import codec
from hepto.gossip.crypto import Keyring
from hepto.gossip.messages import MAX_PLAINTEXT, Alive, Message, Ping
from hepto.gossip.profile import LAN
from hepto.gossip.proofs import PROOF_SIZE, Notary, statement
from hepto.gossip.simulation import CLUSTER
from hepto.gossip.simulation import identity_of as _identity_of
from hepto.gossip.swim import Membership
from hepto.gossip.table import MemberState
from hepto.gossip.transport import recipient_of
from hepto.state import ALIVE

NAME_LENGTH = 8
identity_of = functools.cache(_identity_of)


def endpoint(index: int) -> Endpoint:
    return Endpoint(ipaddress.IPv6Address(f"2001:db8::{index:x}"), 7946)


def name(index: int) -> str:
    return f"m{index:0{NAME_LENGTH - 1}d}"


class NoNetwork:
    def send(self, to: Endpoint, messages: Sequence[Message]) -> None:
        pass

    def ping_stream(self, to: Endpoint, ping: Ping) -> None:
        raise NotImplementedError


def timed(operation: Callable[[], object], repeat: int, rounds: int) -> float:
    """Median over rounds of the mean CPU seconds of one ``operation``."""
    results = []
    for _ in range(rounds):
        started = time.process_time()
        for _ in range(repeat):
            operation()
        results.append((time.process_time() - started) / repeat)
    return statistics.median(results)


def alive(index: int, incarnation: int) -> Alive:
    said = statement(CLUSTER, name(index), incarnation, endpoint(index), "node")
    proof = identity_of(name(index)).sign(said)
    return Alive(name(index), incarnation, endpoint(index), "node", proof)


def receiver(members: int, pinned: bool) -> Membership:
    """Member 0, knowing ``members`` others at incarnation 0."""
    pins = {name(i): identity_of(name(i)).public_key for i in range(members + 1)}
    notary = Notary(CLUSTER, name(0), identity_of(name(0)), pins.get if pinned else dict().get)
    membership = Membership(
        name(0),
        endpoint(0),
        "node",
        Clock(),
        NoNetwork(),
        LAN,
        random.Random(1),
        notary=notary,
    )
    membership.merge_state(
        [
            MemberState(name(i), endpoint(i), "node", 0, ALIVE, 0.0, alive(i, 0).proof)
            for i in range(1, members + 1)
        ]
    )
    membership.start()  # on a clock that never moves: it only receives
    return membership


def full_datagram(first: int, incarnation: int) -> list[Message]:
    """A ping and as many Alives as fit, about members first, first + 1, ..."""
    messages: list[Message] = [Ping(1, name(0), name(1))]
    size = codec.HEADER_SIZE + codec.encoded_size(messages[0])
    index = first
    while size + codec.encoded_size(alive(index, incarnation)) <= MAX_PLAINTEXT:
        messages.append(alive(index, incarnation))
        size += codec.encoded_size(messages[-1])
        index += 1
    return messages


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    repeat, rounds = args.repeat, args.rounds

    identity = identity_of(name(1))
    said = statement(CLUSTER, name(1), 1, endpoint(1), "node")
    proof = identity.sign(said)
    notary = Notary(CLUSTER, name(0), identity_of(name(0)), {name(1): identity.public_key}.get)
    sign_us = 1e6 * timed(lambda: identity.sign(said), repeat, rounds)
    check_us = 1e6 * timed(
        lambda: notary.check(name(1), 1, endpoint(1), "node", proof), repeat, rounds
    )
    print(f"Ed25519 proof: sign {sign_us:.1f} µs, check {check_us:.1f} µs (median of {rounds})")

    with_proof = codec.encoded_size(alive(1, 1))
    without = with_proof - PROOF_SIZE
    ping = codec.encoded_size(Ping(1, name(0), name(1)))
    room = MAX_PLAINTEXT - codec.HEADER_SIZE - ping
    print(
        f"Alive on the wire ({NAME_LENGTH}-character name): {with_proof} bytes with its "
        f"proof, {without} without; beside a ping, a datagram carries {room // with_proof} "
        f"Alives with proofs, {room // without} without"
    )

    sealer = Keyring.from_cluster_keys((bytes(32),), CLUSTER, Clock())
    recipient = recipient_of(endpoint(0))
    datagram_of_alives = full_datagram(1, 1)
    count = len(datagram_of_alives) - 1
    members = count * (repeat + 1)

    def receive_each(membership: Membership, datagrams: list[bytes]) -> Callable[[], None]:
        # A keyring of its own: the replay window would refuse datagrams seen before.
        keyring = Keyring.from_cluster_keys((bytes(32),), CLUSTER, Clock())
        pending = iter(datagrams)

        def receive() -> None:
            payload = keyring.open_datagram(next(pending), recipient)
            membership.receive(endpoint(1), codec.decode(payload))

        return receive

    print(f"Receiving one sealed datagram of a ping and {count} Alives, CPU per datagram:")
    # Old news: the same datagram again and again, once its news is in.
    for pinned in (True, False):
        membership = receiver(count, pinned)
        payload = codec.encode(datagram_of_alives)
        membership.receive(endpoint(1), datagram_of_alives)
        # Sealed one by one: the replay window refuses a datagram seen before.
        sealed = [sealer.seal_datagram(payload, recipient) for _ in range(repeat * rounds)]
        old = 1e6 * timed(receive_each(membership, sealed), repeat, rounds)
        what = "proofs checked" if pinned else "nothing pinned"
        print(f"  old news ({what}): {old:.0f} µs")
    # New news: each datagram of a round raises the incarnations of members not yet
    # seen at it; each round raises them once more.
    print(f"  (signing {members * rounds} Alives)", file=sys.stderr)
    rounds_of_datagrams = [
        [
            sealer.seal_datagram(codec.encode(full_datagram(1 + count * i, 1 + r)), recipient)
            for i in range(repeat)
        ]
        for r in range(rounds)
    ]
    for pinned in (True, False):
        membership = receiver(members, pinned)
        datagrams = [datagram for round in rounds_of_datagrams for datagram in round]
        new = 1e6 * timed(receive_each(membership, datagrams), repeat, rounds)
        what = "proofs checked" if pinned else "nothing pinned"
        print(f"  {count} new Alives ({what}): {new:.0f} µs, {new / count:.1f} µs per Alive")


if __name__ == "__main__":
    main()
