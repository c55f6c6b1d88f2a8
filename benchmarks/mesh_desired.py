"""How long the mesh service takes to work out the mesh it wants, printed, never asserted.

:func:`hepto.mesh.reconcile.desired_mesh` runs on every change of membership that concerns
the mesh (:func:`~hepto.mesh.reconcile.concerns_mesh`): a member that comes, goes, or
changes its WireGuard key, endpoint, role or pod prefix. Every member here is alive and
meshed, and has a pod prefix (a /49 holds 32,768): the most work a pass can be given.
Figures taken before the pod prefix grew from a /56 gave only the first 256 one.

Run from the repository (a few seconds)::

    .venv/bin/python benchmarks/mesh_desired.py --sizes 10 100 1000
"""

from __future__ import annotations

import argparse
import functools
import statistics
import timeit
from collections.abc import Mapping

from hepto import plan
from hepto.mesh.keys import KeyPair
from hepto.mesh.reconcile import desired_mesh
from hepto.state import ALIVE, Member, Record

CLUSTER = "bench"


def cluster(size: int) -> tuple[str, Mapping[str, Member]]:
    pods = plan.pod_prefix(CLUSTER).subnets(new_prefix=64)
    members = {}
    own_key = ""
    for index in range(size):
        name = f"n{index}"
        key = KeyPair.generate().public_key
        own_key = own_key or key
        data: dict[str, object] = {
            "wireguard": {"public_key": key, "endpoint": f"[2001:db8::{index + 1:x}]:51820"}
        }
        data["pod_prefix"] = str(next(pods))
        members[name] = Member(name, ALIVE, Record(name, 1, data))
    return own_key, members


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--runs", type=int, default=7, help="medians over this many runs")
    args = parser.parse_args()
    print("members  desired_mesh, median (ms)")
    for size in args.sizes:
        own_key, members = cluster(size)
        number = max(1, 2000 // size)
        runs = timeit.repeat(
            functools.partial(desired_mesh, CLUSTER, "n0", False, own_key, members),
            number=number,
            repeat=args.runs,
        )
        print(f"{size:7d}  {1000 * statistics.median(runs) / number:8.2f}")


if __name__ == "__main__":
    main()
