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
import itertools
import statistics
import timeit
from collections.abc import Iterator

import attrs

from hepto import plan
from hepto.mesh.keys import KeyPair
from hepto.mesh.reconcile import Candidates, desired_mesh
from hepto.state import ALIVE, Member, Record

CLUSTER = "bench"


def cluster(size: int) -> tuple[str, dict[str, Member]]:
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


def one_record_new(
    own_key: str,
    members: dict[str, Member],
    newcomer: str,
    versions: Iterator[int],
    candidates: Candidates,
) -> None:
    """A pass as at a join: one member's record is a new object, every other one is not."""
    member = members[newcomer]
    assert member.record is not None
    record = attrs.evolve(member.record, version=next(versions))
    members[newcomer] = attrs.evolve(member, record=record)
    desired_mesh(CLUSTER, "n0", False, own_key, members, candidates=candidates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--runs", type=int, default=7, help="medians over this many runs")
    args = parser.parse_args()
    print("members  desired_mesh, median (ms): from scratch, candidates kept (one record new)")
    for size in args.sizes:
        own_key, members = cluster(size)
        number = max(1, 2000 // size)
        scratch = timeit.repeat(
            functools.partial(desired_mesh, CLUSTER, "n0", False, own_key, members),
            number=number,
            repeat=args.runs,
        )
        candidates: Candidates = {}
        desired_mesh(CLUSTER, "n0", False, own_key, members, candidates=candidates)
        kept = timeit.repeat(
            functools.partial(
                one_record_new, own_key, members, f"n{size - 1}", itertools.count(2), candidates
            ),
            number=number,
            repeat=args.runs,
        )
        print(
            f"{size:7d}  {1000 * statistics.median(scratch) / number:8.2f}"
            f"  {1000 * statistics.median(kept) / number:8.2f}"
        )


if __name__ == "__main__":
    main()
