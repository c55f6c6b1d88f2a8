"""When to restart a program that exited: doubling delays, forgiven after a stable run."""

from __future__ import annotations

import attrs

#: Beyond this many doublings every sane policy has long reached its maximum; capping the
#: exponent keeps ``factor ** n`` a float instead of an OverflowError in a week-long crash loop.
_MAX_EXPONENT = 64


@attrs.frozen
class RestartPolicy:
    """The delay before restarting a program, from how many times in a row it died young.

    ``initial`` and ``maximum`` are seconds.  A run that lasted ``stable_after`` seconds
    or more clears the count, so a component that crashes once a day restarts after
    ``initial`` seconds every time, while one that crashes at start backs off to
    ``maximum``.  There is no jitter: restarts are local to one host, there is no herd.
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
        """Seconds to wait after the ``failures``-th consecutive short run (1 is the first)."""
        exponent = min(max(failures - 1, 0), _MAX_EXPONENT)
        return float(min(self.initial * self.factor**exponent, self.maximum))
