"""The control socket's commands that answer later: a Deferred, fired or failed."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from hepto.control import ControlError, ControlService, RequestError, query


class LaterTests(TestCase):
    def setUp(self) -> None:
        directory = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, directory)
        self.path = directory / "control.sock"
        self.control = ControlService(self.path, lambda: {}, reactor)  # type: ignore[arg-type]
        self.control.commands["later"] = self.later
        self.control.startService()
        self.addCleanup(self.control.stopService)

    def later(self, request: Mapping[str, Any]) -> Deferred[Mapping[str, Any]]:
        def answer() -> Mapping[str, Any]:
            if request.get("outcome") == "refused":
                raise RequestError("not now")
            if request.get("outcome") == "broken":
                raise ZeroDivisionError("oops")
            return {"done": request.get("value")}

        return deferLater(reactor, 0.2, answer)

    def ask(self, **arguments: Any) -> Deferred[Any]:
        def ask() -> Any:
            try:
                return query(self.path, "later", **arguments)
            except ControlError as error:
                return error

        return deferToThread(ask)

    @inlineCallbacks
    def test_answers_later(self) -> Any:
        answer = yield self.ask(value=7)
        self.assertEqual(answer, {"done": 7})
        refused = yield self.ask(outcome="refused")
        self.assertEqual(str(refused), "the agent refused: not now")
        broken = yield self.ask(outcome="broken")
        self.assertIn("later failed: ZeroDivisionError('oops')", str(broken))
        self.flushLoggedErrors(ZeroDivisionError)
