"""KubeService: this node's Kubernetes components, under the supervisor.

It chooses the components of the node's role (or of ``--components``), finds their
programs before anything starts, and gives the supervisor one process each: started
once its dependencies are ready, its certificates installed and the network up, and
restarted when the PKI replaces one of its certificates.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol

from twisted.application.service import MultiService
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    DeferredList,
    gatherResults,
    maybeDeferred,
)
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from hepto import config, plan
from hepto.config import ConfigError, NodeConfig
from hepto.kube import memory as go_memory
from hepto.kube.apiserver import NAME as apiserver_name
from hepto.kube.apiserver import apiserver
from hepto.kube.component import (
    Component,
    Context,
    GoMemory,
    SocketReadiness,
    StartedReadiness,
)
from hepto.kube.containerd import CNI_DIRS, CNI_PLUGINS, containerd
from hepto.kube.controller_manager import controller_manager
from hepto.kube.coredns import coredns
from hepto.kube.etcd import etcd
from hepto.kube.kube_proxy import kube_proxy
from hepto.kube.kubelet import kubelet
from hepto.kube.scheduler import scheduler
from hepto.kube.sweeper import sweeper
from hepto.pki.paths import Paths
from hepto.programs import find_programs
from hepto.state import ClusterState
from hepto.supervisor import (
    AlwaysReady,
    HTTPProbe,
    Launcher,
    Probe,
    ProbeTLS,
    ProcessSpec,
    State,
    Supervisor,
    UnixSocketProbe,
)
from hepto.supervisor.supervisor import first_error

if TYPE_CHECKING:
    # A node's runtime (host, images, registration, API client) is imported only by an
    # agent that runs one: a master's start-up does without it.
    from hepto.kube.host import HostSetup
    from hepto.kube.runtime import ImageStore, NetworkSource, NodeRuntime

#: The master's components in start order, each after what it depends on.
MASTER: Final[dict[str, Callable[[Context], Component]]] = {
    "etcd": etcd,
    "kube-apiserver": apiserver,
    "kube-controller-manager": controller_manager,
    "kube-scheduler": scheduler,
    "coredns": coredns,
}
assert tuple(MASTER) == config.MASTER_COMPONENTS
#: A node's runtime in start order: the sweeper comes with containerd.
NODE: Final[dict[str, Callable[[Context], Component]]] = {
    "sweeper": sweeper,
    "containerd": containerd,
    "kubelet": kubelet,
    "kube-proxy": kube_proxy,
}
DESCRIPTIONS: Final = {**MASTER, **NODE}
#: Programs a node's runtime runs besides its components, found like them.
HELPERS: Final = ("containerd-shim-runc-v2", "runc", "ctr", "pause", "sh", "nft", "ip")

#: The agent's environment variables children may see; see docs/kubernetes.rst.
INHERITED: Final = frozenset(
    {
        "PATH",
        "HOME",
        "TZ",
        "TMPDIR",
        "LANG",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "NO_PROXY",
        "http_proxy",
        "https_proxy",
        "no_proxy",
        "GODEBUG",
        "GOTRACEBACK",
        "GOMAXPROCS",
    }
)
#: A burst of renewed certificates makes one restart, not one per certificate.
RESTART_DELAY: Final = 1.0


def component_environment(
    environ: Mapping[str, str], memory: GoMemory | None = None
) -> dict[str, str]:
    """What a component sees: the agent's allowed variables, then its Go settings."""
    env = {
        name: value
        for name, value in environ.items()
        if name in INHERITED or name == "LC_ALL" or name.startswith("LC_")
    }
    if memory is not None:
        env.update(memory.environment())
    return env


def chosen_components(node: NodeConfig) -> list[str]:
    """The components this node runs, in start order, or a ConfigError naming the misfit."""
    masters = [name for name in node.components if name in MASTER]
    if masters and not node.is_master:
        raise ConfigError(
            "components",
            f"{', '.join(masters)}: only a master runs these; use --role master or full",
        )
    nodes = [name for name in node.components if name in config.NODE_COMPONENTS]
    if nodes and not node.is_node:
        raise ConfigError(
            "components", f"{', '.join(nodes)}: only a node runs these; use --role node or full"
        )
    if node.pod_network != "hepto":
        # The plugin's business, as are its cluster DNS and how pods reach it.
        masters = [name for name in masters if name != "coredns"]
        nodes = [name for name in nodes if name != "kube-proxy"]
    needing = [name for name in nodes if name != "containerd"]
    if needing and "containerd" not in nodes:
        raise ConfigError("components", f"{', '.join(needing)}: needs containerd beside it")
    runtime = ["sweeper", *nodes] if nodes else []
    return masters + runtime


