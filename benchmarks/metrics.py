"""What the metrics cost the agent: resident memory on and off, CPU per scrape. Printed.

Parts (``--parts``, default both):

``memory``
    One idle agent (``--no-contain --components none``) in a network namespace of a lab
    (prefix ``ho``), ``--rounds`` times with ``--metrics none`` and as many with the
    default (``[::1]:7947``), alternating; each read ``--idle`` seconds after it logged
    running: ``VmRSS`` and ``Pss`` of ``/proc/<pid>/smaps_rollup``. Medians printed.
``scrape``
    The CPU one scrape costs: an idle real agent scraped ``--scrapes`` times by one
    ``curl`` (one connection each, as Prometheus after a close), its utime + stime
    before and after; and, in this process, the families and text of a status of
    ``--members`` members (each with a record and a mesh peer) made ``--scrapes`` times:
    what a scrape adds to the status at that size.

``members``
    ``--members`` real idle agents (100 by default, started ten at a time) that all see
    each other; then one of them is scraped ``--scrapes`` times, its CPU over the
    scrapes less its idle CPU over as long just before: the cost of a scrape at that
    size, status included.

Run as root from the repository::

    .venv/bin/python benchmarks/metrics.py                 # ~3 minutes
    .venv/bin/python benchmarks/metrics.py --parts scrape --members 100
    .venv/bin/python benchmarks/metrics.py --parts members   # ~10 minutes, 100 agents
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any, Final

ROOT: Final = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from agent import KEY, Agent  # noqa: E402
from hepto.control import ControlError, query  # noqa: E402
from hepto.metrics.exposition import render  # noqa: E402
from hepto.metrics.families import status_families  # noqa: E402
from netlab import Host, Lab, wait_until  # noqa: E402

TICKS: Final = os.sysconf("SC_CLK_TCK")


def start(host: Host, *extra: str) -> Agent:
    agent = Agent.start(
        ["--cluster", "ho", "--name", host.name, "--key", KEY, "--no-contain",
         "--ip", str(host.interface), "--components", "none", *extra],
        prefix=host.command([]),
    )  # fmt: skip
    wait_until(partial(agent.logged, f"hepto node {host.name} running"), 120, what="start")
    return agent


def memory(pid: int) -> tuple[int, int]:
    """RSS and PSS in KiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, value, *_ = line.split()
        fields[name.rstrip(":")] = int(value)
    return fields["Rss"], fields["Pss"]


def cpu_seconds(pid: int) -> float:
    stat = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(stat[11]) + int(stat[12])) / TICKS


def memory_part(lab: Lab, rounds: int, idle: float) -> None:
    taken: dict[str, list[tuple[int, int]]] = {"off": [], "on": []}
    for round in range(rounds):
        for mode, extra in (("off", ("--metrics", "none")), ("on", ())):
            host = lab.add_host(f"{mode}{round}")
            agent = start(host, *extra)
            time.sleep(idle)
            taken[mode].append(memory(agent.process.pid))
            agent.stop()
    for mode, samples in taken.items():
        rss = statistics.median(s[0] for s in samples) / 1024
        pss = statistics.median(s[1] for s in samples) / 1024
        print(f"metrics {mode:3}: RSS {rss:.1f} MiB, PSS {pss:.1f} MiB (median of {rounds})")


def agent_scrapes(lab: Lab, scrapes: int) -> None:
    host = lab.add_host("scrape")
    agent = start(host)
    time.sleep(5)
    pid = agent.process.pid
    before = cpu_seconds(pid)
    urls = ["http://[::1]:7947/metrics"] * scrapes
    host.run(["curl", "-sSfg", "-o", "/dev/null", *urls])
    spent = cpu_seconds(pid) - before
    size = len(host.run(["curl", "-sSfg", urls[0]]).stdout)
    agent.stop()
    print(
        f"idle agent, 1 member: {spent / scrapes * 1000:.2f} ms of CPU per scrape "
        f"({scrapes} scrapes, {size} bytes each)"
    )


def synthetic_status(members: int) -> dict[str, Any]:
    names = [f"member-{index:03}" for index in range(members)]
    return {
        "name": names[0], "cluster": "bench", "incarnation": 1, "version": 7,
        "joined": True, "health": 0,
        "members": [
            {"name": name, "role": "node", "address": f"[2001:db8::{i + 1:x}]:7946",
             "state": "alive", "incarnation": 1, "version": 7}
            for i, name in enumerate(names)
        ],
        "drops": {"stale": 3}, "conflicts": [],
        "swim": {"entered": {"alive": members}, "refutations": 0}, "fetches": {"ok": members},
        "traffic": {"datagrams_sent": 1, "datagrams_received": 1, "bytes_sent": 1,
                    "bytes_received": 1},
        "mesh": {
            "phase": "running",
            "peers": [
                {"name": name, "public_key": "k", "last_handshake": "2026-12-01T00:00:00Z",
                 "rx_bytes": 1, "tx_bytes": 1}
                for name in names[1:]
            ],
            "drops": {}, "passes": 3, "pass_failures": 0,
        },
        "pki": {
            "certificates": {f"c{i}": {"not_after": "2027-08-01T00:00:00+00:00"}
                             for i in range(6)},
            "dropped": {}, "worker": {"batches": 3, "failures": 0}, "renewals": 0,
        },
        "kube": {"components": [{"name": "kubelet", "state": "running", "ready": True,
                                 "restarts": 0}]},
    }  # fmt: skip


