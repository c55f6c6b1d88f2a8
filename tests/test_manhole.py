"""The manhole, reached with a real OpenSSH client."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from agent import KEY, Agent, lone_host
from netlab import wait_until

# OpenSSH reaches a unix socket through a ProxyCommand relaying stdin and stdout.
RELAY = """
import selectors, socket, sys, os
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])
sel = selectors.DefaultSelector()
sel.register(0, selectors.EVENT_READ); sel.register(s, selectors.EVENT_READ)
while True:
    for key, _ in sel.select():
        if key.fileobj == 0:
            data = os.read(0, 65536)
            if not data: s.shutdown(socket.SHUT_WR); sel.unregister(0); continue
            s.sendall(data)
        else:
            data = s.recv(65536)
            if not data: sys.exit(0)
            os.write(1, data)
"""


class ManholeTests(SynchronousTestCase):
    def setUp(self) -> None:
        if shutil.which("ssh") is None or shutil.which("ssh-keygen") is None:
            self.skipTest("needs OpenSSH's ssh and ssh-keygen")
        self.agent = None

    def start(self, manhole: str, authorized: Path) -> Agent:
        self.host = lone_host(self, "hh")
        argv = [
            "--cluster", "c", "--name", "n1", "--key", KEY, "--no-contain",
            "--ip", str(self.host.interface), "--components", "none",
            "--manhole", manhole, "--manhole-keys", str(authorized),
        ]  # fmt: skip
        agent = Agent.start(argv, prefix=self.host.command([]))
        self.addCleanup(agent.kill)
        wait_until(lambda: agent.logged("hepto node n1 running"), 60, what="agent start")
        return agent

    def keypair(self, directory: Path, name: str) -> Path:
        path = directory / name
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
        return path

    def ssh(self, identity: Path, target: list[str]) -> subprocess.CompletedProcess[str]:
        # Typed slowly on purpose: the manhole is a line editor on a real terminal.
        script = (
            "import time, sys\n"
            "time.sleep(1.5)\n"
            "sys.stdout.write('print(config.name.upper()*2)\\r'); sys.stdout.flush()\n"
            "time.sleep(1.5)\n"
            "sys.stdout.write('\\x04'); sys.stdout.flush()\n"
            "time.sleep(1)\n"
        )
        typist = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
        try:
            return subprocess.run(
                [
                    *self.host.command([]),
                    "ssh",
                    "-tt",
                    "-i",
                    str(identity),
                    "-o",
                    "BatchMode=yes",
                    "-o",
                    "IdentitiesOnly=yes",
                    "-o",
                    "StrictHostKeyChecking=no",
                    "-o",
                    "UserKnownHostsFile=/dev/null",
                    "-o",
                    "ConnectTimeout=20",
                    *target,
                ],
                stdin=typist.stdout,
                capture_output=True,
                text=True,
                timeout=60,
            )
        finally:
            typist.kill()
            typist.wait()

    def test_loopback_port(self) -> None:
        directory = Path(tempfile.mkdtemp(prefix="hepto-manhole-"))
        self.addCleanup(shutil.rmtree, directory, True)
        allowed = self.keypair(directory, "allowed")
        stranger = self.keypair(directory, "stranger")
        authorized = directory / "authorized_keys"
        shutil.copy(allowed.with_suffix(".pub"), authorized)
        port = 2222  # a fresh network namespace: every port is free
        self.start(str(port), authorized)

        result = self.ssh(allowed, ["-p", str(port), "operator@::1"])
        self.assertIn("N1N1", result.stdout, result.stderr)

        refused = self.ssh(stranger, ["-p", str(port), "operator@::1"])
        self.assertNotEqual(refused.returncode, 0)
        self.assertNotIn("N1N1", refused.stdout)
        self.assertIn("Permission denied", refused.stderr)

    def test_unix_socket(self) -> None:
        directory = Path(tempfile.mkdtemp(prefix="hepto-manhole-"))
        self.addCleanup(shutil.rmtree, directory, True)
        allowed = self.keypair(directory, "allowed")
        authorized = directory / "authorized_keys"
        shutil.copy(allowed.with_suffix(".pub"), authorized)
        agent = self.start("unix", authorized)
        socket_path = agent.data_dir / "c" / "n1" / "manhole.sock"
        self.assertEqual(os.stat(socket_path).st_mode & 0o777, 0o600)
        relay = directory / "relay.py"
        relay.write_text(RELAY)
        proxy = f"ProxyCommand={sys.executable} {relay} {socket_path}"
        result = self.ssh(allowed, ["-o", proxy, "operator@manhole"])
        self.assertIn("N1N1", result.stdout, result.stderr)
        self.assertTrue((agent.data_dir / "c" / "n1" / "manhole_host_key").exists())
