"""systemd's notification protocol against a fake ``NOTIFY_SOCKET``: a real unix datagram
socket of the test, as systemd's own is.

The unit tests send and relay; the agent test starts a real agent (a lone master without
Kubernetes components: it joins alone, makes its own certificates and mesh) with
``NOTIFY_SOCKET`` set, and reads what it tells systemd, in order, up to ``STOPPING=1``.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from agent import KEY, Agent, lone_host, program
from hepto import notify
from hepto.control import query
from hepto.programs import BUNDLE_BIN_DIR

BIN_DIR = Path(os.environ.get("HEPTO_TEST_BIN_DIR", BUNDLE_BIN_DIR))


def receiver(testcase: SynchronousTestCase, address: str) -> socket.socket:
    listening = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    testcase.addCleanup(listening.close)
    listening.bind(address)
    listening.settimeout(10)
    return listening


class SendTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="ho-notify-"))
        self.addCleanup(shutil.rmtree, self.directory, True)

    def test_nowhere_to_send(self) -> None:
        self.assertFalse(notify.send("READY=1", environ={}))
        self.assertFalse(notify.send("READY=1", environ={"NOTIFY_SOCKET": ""}))

    def test_path(self) -> None:
        path = str(self.directory / "notify")
        listening = receiver(self, path)
        self.assertTrue(notify.send("READY=1\nSTATUS=running", environ={"NOTIFY_SOCKET": path}))
        self.assertEqual(listening.recv(4096), b"READY=1\nSTATUS=running")

    def test_abstract(self) -> None:
        name = f"hepto-test-{secrets.token_hex(4)}"
        listening = receiver(self, "\0" + name)
        self.assertTrue(notify.send("STOPPING=1", environ={"NOTIFY_SOCKET": "@" + name}))
        self.assertEqual(listening.recv(4096), b"STOPPING=1")

    def test_refused(self) -> None:
        missing = {"NOTIFY_SOCKET": str(self.directory / "absent")}
        self.assertRaises(OSError, notify.send, "READY=1", environ=missing)

    def test_relay(self) -> None:
        """What the contained agent sends to the relay reaches systemd's socket."""
        name = f"hepto-test-{secrets.token_hex(4)}"
        listening = receiver(self, "\0" + name)
        relay = notify.Relay(self.directory / "relay.notify", "@" + name)
        relay.start()
        self.addCleanup(relay.close)
        self.assertEqual((self.directory / "relay.notify").stat().st_mode & 0o777, 0o600)
        for message in ("STATUS=joining the cluster", "READY=1"):
            notify.send(message, environ={"NOTIFY_SOCKET": str(relay.path)})
            self.assertEqual(listening.recv(4096), message.encode())
        relay.close()
        self.assertFalse(relay.path.exists())


class AgentTests(SynchronousTestCase):
    def test_ready_then_stopping(self) -> None:
        host = lone_host(self, "ho")
        directory = Path(tempfile.mkdtemp(prefix="ho-notify-"))
        self.addCleanup(shutil.rmtree, directory, True)
        path = str(directory / "notify")
        listening = receiver(self, path)
        listening.settimeout(120)  # two shared cores: a master's PKI, the mesh
        agent = Agent.start(
            ["--cluster", "ho", "--name", "m1", "--key", KEY, "--role", "master",
             "--no-contain", "--ip", str(host.interface), "--components", "none"],
            prefix=host.command([]),
            env={"NOTIFY_SOCKET": path},
        )  # fmt: skip
        self.addCleanup(agent.kill)
        told: list[str] = []
        while not told or not told[-1].startswith("READY=1"):
            told.append(listening.recv(4096).decode())
        self.assertEqual(
            told,
            [
                "STATUS=joining the cluster",
                "STATUS=waiting for this node's certificates",
                "STATUS=waiting for the mesh addresses",
                "READY=1\nSTATUS=running",
            ],
        )
        self.assertTrue(agent.logged("hepto node m1 ready"))
        self.assertEqual(agent.stop(), 0)
        listening.settimeout(0)  # sent before the agent exited, or never
        self.assertEqual(listening.recv(4096), b"STOPPING=1\nSTATUS=stopping")


