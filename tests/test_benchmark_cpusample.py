"""benchmarks/cpusample.py: its samples name what burns the CPU, and its report adds up
the windows it is asked for."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from twisted.trial.unittest import TestCase

SAMPLER = Path(__file__).resolve().parent.parent / "benchmarks" / "cpusample.py"

BUSY = """
import time

def idle():
    time.sleep(0.3)

def spin():
    started = time.process_time()
    while time.process_time() - started < 0.3:
        pass

idle()
spin()
"""


def run_under(test: TestCase, command: str, source: str, out_name: str) -> Path:
    """Run ``source`` as a script under the sampler's ``command``; its OUT, in a fresh
    directory."""
    directory = Path(test.mktemp())
    directory.mkdir()
    script = directory / "script.py"
    script.write_text(source)
    out = directory / out_name
    subprocess.run([sys.executable, str(SAMPLER), command, str(out), str(script)], check=True)
    return out


class CPUSampleTests(TestCase):
    def test_samples_name_what_burns_the_cpu_and_not_what_sleeps(self) -> None:
        out = run_under(self, "run", BUSY, "busy.cpu")
        stacks = [line.partition(" ")[2] for line in out.read_text().splitlines()]
        spinning = [stack for stack in stacks if stack.endswith("spin (script.py)")]
        # 0.3 s of CPU at the kernel's tick (100 to 1000 Hz): 30 samples at the least.
        self.assertGreaterEqual(len(spinning), 30)
        self.assertGreater(len(spinning), len(stacks) / 2)
        self.assertFalse([stack for stack in stacks if "idle (script.py)" in stack])

    def test_the_report_counts_the_join_windows_against_quiet_ones(self) -> None:
        directory = Path(self.mktemp())
        directory.mkdir()
        start = 1000.0
        (directory / "j.log").write_text(json.dumps({"log_time": start}) + "\n")
        lines = [f"{start - 8.5} main;gossip"]  # quiet: 9 to 6 s before the start
        lines += [
            f"{start + 0.5} main;mesh",
            f"{start + 1.0} main;mesh",
            f"{start + 2} main;gossip",
        ]
        lines += [f"{start + 5} main;late", "cut"]
        (directory / "m.cpu").write_text("\n".join(lines) + "\n")
        command = [sys.executable, str(SAMPLER), "report", "--run-dir", str(directory)]
        done = subprocess.run(
            [*command, "--members", "m", "--joiners", "j"],
            check=True,
            capture_output=True,
            text=True,
        )
        rows = done.stdout.splitlines()
        self.assertEqual(
            rows[0], "1 windows of 3.0 s: 3.0 samples per join window, 1.0 per quiet one"
        )
        self.assertIn(" 66.7%   2.00   0.00  mesh", rows)
        self.assertIn(" 33.3%   1.00   1.00  gossip", rows)
        self.assertFalse([row for row in rows if row.endswith("late")])


TWISTED = """
import os, signal, time
from twisted.internet import reactor
from twisted.internet.protocol import DatagramProtocol

def spin():
    started = time.thread_time()
    while time.thread_time() - started < 0.05:
        pass

class Echo(DatagramProtocol):
    def datagramReceived(self, data, addr):
        spin()

def begin():
    os.kill(os.getpid(), signal.SIGUSR1)
    reactor.callLater(0.01, spin)
    port = reactor.listenUDP(0, Echo(), interface="127.0.0.1")
    port.write(b"x", ("127.0.0.1", port.getHost().port))
    reactor.callLater(0.3, end)

def end():
    os.kill(os.getpid(), signal.SIGUSR2)
    reactor.callLater(0.05, reactor.stop)

reactor.callWhenRunning(begin)
reactor.run()
"""


class TurnTests(TestCase):
    def test_turns_are_charged_to_what_woke_the_reactor(self) -> None:
        out = run_under(self, "turns", TWISTED, "m")
        spent = json.loads(out.with_name("m-1.turns.json").read_text())
        timer = spent["timer __main__.spin"]
        self.assertEqual(timer[1], 1)
        self.assertGreaterEqual(timer[0], 45_000_000)
        event = spent["event Port/__main__.Echo"]
        self.assertEqual(event[1], 1)
        self.assertGreaterEqual(event[0], 45_000_000)
        whole = spent["the whole window (this thread)"][0]
        self.assertGreaterEqual(whole, timer[0] + event[0])

    def test_the_report_counts_join_windows_beyond_quiet_ones(self) -> None:
        directory = Path(self.mktemp())
        directory.mkdir()
        windows = {
            "m-1": {"timer gossip": [2_000_000, 2]},
            "m-2": {"timer gossip": [3_000_000, 3], "event mesh": [4_000_000, 1]},
        }
        for name, spent in windows.items():
            (directory / f"{name}.turns.json").write_text(json.dumps(spent))
        command = [sys.executable, str(SAMPLER), "turns-report", "--run-dir", str(directory)]
        done = subprocess.run(
            [*command, "--members", "m"], check=True, capture_output=True, text=True
        )
        rows = done.stdout.splitlines()
        self.assertEqual(rows[0], "1 join and 1 quiet windows; per window, join beyond quiet")
        mesh, gossip = rows[2], rows[3]
        self.assertEqual(
            mesh.split(), ["4.00", "1.0", "4.00", "0.00", "1.0", "0.0", "event", "mesh"]
        )
        self.assertEqual(
            gossip.split(), ["1.00", "1.0", "3.00", "2.00", "3.0", "2.0", "timer", "gossip"]
        )
