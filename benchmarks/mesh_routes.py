"""What a mesh pass costs when one route changes, printed, never asserted.

In a cluster with Kubernetes every node routes each member's pod prefix through the
mesh, so a join adds a route on every member. ``Links.sync`` reads back every route and
address and compares; ``Links.change_routes`` (what a pass does when only routes
changed) adds or removes just those. Both against the real kernel, in a network
namespace (tests/netlab.py), on a bridge standing in for the WireGuard link; CPU time of
this process per route added, medians over the rounds.

    .venv/bin/python benchmarks/mesh_routes.py --routes 10 100 1000
"""

from __future__ import annotations

import argparse
import functools
import ipaddress
import socket
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from hepto import plan
from hepto.mesh.links import Links
from hepto.mesh.rtnetlink import RtNetlink
from netlab import Lab, netns_socket

CLUSTER = "bench"
ADDRESS = frozenset({plan.mesh_address(CLUSTER, "n0")})


def per_route(
    rounds: int,
    add: Callable[[frozenset[ipaddress.IPv6Network]], object],
    links: Links,
    newcomers: list[ipaddress.IPv6Network],
) -> float:
    """Median ms of CPU that ``add`` takes to route one newcomer more."""
    runs = []
    for network in newcomers[:rounds]:
        newcomer = frozenset({network})
        started = time.process_time()
        add(newcomer)
        runs.append(time.process_time() - started)
        links.change_routes(frozenset(), newcomer)
    return statistics.median(runs) * 1000


def sync_with(
    links: Links, routes: frozenset[ipaddress.IPv6Network], new: frozenset[ipaddress.IPv6Network]
) -> None:
    links.sync(ADDRESS, routes | new, 1420)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--routes", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--rounds", type=int, default=51)
    args = parser.parse_args()
    lab = Lab("hbr")
    try:
        host = lab.add_host("routes")
        rt = RtNetlink(
            netns_socket(host.netns, socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        )
        rt.add_link("hepto0", "bridge")
        links = Links(rt, "hepto0")
        pods = list(plan.pod_prefix(CLUSTER).subnets(new_prefix=64))
        print("routes  sync (ms CPU)  change_routes (ms CPU), per route added")
        for size in args.routes:
            routes = frozenset({plan.mesh_prefix(CLUSTER), *pods[:size]})
            links.sync(ADDRESS, routes, 1420)

            newcomers = pods[size : size + args.rounds]
            synced = per_route(
                args.rounds, functools.partial(sync_with, links, routes), links, newcomers
            )
            changed = per_route(
                args.rounds,
                functools.partial(links.change_routes, remove=frozenset()),
                links,
                newcomers,
            )
            print(f"{size:6d}  {synced:14.2f}  {changed:22.2f}")
        rt.close()
    finally:
        lab.close()


if __name__ == "__main__":
    main()