def runs_runtime(node: NodeConfig) -> bool:
    return "containerd" in chosen_components(node)


def required_programs(node: NodeConfig) -> list[str]:
    context = Context.from_config(node)
    names = [DESCRIPTIONS[name](context).program for name in chosen_components(node)]
    if runs_runtime(node):
        names += HELPERS
    return list(dict.fromkeys(names))


def cni_directories(bin_dir: Path | None) -> list[Path]:
    """Where containerd looks for CNI plugins: ``--bin-dir``, then the distributions'."""
    return [bin_dir, *CNI_DIRS] if bin_dir is not None else list(CNI_DIRS)


def check_cni_plugins(directories: list[Path]) -> list[Path]:
    """The directories that exist, once every plugin is found in one of them."""
    present = [directory for directory in directories if directory.is_dir()]
    missing = [
        plugin
        for plugin in CNI_PLUGINS
        if not any((directory / plugin).is_file() for directory in present)
    ]
    if missing:
        raise ConfigError(
            "bin-dir",
            f"the CNI plugins {', '.join(missing)} are in none of "
            f"{', '.join(str(directory) for directory in directories)}: install them "
            "(Debian: apt-get install containernetworking-plugins) or put them in --bin-dir",
        )
    return present


def cni_directories_found(node: NodeConfig) -> list[Path]:
    """The CNI directories for containerd: checked for hepto's plugins if its network is on."""
    directories = cni_directories(node.bin_dir)
    if node.pod_network == "hepto":
        return check_cni_plugins(directories)
    return [directory for directory in directories if directory.is_dir()]


def check_programs(node: NodeConfig, path: str | None = None) -> dict[str, Path]:
    """Every program the node's components need, or MissingProgram (a ConfigError).

    ``path`` stands for ``$PATH``.
    """
    found = find_programs(required_programs(node), node.bin_dir, path)
    if runs_runtime(node) and node.pod_network == "hepto":
        check_cni_plugins(cni_directories(node.bin_dir))
    return found


class CertificateSource(Protocol):
    """What KubeService needs of the PKI (hepto.pki.service.PKIService offers it)."""

    @property
    def paths(self) -> Paths: ...

    def when_installed(self, names: Iterable[str]) -> Deferred[Any]: ...

    def subscribe(self, listener: Callable[[Any], None]) -> Callable[[], None]: ...


