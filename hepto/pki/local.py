"""The PKI's batches run in this process: for tests under ``task.Clock``.

:class:`LocalRunner` is a :class:`~hepto.pki.service.Runner` that does each job as the
worker would (:func:`hepto.pki.worker.handle`), synchronously, so that the service and
its desk can be driven by a fake clock.  It imports ``cryptography``: the agent never
uses it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from twisted.internet import defer

from hepto.pki import joblog
from hepto.pki.worker import handle


class LocalRunner:
    """Runs jobs in this process, as the worker would, for tests under ``task.Clock``.

    Jobs and answers go through JSON as they would through the pipes, log events too
    (:mod:`hepto.pki.joblog`): the service emits them as it emits a worker's.
    """

    def __init__(self) -> None:
        self.jobs: list[dict[str, Any]] = []

    def run(self, job: Mapping[str, Any]) -> defer.Deferred[dict[str, Any]]:
        return defer.succeed(self.answer(job))

    def answer(self, job: Mapping[str, Any]) -> dict[str, Any]:
        decoded = json.loads(json.dumps(job))
        self.jobs.append(decoded)
        answer = handle(decoded)
        answer["log"] = joblog.take()
        decoded_answer: dict[str, Any] = json.loads(json.dumps(answer))
        return decoded_answer

    def stop(self) -> defer.Deferred[None]:
        return defer.succeed(None)
