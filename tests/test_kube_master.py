"""A real IPv6-only master: etcd, kube-apiserver, kube-controller-manager, kube-scheduler.

The programs come from the bundle (tools/build-bundle; or HEPTO_TEST_BIN_DIR), the
certificates from hepto.pki, and everything runs in a network namespace of its own
whose interface carries the mesh and apiserver addresses.  ``kubectl get --raw
/readyz`` must answer ``ok``; after a ``kill -9`` of kube-apiserver the supervisor
restarts it, it is ready again, and what was written to etcd before is still there.

Until node.py wires PKI, mesh and Kubernetes into the agent, a small driver runs
PKIService and KubeService on the real reactor; ``start_master`` is the one place to
swap it for ``twistd -n hepto --role master --no-contain ...``.
"""

from __future__ import annotations

import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path
from typing import IO

from twisted.trial.unittest import SynchronousTestCase

import netlab
from hepto import plan
from hepto.programs import BUNDLE_BIN_DIR, MissingProgram, find_programs

BIN_DIR = Path(os.environ.get("HEPTO_TEST_BIN_DIR", BUNDLE_BIN_DIR))
PROGRAMS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")
MASTER_COMPONENTS = PROGRAMS[:4]
CLUSTER, NAME = "hkcluster", "hkmaster"
#: Two contended cores: a cold apiserver has been seen to take a minute.
READY_TIMEOUT = 300.0

_DRIVER = textwrap.dedent(
    """
    import sys, time
    from twisted.internet import reactor
    from twisted.logger import globalLogBeginner, textFileLogObserver
    from hepto.config import parse_node_config
    from hepto.kube.service import KubeService, check_programs
    from hepto.pki.service import PKIService
    from hepto.state import MemoryCluster

    data_dir, bin_dir, cluster, name, ip = sys.argv[1:6]
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)])
    raw = {"cluster": cluster, "name": name, "key": "00" * 32, "role": "master", "ip": ip,
           "data-dir": data_dir, "bin-dir": bin_dir}
    config = parse_node_config(raw, {}, {"no-contain": True})
    config.node_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    pki = PKIService.from_config(config, MemoryCluster().join(name, role="master"), reactor)
    kube = KubeService(config, pki, reactor, programs=check_programs(config, path=""))
    began = time.monotonic()

    def ready(_):
        print(f"HK-READY after {time.monotonic() - began:.1f} s", flush=True)

    def start():
        pki.startService()
        kube.startService()
        kube.supervisor.when_ready().addCallback(ready)

    reactor.callWhenRunning(start)
    reactor.addSystemEventTrigger("before", "shutdown", kube.stopService)
    reactor.run()
    print("HK-STOPPED", flush=True)
    """
)


