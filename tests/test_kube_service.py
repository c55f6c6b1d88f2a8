"""KubeService on fakes: certificates gate starts, renewals restart, programs are found first."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any
from unittest import mock

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from hepto.config import parse_node_config
from hepto.kube import memory
from hepto.kube.component import GoMemory
from hepto.kube.service import RESTART_DELAY, KubeService, check_programs
from hepto.pki.paths import Paths
from hepto.programs import MissingProgram
from hepto.supervisor import DirectLauncher, State
from test_supervisor_fakes import FakeProcessReactor, LogCapture, ScriptedProbe


@attrs.define
class FakePKI:
    """Certificates install when the test says so; changes go to subscribers."""

    paths: Paths
    requests: list[tuple[frozenset[str], Deferred[Paths]]] = attrs.field(factory=list)
    installed: set[str] = attrs.field(factory=set)
    listeners: list[Callable[[Any], None]] = attrs.field(factory=list)

    def when_installed(self, names: Iterable[str]) -> Deferred[Paths]:
        wanted = frozenset(names)
        if wanted <= self.installed:
            return succeed(self.paths)
        waiter: Deferred[Paths] = Deferred()
        self.requests.append((wanted, waiter))
        return waiter

    def install(self, *names: str) -> None:
        for name in names:
            self.installed.add(name)
            for listener in list(self.listeners):
                listener(_Change(name))
        ready = [entry for entry in self.requests if entry[0] <= self.installed]
        self.requests = [entry for entry in self.requests if entry not in ready]
        for _, waiter in ready:
            waiter.callback(self.paths)

    def subscribe(self, listener: Callable[[Any], None]) -> Callable[[], None]:
        self.listeners.append(listener)
        return lambda: self.listeners.remove(listener)


@attrs.frozen
class _Change:
    name: str


ALL_MASTER_CERTIFICATES = (
    "etcd-server",
    "etcd-peer",
    "apiserver",
    "apiserver-etcd-client",
    "apiserver-kubelet-client",
    "front-proxy-client",
    "controller-manager",
    "scheduler",
)
PROGRAMS = {
    name: Path(f"/opt/bin/{name}")
    for name in ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")
}


def go_settings(component: str) -> dict[str, str]:
    return memory.DEFAULTS.get(component, GoMemory()).environment()


class KubeServiceTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.data = Path(tempfile.mkdtemp(prefix="hk-kube-"))
        self.addCleanup(shutil.rmtree, self.data)
        self.reactor = FakeProcessReactor()
        self.clock = Clock()
        self.log = LogCapture.install(self)

    def config(self, role: str = "master", components: str | None = None) -> Any:
        raw = {
            "cluster": "mycluster",
            "name": "master1",
            "key": "00" * 32,
            "role": role,
            "ip": "2001:db8::1/64",
            "data-dir": str(self.data),
            "components": components,
            "bin-dir": str(self.data / "bin"),
        }
        return parse_node_config(raw, {}, {"no-contain": True})

    def service(self, role: str = "master", **kwargs: Any) -> tuple[KubeService, FakePKI]:
        config = self.config(role)
        pki = FakePKI(Paths(config.node_dir))
        self.probes = {name: ScriptedProbe() for name in PROGRAMS}
        kube = KubeService(
            config,
            pki,
            self.reactor,
            programs=PROGRAMS,
            launcher=DirectLauncher(),
            clock=self.clock,
            environ={"PATH": "/usr/bin", "HEPTO_KEY": "secret"},
            probes=lambda component: self.probes[component.name],
            **kwargs,
        )
        return kube, pki

    def spawned(self) -> list[str]:
        return [process.argv[0].rsplit("/", 1)[1] for process in self.reactor.processes]

    def make_ready(self, kube: KubeService, name: str) -> None:
        self.clock.advance(0)
        self.probes[name].answer(True)

    def test_nothing_starts_before_its_certificates(self) -> None:
        kube, pki = self.service()
        kube.startService()
        self.assertEqual(self.spawned(), [])
        pki.install("etcd-server", "etcd-peer")
        self.assertEqual(self.spawned(), [], "the probe's client certificate is missing")
        pki.install("apiserver-etcd-client")
        self.assertEqual(self.spawned(), ["etcd"])
        etcd = self.reactor.last
        self.assertEqual(etcd.argv[0], "/opt/bin/etcd")
        self.assertIn("--name=master1", etcd.argv)
        self.assertEqual(etcd.env, {"PATH": "/usr/bin", **go_settings("etcd")})
        data_dir = self.data / "mycluster/master1/etcd"
        self.assertEqual(stat.S_IMODE(data_dir.stat().st_mode), 0o700)

    def test_the_control_plane_starts_in_order(self) -> None:
        kube, pki = self.service()
        kube.startService()
        pki.install(*ALL_MASTER_CERTIFICATES)
        self.assertEqual(self.spawned(), ["etcd"])
        self.make_ready(kube, "etcd")
        self.assertEqual(self.spawned(), ["etcd", "kube-apiserver"])
        self.make_ready(kube, "kube-apiserver")
        self.assertEqual(
            self.spawned(),
            ["etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"],
        )

    def test_the_network_gates_too(self) -> None:
        network: Deferred[None] = Deferred()
        kube, pki = self.service(network_ready=lambda: network)
        kube.startService()
        pki.install(*ALL_MASTER_CERTIFICATES)
        self.assertEqual(self.spawned(), [])
        network.callback(None)
        self.assertEqual(self.spawned(), ["etcd"])

    def test_go_memory_settings_reach_the_environment(self) -> None:
        kube, pki = self.service(memory={"etcd": GoMemory(limit="100MiB")})
        kube.startService()
        pki.install(*ALL_MASTER_CERTIFICATES)
        self.assertEqual(self.reactor.last.env, {"PATH": "/usr/bin", "GOMEMLIMIT": "100MiB"})

    def test_go_memory_defaults(self) -> None:
        # Read when the service is made, not at import: benchmarks/memory.py relies on it.
        with mock.patch.object(memory, "DEFAULTS", {"etcd": GoMemory(gc_percent=42)}):
            kube, pki = self.service()
        kube.startService()
        pki.install(*ALL_MASTER_CERTIFICATES)
        self.assertEqual(self.reactor.last.env, {"PATH": "/usr/bin", "GOGC": "42"})

    def test_no_go_memory_settings(self) -> None:
        kube, pki = self.service(memory={})
        kube.startService()
        pki.install(*ALL_MASTER_CERTIFICATES)
        self.assertEqual(self.reactor.last.env, {"PATH": "/usr/bin"})

    def test_every_component_gets_its_default(self) -> None:
        kube, pki = self.service()
        kube.startService()
        pki.install(*ALL_MASTER_CERTIFICATES)
        self.make_ready(kube, "etcd")
        self.make_ready(kube, "kube-apiserver")
        for process in self.reactor.processes:
            name = process.argv[0].rsplit("/", 1)[1]
            self.assertEqual(process.env, {"PATH": "/usr/bin", **go_settings(name)}, name)
        self.assertEqual(len(self.reactor.processes), len(PROGRAMS))

    def test_a_renewed_certificate_restarts_its_component_once(self) -> None:
        kube, pki = self.service()
        kube.startService()
        pki.install(*ALL_MASTER_CERTIFICATES)
        self.make_ready(kube, "etcd")
        etcd, apiserver = self.reactor.processes
        pki.install("etcd-server")
        pki.install("etcd-peer")
        self.assertEqual(etcd.signals, [])
        self.clock.advance(RESTART_DELAY)
        self.assertEqual(etcd.signals, ["TERM"])
        self.assertEqual(apiserver.signals, [])
        self.assertEqual(self.spawned(), ["etcd", "kube-apiserver", "etcd"])
        self.assertIn(
            "etcd will restart: its certificate etcd-server was replaced", self.log.texts()
        )

    def test_a_waiting_component_is_not_restarted(self) -> None:
        kube, pki = self.service()
        kube.startService()
        pki.install(*ALL_MASTER_CERTIFICATES)
        pki.install("scheduler")
        self.clock.advance(RESTART_DELAY)
        self.assertEqual(kube.supervisor["kube-scheduler"].state, State.WAITING)
        self.assertEqual(self.spawned(), ["etcd"])

    def test_stop_cancels_a_pending_restart_and_stops_in_order(self) -> None:
        kube, pki = self.service()
        kube.startService()
        pki.install(*ALL_MASTER_CERTIFICATES)
        self.make_ready(kube, "etcd")
        pki.install("apiserver")
        stopped = kube.stopService()
        self.successResultOf(stopped)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.reactor.running(), [])
        self.assertEqual(pki.listeners, [])

    def test_a_node_runs_no_control_plane(self) -> None:
        kube, _ = self.service("node")
        kube.startService()
        self.assertEqual(kube.components, [])
        self.assertIn("containerd, kubelet: not run by this version of hepto yet", self.log.texts())
        self.successResultOf(kube.stopService())

    def test_missing_programs_are_found_before_anything_starts(self) -> None:
        config = self.config()
        (self.data / "bin").mkdir()
        error = self.assertRaises(MissingProgram, check_programs, config, "")
        self.assertEqual(
            error.missing, ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")
        )
        self.assertIn(f"{self.data}/bin (--bin-dir)", str(error))
        with mock.patch.dict(os.environ, {"PATH": ""}):
            self.assertRaises(
                MissingProgram, KubeService, config, FakePKI(Paths(config.node_dir)), self.reactor
            )

    def test_programs_come_from_the_bin_dir(self) -> None:
        config = self.config()
        (self.data / "bin").mkdir()
        for name in PROGRAMS:
            (self.data / "bin" / name).symlink_to("/bin/true")
        found = check_programs(config, "")
        self.assertEqual(found["etcd"], self.data / "bin/etcd")
