"""Simulated clusters of hepto gossip: dissemination, detection and traffic, printed.

    .venv/bin/python benchmarks/simulate.py                 # N = 1,000 and 10,000
    .venv/bin/python benchmarks/simulate.py --sizes 100 --loss 0.1 --lossy-minutes 10
    .venv/bin/python benchmarks/simulate.py --sizes 100 1000 --news-rounds both --kills 40
    .venv/bin/python benchmarks/simulate.py --sizes 1000 --schedule both --kills 50

For each size, on :mod:`hepto.gossip.simulation` (simulated time, one process):

* a converged cluster idles for ``--warmup`` seconds; its traffic over the following
  ten seconds gives the steady UDP bytes per second per member (sealed sizes);
* one member publishes a new record version: the time until each member holds it
  (the record layer fetches it from whoever advertised it, then advertises it in
  turn), median and p99 across members, and the traffic meanwhile;
* one member is killed: the time until each member declares it dead, median and
  the last of all;
* with ``--kills K``, K members killed one after the other in a fresh cluster, as
  ``benchmarks/agents.py`` does: the medians of each stage of their detection, the wait
  for the first probe of each victim and the time until all declared it dead (median,
  p90, max), and the datagrams and bytes each member sent per second meanwhile;
* with ``--lossy-minutes``, false deaths during that long a run at ``--loss``;
* with ``--records K``, K records published one after the other without push/pull: the
  members gossip alone left without one, digests and datagrams sent per member;
* with ``--joins K``, K members joining a converged cluster one at a time: until all
  see each alive, and the datagrams each member sent for it;
* with ``--storm S``, every member joining within S seconds: until all see all alive,
  and the datagrams each member sent.

``--news-rounds both`` runs every size twice, with news of members' fate gossiped in
rounds of its own as it arrives (hepto's default) and at the gossip ticks only (as
memberlist does), side by side; ``--schedule both`` runs every size with the probe
schedule every member follows (hepto's default) and with each member's own randomized
round robin (*rr*, memberlist's way); ``--digest-feedback both`` with digests heard
counted as sent and not (*dg*); ``--join-news both`` with arrivals gossiped in rounds of
news and at the ticks (*jt*); ``--alive-feedback both`` with an Alive heard again counted
as sent and not (*af*); ``--recent-news both`` with news that ran its course riding the
probes and not (*nr*). ``--shortest-suspicion 4 3`` runs every variant with each of
those shortest suspicion timeouts (``Profile.shortest_suspicion_mult``; *ss4*, *ss3*), and
``--vary retransmit_mult=4,3`` with each of those values of any numeric field of the
profile (labelled by the field's initials: *rm4*, *rm3*); ``--vary`` may be repeated, and
every combination runs.

Figures are printed, not asserted: they depend on the seed, and the point is to see
them move when the protocol changes.
"""

from __future__ import annotations

import argparse
import itertools
import resource
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import attrs

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hepto.gossip.messages import Digest, Message
from hepto.gossip.profile import PROFILES, Profile
from hepto.gossip.simulation import Simulation, percentile

#: The profile's switches, each an option run on, off or both ways: the option, the
#: field of :class:`~hepto.gossip.profile.Profile`, a row's label when the switch departs
#: from hepto's default (when off, but for ``--alive-feedback``), its meaning.
SWITCHES = (
    (
        "--news-rounds",
        "news_rounds",
        "ticks",
        "gossip news of members' fate at once (on), at the ticks only (off)",
    ),
    (
        "--schedule",
        "scheduled_probes",
        "rr",
        "probe on the schedule every member follows (on), on each member's own round robin (off)",
    ),
    (
        "--digest-feedback",
        "digest_feedback",
        "dg",
        "count each digest heard as one sent (on), send every digest its full share (off)",
    ),
    (
        "--join-news",
        "join_news",
        "jt",
        "spread a member's arrival in rounds of news (on), at the ticks (off)",
    ),
    (
        "--alive-feedback",
        "alive_feedback",
        "af",
        "count each Alive heard again as one sent (on), send every Alive its full share "
        "(off, hepto's default)",
    ),
    (
        "--recent-news",
        "recent_news_periods",
        "nr",
        "let news that ran its course ride the probes a while (on), or not (off)",
    ),
)
#: Seconds after a join began over which its datagrams are counted.
JOIN_WINDOW = 5.0
#: Seconds after which a join not yet seen by all counts as late (issue 18's goal).
LATE_JOIN = 2.0
#: Seconds after a join storm over which its datagrams are counted.
STORM_TAIL = 5.0


