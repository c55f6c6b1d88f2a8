"""The shell pieces of the cleanup scripts, run by a real ``sh``."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from hepto.shellguard import FUNCTIONS


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


class GuardTests(SynchronousTestCase):
    def start_guard(self, finish_body: str) -> subprocess.Popen[bytes]:
        script = Path(self.mktemp())
        script.write_text(f"{FUNCTIONS}\nfinish() {{\n{finish_body}\n}}\nguard_forever finish\n")
        guard = subprocess.Popen(["sh", str(script)])
        self.addCleanup(guard.kill)  # a no-op once it has exited
        deadline = time.monotonic() + 10
        while not children(guard.pid):  # its sleep: the traps are set by then
            self.assertLess(time.monotonic(), deadline, "the guard never slept")
            time.sleep(0.01)
        return guard

    def test_finishes_once_on_repeated_signals_and_leaves_no_sleep(self) -> None:
        marks = Path(self.mktemp())
        guard = self.start_guard(f"sleep 0.3; echo finished >> {marks}; exit 0")
        sleeper = children(guard.pid)
        for _ in range(3):  # as a dying parent's threads each send its death signal
            os.kill(guard.pid, signal.SIGTERM)
            time.sleep(0.02)
        self.assertEqual(guard.wait(timeout=10), 0)
        self.assertEqual(marks.read_text(), "finished\n")
        for pid in sleeper:
            self.assertFalse(Path(f"/proc/{pid}").exists(), f"sleep {pid} left behind")


class RemoveCgroupsTests(SynchronousTestCase):
    def test_removes_the_tree_and_the_empty_levels_above(self) -> None:
        root = Path(self.mktemp())
        node = root / "hepto" / "c" / "n1"
        (node / "pods" / "kubepods").mkdir(parents=True)
        other = root / "hepto" / "d" / "n2"
        other.mkdir(parents=True)
        subprocess.run(
            ["sh", "-c", f"{FUNCTIONS}\nremove_cgroups {node} {root}/absent", "sh"], check=True
        )
        self.assertFalse((root / "hepto" / "c").exists())
        # Another cluster's node keeps its levels.
        self.assertTrue(other.is_dir())
