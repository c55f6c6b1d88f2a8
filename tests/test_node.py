"""A first runnable node: starts, logs its plan, stops cleanly, or says why it cannot."""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
from functools import partial
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.trial.unittest import SynchronousTestCase

from agent import KEY, Agent, lone_host, program
from hepto.control import SOCKET_NAME, query
from hepto.pki.paths import Paths
from hepto.tap import Options, makeService
from netlab import wait_until


def node_argv(host: Any, *extra: str) -> list[str]:
    return [
        "--cluster", "c", "--name", "n1", "--key", KEY, "--no-contain",
        "--ip", str(host.interface), "--components", "none", *extra,
    ]  # fmt: skip


class LifecycleTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.host = lone_host(self, "hn")

    def start(self, *argv: str) -> Agent:
        agent = Agent.start(node_argv(self.host, *argv), prefix=self.host.command([]))
        self.addCleanup(agent.kill)
        wait_until(partial(agent.logged, "hepto node n1 running"), 60, what="start")
        return agent

    def test_sigterm_stops_with_status_0(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            agent = self.start()
            self.assertEqual(agent.stop(sig), 0)
            self.assertTrue(agent.logged("hepto node n1 stopping"))

    def test_json_logs_are_one_object_per_line(self) -> None:
        agent = self.start()
        agent.stop()
        plan_events = [e for e in agent.events() if "mesh_address" in e]
        self.assertTrue(plan_events, agent.events())
        event = plan_events[0]
        self.assertEqual(event["cluster"], "c")
        self.assertEqual(event["mesh_address"], "fd79:69a7:1f53:100:588a:20:fe41:6a1")
        self.assertIn("log_level", event)
        self.assertNotIn("\x1e", agent.log_path.read_text())

    def test_control_socket_speaks_for_every_service(self) -> None:
        agent = self.start()
        socket = agent.data_dir / "c" / "n1" / SOCKET_NAME
        status = query(socket)
        self.assertEqual((status["name"], status["cluster"]), ("n1", "c"))  # gossip's
        # A section that failed would be {"error": ...} alone.
        self.assertEqual(status["pki"]["role"], "node")
        self.assertIn("phase", status["mesh"])
        self.assertEqual(status["kube"]["components"], [])
        self.assertEqual(status["metrics_url"], "http://[::1]:7947/metrics")
        scrape = self.host.run(["curl", "-sSf", status["metrics_url"]]).stdout
        self.assertIn('hepto_info{cluster="c",name="n1",role="node"} 1\n', scrape)
        self.assertIn('hepto_gossip_members{state="alive"} 1\n', scrape)
        published = query(socket, "publish", key="x-note", value="hello")
        self.assertEqual(published["name"], "n1")
        self.assertEqual(agent.stop(), 0)


class PreparationTests(SynchronousTestCase):
    """Made, a node has read and made nothing; it does so as it starts, as twistd starts it."""

    def setUp(self) -> None:
        self.data_dir = Path(self.mktemp()).absolute()
        self.data_dir.mkdir()

    def node(self, data_dir: Path) -> Any:
        options = Options()
        options.parseOptions(
            ["--cluster", "c", "--name", "n1", "--key", KEY, "--no-contain",
             "--ip", "2001:db8::1/64", "--components", "none", "--data-dir", str(data_dir)]
        )  # fmt: skip
        return makeService(options, reactor)

    def test_nothing_is_made_before_the_start(self) -> None:
        node = self.node(self.data_dir)
        node_dir = self.data_dir / "c" / "n1"
        self.assertEqual((list(self.data_dir.iterdir()), list(node)), ([], []))
        node.privilegedStartService()
        self.addCleanup(node.mesh.links.rt.close)
        self.assertEqual(node_dir.stat().st_mode & 0o777, 0o700)
        self.assertTrue((node_dir / "identity.key").exists())
        self.assertEqual(
            [service.name for service in node],
            ["control", "metrics", "gossip", "pki", "mesh", "kube"],
        )

    def test_data_dir_unusable(self) -> None:
        blocker = self.data_dir / "file"
        blocker.write_text("")
        node = self.node(blocker)
        error = self.assertRaises(SystemExit, node.privilegedStartService)
        self.assertIn("hepto: --data-dir: cannot create", str(error))

    def test_data_dir_others_could_swap(self) -> None:
        # The whole check is hepto.datadir's (tests/test_datadir.py); here, its report.
        unsafe = self.data_dir / "unsafe"
        unsafe.mkdir()
        unsafe.chmod(0o777)
        node = self.node(unsafe)
        error = self.assertRaises(SystemExit, node.privilegedStartService)
        self.assertIn(
            f"hepto: --data-dir: {unsafe} is writable by group or others without the sticky bit",
            str(error),
        )
        self.assertEqual(list(unsafe.iterdir()), [])


class StartupErrorTests(SynchronousTestCase):
    """What stops a node before it runs is said in one line, without a traceback."""

    def run_agent(self, data_dir: Path, *argv: str, prefix: list[str] | None = None) -> Any:
        return subprocess.run(
            [*(prefix or []), program("twistd"), "-n", "--pidfile=", "hepto",
             "--data-dir", str(data_dir), *argv],
            capture_output=True, text=True, timeout=60, cwd=data_dir,
        )  # fmt: skip

    def temporary_directory(self) -> Path:
        directory = Path(tempfile.mkdtemp(prefix="hepto-test-"))
        self.addCleanup(shutil.rmtree, directory, ignore_errors=True)
        return directory

    def assertOneLineError(self, result: Any, words: str) -> None:
        self.assertNotEqual(result.returncode, 0)
        output = result.stdout + result.stderr
        self.assertNotIn("Traceback", output)
        self.assertIn(words, output.strip().splitlines()[-1])

    def test_port_taken(self) -> None:
        host = lone_host(self, "hn")
        first = Agent.start(node_argv(host), prefix=host.command([]))
        self.addCleanup(first.kill)
        wait_until(partial(first.logged, "hepto node n1 running"), 60, what="start")
        second = self.run_agent(
            self.temporary_directory(),
            *node_argv(host, "--metrics", "none"),
            prefix=host.command([]),
        )
        self.assertOneLineError(second, "Address already in use")
        # Gossip's port free, the metrics' taken: the option is named.
        third = self.run_agent(
            self.temporary_directory(),
            *node_argv(host, "--port", "7950"),
            prefix=host.command([]),
        )
        self.assertOneLineError(
            third,
            "hepto: --metrics: cannot listen on [::1]:7947: [Errno 98] Address already in use",
        )

    def test_damaged_pki_files_stop_the_running_node(self) -> None:
        # Found by the PKI's first batch, which runs while the node runs.
        data_dir = self.temporary_directory()
        paths = Paths(data_dir / "c" / "n1")
        paths.pki_dir.mkdir(mode=0o700, parents=True)
        paths.trusted_ca.write_text("damaged")
        host = lone_host(self, "hn")
        result = self.run_agent(data_dir, *node_argv(host), prefix=host.command([]))
        self.assertEqual(result.returncode, 1)
        self.assertIn("hepto node n1 running", result.stdout)
        self.assertOneLineError(result, f"hepto: {paths.trusted_ca}")
        self.assertEqual(paths.trusted_ca.read_text(), "damaged")

    def test_damaged_identity(self) -> None:
        data_dir = self.temporary_directory()
        node_dir = data_dir / "c" / "n1"
        node_dir.mkdir(parents=True)
        (node_dir / "identity.key").write_bytes(b"garbage")
        result = self.run_agent(data_dir, *node_argv(lone_host(self, "hn")))
        self.assertOneLineError(result, "identity.key")
