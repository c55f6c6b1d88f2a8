"""KubeService on fakes: certificates gate starts, renewals restart, programs are found first."""

from __future__ import annotations

import json
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
from twisted.logger import LogLevel
from twisted.trial.unittest import SynchronousTestCase

from hepto import plan
from hepto.config import parse_node_config
from hepto.kube import memory
from hepto.kube.component import GoMemory
from hepto.kube.runtime import RuntimeSetupError
from hepto.kube.service import RESTART_DELAY, KubeService, check_programs
from hepto.pki.paths import Paths
from hepto.programs import MissingProgram
from hepto.supervisor import AlwaysReady, DirectLauncher, State
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
    "coredns",
    "admin",
)
MASTER_COMPONENTS = (
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "coredns",
)
PROGRAMS = {name: Path(f"/opt/bin/{name}") for name in MASTER_COMPONENTS}


@attrs.define
class FakeAdminAPI:
    """Server-side applies, answered at once or held until the test answers them."""

    applied: list[tuple[str, str, str]] = attrs.field(factory=list)
    held: list[Deferred[Any]] | None = None

    def request(
        self, method: str, path: str, body: Any = None, content_type: str = ""
    ) -> Deferred[Any]:
        self.applied.append((method, path.split("?")[0], body["kind"]))
        if self.held is None:
            return succeed(body)
        waiter: Deferred[Any] = Deferred()
        self.held.append(waiter)
        return waiter

    def kinds(self) -> list[str]:
        return [kind for _, _, kind in self.applied]


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
        self.api = FakeAdminAPI()
        kube = KubeService(
            config,
            pki,
            self.reactor,
            programs=PROGRAMS,
            admin_api=lambda: self.api,
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
        self.assertEqual(self.spawned(), list(MASTER_COMPONENTS))

    def test_the_network_gates_too(self) -> None:
        network: Deferred[None] = Deferred()
        kube, pki = self.service(network=FakeNetwork(ready=network))
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

    def test_cluster_dns_objects_come_before_coredns_and_its_endpoints_after(self) -> None:
        kube, pki = self.service()
        kube.startService()
        pki.install(*ALL_MASTER_CERTIFICATES)
        self.make_ready(kube, "etcd")
        self.api.held = []
        self.make_ready(kube, "kube-apiserver")
        self.assertNotIn("coredns", self.spawned())
        self.assertEqual(self.api.kinds(), ["ClusterRole"])
        self.api.held.pop().callback({})
        self.api.held.pop().callback({})
        self.assertNotIn("coredns", self.spawned(), "the Service is not there yet")
        self.api.held.pop().callback({})
        self.assertEqual(self.api.kinds(), ["ClusterRole", "ClusterRoleBinding", "Service"])
        self.assertEqual(self.spawned()[-1], "coredns")
        corefile = (self.data / "mycluster/master1/runtime/Corefile").read_text()
        self.assertIn(f"bind {plan.mesh_address('mycluster', 'master1')}\n", corefile)
        self.assertIn(f"kubeconfig {self.data}/mycluster/master1/pki/coredns.kubeconfig", corefile)
        self.make_ready(kube, "coredns")
        self.assertEqual(self.api.applied[-1][2], "EndpointSlice")
        self.assertEqual(
            self.api.applied[-1][1],
            "/apis/discovery.k8s.io/v1/namespaces/kube-system/endpointslices/kube-dns-master1",
        )
        self.api.held.pop().callback({})
        self.assertIn("applied EndpointSlice kube-dns-master1", self.log.texts())

    def test_stop_abandons_the_cluster_dns_endpoints(self) -> None:
        kube, pki = self.service()
        kube.startService()
        pki.install(*ALL_MASTER_CERTIFICATES)
        self.make_ready(kube, "etcd")
        self.make_ready(kube, "kube-apiserver")
        self.api.held = []
        self.make_ready(kube, "coredns")
        self.assertEqual(len(self.api.held), 1)
        self.successResultOf(kube.stopService())
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.log.matching(log_level=LogLevel.critical), [])

    def test_without_hepto_s_pod_network_a_master_runs_no_dns(self) -> None:
        config = parse_node_config(
            {
                "cluster": "mycluster",
                "name": "master1",
                "key": "00" * 32,
                "role": "master",
                "ip": "2001:db8::1/64",
                "data-dir": str(self.data),
                "pod-network": "none",
            },
            {},
            {"no-contain": True},
        )
        kube = KubeService(config, FakePKI(Paths(config.node_dir)), self.reactor, programs=PROGRAMS)
        self.assertNotIn("coredns", [component.name for component in kube.components])

    def test_a_master_runs_no_runtime(self) -> None:
        kube, _ = self.service("master")
        self.assertIsNone(kube.runtime)
        self.assertNotIn("runtime", kube.status())
        self.assertEqual([component.name for component in kube.components], list(MASTER_COMPONENTS))

    def test_missing_programs_are_found_before_anything_starts(self) -> None:
        config = self.config()
        (self.data / "bin").mkdir()
        error = self.assertRaises(MissingProgram, check_programs, config, "")
        self.assertEqual(error.missing, MASTER_COMPONENTS)
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


