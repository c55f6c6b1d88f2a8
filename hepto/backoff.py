"""Waiting longer after each failure in a row: the one back-off of every retry in hepto.

A :class:`BackoffPolicy` says how long to wait after the n-th failure in a row; a
:class:`Backoff` counts the failures of one thing that is retried (a program restarted,
a batch of the PKI, a pass of the mesh, a join) and gives the next delay.

Twisted has ``twisted.application.internet.backoffPolicy``; it is not used because its
jitter is added in seconds (up to one, by default), where gossip spreads its joins by a
factor and a local restart wants none, and because importing it brings in
``ClientService``, which the agent has no other use for.
"""

from __future__ import annotations

import attrs

#: Beyond this many doublings every sane policy has long reached its maximum; capping the
#: exponent keeps ``factor ** n`` a float instead of an OverflowError in a week-long crash loop.
_MAX_EXPONENT = 64


@attrs.frozen
class BackoffPolicy:
    """The delay before trying again, from how many times in a row it failed.

    ``initial`` and ``maximum`` are seconds.  A run that lasted ``stable_after`` seconds
    or more clears the count, so a component that crashes once a day restarts after
    ``initial`` seconds every time, while one that crashes at start backs off to
    ``maximum``.  There is no jitter: where a herd may form, the caller adds its own.
    """

    initial: float = 1.0
    factor: float = 2.0
    maximum: float = 30.0
    stable_after: float = 60.0

    def __attrs_post_init__(self) -> None:
        if not 0 <= self.initial <= self.maximum:
            raise ValueError(f"need 0 <= initial <= maximum, not {self.initial}, {self.maximum}")
        if self.factor < 1:
            raise ValueError(f"factor must be at least 1, not {self.factor}")

    def failures_after(self, previous: int, run_time: float) -> int:
        """The count of consecutive short runs, including one that just lasted ``run_time``."""
        return 1 if run_time >= self.stable_after else previous + 1

    def delay(self, failures: int) -> float:
        """Seconds to wait after the ``failures``-th consecutive failure (1 is the first)."""
        exponent = min(max(failures - 1, 0), _MAX_EXPONENT)
        return float(min(self.initial * self.factor**exponent, self.maximum))


@attrs.define
class Backoff:
    """The failures in a row of one thing that is retried, and the delay they call for."""

    policy: BackoffPolicy = attrs.field(factory=BackoffPolicy)
    failures: int = 0

    def failed(self, run_time: float | None = None) -> float:
        """Count one more failure; returns the seconds to wait before trying again.

        ``run_time``, for what runs rather than answers (a program), is how long it ran:
        a stable run (see :class:`BackoffPolicy`) starts the count over.
        """
        if run_time is None:
            self.failures += 1
        else:
            self.failures = self.policy.failures_after(self.failures, run_time)
        return self.policy.delay(self.failures)

    def reset(self) -> None:
        """It worked: the next failure waits ``initial`` seconds again."""
        self.failures = 0
