"""What one wireguard-go UAPI transaction costs both sides, printed, never asserted.

A member's mesh pass at a join is one ``set`` over wireguard-go's UAPI socket. The
agent keeps one connection (``hepto.mesh.uapi.UAPIClient``); this compares it, in one
run, rounds alternating, with a connection made and closed per transaction (what it did
before): CPU of the agent's process and of wireguard-go's (its threads' ``schedstat``,
nanoseconds) per transaction, medians over the rounds. wireguard-go runs in a network
namespace (tests/netlab.py) with ``--peers`` peers, and each transaction updates one of
them without changing it, as a pass that gives a new peer its keepalive does.

Then what a read of the whole device costs (``get``, and its parse into a
``DeviceStatus``, as the mesh's resync does every 10 s): with the parser's caches
cleared before each read (every value parsed through ``ipaddress``, as every read did
before they came) and as they are (every value seen at the read before).

    .venv/bin/python benchmarks/uapi.py --peers 100 --rounds 7 --transactions 300
"""

from __future__ import annotations

import argparse
import ipaddress
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from twisted.internet import defer, task

from hepto.config import Endpoint
from hepto.mesh import uapi
from hepto.mesh.backend import AddPeer, PeerSpec, UpdatePeer
from hepto.mesh.keys import KeyPair
from hepto.mesh.uapi import set_request
from hepto.mesh.userspace import UserspaceBackend
from netlab import Lab


def thread_cpu(pid: int) -> float:
    """Seconds of CPU of every thread of ``pid``, from ``schedstat`` (nanoseconds)."""
    total = 0
    for thread in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((thread / "schedstat").read_text().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total / 1e9


def peer(index: int) -> PeerSpec:
    return PeerSpec(
        f"n{index}",
        KeyPair.generate().public_key,
        Endpoint(ipaddress.IPv6Address(f"2001:db8:2::{index + 1:x}"), 51820),
        frozenset({ipaddress.IPv6Network(f"fd00::{index + 1:x}/128")}),
        0,
    )


async def per_operation(
    pid: int,
    modes: Sequence[str],
    operation: Callable[[str], Awaitable[None]],
    rounds: int,
    count: int,
) -> dict[str, dict[str, list[float]]]:
    """µs of CPU per operation of the agent and of wireguard-go, per mode, per round."""
    figures: dict[str, dict[str, list[float]]] = {}
    for _ in range(rounds):
        for mode in modes:
            agent, device = time.process_time(), thread_cpu(pid)
            for _ in range(count):
                await operation(mode)
            agent = time.process_time() - agent
            device = thread_cpu(pid) - device
            mode_figures = figures.setdefault(mode, {"agent": [], "wireguard-go": []})
            mode_figures["agent"].append(agent / count * 1e6)
            mode_figures["wireguard-go"].append(device / count * 1e6)
    return figures


def report(label: str, operation: str, figures: dict[str, dict[str, list[float]]]) -> None:
    agent, device = f"agent µs/{operation}", f"wireguard-go µs/{operation}"
    print(f"{label:18s}  {agent}  {device}")
    for mode, sides in figures.items():
        print(
            f"{mode:18s}  {statistics.median(sides['agent']):{len(agent)}.0f}"
            f"  {statistics.median(sides['wireguard-go']):{len(device)}.0f}"
        )


async def run(reactor: object, args: argparse.Namespace) -> None:
    lab = Lab("hb")
    directory = Path(tempfile.mkdtemp(prefix="hb-uapi-"))
    backend = UserspaceBackend(
        reactor, "hepto0", directory / "wireguard", wrapper=lab.add_host("uapi").command([])
    )
    try:
        await backend.start(lambda: None)
        assert backend.pid is not None
        client = backend.client
        peers = [peer(index) for index in range(args.peers)]
        await client.set(set_request(KeyPair.generate().private_key, 51820))
        await client.set(set_request(changes=[AddPeer(spec) for spec in peers]))
        update = set_request(changes=[UpdatePeer(peers[0], endpoint=False)])

        async def set_once(mode: str) -> None:
            await client.set(update)
            if mode == "per transaction":
                await client.close()

        async def read_once(mode: str) -> None:
            if mode == "caches cleared":
                for cache in (uapi._prefix, uapi._endpoint, uapi._base64_key):
                    cache.cache_clear()
            status = await backend.read()
            assert len(status.peers) == args.peers

        sets = await per_operation(
            backend.pid, ("kept", "per transaction"), set_once, args.rounds, args.transactions
        )
        print(f"{args.peers} peers, {args.transactions} sets a round, medians of {args.rounds}")
        report("connection", "set", sets)
        reads = await per_operation(
            backend.pid, ("caches cleared", "caches kept"), read_once, args.rounds, args.reads
        )
        print(f"{args.reads} reads of the device a round, medians of {args.rounds}")
        report("parser", "read", reads)
    finally:
        await backend.stop()
        lab.close()
        shutil.rmtree(directory, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peers", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--transactions", type=int, default=300)
    parser.add_argument("--reads", type=int, default=100)
    args = parser.parse_args()
    task.react(lambda reactor: defer.Deferred.fromCoroutine(run(reactor, args)))


if __name__ == "__main__":
    main()