@attrs.frozen
class Conditions:
    """The simulated network every table of a run shares."""

    seed: int
    loss: float
    latency: float
    jitter: float

    def cluster(
        self,
        size: int,
        profile: Profile,
        push_pull: bool = True,
        absent: int = 0,
        converged: bool = True,
    ) -> Simulation:
        """A cluster of ``size`` (converged unless told), started; the last ``absent``
        wait to :meth:`~hepto.gossip.simulation.Simulation.arrive`."""
        simulation = Simulation(
            size,
            profile=profile,
            seed=self.seed,
            loss=self.loss,
            latency=self.latency,
            jitter=self.jitter,
            push_pull=push_pull,
            absent=absent,
            converged=converged,
        )
        simulation.start()
        return simulation


def measure(size: int, profile: Profile, conditions: Conditions, warmup: float) -> dict[str, float]:
    started = time.perf_counter()
    simulation = conditions.cluster(size, profile)
    simulation.run(warmup)
    before = simulation.traffic().bytes
    simulation.run(10)
    steady = (simulation.traffic().bytes - before) / 10 / size

    publisher, victim = simulation.names[0], simulation.names[size // 2]
    simulation.publish(publisher, 1)
    published = simulation.clock.seconds()
    before = simulation.traffic().bytes
    arrivals = simulation.record_arrivals[publisher, 1]
    simulation.run_until(lambda: len(arrivals) == size, limit=120, step=0.05)
    spread_time = simulation.clock.seconds() - published
    spreading = (simulation.traffic().bytes - before) / max(spread_time, 1e-9) / size
    reached = [when - published for when in arrivals.values()]

    simulation.kill(victim)
    killed = simulation.clock.seconds()
    deaths = simulation.deaths[victim]
    simulation.run_until(lambda: len(deaths) >= size - 1, limit=600, step=0.25)
    detected = [when - killed for when in deaths.values()]

    return {
        "members": size,
        "record_p50": percentile(reached, 0.5),
        "record_p99": percentile(reached, 0.99),
        "record_all": len(reached) == size,
        "dead_p50": percentile(detected, 0.5),
        "dead_all": max(detected) if len(detected) >= size - 1 else float("nan"),
        "steady_bps": steady,
        "spreading_bps": spreading,
        "false_deaths": len(simulation.false_deaths),
        "oversized": simulation.traffic().oversized,
        "wall": time.perf_counter() - started,
        "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def detection(
    size: int,
    profile: Profile,
    conditions: Conditions,
    warmup: float,
    kills: int,
    settle: float = 5.0,
    slack: float = 8.0,
) -> dict[str, float]:
    """Kill ``kills`` members one after the other, each once all others buried the last
    and ``settle`` seconds passed, as ``benchmarks/agents.py`` does; the medians of each
    stage of a detection over the kills.

    Each kill gets the same time, ``slack`` seconds more than memberlist's shortest
    suspicion timeout (unless its burial and ``settle`` take longer): traffic per second then
    compares like with like, however fast each variant buries its dead."""
    started = time.perf_counter()
    simulation = conditions.cluster(size, profile)
    simulation.run(warmup)
    stages: dict[str, list[float]] = {
        "probed": [],
        "suspected": [],
        "timed_out": [],
        "spread": [],
        "all": [],
    }
    begun, sent = simulation.clock.seconds(), simulation.traffic()
    for victim in reversed(simulation.names[-kills:]):
        # Deaths come at any moment of a probe interval, not on the steps of run_until.
        simulation.run(simulation.rng.uniform(0, profile.probe_interval))
        simulation.kill(victim)
        killed = simulation.clock.seconds()
        deaths = simulation.deaths[victim]

        def buried(
            deaths: dict[str, float] = deaths, survivors: int = len(simulation.running)
        ) -> bool:
            return len(deaths) >= survivors

        if not simulation.run_until(buried, limit=600, step=0.25):
            break
        suspected = min(t for t in simulation.suspicions[victim] if t >= killed)
        first, last = min(deaths.values()), max(deaths.values())
        stages["probed"].append(
            simulation.network.first_pings[simulation.endpoints[victim]] - killed
        )
        stages["suspected"].append(suspected - killed)
        stages["timed_out"].append(first - suspected)
        stages["spread"].append(last - first)
        stages["all"].append(last - killed)
        # memberlist's shortest suspicion, whatever the variant's: like with like.
        memberlist = attrs.evolve(profile, shortest_suspicion_mult=profile.suspicion_mult)
        cycle = memberlist.suspicion_timeouts(size)[0] + slack
        simulation.run(max(settle, killed + cycle - simulation.clock.seconds()))
    elapsed, total = simulation.clock.seconds() - begun, simulation.traffic()
    return {
        "members": size,
        "kills": len(stages["all"]),
        **{f"{stage}_p50": percentile(values, 0.5) for stage, values in stages.items()},
        **{f"{stage}_p90": percentile(stages[stage], 0.9) for stage in ("probed", "all")},
        **{f"{stage}_max": max(stages[stage]) for stage in ("probed", "all")},
        "false_deaths": len(simulation.false_deaths),
        "datagrams": (total.datagrams - sent.datagrams) / elapsed / size,
        "bps": (total.bytes - sent.bytes) / elapsed / size,
        "wall": time.perf_counter() - started,
    }


def records(
    size: int, profile: Profile, conditions: Conditions, warmup: float, count: int, wait: float
) -> dict[str, float]:
    """``count`` records published one after the other by different members, each given
    ``wait`` seconds, without push/pull: what gossip alone delivers.  The members it left
    without a record (summed over the records), the digests and datagrams each member
    sent per record, and the spread of each record (median over the records of their
    p99, the last member excepted where one was left out)."""
    started = time.perf_counter()
    simulation = conditions.cluster(size, profile, push_pull=False)
    simulation.run(warmup)
    digests = 0

    def tap(source: object, destination: object, messages: Sequence[Message]) -> None:
        nonlocal digests
        digests += sum(type(message) is Digest for message in messages)

    simulation.network.tap = tap
    before = simulation.traffic().datagrams
    missing, spread = 0, []
    for number in range(count):
        publisher = simulation.names[number * 7919 % size]
        simulation.publish(publisher, number + 1)
        published = simulation.clock.seconds()
        simulation.run(wait)
        arrivals = simulation.record_arrivals[publisher, number + 1]
        missing += size - len(arrivals)
        spread.append(percentile([when - published for when in arrivals.values()], 0.99))
    return {
        "members": size,
        "missing": missing,
        "digests": digests / count / size,
        "datagrams": (simulation.traffic().datagrams - before) / count / size,
        "spread_p99": percentile(spread, 0.5),
        "false_deaths": len(simulation.false_deaths),
        "wall": time.perf_counter() - started,
    }


def joins(
    size: int, profile: Profile, conditions: Conditions, warmup: float, count: int
) -> dict[str, float]:
    """``count`` members join a converged cluster of ``size`` one at a time, as
    ``benchmarks/agents.py --one-more`` does: from the push/pull with the anchor until
    every member sees the joiner alive (median and max), and the datagrams each member
    sent in the 5 s after each join began, beyond those of as long a quiet time before."""
    started = time.perf_counter()
    simulation = conditions.cluster(size + count, profile, absent=count)
    simulation.run(warmup)
    seen_after, held_after, datagrams = [], [], []
    for joiner in simulation.names[size:]:
        quiet = simulation.traffic().datagrams
        simulation.run(JOIN_WINDOW)
        before = simulation.traffic().datagrams
        quiet = before - quiet
        begun = simulation.clock.seconds()
        simulation.arrive(joiner, simulation.names[0])
        # As an agent does: its first record (with its WireGuard key) before it joins.
        simulation.publish(joiner, 1)
        others = len(simulation.running) - 1

        def seen(joiner: str = joiner, others: int = others) -> bool:
            return simulation.statuses(joiner)["alive"] == others

        if not simulation.run_until(seen, limit=60, step=0.01):
            break
        seen_after.append(simulation.clock.seconds() - begun)
        simulation.run(begun + JOIN_WINDOW - simulation.clock.seconds())
        # Until every member that saw the joiner arrive held its record (a member that
        # did not within the window counts as the window).
        arrivals = simulation.record_arrivals[joiner, 1]
        held_after.append(
            max(arrivals.get(name, begun + JOIN_WINDOW) - begun for name in simulation.running)
        )
        datagrams.append((simulation.traffic().datagrams - before - quiet) / others)
    return {
        "members": size,
        "joins": len(seen_after),
        "seen_p50": percentile(seen_after, 0.5),
        "seen_p99": percentile(seen_after, 0.99),
        "seen_max": max(seen_after, default=float("nan")),
        "seen_late": sum(1 for seen in seen_after if seen > LATE_JOIN),
        "held_p50": percentile(held_after, 0.5),
        "held_max": max(held_after, default=float("nan")),
        "datagrams": percentile(datagrams, 0.5),
        "false_deaths": len(simulation.false_deaths),
        "wall": time.perf_counter() - started,
    }


def storm(size: int, profile: Profile, conditions: Conditions, over: float) -> dict[str, float]:
    """All ``size`` members start knowing none and join through the first at random
    moments within ``over`` seconds: until every member sees every other alive (counted
    in half seconds, from ``over`` + ``STORM_TAIL`` on), and the datagrams each member
    sent until ``STORM_TAIL`` seconds after the last join could be."""
    started = time.perf_counter()
    simulation = conditions.cluster(size, profile, converged=False)
    anchor = simulation.names[0]
    for name in simulation.names[1:]:
        simulation.clock.callLater(simulation.rng.uniform(0, over), simulation.join, name, anchor)
    simulation.run(over + STORM_TAIL)
    datagrams = simulation.traffic().datagrams / size
    converged = simulation.run_until(simulation.converged, limit=600, step=0.5)
    return {
        "members": size,
        "converged": simulation.clock.seconds() if converged else float("nan"),
        "datagrams": datagrams,
        "false_deaths": len(simulation.false_deaths),
        "wall": time.perf_counter() - started,
    }


def lossy(size: int, profile: Profile, conditions: Conditions, minutes: float) -> dict[str, float]:
    started = time.perf_counter()
    simulation = conditions.cluster(size, profile)
    simulation.run(minutes * 60)
    refutations = sum(member.incarnation for member in simulation.members.values())
    return {
        "members": size,
        "false_deaths": len(simulation.false_deaths),
        "refutations": refutations,
        "datagrams": simulation.traffic().datagrams / (minutes * 60) / size,
        "bps": simulation.traffic().bytes / (minutes * 60) / size,
        "wall": time.perf_counter() - started,
    }


def _switched(default: object, on: bool) -> object:
    if isinstance(default, bool):
        return on
    assert isinstance(default, int | float)
    return default if on else type(default)(0)


def _initials(field: str) -> str:
    return "".join(word[0] for word in field.split("_"))


def _variation(text: str) -> tuple[str, list[float]]:
    """``FIELD=V,V``: a numeric field of :class:`Profile` and the values to run it with."""
    field, _, values = text.partition("=")
    default = getattr(PROFILES["lan"], field, None)
    if isinstance(default, bool) or not isinstance(default, int | float) or not values:
        raise argparse.ArgumentTypeError(f"not FIELD=V,V with a numeric field of Profile: {text}")
    try:
        return field, [type(default)(value) for value in values.split(",")]
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"{text}: {error}") from None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--profile", choices=sorted(PROFILES), default="lan")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--loss", type=float, default=0.0, help="datagram loss, 0..1")
    parser.add_argument("--latency", type=float, default=0.005, help="one way, seconds")
    parser.add_argument("--jitter", type=float, default=0.01, help="added 0..jitter seconds")
    parser.add_argument("--warmup", type=float, default=10.0)
    parser.add_argument("--lossy-minutes", type=float, default=0.0)
    parser.add_argument(
        "--no-table", action="store_true", help="skip the first table (record, one kill)"
    )
    parser.add_argument(
        "--kills", type=int, default=0, help="also kill this many, one after the other"
    )
    parser.add_argument(
        "--records",
        type=int,
        default=0,
        help="also publish this many records one after the other, without push/pull",
    )
    parser.add_argument("--record-wait", type=float, default=15.0)
    parser.add_argument(
        "--joins", type=int, default=0, help="also let this many more join, one at a time"
    )
    parser.add_argument(
        "--storm",
        type=float,
        default=0.0,
        help="also start every member knowing none, all joining within this many seconds",
    )
    for option, field, _, meaning in SWITCHES:
        parser.add_argument(
            option,
            choices=["on", "off", "both"],
            default="on" if getattr(PROFILES["lan"], field) else "off",
            help=f"{meaning}, or both",
        )
    parser.add_argument(
        "--shortest-suspicion",
        type=float,
        nargs="+",
        default=[],
        metavar="MULT",
        help="run each variant with each of these shortest_suspicion_mult values (the "
        "profile's by default), labelled ssMULT",
    )
    parser.add_argument(
        "--vary",
        type=_variation,
        action="append",
        default=[],
        metavar="FIELD=V,V",
        help="run each variant with each of these values of a numeric field of the profile, "
        "labelled by the field's initials and the value; may be repeated",
    )
    arguments = parser.parse_args()
    profile = PROFILES[arguments.profile]
    switches = {"on": [True], "off": [False], "both": [True, False]}
    chosen = [switches[getattr(arguments, option[2:].replace("-", "_"))] for option, *_ in SWITCHES]
    # --shortest-suspicion is one more variation, under the label it always had.
    variations = [(field, _initials(field), values) for field, values in arguments.vary]
    if arguments.shortest_suspicion:
        variations.insert(0, ("shortest_suspicion_mult", "ss", arguments.shortest_suspicion))
    varied = [[(field, label, value) for value in values] for field, label, values in variations]
    variants = []
    for *values, variation in itertools.product(*chosen, itertools.product(*varied)):
        switched = list(zip(values, SWITCHES, strict=True))
        label = "".join(
            f" {departs}"
            for on, (_, field, departs, _) in switched
            if on != bool(getattr(profile, field))
        )
        # Off is False, or 0 for a number; on is True, or the profile's own number.
        fields: dict[str, object] = {
            field: _switched(getattr(profile, field), on) for on, (_, field, _, _) in switched
        }
        for field, initials, value in variation:
            label += f" {initials}{value:g}"
            fields[field] = value
        variants.append((label, attrs.evolve(profile, **fields)))

    print(
        f"profile {arguments.profile}, seed {arguments.seed}, loss {arguments.loss:.0%}, "
        f"latency {arguments.latency * 1000:.0f} ms + 0..{arguments.jitter * 1000:.0f} ms"
    )
    header = (
        f"{'members':>14} {'record p50':>10} {'p99':>6} {'dead p50':>9} {'all':>6} "
        f"{'B/s idle':>9} {'B/s spread':>10} {'false':>6} {'wall s':>7} {'RSS MB':>7}"
    )
    print(header)
    print("-" * len(header))
    # Every table runs each size with each variant, on the same simulated network.
    runs = [
        (size, f"{size}{label}", variant) for size in arguments.sizes for label, variant in variants
    ]
    conditions = Conditions(arguments.seed, arguments.loss, arguments.latency, arguments.jitter)
    for size, name, variant in [] if arguments.no_table else runs:
        row = measure(size, variant, conditions, arguments.warmup)
        print(
            f"{name:>14} {row['record_p50']:>9.2f}s {row['record_p99']:>5.2f}s "
            f"{row['dead_p50']:>8.2f}s {row['dead_all']:>5.2f}s {row['steady_bps']:>9.0f} "
            f"{row['spreading_bps']:>10.0f} {row['false_deaths']:>6} {row['wall']:>7.1f} "
            f"{row['rss_mb']:>7.0f}",
            flush=True,
        )
        if row["oversized"]:
            print(f"  !! {row['oversized']} datagrams over the size limit")
    if arguments.kills:
        print()
        print(
            f"{arguments.kills} kills one after the other, medians: until the first "
            "suspicion, from there to the first declaration, from there to the last; "
            "kill to the first probe of the victim and kill to dead by all (median, p90, "
            "max); datagrams and bytes sent per member per second over the run"
        )
        for size, name, variant in runs:
            row = detection(size, variant, conditions, arguments.warmup, arguments.kills)
            print(
                f"{name:>14} {row['suspected_p50']:>6.2f}s "
                f"{row['timed_out_p50']:>6.2f}s {row['spread_p50']:>6.2f}s   probed "
                f"{row['probed_p50']:.2f} {row['probed_p90']:.2f} {row['probed_max']:.2f}s   "
                f"all {row['all_p50']:.2f} {row['all_p90']:.2f} {row['all_max']:.2f}s   "
                f"{row['datagrams']:.2f}/s {row['bps']:.0f} B/s  "
                f"({row['kills']} kills, {row['false_deaths']} false deaths, "
                f"{row['wall']:.0f} s wall)",
                flush=True,
            )
    if arguments.records:
        print()
        print(
            f"{arguments.records} records published one after the other, "
            f"{arguments.record_wait:g} s each, no push/pull: members left without one "
            "(all records), digests and datagrams sent per member per record, median p99 "
            "of a record's spread"
        )
        for size, name, variant in runs:
            row = records(
                size,
                variant,
                conditions,
                arguments.warmup,
                arguments.records,
                arguments.record_wait,
            )
            print(
                f"{name:>14} missing {row['missing']}, {row['digests']:.1f} digests and "
                f"{row['datagrams']:.1f} datagrams, p99 {row['spread_p99']:.2f}s "
                f"({row['false_deaths']} false deaths, {row['wall']:.0f} s wall)",
                flush=True,
            )
    if arguments.joins:
        print()
        print(
            f"{arguments.joins} joins, one at a time: from the push/pull with the anchor "
            "until all see the joiner alive and until all hold its record (median, max), "
            f"datagrams sent per member in the {JOIN_WINDOW:g} s after a join began beyond as "
            "long a quiet time (median)"
        )
        for size, name, variant in runs:
            row = joins(size, variant, conditions, arguments.warmup, arguments.joins)
            print(
                f"{name:>14} seen by all {row['seen_p50']:.2f}s, p99 {row['seen_p99']:.2f}s, "
                f"max {row['seen_max']:.2f}s, {row['seen_late']} after {LATE_JOIN:g}s, "
                f"held by all {row['held_p50']:.2f}s, max {row['held_max']:.2f}s, "
                f"{row['datagrams']:.1f} datagrams ({row['joins']} joins, "
                f"{row['false_deaths']} false deaths, {row['wall']:.0f} s wall)",
                flush=True,
            )
    if arguments.storm:
        print()
        print(
            f"A join storm: every member joins within {arguments.storm:g} s; until all see "
            f"all alive, and the datagrams each member sent in the first "
            f"{arguments.storm + STORM_TAIL:g} s"
        )
        for size, name, variant in runs:
            row = storm(size, variant, conditions, arguments.storm)
            print(
                f"{name:>14} converged at {row['converged']:.1f}s, {row['datagrams']:.0f} "
                f"datagrams per member ({row['false_deaths']} false deaths, "
                f"{row['wall']:.0f} s wall)",
                flush=True,
            )
    if arguments.lossy_minutes:
        print()
        print(f"{arguments.lossy_minutes:g} minutes at {arguments.loss:.0%} loss:")
        for size, name, variant in runs:
            row = lossy(size, variant, conditions, arguments.lossy_minutes)
            print(
                f"{name:>14} members: {row['false_deaths']} false deaths, "
                f"{row['refutations']} refutations, {row['datagrams']:.2f} datagrams/s and "
                f"{row['bps']:.0f} B/s per member, {row['wall']:.0f} s wall",
                flush=True,
            )


if __name__ == "__main__":
    main()