def families_cost(members: int, scrapes: int) -> None:
    status = synthetic_status(members)
    times = []
    for _ in range(scrapes):
        started = time.process_time()
        text = render(status_families(status))
        times.append(time.process_time() - started)
    print(
        f"families and text of a status of {members} members: "
        f"{statistics.median(times) * 1000:.2f} ms of CPU per scrape (median of {scrapes}), "
        f"{len(text)} bytes"
    )


def members_part(lab: Lab, count: int, scrapes: int, converge: float) -> None:
    hosts: list[Host] = []
    agents: list[Agent] = []
    try:
        for first in range(0, count, 10):
            batch = []
            for index in range(first, min(first + 10, count)):
                host = lab.add_host(f"m{index}")
                # Two anchors, as memory.py's members: joins do not all queue at one.
                anchors = {hosts[0].address, hosts[index // 2].address} if hosts else set()
                extra = [item for a in sorted(anchors) for item in ("--anchor", str(a))]
                agent = Agent.start(
                    ["--cluster", "ho", "--name", host.name, "--key", KEY, "--no-contain",
                     "--ip", str(host.interface), "--components", "none", *extra],
                    prefix=host.command([]),
                )  # fmt: skip
                hosts.append(host)
                agents.append(agent)
                batch.append((host, agent))
            # Ten at a time: a hundred Python starts at once would starve two cores.
            for host, agent in batch:
                wait_until(
                    partial(agent.logged, f"hepto node {host.name} running"), 600, 0.5, host.name
                )
            print(f"  {len(agents)} running", flush=True)
        first_agent = agents[0]
        sockets = [
            a.data_dir / "ho" / h.name / "control.sock" for h, a in zip(hosts, agents, strict=True)
        ]

        def alive(socket: Path) -> int:
            try:
                status = query(socket, timeout=10)
            except ControlError:
                return 0
            return sum(1 for member in status["members"] if member["state"] == "alive")

        began = time.monotonic()
        wait_until(lambda: all(alive(s) == count for s in sockets), converge, 5, "convergence")
        print(f"  all see {count} alive after {time.monotonic() - began:.0f} s", flush=True)
        time.sleep(10)
        pid = first_agent.process.pid
        url = "http://[::1]:7947/metrics"
        started, before = time.monotonic(), cpu_seconds(pid)
        hosts[0].run(["curl", "-sSfg", "-o", "/dev/null", *[url] * scrapes])
        took, spent = time.monotonic() - started, cpu_seconds(pid) - before
        time.sleep(1)
        idle_began, idle_before = time.monotonic(), cpu_seconds(pid)
        time.sleep(max(took, 5.0))
        idle_rate = (cpu_seconds(pid) - idle_before) / (time.monotonic() - idle_began)
        size = len(hosts[0].run(["curl", "-sSfg", url]).stdout)
        per_scrape = (spent - idle_rate * took) / scrapes
        print(
            f"agent among {count} members: {per_scrape * 1000:.2f} ms of CPU per scrape "
            f"({scrapes} scrapes in {took:.1f} s, {spent * 1000:.0f} ms of CPU, less "
            f"{idle_rate * took * 1000:.0f} ms idle), {size} bytes each",
            flush=True,
        )
    finally:
        for agent in agents:
            if agent.process.poll() is None:
                os.killpg(agent.process.pid, signal.SIGTERM)
        for agent in agents:
            try:
                agent.stop(timeout=60)
            except subprocess.TimeoutExpired:
                agent.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="memory,scrape")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--idle", type=float, default=20.0)
    parser.add_argument("--scrapes", type=int, default=200)
    parser.add_argument("--members", type=int, default=100)
    parser.add_argument("--converge", type=float, default=900.0)
    args = parser.parse_args()
    parts = args.parts.split(",")
    lab = Lab("ho")
    try:
        if "memory" in parts:
            memory_part(lab, args.rounds, args.idle)
        if "scrape" in parts:
            agent_scrapes(lab, args.scrapes)
            families_cost(args.members, args.scrapes)
        if "members" in parts:
            members_part(lab, args.members, args.scrapes, args.converge)
    finally:
        lab.close()


if __name__ == "__main__":
    main()