NODE_PROGRAMS = {
    name: Path(f"/opt/bin/{name}")
    for name in (
        "containerd",
        "kubelet",
        "kube-proxy",
        "sh",
        "containerd-shim-runc-v2",
        "runc",
        "ctr",
        "pause",
        "nft",
        "ip",
    )
}


@attrs.define
class FakeNetwork:
    mtu: int | None = 1420
    endpoint: Any = None
    ready: Deferred[None] = attrs.field(factory=lambda: succeed(None))

    def when_addresses_ready(self) -> Deferred[None]:
        return self.ready


@attrs.define
class FakeImages:
    sandbox_image: str = "localhost/hepto/pause:1"
    archives: list[Path] = attrs.field(factory=list)
    imports: list[Path] = attrs.field(factory=list)
    pending: list[Deferred[Any]] = attrs.field(factory=list)

    def make_sandbox_archive(self, pause: Path, archive: Path) -> None:
        self.archives.append(archive)

    def import_archive(self, ctr: Path, socket: Path, archive: Path) -> Deferred[Any]:
        self.imports.append(archive)
        waiter: Deferred[Any] = Deferred()
        self.pending.append(waiter)
        return waiter

    def import_folder(self, ctr: Path, socket: Path, folder: Path) -> Deferred[Any]:
        self.imports.append(folder)
        return succeed([])


@attrs.define
class FakeHost:
    """Hierarchies that are plain directories; no mount, no sysctl."""

    root: Path
    made: list[Path] = attrs.field(factory=list)

    def prepare(self) -> list[Any]:
        from hepto.kube.host import Hierarchy

        return [
            Hierarchy(self.root / "freezer", 1, ("freezer",)),
            Hierarchy(self.root / "memory", 1, ("memory",)),
            Hierarchy(self.root / "unified", 2),
        ]

    def create_cgroups(self, hierarchies: Any) -> None:
        self.made += [hierarchy.path for hierarchy in hierarchies]


