"""Timing profiles of the gossip protocol.

The values follow HashiCorp memberlist's ``DefaultLANConfig`` and ``DefaultWANConfig`` so
that hepto behaves as operators of Consul and Serf expect; ``docs/gossip.rst`` gives the
rationale of every value and the formulas that derive timeouts from them.
"""

from __future__ import annotations

import math
from typing import Final

import attrs

NACK_FRACTION: Final = 0.8
#: Beyond this many members the push/pull interval stretches, as in memberlist.
PUSH_PULL_SCALE_THRESHOLD: Final = 32
#: Rounds of news (see ``Profile.news_rounds``) are at least this share of a gossip
#: interval apart, so that a burst of news costs a few more rounds, not one per item.
NEWS_ROUND_FRACTION: Final = 0.25


def _positive(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not value > 0:
        raise ValueError(f"{attribute.name} must be positive, not {value!r}")


@attrs.frozen
class Profile:
    """How often members probe and gossip, and how patient they are."""

    #: Seconds between two probes of a member (each member probes one peer per interval).
    probe_interval: float = attrs.field(default=1.0, validator=_positive)
    #: Seconds to wait for a direct ack before asking others (must be < probe_interval).
    probe_timeout: float = attrs.field(default=0.5, validator=_positive)
    #: Seconds between two rounds of gossip to ``gossip_nodes`` random peers.
    gossip_interval: float = attrs.field(default=0.2, validator=_positive)
    gossip_nodes: int = attrs.field(default=3, validator=attrs.validators.ge(1))
    #: Whether news of a member's fate (suspected, dead, refuted, left) is gossiped in a
    #: round of its own as soon as it arrives, rather than at the next tick: every hop
    #: then costs a network transit instead of half a gossip interval more.
    news_rounds: bool = True
    #: Whether a member's arrival (its first Alive heard) is such news too, when nothing
    #: else is queued; else a join spreads at the ticks, as memberlist's do (kept for
    #: side-by-side figures).
    join_news: bool = True
    #: Whether members follow one probe schedule (:mod:`hepto.gossip.schedule`): each
    #: probes at the start of every round of the shared clock, its target chosen so that
    #: every member is probed once per round; else each probes at its own phase, the next
    #: of its own randomized round robin (memberlist's way, kept for side-by-side figures).
    scheduled_probes: bool = True
    #: Whether a record digest heard from another member counts as one of our own sends
    #: of it: digests are sent twice the retransmit limit, for loss, and the copies a
    #: member hears once a record has spread end its share sooner (``docs/gossip.rst``).
    digest_feedback: bool = True
    #: Whether an Alive heard again, the same word about the same member, counts as one
    #: of our own sends of it, as digests do (``digest_feedback``), and only with recent
    #: news (``counts_alive_copies``), which reaches the members the spared copies would
    #: have.  Measured, not adopted: a third fewer datagrams per join, but join storms
    #: left members unaware of others for a minute, when the probes are too full for
    #: recent news (``docs/gossip.rst``, "Copies heard count as sent, for arrivals?").
    #: Kept for those figures.
    alive_feedback: bool = False
    #: Probe intervals during which news that every member has sent often enough still
    #: rides each scheduled probe, as far as room is left: a member that no copy reached
    #: (a chance of about e**-limit each) hears it from its prober within one interval,
    #: not at the next push/pull, tens of seconds later (``docs/gossip.rst``, "Recent news
    #: rides the probes").  0: not at all, as memberlist (kept for side-by-side figures).
    recent_news_periods: float = attrs.field(default=3.0, validator=attrs.validators.ge(0))
    #: Members asked to ping a target that missed its direct ack.
    indirect_checks: int = attrs.field(default=3, validator=attrs.validators.ge(0))
    #: A suspicion lasts suspicion_max_timeout_mult * suspicion_mult * max(1, log10 N)
    #: probe intervals while nobody confirms it; suspicion_mult - 2 independent
    #: confirmations shrink it...
    suspicion_mult: int = attrs.field(default=4, validator=attrs.validators.ge(1))
    suspicion_max_timeout_mult: int = attrs.field(default=6, validator=attrs.validators.ge(1))
    #: ...down to shortest_suspicion_mult * max(1, log10 N) probe intervals: memberlist's
    #: is suspicion_mult; hepto's news of a suspicion and of its refutation spread in a
    #: fraction of the time memberlist's ticks take, and every member looks at the
    #: suspect itself before its suspicion ends (``docs/gossip.rst``).
    shortest_suspicion_mult: float = attrs.field(default=3.0, validator=_positive)
    #: Each broadcast is sent retransmit_mult * ceil(log10(N + 1)) times by every member.
    retransmit_mult: int = attrs.field(default=4, validator=attrs.validators.ge(1))
    #: Seconds during which a dead member still receives gossip, to learn and refute.
    gossip_to_the_dead: float = attrs.field(default=30.0, validator=_positive)
    #: Seconds after which a dead or departed member is forgotten.  Long, because until
    #: then push/pull keeps trying dead members: how the sides of a partition reunite.
    reap_after: float = attrs.field(default=3600.0, validator=_positive)
    #: Lifeguard: timeouts stretch up to this many times while our own health is poor.
    awareness_max_multiplier: int = attrs.field(default=8, validator=attrs.validators.ge(1))
    #: Seconds between two full-state exchanges over TCP with a random member.
    push_pull_interval: float = attrs.field(default=30.0, validator=_positive)
    #: Seconds a graceful leave waits for its announcement to be gossiped.
    leave_timeout: float = attrs.field(default=5.0, validator=_positive)

    def __attrs_post_init__(self) -> None:
        if self.probe_timeout >= self.probe_interval:
            raise ValueError("probe_timeout must be shorter than probe_interval")
        if self.shortest_suspicion_mult > self.suspicion_mult:
            raise ValueError("shortest_suspicion_mult must not exceed suspicion_mult")
        if self.reap_after < self.gossip_to_the_dead:
            raise ValueError("reap_after must not be shorter than gossip_to_the_dead")

    @property
    def news_round_spacing(self) -> float:
        return NEWS_ROUND_FRACTION * self.gossip_interval

    @property
    def counts_alive_copies(self) -> bool:
        """Whether an Alive heard again counts as sent: not without recent news."""
        return self.alive_feedback and self.recent_news_periods > 0

    @property
    def recent_news_linger(self) -> float:
        """Seconds during which news sent often enough still rides scheduled probes."""
        return self.recent_news_periods * self.probe_interval

    @property
    def nack_timeout(self) -> float:
        """How long a ping-req helper waits for the target before it nacks: within the
        prober's indirect phase (probe_interval - probe_timeout), with a fifth of it
        left for the nack to travel back."""
        return NACK_FRACTION * (self.probe_interval - self.probe_timeout)

    def retransmit_limit(self, members: int) -> int:
        """How many times each member sends one broadcast, in a cluster of ``members``."""
        return self.retransmit_mult * math.ceil(math.log10(members + 1))

    def suspicion_timeouts(self, members: int) -> tuple[float, float]:
        """The shortest and longest time a member stays suspected before it is dead."""
        scale = max(1.0, math.log10(max(1, members))) * self.probe_interval
        longest = self.suspicion_max_timeout_mult * self.suspicion_mult * scale
        return self.shortest_suspicion_mult * scale, longest

    def scaled_push_pull_interval(self, members: int) -> float:
        """Seconds between two push/pulls in a cluster of ``members``: memberlist's
        interval, stretched beyond 32 members (by 1 + ceil(log2(N / 32))) so that the
        cluster's total push/pull traffic grows like N log N rather than N squared."""
        if members <= PUSH_PULL_SCALE_THRESHOLD:
            return self.push_pull_interval
        scale = 1 + math.ceil(math.log2(members / PUSH_PULL_SCALE_THRESHOLD))
        return self.push_pull_interval * scale


#: Data centre or one region: memberlist's DefaultLANConfig.
LAN: Final = Profile()
#: Across continents and consumer links: memberlist's DefaultWANConfig, which tolerates
#: long and variable round trips at the cost of slower failure detection.
WAN: Final = Profile(
    probe_interval=5.0,
    probe_timeout=3.0,
    gossip_interval=0.5,
    gossip_nodes=4,
    suspicion_mult=6,
    shortest_suspicion_mult=6.0,
    gossip_to_the_dead=60.0,
    reap_after=86400.0,
    push_pull_interval=60.0,
)
PROFILES: Final = {"lan": LAN, "wan": WAN}
