"""The bundle's ``pause`` program: a pod sandbox's first process.

It must exit 0 on SIGTERM and SIGINT (the runtime's stop), reap the children that end
under it (in a pod sharing its PID namespace, every orphan), and stay a small static
binary.  The built program comes from HEPTO_TEST_BIN_DIR or the bundle; without it the
tests are skipped (tools/build-bundle builds it).
"""

from __future__ import annotations

import os
import select
import signal
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from unittest import SkipTest

from twisted.trial.unittest import SynchronousTestCase

from hepto.programs import BUNDLE_BIN_DIR

BIN_DIR = Path(os.environ.get("HEPTO_TEST_BIN_DIR", BUNDLE_BIN_DIR))
#: What pause writes once its signal handlers are in place (when it is not PID 1).
READY = b"pause: warning: not the first process"
#: The ELF program header naming a dynamic loader: a static binary has none.
_PT_INTERP = 3

#: Forks children that end at the given delays (in seconds) and prints their pids, then
#: becomes pause: the children are pause's own, as orphans are a sandbox's.
_PARENT = textwrap.dedent(
    """
    import os, sys, time
    pause, delays = sys.argv[1], [float(d) for d in sys.argv[2:]]
    children = []
    for delay in delays:
        pid = os.fork()
        if pid == 0:
            time.sleep(delay)
            os._exit(0)
        children.append(pid)
    time.sleep(0.2)  # the children of no delay have ended: pause starts with zombies
    print(" ".join(map(str, children)), flush=True)
    os.execv(pause, [pause])
    """
)


def pause_program() -> Path:
    program = BIN_DIR / "pause"
    if not (program.is_file() and os.access(program, os.X_OK)):
        raise SkipTest(f"no pause program in {BIN_DIR}: build it with tools/build-bundle")
    return program


def state(pid: int) -> str | None:
    """The process's state letter (Z for a zombie), None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    return stat.rsplit(")", 1)[1].split()[0]


class PauseTests(SynchronousTestCase):
    def start(self, *delays: float) -> tuple[subprocess.Popen[bytes], list[int]]:
        process = subprocess.Popen(
            [sys.executable, "-c", _PARENT, str(pause_program()), *map(str, delays)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.addCleanup(self.kill, process)
        assert process.stdout is not None and process.stderr is not None
        children = [int(pid) for pid in process.stdout.readline().split()]
        self.wait_for(process, READY)
        return process, children

    def kill(self, process: subprocess.Popen[bytes]) -> None:
        if process.poll() is None:
            process.kill()
            process.wait()
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()

    def wait_for(self, process: subprocess.Popen[bytes], text: bytes, timeout: float = 10) -> None:
        assert process.stderr is not None
        seen = b""
        deadline = time.monotonic() + timeout
        while text not in seen:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([process.stderr], [], [], left)[0]:
                self.fail(f"pause did not write {text!r} within {timeout} s: {seen!r}")
            chunk = os.read(process.stderr.fileno(), 4096)
            if not chunk:
                self.fail(f"pause ended (status {process.wait()}) without {text!r}: {seen!r}")
            seen += chunk

    def test_sigterm_is_a_clean_exit(self) -> None:
        process, _ = self.start()
        process.send_signal(signal.SIGTERM)
        self.assertEqual(process.wait(timeout=10), 0)

    def test_sigint_is_a_clean_exit(self) -> None:
        process, _ = self.start()
        process.send_signal(signal.SIGINT)
        self.assertEqual(process.wait(timeout=10), 0)

    def test_sigchld_without_children_changes_nothing(self) -> None:
        process, _ = self.start()
        process.send_signal(signal.SIGCHLD)
        time.sleep(0.2)
        self.assertIsNone(process.poll())

    def assert_reaped(self, process: subprocess.Popen[bytes], children: list[int]) -> None:
        deadline = time.monotonic() + 10
        while any(state(child) is not None for child in children):
            if time.monotonic() > deadline:
                left = {child: state(child) for child in children}
                self.fail(f"children left unreaped by pause (pid {process.pid}): {left}")
            time.sleep(0.05)
        self.assertIsNone(process.poll(), "pause ended with its children")

    def test_reaps_children_that_end_under_it(self) -> None:
        # Three at once: their SIGCHLDs may come as one.
        process, children = self.start(0.5, 0.5, 0.5)
        self.assertEqual(len(children), 3)
        self.assert_reaped(process, children)

    def test_reaps_children_that_ended_before_it_started(self) -> None:
        process, children = self.start(0)
        self.assert_reaped(process, children)

    def test_small_and_static(self) -> None:
        program = pause_program()
        self.assertLess(program.stat().st_size, 2 * 1024 * 1024)
        with open(program, "rb") as elf:
            header = elf.read(64)
            self.assertEqual(header[:4], b"\x7fELF")
            self.assertEqual(header[4], 2, "a 64-bit ELF")
            (program_headers,) = struct.unpack_from("<Q", header, 0x20)
            size, count = struct.unpack_from("<HH", header, 0x36)
            elf.seek(program_headers)
            table = elf.read(size * count)
        kinds = [struct.unpack_from("<I", table, i * size)[0] for i in range(count)]
        self.assertNotIn(_PT_INTERP, kinds, "pause needs a dynamic loader: cgo crept in")