class NodeRuntimeTests(SynchronousTestCase):
    """A node's sweeper, containerd and kubelet, on fakes: order, gates, stop."""

    def setUp(self) -> None:
        self.data = Path(tempfile.mkdtemp(prefix="hk-node-"))
        self.addCleanup(shutil.rmtree, self.data)
        self.reactor = FakeProcessReactor()
        self.clock = Clock()
        self.log = LogCapture.install(self)
        self.images = FakeImages()
        self.registered: list[Deferred[Any]] = []
        self.network = FakeNetwork()

    def register(self) -> Deferred[Any]:
        waiter: Deferred[Any] = Deferred()
        self.registered.append(waiter)
        return waiter

    def service(self) -> tuple[KubeService, FakePKI]:
        raw = {
            "cluster": "mycluster",
            "name": "node1",
            "key": "00" * 32,
            "role": "node",
            "ip": "2001:db8::1/64",
            "data-dir": str(self.data),
        }
        config = parse_node_config(raw, {}, {"no-contain": True})
        pki = FakePKI(Paths(config.node_dir))
        self.probe = ScriptedProbe()
        kube = KubeService(
            config,
            pki,
            self.reactor,
            network=self.network,
            programs=NODE_PROGRAMS,
            launcher=DirectLauncher(),
            clock=self.clock,
            environ={"PATH": "/usr/bin"},
            probes=lambda c: AlwaysReady() if c.name == "sweeper" else self.probe,
            images=self.images,
            register=self.register,
            private_mount_namespace=False,
            host_setup=FakeHost(self.data / "cgroup"),  # type: ignore[arg-type]
        )
        self.layout = kube.runtime.layout if kube.runtime else None
        if self.layout is not None:  # containerd's directories there are made for real
            self.addCleanup(shutil.rmtree, self.layout.run_dir, ignore_errors=True)
        return kube, pki

    def commands(self) -> list[tuple[str, ...]]:
        return [process.argv for process in self.reactor.processes]

    def test_sweep_then_sweeper_containerd_kubelet(self) -> None:
        kube, pki = self.service()
        assert self.layout is not None
        script = str(self.layout.sweeper_script)
        kube.startService()
        # First what a previous run left: one sweep, before anything is supervised.
        self.assertEqual(self.commands(), [("/opt/bin/sh", script, "sweep")])
        self.assertIn("freezer/hepto/mycluster/node1", Path(script).read_text())
        self.reactor.last.exit(0)
        self.assertEqual(self.images.archives, [self.layout.pause_archive])
        self.clock.advance(0)  # the sweeper's "probe": started is ready
        sweeper, containerd = self.reactor.processes[1:]
        self.assertEqual(sweeper.argv, ("/opt/bin/sh", script, "guard"))
        self.assertEqual(
            containerd.argv,
            ("/opt/bin/sh", script, "enter", "/opt/bin/containerd",
             f"--config={self.layout.containerd_config}"),
        )  # fmt: skip
        self.assertIn("localhost/hepto/pause:1", self.layout.containerd_config.read_text())
        self.assertIn('"mtu": 1420', self.layout.cni_template.read_text())
        # The kubelet: after containerd answers, the images, its certificates, the Node.
        self.clock.advance(0)
        self.probe.answer(True)
        self.clock.advance(0)
        self.assertEqual(self.images.imports, [self.layout.pause_archive])
        self.images.pending.pop().callback(None)
        self.assertEqual(self.images.imports, [self.layout.pause_archive, self.layout.images_dir])
        self.assertEqual(self.registered, [])
        pki.install("kubelet-client", "kubelet-serving")
        self.assertEqual(len(self.registered), 1)
        self.assertEqual(len(self.reactor.processes), 3, "the Node is not registered yet")
        self.registered.pop().callback(None)
        kubelet = self.reactor.last
        self.assertEqual(kubelet.argv[:4], ("/opt/bin/sh", script, "enter", "/opt/bin/kubelet"))
        settings = json.loads(self.layout.kubelet_config.read_text())
        self.assertEqual(settings["cgroupRoot"], "/hepto/mycluster/node1/pods")
        self.assertIn("nameserver 2606:4700:4700::1111", self.layout.resolv_conf.read_text())
        self.assertEqual(kube.status()["runtime"]["socket"], str(self.layout.containerd_socket))

        # Stop: the kubelet, then containerd, then the sweeper (which sweeps on SIGTERM).
        stopped = kube.stopService()
        self.assertEqual(kubelet.signals, ["TERM"])
        self.assertEqual(containerd.signals, ["TERM"])
        self.assertEqual(sweeper.signals, ["TERM"])
        self.successResultOf(stopped)

    def test_a_failed_sweep_blocks_the_runtime(self) -> None:
        kube, _ = self.service()
        kube.startService()
        self.reactor.last.exit(3)
        self.assertEqual(len(self.reactor.processes), 1)
        self.assertEqual(kube.supervisor["sweeper"].state, State.BLOCKED)
        self.assertIn(
            "sweeper will not start: sweeping the node's cgroups failed with status 3",
            self.log.texts(),
        )
        self.assertEqual(len(self.flushLoggedErrors(RuntimeSetupError)), 2)
        self.successResultOf(kube.stopService())

    def test_the_kubelet_waits_for_the_mesh(self) -> None:
        self.network.ready = Deferred()
        kube, _ = self.service()
        kube.startService()
        self.reactor.last.exit(0)
        self.assertEqual(len(self.reactor.processes), 1, "nothing before the mesh is up")
        self.network.ready.callback(None)
        self.clock.advance(0)
        self.assertEqual(len(self.reactor.processes), 3)
        self.successResultOf(kube.stopService())
