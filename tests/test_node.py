"""A first runnable node: starts, logs its plan, stops cleanly."""

from __future__ import annotations

import signal
import socket
import subprocess
import tempfile
from functools import partial
from pathlib import Path

from agent import KEY, Agent, free_port, program
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


class StartupErrorTests(SynchronousTestCase):
    """What stops a node before it runs is said in one line, without a traceback."""

    def run_agent(self, data_dir: str, port: int) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                program("twistd"),
                "-n",
                "--pidfile=",
                "hepto",
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
                str(port),
                "--components",
                "none",
                "--data-dir",
                data_dir,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=data_dir,
        )

    def assertOneLineError(self, result: subprocess.CompletedProcess[str], words: str) -> None:
        self.assertNotEqual(result.returncode, 0)
        output = result.stdout + result.stderr
        self.assertNotIn("Traceback", output)
        self.assertIn(words, output.strip().splitlines()[-1])

    def test_port_taken(self) -> None:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as taken:
            taken.bind(("::1", 0))
            port = taken.getsockname()[1]
            result = self.run_agent(tempfile.mkdtemp(prefix="hepto-test-"), port)
        self.assertOneLineError(result, "Address already in use")

    def test_damaged_identity(self) -> None:
        data_dir = Path(tempfile.mkdtemp(prefix="hepto-test-"))
        node_dir = data_dir / "c" / "n1"
        node_dir.mkdir(parents=True)
        (node_dir / "identity.key").write_bytes(b"garbage")
        result = self.run_agent(str(data_dir), free_port())
        self.assertOneLineError(result, "identity.key")
