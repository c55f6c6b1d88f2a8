"""Starting real ``twistd hepto`` agents from tests."""

from __future__ import annotations

import atexit
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import attrs

KEY = "5a" * 32


def _ephemeral_ports() -> range:
    low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
    return range(int(low), int(high) + 1)


def free_port() -> int:
    """A port free on [::1] for both UDP and TCP, outside the ephemeral range.

    A member listens on one port for both; a port the kernel handed out for UDP
    may meanwhile be the local end of some TCP connection of another test (a CI
    flake twice), and a port below the ephemeral range is never handed out.
    """
    ephemeral = _ephemeral_ports()
    chooser = random.SystemRandom()
    for _ in range(200):
        port = chooser.randrange(10000, ephemeral.start)
        try:
            for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
                with socket.socket(socket.AF_INET6, kind) as probe:
                    probe.bind(("::1", port))
        except OSError:
            continue
        return port
    raise RuntimeError(f"no port free for UDP and TCP below {ephemeral.start}")


def program(name: str) -> str:
    """A console script of the running virtual environment."""
    return str(Path(sys.executable).with_name(name))


@attrs.define
class Agent:
    """A ``twistd -n hepto`` process with JSON logs captured to a file."""

    process: subprocess.Popen[bytes]
    log_path: Path
    data_dir: Path

    @classmethod
    def start(
        cls,
        argv: Sequence[str],
        data_dir: Path | None = None,
        prefix: Sequence[str] = (),
        env: dict[str, str] | None = None,
    ) -> Agent:
        if data_dir is None:
            data_dir = Path(tempfile.mkdtemp(prefix="hepto-test-"))
            # Its own, then: gone when the tests are (their cleanups have killed the
            # agents by then), unless kept to read the logs.
            if not os.environ.get("HEPTO_KEEP_TEST_DATA"):
                atexit.register(shutil.rmtree, data_dir, ignore_errors=True)
        log_path = data_dir / f"agent-{time.monotonic_ns()}.log"
        log: IO[bytes] = log_path.open("wb")
        clean = {k: v for k, v in os.environ.items() if not k.startswith("HEPTO_")}
        process = subprocess.Popen(
            [
                *prefix,
                program("twistd"),
                "-n",
                "--pidfile=",
                "hepto",
                "--log-format",
                "json",
                "--data-dir",
                str(data_dir),
                *argv,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=clean | (env or {}),
            cwd=str(data_dir),
            start_new_session=True,
        )
        log.close()
        return cls(process, log_path, data_dir)

    def events(self) -> list[dict[str, Any]]:
        events = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                events.append(json.loads(line))
            except ValueError:
                events.append({"log_text": line})
        return events

    def logged(self, words: str) -> bool:
        return any(words in event.get("log_text", "") for event in self.events())

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.process.poll() is None:
            os.killpg(self.process.pid, sig)
        return self.process.wait(timeout=timeout)

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)


def lone_host(testcase: Any, prefix: str) -> Any:
    """One simulated host for one test, so an agent never touches the root namespace
    (its mesh would create a WireGuard interface there)."""
    from netlab import Lab, missing_requirements

    why = missing_requirements("wireguard-go")
    if why:
        testcase.skipTest(why)
    lab = Lab(prefix)
    testcase.addCleanup(lab.close)
    return lab.add_host("h")


def agents_lab(testcase: Any, prefix: str, *programs: str) -> tuple[Any, Path]:
    """A lab of hosts for agents, and a directory for their data, both gone after the
    test; skips the test where the machine lacks what it needs."""
    from netlab import Lab, missing_requirements

    why = missing_requirements(*programs)
    if why:
        testcase.skipTest(why)
    lab = Lab(prefix)
    testcase.addCleanup(lab.close)
    root = Path(tempfile.mkdtemp(prefix=f"{prefix}-"))
    testcase.addCleanup(shutil.rmtree, root, True)
    return lab, root
