"""A first runnable node: starts, logs its plan, stops cleanly."""

from __future__ import annotations

import signal
from functools import partial

from agent import KEY, Agent, free_port
from netlab import wait_until
from twisted.trial.unittest import SynchronousTestCase


class LifecycleTests(SynchronousTestCase):
    def start(self, *argv: str) -> Agent:
        agent = Agent.start(
            [
                "--cluster",
                "c",
                "--name",
                "n1",
                "--key",
                KEY,
                "--no-contain",
                "--ip",
                "::1/128",
                "--port",
                str(free_port()),
                "--components",
                "none",
                *argv,
            ]
        )
        self.addCleanup(agent.kill)
        return agent

    def test_sigterm_stops_with_status_0(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            agent = self.start()
            wait_until(partial(agent.logged, "hepto node n1 running"), 60, what="start")
            self.assertEqual(agent.stop(sig), 0)
            self.assertTrue(agent.logged("hepto node n1 stopping"))

    def test_json_logs_are_one_object_per_line(self) -> None:
        agent = self.start()
        wait_until(lambda: agent.logged("hepto node n1 running"), 60, what="start")
        agent.stop()
        plan_events = [e for e in agent.events() if "mesh_address" in e]
        self.assertTrue(plan_events, agent.events())
        event = plan_events[0]
        self.assertEqual(event["cluster"], "c")
        self.assertEqual(event["mesh_address"], "fd79:69a7:1f53:100:588a:20:fe41:6a1")
        self.assertIn("log_level", event)
        self.assertNotIn("\x1e", agent.log_path.read_text())
