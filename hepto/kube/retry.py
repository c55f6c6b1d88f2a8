"""Asking the apiserver again while it cannot answer: one loop for every agent request.

The agent's requests (its Node, the cluster DNS objects) may start before the apiserver
is reachable: the master comes up after its nodes, certificates arrive over gossip, the
mesh needs its first handshake.  :func:`until_done` runs one attempt after another,
backing off, and logs each new kind of failure once; an error status that asking again
cannot change (a 403, a 422) ends it.
"""

from __future__ import annotations

import http.client
from collections.abc import Awaitable, Callable
from typing import Final, TypeVar

from twisted.internet import task
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from hepto.backoff import Backoff, BackoffPolicy
from hepto.kube.api import APIError

T = TypeVar("T")

#: Delays between attempts while the apiserver cannot be reached: the master may come
#: up long after its nodes, and an agent retries every 30 s at worst.
RETRY: Final = BackoffPolicy(initial=1.0, factor=2.0, maximum=30.0)

#: Failures that may pass: the apiserver down or restarting, its certificate or ours
#: not yet in place, a network that is not up yet.
TRANSIENT: Final[tuple[type[Exception], ...]] = (OSError, http.client.HTTPException, APIError)

log = Logger()


def is_permanent(error: Exception) -> bool:
    """An error status that the same request will meet again."""
    return isinstance(error, APIError) and not error.transient


def reason(error: Exception) -> str:
    """What kind of failure this is, coarse enough that a repeat is not logged again."""
    if isinstance(error, APIError):
        return f"HTTP {error.status} {error.reason}"
    if isinstance(error, OSError) and error.errno is not None:
        return f"{type(error).__name__} {error.errno}"
    return type(error).__name__


async def until_done(
    attempt: Callable[[], Awaitable[T]],
    *,
    what: str,
    clock: IReactorTime,
    policy: BackoffPolicy = RETRY,
    transient: tuple[type[Exception], ...] = TRANSIENT,
) -> T:
    """The result of the first ``attempt`` that does not fail with a ``transient`` error.

    A permanent error (:func:`is_permanent`) is raised at once.  ``what`` says what is
    missing in the log, as "Node n1 not registered yet".  Cancelling stops at once, in
    an attempt or between two.
    """
    backoff = Backoff(policy)
    told = None
    while True:
        try:
            return await attempt()
        except transient as error:
            if is_permanent(error):
                raise
            delay = backoff.failed()
            kind = reason(error)
            if kind != told:
                log.warn(
                    "{what} ({reason}: {error}); "
                    "trying again in {delay} s, then backing off to {maximum} s",
                    what=what,
                    reason=kind,
                    error=str(error) or type(error).__name__,
                    delay=delay,
                    maximum=policy.maximum,
                )
                told = kind
        await task.deferLater(clock, delay)
