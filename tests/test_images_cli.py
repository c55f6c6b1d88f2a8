"""``hepto images import``: ask the agent for its containerd, check everything, import.

A fake agent answers on the node's control socket and a fake ctr stands for the real
one: what is tested here is the command's own logic (the real thing is in
tests/test_images_containerd.py).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from hepto.images.layout import File, ImageConfig, Recipe, write_archive
from images import fake_ctr, fake_ctr_calls

A = "sha256:" + "a" * 64
B = "sha256:" + "b" * 64


def hepto(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    program = Path(sys.executable).with_name("hepto")
    clean = {k: v for k, v in os.environ.items() if not k.startswith("HEPTO_")}
    return subprocess.run(
        [str(program), *argv], capture_output=True, text=True, env=clean | (env or {}), timeout=60
    )


class FakeAgent:
    """Answers every request on ``path`` with ``status``, as the control socket does."""

    def __init__(self, case: SynchronousTestCase, path: Path, status: dict[str, Any]) -> None:
        path.parent.mkdir(parents=True)
        self.listening = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listening.bind(str(path))
        self.listening.listen()
        self.answer = json.dumps(status).encode() + b"\n"
        self.requests: list[dict[str, Any]] = []
        thread = threading.Thread(target=self.serve, daemon=True)
        thread.start()
        case.addCleanup(thread.join, 10)
        case.addCleanup(self.listening.close)
        case.addCleanup(self.listening.shutdown, socket.SHUT_RDWR)

    def serve(self) -> None:
        while True:
            try:
                connection, _ = self.listening.accept()
            except OSError:
                return
            with connection:
                self.requests.append(json.loads(connection.makefile("rb").readline()))
                connection.sendall(self.answer)


class ImportCommandTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="hepto-cli-"))
        self.addCleanup(shutil.rmtree, self.directory)
        self.data_dir = self.directory / "data"
        self.ctr = fake_ctr(
            self.directory,
            {
                "a.tar": {"images": [{"name": "localhost/a:1", "digest": A}]},
                "b.tar": {"images": [{"name": "localhost/b:1", "digest": B}]},
            },
        )
        self.runtime = {
            "socket": str(self.directory / "containerd.sock"),
            "ctr": str(self.ctr),
            "namespace": "k8s.io",
        }

    def agent(self, status: dict[str, Any] | None = None) -> FakeAgent:
        socket_path = self.data_dir / "c" / "n" / "control.sock"
        if status is None:
            status = {"members": [], "kube": {"components": [], "runtime": self.runtime}}
        return FakeAgent(self, socket_path, status)

    def archive(self, name: str, image: str = "localhost/x:1") -> str:
        path = self.directory / name
        write_archive(Recipe(image, [File("/x", b"x")], ImageConfig(cmd=("/x",))), path)
        return str(path)

    def run_import(self, *archives: str) -> subprocess.CompletedProcess[str]:
        return hepto(
            "images", "import", "--cluster", "c", "--name", "n", "--data-dir",
            str(self.data_dir), *archives,
        )  # fmt: skip

    def test_imports_and_prints_names_and_digests(self) -> None:
        agent = self.agent()
        done = self.run_import(self.archive("a.tar"), self.archive("b.tar"))
        self.assertEqual((done.returncode, done.stderr), (0, ""))
        self.assertEqual(done.stdout, f"localhost/a:1 {A}\nlocalhost/b:1 {B}\n")
        self.assertEqual(agent.requests, [{"command": "status"}])
        imports = [call["argv"] for call in fake_ctr_calls(self.ctr) if "import" in call["argv"]]
        self.assertEqual(
            [argv[:4] for argv in imports],
            [["--address", self.runtime["socket"], "--namespace", "k8s.io"]] * 2,
        )

    def test_every_archive_is_checked_first(self) -> None:
        self.agent()
        (self.directory / "notes.txt").write_text("not an image\n")
        done = self.run_import(
            self.archive("a.tar"), str(self.directory / "notes.txt"), str(self.directory / "gone")
        )
        self.assertEqual(done.returncode, 1)
        self.assertEqual(done.stdout, "")
        self.assertEqual(
            done.stderr.splitlines(),
            [
                f"hepto: images import: {self.directory}/notes.txt: "
                "is not a tar archive (truncated header)",
                f"hepto: images import: {self.directory}/gone: does not exist",
                "hepto: images import: imported nothing: 2 of 3 archives cannot be imported",
            ],
        )
        self.assertEqual(fake_ctr_calls(self.ctr), [], "ctr ran though an archive was bad")

    def test_ctr_fails(self) -> None:
        self.agent()
        # Checked fine, but ctr refuses it (the fake fails archives it has no plan for).
        refused = self.archive("c.tar")
        done = self.run_import(self.archive("a.tar"), refused, self.archive("b.tar"))
        self.assertEqual(done.returncode, 1)
        self.assertEqual(done.stdout, f"localhost/a:1 {A}\n")
        self.assertEqual(
            done.stderr,
            f"hepto: images import: {refused}: "
            "ctr images import failed (exit status 1): unexpected EOF\n",
        )

    def test_no_agent(self) -> None:
        done = self.run_import(self.archive("a.tar"))
        self.assertEqual(done.returncode, 1)
        self.assertEqual(
            done.stderr,
            "hepto: images import: no hepto agent is running for this node "
            f"({self.data_dir}/c/n/control.sock does not exist)\n",
        )

    def test_an_agent_without_containerd(self) -> None:
        self.agent({"members": [], "kube": {"components": []}})
        done = self.run_import(self.archive("a.tar"))
        self.assertEqual(done.returncode, 1)
        self.assertEqual(
            done.stderr,
            "hepto: images import: this node's agent runs no containerd "
            "(is it a node, and has it started?)\n",
        )
        self.assertEqual(fake_ctr_calls(self.ctr), [])

    def test_environment(self) -> None:
        self.agent()
        done = hepto(
            "images",
            "import",
            self.archive("a.tar"),
            env={"HEPTO_CLUSTER": "c", "HEPTO_NAME": "n", "HEPTO_DATA_DIR": str(self.data_dir)},
        )
        self.assertEqual((done.returncode, done.stdout), (0, f"localhost/a:1 {A}\n"), done.stderr)

    def test_usage_errors(self) -> None:
        cases = [
            (("images",), "hepto: images: missing command: import (see hepto images --help)"),
            (("images", "export"), "hepto: images: Unknown command: export"),
            (
                ("images", "import", "--cluster", "c", "--name", "n"),
                "hepto: images import: missing ARCHIVE: name the archives to import",
            ),
            (("images", "import", "x.tar"), "hepto: images import: --cluster: missing"),
        ]
        for argv, expected in cases:
            done = hepto(*argv)
            self.assertEqual((done.returncode, done.stdout), (2, ""), argv)
            self.assertEqual(done.stderr.count("\n"), 1, done.stderr)
            self.assertTrue(done.stderr.startswith(expected), done.stderr)
