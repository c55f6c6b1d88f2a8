"""The JSON log lines: one object per line, structured fields and the text."""

from __future__ import annotations

import io
import json

from twisted.logger import Logger
from twisted.trial.unittest import SynchronousTestCase

from hepto.logs import json_lines_observer


class JSONLinesTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.stream = io.StringIO()
        self.log = Logger(namespace="hepto.test", observer=json_lines_observer(self.stream))

    def lines(self) -> list[dict[str, object]]:
        text = self.stream.getvalue()
        self.assertTrue(text.endswith("\n"))
        return [json.loads(line) for line in text.splitlines()]

    def test_fields_and_text(self) -> None:
        self.log.info("Member {member} is {status}", member="n2", status="alive")
        [line] = self.lines()
        self.assertEqual((line["member"], line["status"]), ("n2", "alive"))
        self.assertEqual(line["log_text"], "Member n2 is alive")
        self.assertEqual(line["log_namespace"], "hepto.test")
        level = line["log_level"]
        assert isinstance(level, dict)
        self.assertEqual(level["name"], "info")
        self.assertIsInstance(line["log_time"], float)
        self.assertNotIn("log_logger", line)
        self.assertNotIn("log_flattened", line, "each field once")

    def test_values_json_cannot_hold(self) -> None:
        self.log.warn("{raw} {thing}", raw=b"\xff\x00", thing=object(), unhashable={1}, **{"3": 3})
        [line] = self.lines()
        self.assertEqual(line["raw"], "\xff\x00")
        self.assertEqual(line["thing"], {"unpersistable": True})
        self.assertEqual(line["unhashable"], {"unpersistable": True})
        self.assertTrue(str(line["log_text"]).startswith("b'\\xff\\x00' <object object at"))

    def test_a_failure_keeps_its_traceback(self) -> None:
        try:
            raise ZeroDivisionError("by zero")
        except ZeroDivisionError:
            self.log.failure("Dividing {what}", what="by zero")
        [line] = self.lines()
        self.assertEqual(line["log_text"], "Dividing by zero")
        failure = line["log_failure"]
        assert isinstance(failure, dict)
        self.assertEqual(failure["type"]["__name__"], "ZeroDivisionError")
        self.assertIn("test_a_failure_keeps_its_traceback", json.dumps(failure["frames"]))