class Lines:
    """A child's output, read by a thread; ``wait_for`` wakes on each new line."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[bytes]) -> None:
        for raw in stream:
            with self._changed:
                self.lines.append(raw.decode("utf-8", errors="replace").rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self.lines.append("")  # end of output
            self._changed.notify_all()

    def wait_for(
        self, pattern: str, after: int = 0, timeout: float = READY_TIMEOUT
    ) -> re.Match[str]:
        wanted = re.compile(pattern)
        deadline = time.monotonic() + timeout
        seen = after
        with self._changed:
            while True:
                for line in self.lines[seen:]:
                    found = wanted.search(line)
                    if found:
                        return found
                seen = len(self.lines)
                if self.lines and self.lines[-1] == "" and not self._thread.is_alive():
                    raise AssertionError(f"output ended without {pattern!r}:\n{self.tail()}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no {pattern!r} within {timeout} s:\n{self.tail()}")
                self._changed.wait(left)

    def tail(self, count: int = 40) -> str:
        return "\n".join(self.lines[-count:])


def pss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    raise AssertionError(f"no Pss for {pid}")


class MasterTests(SynchronousTestCase):
    def setUp(self) -> None:
        missing = netlab.missing_requirements()
        if missing:
            self.skipTest(missing)
        try:
            import hepto.pki.service  # noqa: F401
        except ImportError as error:
            self.skipTest(f"needs hepto.pki: {error}")
        try:
            self.programs = find_programs(PROGRAMS, BIN_DIR, path="")
        except MissingProgram as error:
            self.skipTest(str(error))
        self.lab = netlab.Lab("hk")
        self.addCleanup(self.lab.close)
        self.host = self.lab.add_host("m")
        # What the mesh service will do: the node's and the apiserver's addresses, at once.
        for address in (plan.mesh_address(CLUSTER, NAME), plan.apiserver_address(CLUSTER)):
            self.host.run(["ip", "addr", "add", f"{address}/128", "dev", "eth0", "nodad"])
        self.data = Path(tempfile.mkdtemp(prefix="hk-master-"))
        self.addCleanup(shutil.rmtree, self.data, ignore_errors=True)
        self.node_dir = self.data / CLUSTER / NAME

    def start_master(self) -> tuple[subprocess.Popen[bytes], Lines]:
        argv = [sys.executable, "-c", _DRIVER, str(self.data), str(BIN_DIR), CLUSTER, NAME]
        master = self.host.spawn(
            [*argv, str(self.host.interface)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        assert master.stdout is not None
        return master, Lines(master.stdout)

    def latest_pids(self, output: Lines) -> dict[str, int]:
        pids = {}
        for line in output.lines:
            found = re.search(r"\] (\S+) started as pid (\d+)", line)
            if found:
                pids[found.group(1)] = int(found.group(2))
        return pids

    def kubectl(self, *args: str) -> str:
        argv = [str(self.programs["kubectl"]), "--kubeconfig", str(self.node_dir / "kubeconfig")]
        done = self.host.run([*argv, *args], check=False)
        self.assertEqual(done.returncode, 0, done.stderr)
        return done.stdout

    def test_master_comes_up_survives_a_kill_and_stops_in_order(self) -> None:
        started = time.monotonic()
        master, output = self.start_master()
        output.wait_for(r"HK-READY")
        to_ready = time.monotonic() - started
        self.assertEqual(self.kubectl("get", "--raw", "/readyz"), "ok")
        self.kubectl("create", "configmap", "hk-canary", "--from-literal=written=before")

        pids = {
            name: int(output.wait_for(rf"{name} started as pid (\d+)").group(1))
            for name in MASTER_COMPONENTS
        }
        figures = {name: pss_kib(pid) for name, pid in pids.items()}
        figures["driver"] = pss_kib(master.pid)

        mark = len(output.lines)
        os.kill(pids["kube-apiserver"], signal.SIGKILL)
        output.wait_for(r"kube-apiserver was killed by SIGKILL", after=mark, timeout=60)
        restarted = int(
            output.wait_for(r"kube-apiserver started as pid (\d+)", after=mark).group(1)
        )
        self.assertNotEqual(restarted, pids["kube-apiserver"])
        output.wait_for(r"kube-apiserver is ready", after=mark)
        self.assertEqual(self.kubectl("get", "--raw", "/readyz"), "ok")
        self.assertEqual(
            self.kubectl("get", "configmap", "hk-canary", "-o", "jsonpath={.data.written}"),
            "before",
        )

        # The controller manager and the scheduler may have lost their leader lease
        # while the apiserver was away, and exited: then they were restarted too.
        pids = self.latest_pids(output)
        self.assertEqual(pids["kube-apiserver"], restarted)
        watches = {name: os.pidfd_open(pid) for name, pid in pids.items()}
        for watch in watches.values():
            self.addCleanup(os.close, watch)
        mark = len(output.lines)
        master.send_signal(signal.SIGTERM)
        output.wait_for(r"HK-STOPPED", after=mark, timeout=120)
        self.assertEqual(master.wait(timeout=60), 0)
        for name, watch in watches.items():
            readable, _, _ = select.select([watch], [], [], 10)
            self.assertTrue(readable, f"{name} outlived the agent")
        stops = [
            match.group(1)
            for line in output.lines[mark:]
            if (match := re.search(r"\] (\S+) stopping \(SIGTERM\)", line))
        ]
        self.assertEqual(stops[-2:], ["kube-apiserver", "etcd"])
        self.assertEqual(
            set(stops[:-2]),
            {"kube-controller-manager", "kube-scheduler", "coredns"},
            output.tail(),
        )
        restarts = [line for line in output.lines if "restarting in" in line]
        total = sum(figures.values())
        print("\n".join(["", *restarts]), file=sys.stderr)
        print(f"ready after {to_ready:.1f} s; PSS KiB {figures}, sum {total}", file=sys.stderr)
