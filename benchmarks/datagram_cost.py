"""What one gossip datagram costs, with warm caches and with cold ones, printed.

A datagram is sealed for its recipient, sent over ``[::1]``, received, opened and
decoded, all in this process; only that work is timed (``time.thread_time_ns``). Cold:
64 MiB are written, one byte per cache line, before each datagram, so that every data
cache holds something else, as when an agent's turn comes after a hundred other
processes' on the same cores (``docs/benchmarks.rst``, "One more member at N = 10 and
50"). Run from the repository (about a minute)::

    .venv/bin/python benchmarks/datagram_cost.py
"""

from __future__ import annotations

import argparse
import ipaddress
import socket
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twisted.internet.task import Clock

from hepto.config import Endpoint
from hepto.gossip import codec
from hepto.gossip.crypto import Keyring
from hepto.gossip.messages import Alive, Digest
from hepto.gossip.transport import recipient_of

FLUSH_BYTES = 64 * 1024 * 1024
CACHE_LINE = 64


def datagram_round_trip() -> Callable[[], None]:
    """One datagram of a join's kind (an Alive with its proof, a digest), end to end."""
    clock = Clock()
    clock.advance(1e6)
    keyring = Keyring.from_cluster_keys([b"k" * 32], "bench", clock)
    to = Endpoint(ipaddress.IPv6Address("2001:db8::5"), 7946)
    messages = [Digest("n101", 3), Alive("n101", 1, to, "node", b"p" * 64)]
    recipient = recipient_of(to)
    receiver = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    receiver.bind(("::1", 0))
    address = receiver.getsockname()
    sender = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)

    def once() -> None:
        sender.sendto(keyring.seal_datagram(codec.encode(messages), recipient), address)
        codec.decode(keyring.open_datagram(receiver.recv(2048), recipient))

    return once


def median_microseconds(work: Callable[[], None], runs: int, before: Callable[[], None]) -> float:
    took = []
    for _ in range(runs):
        before()
        started = time.thread_time_ns()
        work()
        took.append(time.thread_time_ns() - started)
    return statistics.median(took) / 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=300, help="datagrams per cold median")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    work = datagram_round_trip()
    flushed = bytearray(FLUSH_BYTES)
    ones = b"\x01" * (FLUSH_BYTES // CACHE_LINE)

    def flush() -> None:
        flushed[::CACHE_LINE] = ones

    print("one gossip datagram, sealed, sent, received, opened and decoded (median, µs)")
    for _ in range(args.rounds):
        warm = median_microseconds(work, args.runs * 10, lambda: None)
        cold = median_microseconds(work, args.runs, flush)
        print(f"  warm {warm:7.1f}   cold {cold:7.1f}")


if __name__ == "__main__":
    main()