class KubeService(MultiService):
    """The Kubernetes components of one node, supervised.

    ``memory`` holds the Go memory settings of each component by name: by default
    :data:`hepto.kube.memory.DEFAULTS`; ``{}`` leaves Go's own defaults everywhere.
    """

    log = Logger()

    def __init__(
        self,
        node: NodeConfig,
        pki: CertificateSource,
        # IReactorProcess, IReactorTCP, IReactorUNIX and IReactorTime: no one type says so.
        reactor: Any,
        *,
        network: NetworkSource | None = None,
        programs: Mapping[str, Path] | None = None,
        memory: Mapping[str, GoMemory] | None = None,
        launcher: Launcher | None = None,
        clock: IReactorTime | None = None,
        environ: Mapping[str, str] | None = None,
        probes: Callable[[Component], Probe] | None = None,
        images: ImageStore | None = None,
        register: Callable[[], Deferred[Any]] | None = None,
        private_mount_namespace: bool = True,
        host_setup: HostSetup | None = None,
        state: ClusterState | None = None,
        admin_api: Callable[[], Any] | None = None,
    ) -> None:
        super().__init__()
        self.setName("kube")
        self._node = node
        self._pki = pki
        self._reactor = reactor
        self._clock: IReactorTime = clock if clock is not None else reactor
        self._network = network
        # Looked up now, not at import: benchmarks/memory.py runs agents with other values.
        self._memory = dict(go_memory.DEFAULTS if memory is None else memory)
        self._environ = os.environ if environ is None else environ
        self._make_probe = probes or self._probe
        #: The apiserver as the cluster's admin: what a master applies (cluster DNS).
        self._admin_api = admin_api or self._admin_client
        context = Context.from_config(node)
        self.components = [DESCRIPTIONS[name](context) for name in chosen_components(node)]
        self.programs = dict(programs) if programs is not None else check_programs(node)
        self.runtime: NodeRuntime | None = None
        if runs_runtime(node):
            from hepto.kube.runtime import HeptoImages, NodeRuntime

            if network is None:
                raise ValueError("a node's runtime needs the mesh")
            self.runtime = NodeRuntime(
                context,
                self.programs,
                cni_directories_found(node) if programs is None else [],
                images if images is not None else HeptoImages(reactor),
                network,
                register if register is not None else self._register_node,
                reactor,
                environ=component_environment(self._environ),
                private_mount_namespace=private_mount_namespace,
                host_setup=host_setup,
                state=state,
                # Router advertisements give it its address or its route: keep them.
                uplink=node.iface if node.ip is None or node.gw is None else None,
                own_network=node.pod_network == "hepto",
            )
        self.supervisor = Supervisor(reactor, self._clock, launcher)
        self.supervisor.setServiceParent(self)
        names = {component.name for component in self.components}
        for component in self.components:
            self.supervisor.add(self._spec(component, names))
        self._unsubscribe: Callable[[], None] | None = None
        self._restart_calls: dict[str, IDelayedCall] = {}
        self._restarting: dict[str, Deferred[None]] = {}
        self._publishing: Deferred[None] | None = None

    def _register_node(self) -> Deferred[Any]:
        """This node's Node, with its addresses, before each start of the kubelet."""
        from hepto.kube.api import APIClient
        from hepto.kube.registration import desired_node, register_node

        node, network = self._node, self._network
        public = node.ip.ip if node.ip is not None else None
        if network is not None and network.endpoint is not None:
            public = network.endpoint.host  # what the mesh's peers reach it on
        client = APIClient.for_node(self._reactor, node.cluster, Paths(node.node_dir))
        desired = desired_node(
            node.name, node.role, plan.mesh_address(node.cluster, node.name), public
        )
        return register_node(client, desired, clock=self._clock)

    # -- from descriptions to processes --------------------------------------------------

    def _spec(self, component: Component, present: set[str]) -> ProcessSpec:
        argv: tuple[str, ...] = (str(self.programs[component.program]), *component.args)
        if component.in_runtime_cgroups:
            assert self.runtime is not None
            argv = self.runtime.enter_command(argv)
        return ProcessSpec(
            name=component.name,
            argv=argv,
            env=component_environment(self._environ, self._memory.get(component.name)),
            # A dependency this node does not run is someone else's (an outside etcd).
            dependencies=[name for name in component.dependencies if name in present],
            probe=self._make_probe(component),
            precondition=lambda: self._precondition(component),
            stop_timeout=component.stop_timeout,
            death_signal=component.death_signal,
        )

    def _probe(self, component: Component) -> Probe:
        readiness = component.readiness
        if isinstance(readiness, StartedReadiness):
            return AlwaysReady()
        if isinstance(readiness, SocketReadiness):
            return UnixSocketProbe(self._reactor, readiness.path)
        tls = None
        if readiness.url.startswith("https:"):
            tls = ProbeTLS(readiness.ca, readiness.certificate, readiness.key)
        return HTTPProbe(self._reactor, readiness.url, tls, readiness.body_check)

    def _precondition(self, component: Component) -> Deferred[Any]:
        waits = [maybeDeferred(self._make_directories, component)]
        if component.certificates:
            waits.append(maybeDeferred(self._pki.when_installed, component.certificates))
        if self._network is not None:
            waits.append(maybeDeferred(self._network.when_addresses_ready))
        ready = gatherResults(waits, consumeErrors=True).addErrback(first_error)
        if component.name == "coredns":
            return ready.addCallback(lambda _: self._before_coredns())
        if self.runtime is None:
            return ready
        # The runtime's own step last: the Node's registration needs the certificates.
        step = {
            "sweeper": self.runtime.prepared,
            "containerd": self.runtime.before_containerd,
            "kubelet": self.runtime.before_kubelet,
            "kube-proxy": self.runtime.before_kube_proxy,
        }.get(component.name)
        return ready if step is None else ready.addCallback(lambda _: step())

    def _make_directories(self, component: Component) -> None:
        for directory in component.directories:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            directory.chmod(0o700)  # etcd refuses a data directory others can read

    # -- the cluster's DNS, on masters ------------------------------------------------------

    def _admin_client(self) -> Any:
        from hepto.kube.api import APIClient
        from hepto.pki.specs import ADMIN

        return APIClient.for_node(
            self._reactor, self._node.cluster, Paths(self._node.node_dir), ADMIN
        )

    def _before_coredns(self) -> Deferred[None]:
        """Its Corefile, then its role, its binding and its Service (cluster_dns)."""
        from hepto.files import write_atomically
        from hepto.kube import cluster_dns
        from hepto.kube.coredns import corefile
        from hepto.kube.layout import Layout
        from hepto.pki.specs import ADMIN

        node = self._node
        layout = Layout(node.node_dir, node.cluster, node.name)
        layout.runtime_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        kubeconfig = Paths(node.node_dir).component_files("coredns")["kubeconfig"]
        text = corefile(plan.mesh_address(node.cluster, node.name), str(kubeconfig), node.dns)
        write_atomically(layout.corefile, text, mode=0o644)
        manifests = [
            cluster_dns.role(),
            cluster_dns.binding(),
            cluster_dns.service(plan.dns_address(node.cluster)),
        ]
        # The supervisor asks before the apiserver is ready: wait for it, if it is ours.
        waits = [maybeDeferred(self._pki.when_installed, [ADMIN])]
        if any(component.name == apiserver_name for component in self.components):
            waits.append(self.supervisor[apiserver_name].when_ready())
        ready = gatherResults(waits, consumeErrors=True).addErrback(first_error)
        return ready.addCallback(
            lambda _: cluster_dns.apply_all(self._admin_api(), manifests, clock=self._clock)
        )

    def _publish_dns_endpoints(self, _: object) -> Deferred[None]:
        """Once CoreDNS answers: this master's EndpointSlice of ``kube-dns``."""
        from hepto.kube import cluster_dns

        node = self._node
        manifest = cluster_dns.endpoints(node.name, plan.mesh_address(node.cluster, node.name))
        return cluster_dns.apply_all(self._admin_api(), [manifest], clock=self._clock)

    def _dns_endpoints_failed(self, failure: Failure) -> None:
        if not failure.check(CancelledError):  # stopped before: nothing to say
            self.log.failure(
                "the cluster DNS endpoints were not published: {reason}",
                failure,
                reason=failure.getErrorMessage(),
            )

    # -- service ----------------------------------------------------------------------------

    def startService(self) -> None:
        if self.runtime is not None:
            self.runtime.start(self.supervisor["containerd"].when_ready())
        self._unsubscribe = self._pki.subscribe(self._certificate_changed)
        if any(component.name == "coredns" for component in self.components):
            self._publishing = self.supervisor["coredns"].when_ready()
            self._publishing.addCallback(self._publish_dns_endpoints)
            self._publishing.addErrback(self._dns_endpoints_failed)
        super().startService()

    def stopService(self) -> Deferred[None]:
        if self._publishing is not None:
            self._publishing.cancel()
            self._publishing = None
        if self.runtime is not None:
            self.runtime.stop()
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        for call in self._restart_calls.values():
            if call.active():
                call.cancel()
        self._restart_calls.clear()
        # A restart under way ends with a start: let it, then stop everything in order.
        under_way = DeferredList(list(self._restarting.values()), consumeErrors=True)
        return under_way.addCallback(lambda _: MultiService.stopService(self))

    # -- certificate renewals -------------------------------------------------------------

    def _certificate_changed(self, change: Any) -> None:
        for component in self.components:
            process = self.supervisor[component.name]
            if change.name in component.certificates and process.state is State.RUNNING:
                self._restart_soon(component.name, change.name)

    def _restart_soon(self, name: str, certificate: str) -> None:
        if name in self._restart_calls or name in self._restarting:
            return
        self.log.info(
            "{component} will restart: its certificate {certificate} was replaced",
            component=name,
            certificate=certificate,
        )
        self._restart_calls[name] = self._clock.callLater(RESTART_DELAY, self._restart, name)

    def _restart(self, name: str) -> None:
        del self._restart_calls[name]
        restarting = self.supervisor[name].restart()
        self._restarting[name] = restarting

        def done(result: object) -> object:
            self._restarting.pop(name, None)
            return result

        def failed(failure: Failure) -> None:
            self.log.failure("{component} failed to restart", failure, component=name)

        restarting.addBoth(done).addErrback(failed)

    def status(self) -> dict[str, Any]:
        """The ``kube`` section of ``hepto status``: each component's state, the runtime."""
        status: dict[str, Any] = {
            "components": [
                {
                    "name": process.name,
                    "state": process.state.value,
                    "ready": process.ready,
                    "pid": process.pid,
                    "restarts": process.restarts,
                    "last_exit": process.last_exit,
                    "last_probe_error": process.last_probe_error,
                }
                for process in self.supervisor.status().values()
            ]
        }
        if self.runtime is not None:
            status["runtime"] = self.runtime.status()
        return status