class MasterReadinessTests(SynchronousTestCase):
    def test_ready_once_the_control_plane_is(self) -> None:
        """A master with its components: READY=1 only once every one passes its probe."""
        if not (BIN_DIR / "kube-apiserver").exists():
            self.skipTest(f"needs the bundle in {BIN_DIR} (tools/build-bundle)")
        host = lone_host(self, "ho")
        directory = Path(tempfile.mkdtemp(prefix="ho-notify-"))
        self.addCleanup(shutil.rmtree, directory, True)
        path = str(directory / "notify")
        listening = receiver(self, path)
        listening.settimeout(300)  # a cold apiserver on two contended cores
        agent = Agent.start(
            ["--cluster", "ho", "--name", "m1", "--key", KEY, "--role", "master",
             "--no-contain", "--ip", str(host.interface), "--bin-dir", str(BIN_DIR)],
            data_dir=directory,
            prefix=host.command([]),
            env={"NOTIFY_SOCKET": path},
        )  # fmt: skip
        self.addCleanup(agent.kill)
        told: list[str] = []
        while not told or not told[-1].startswith("READY=1"):
            told.append(listening.recv(4096).decode())
        components = query(directory / "ho" / "m1" / "control.sock")["kube"]["components"]
        self.assertEqual(
            {c["name"]: c["ready"] for c in components},
            dict.fromkeys(
                ["etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "coredns"],
                True,
            ),
        )
        self.assertEqual(
            told[-2],
            "STATUS=waiting for etcd, kube-apiserver, kube-controller-manager, "
            "kube-scheduler, coredns to be ready",
        )
        self.assertEqual(agent.stop(), 0)


class ContainedAgentTests(SynchronousTestCase):
    def test_relayed_by_the_outer_process(self) -> None:
        """Contained, the agent reaches systemd's socket through the outer process's relay:
        systemd's socket abstract (reachable from the host's network namespace only),
        and every datagram sent by the outer process, the unit's main one."""
        host = lone_host(self, "ho")
        name = f"hepto-test-{secrets.token_hex(4)}"
        # An abstract name lives in a network namespace: this one is the lab host's.
        listening = self.abstract_receiver_in(host, name)
        data_dir = Path(tempfile.mkdtemp(prefix="ho-notify-"))
        self.addCleanup(shutil.rmtree, data_dir, True)
        # Last, before the lab goes (which may kill the container's guard first).
        cleanup = data_dir / "ho" / "m1" / "container" / "cleanup.sh"
        self.addCleanup(
            lambda: cleanup.exists() and subprocess.run(["sh", str(cleanup), "sweep"], check=False)
        )
        agent = Agent.start(
            ["--cluster", "ho", "--name", "m1", "--key", KEY, "--role", "master",
             "--iface", "eth0", "--components", "none"],
            data_dir=data_dir,
            prefix=host.command([]),
            env={"NOTIFY_SOCKET": "@" + name},
        )  # fmt: skip
        self.addCleanup(agent.kill)
        told: list[str] = []
        while not told or not told[-1].startswith("READY=1"):
            data, credentials = self.receive_with_sender(listening)
            told.append(data.decode())
            # The sender is the outer process: the one twistd became, the unit's main.
            self.assertEqual(credentials, agent.process.pid)
        self.assertEqual(told[0], "STATUS=joining the cluster")
        self.assertEqual(told[-1], "READY=1\nSTATUS=running")
        self.assertEqual(agent.stop(), 0)
        listening.settimeout(0)
        self.assertEqual(self.receive_with_sender(listening)[0], b"STOPPING=1\nSTATUS=stopping")

    def abstract_receiver_in(self, host: Any, name: str) -> socket.socket:
        from netlab import netns_socket

        listening = netns_socket(host.netns, socket.AF_UNIX, socket.SOCK_DGRAM)
        self.addCleanup(listening.close)
        listening.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        listening.bind("\0" + name)
        listening.settimeout(180)
        return listening

    @staticmethod
    def receive_with_sender(listening: socket.socket) -> tuple[bytes, int]:
        """A datagram and its sender's pid (SCM_CREDENTIALS), as systemd checks it."""
        data, ancillary, _, _ = listening.recvmsg(4096, socket.CMSG_SPACE(12))
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                return data, int.from_bytes(payload[:4], "little")
        raise AssertionError("no credentials")


class UnitFileTests(SynchronousTestCase):
    """``docs/hepto@.service`` as systemd reads it (systemd cannot run here: no PID 1 of
    its own; ``systemd-analyze verify`` parses the unit as systemd would load it)."""

    def test_verifies(self) -> None:
        analyze = shutil.which("systemd-analyze")
        if analyze is None:
            self.skipTest("no systemd-analyze")
        unit = (Path(__file__).resolve().parent.parent / "docs" / "hepto@.service").read_text()
        self.assertIn("Type=notify\n", unit)
        self.assertIn("KillMode=mixed\n", unit)
        self.assertIn("EnvironmentFile=/etc/hepto/%i.env\n", unit)
        directory = Path(tempfile.mkdtemp(prefix="ho-unit-"))
        self.addCleanup(shutil.rmtree, directory, True)
        # The installed twistd's path is the host's choice; here, this environment's.
        twistd = str(Path(program("twistd")))
        installed = directory / "hepto@test.service"
        installed.write_text(unit.replace("/usr/local/bin/twistd", twistd))
        done = subprocess.run(
            [analyze, "verify", str(installed)], capture_output=True, text=True, check=False
        )
        self.assertEqual((done.returncode, done.stderr), (0, ""))
