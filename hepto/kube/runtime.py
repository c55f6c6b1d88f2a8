"""A node's container runtime: what containerd and the kubelet need around their runs.

:class:`NodeRuntime` prepares the host once per start of the agent (its own mount
namespace, the cgroups, the sweeper, what a dead agent left behind), writes the files
containerd and the kubelet read just before each of their starts, imports the images
once containerd answers, and registers the Node before the kubelet starts.  Each of
these is a Deferred that :class:`hepto.kube.service.KubeService` puts in the gate of the
process concerned; the supervisor does the rest.  The rationale is in ``docs/nodes.rst``.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.utils import getProcessOutputAndValue
from twisted.logger import Logger
from twisted.python.failure import Failure

from hepto import plan
from hepto.config import Endpoint
from hepto.errors import StartupError
from hepto.files import write_atomically
from hepto.kube import containerd, egress, host, kube_proxy, kubelet, sweeper
from hepto.kube.component import Context
from hepto.kube.host import Hierarchy, HostError, HostSetup
from hepto.kube.layout import CRI_NAMESPACE, Layout
from hepto.kube.pods import PodPrefixPublisher
from hepto.once import Once
from hepto.state import ClusterState


class RuntimeSetupError(StartupError):
    """The runtime cannot be set up; the message says which step failed and why."""


class ImageStore(Protocol):
    """What the runtime needs of hepto's images: the sandbox image and the imports."""

    @property
    def sandbox_image(self) -> str: ...

    def make_sandbox_archive(self, pause: Path, archive: Path) -> None: ...

    def import_archive(self, ctr: Path, socket: Path, archive: Path) -> Deferred[Any]: ...

    def import_folder(self, ctr: Path, socket: Path, folder: Path) -> Deferred[Any]: ...


@attrs.frozen
class HeptoImages:
    """hepto's own: its pause image, and imports through ``ctr`` (:mod:`hepto.images`).

    The modules are imported when a node first needs them: a master never does, and
    they cost the agent a quarter of a megabyte (``docs/images.rst``).
    """

    reactor: Any

    @property
    def sandbox_image(self) -> str:
        from hepto.images.pause import PAUSE_IMAGE

        return PAUSE_IMAGE

    def make_sandbox_archive(self, pause: Path, archive: Path) -> None:
        from hepto.images.pause import ensure_pause_archive

        ensure_pause_archive(pause, archive)

    def import_archive(self, ctr: Path, socket: Path, archive: Path) -> Deferred[Any]:
        from hepto.images.importer import import_archive

        return import_archive(self.reactor, ctr, socket, archive, CRI_NAMESPACE)

    def import_folder(self, ctr: Path, socket: Path, folder: Path) -> Deferred[Any]:
        from hepto.images.importer import import_folder

        return import_folder(self.reactor, ctr, socket, folder, CRI_NAMESPACE)


class NetworkSource(Protocol):
    """What the node needs of the mesh (hepto.mesh.service.MeshService offers it)."""

    @property
    def mtu(self) -> int | None: ...

    @property
    def endpoint(self) -> Endpoint | None: ...

    def when_addresses_ready(self) -> Deferred[None]: ...


class NodeRuntime:
    """containerd and the kubelet's surroundings on one node.

    ``programs`` maps every program name (``hepto.kube.service.HELPERS``, containerd,
    the kubelet) to its path; ``cni_dirs`` are the directories of the CNI plugins.
    ``register`` creates or updates this node's Node object and fires once it has.
    """

    log = Logger()

    def __init__(
        self,
        context: Context,
        programs: Mapping[str, Path],
        cni_dirs: Sequence[Path],
        images: ImageStore,
        network: NetworkSource,
        register: Callable[[], Deferred[Any]],
        reactor: Any,
        *,
        environ: Mapping[str, str] | None = None,
        private_mount_namespace: bool = True,
        host_setup: HostSetup | None = None,
        state: ClusterState | None = None,
        uplink: str | None = None,
        own_network: bool = True,
    ) -> None:
        self.context = context
        self._uplink = uplink
        self.own_network = own_network
        self.layout = Layout(context.node_dir, context.cluster, context.name)
        self.programs = dict(programs)
        self.cni_dirs = tuple(cni_dirs)
        self.images = images
        self.network = network
        self._register = register
        self._reactor = reactor
        self._environ = dict(os.environ if environ is None else environ)
        self._private_mount_namespace = private_mount_namespace
        layout = self.layout
        self.host = host_setup or HostSetup(
            sysctl_dir=layout.sysctl_dir,
            cgroups=(layout.runtime_cgroup, layout.pods_cgroup),
            binds=(
                (layout.kubelet_data, layout.kubelet_root),
                *((layout.private_host_path(path), path) for path in host.PRIVATE_HOST_PATHS),
            ),
        )
        self.hierarchies: list[Hierarchy] = []
        self.may_lower_oom_score = True
        self._prepared = Once[None]()
        self._imported = Once[None]()
        self.pods: PodPrefixPublisher | None = None
        if state is not None and own_network:
            self.pods = PodPrefixPublisher(
                state, context.cluster, self.layout.cni_config_dir, reactor, self._pods_known
            )

    # -- once per start of the agent ------------------------------------------------------

    def start(self, containerd_ready: Deferred[Any]) -> None:
        """Prepare the host now (its first steps are synchronous), import images later."""
        try:
            if self._private_mount_namespace:
                host.enter_private_mount_namespace()
            self.hierarchies = self.host.prepare()
            self.may_lower_oom_score = host.may_lower_oom_score()
            self.layout.runtime_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._write_sweeper()
        except (HostError, OSError) as error:
            raise RuntimeSetupError(f"the node's runtime cannot start: {error}") from None
        self.log.info(
            "Runtime of {name}: cgroups {cgroup} in {count} hierarchies, oom_score_adj {oom}",
            name=self.context.name,
            cgroup=str(self.layout.cgroup),
            count=len(self.hierarchies),
            oom="as asked" if self.may_lower_oom_score else "never lowered (no CAP_SYS_RESOURCE)",
        )
        if self.pods is not None:
            self.pods.start()
        prepared = self._sweep().addCallback(lambda _: self._finish_preparing())
        prepared.addCallbacks(self._prepared.fire, self._prepared.fail)
        imported = containerd_ready.addCallback(lambda _: self._import_images())
        imported.addCallbacks(self._imported.fire, self._imported.fail)

    def _write_sweeper(self) -> None:
        node_dirs = host.cgroup_directories(self.hierarchies, self.layout.cgroup)
        tracked = host.cgroup_directories(
            [host.tracking_hierarchy(self.hierarchies)], self.layout.cgroup
        )[0]
        runtime = host.cgroup_directories(self._owned_hierarchies(), self.layout.runtime_cgroup)
        text = sweeper.script(
            self.context.name,
            str(self.layout.cgroup),
            self.layout.pods_cgroup.name,
            tracked,
            node_dirs,
            [directory / "cgroup.procs" for directory in runtime],
            # The node's network leftovers, once its processes are gone.
            cleanup=(
                egress.delete_command(self.programs["nft"]),
                f"{self.programs['ip']} link delete {containerd.POD_BRIDGE} 2>/dev/null",
            ),
            run_dir=self.layout.run_dir,
        )
        write_atomically(self.layout.sweeper_script, text, mode=0o700)

    def _owned_hierarchies(self) -> list[Hierarchy]:
        """Where hepto makes the node's cgroups: every v1 hierarchy, or cgroup2 alone."""
        version1 = [hierarchy for hierarchy in self.hierarchies if hierarchy.version == 1]
        return version1 or list(self.hierarchies)

    def _sweep(self) -> Deferred[None]:
        """Whatever a previous run of this node left: its processes and cgroups."""
        done = getProcessOutputAndValue(
            str(self.programs["sh"]),
            (str(self.layout.sweeper_script), "sweep"),
            env=self._environ,
            reactor=self._reactor,
        )

        def swept(result: tuple[bytes, bytes, int]) -> None:
            out, err, code = result
            for line in (out + err).decode(errors="replace").splitlines():
                self.log.info("sweeper: {line}", line=line)
            if code != 0:
                raise RuntimeSetupError(f"sweeping the node's cgroups failed with status {code}")

        return done.addCallback(swept)

    def _finish_preparing(self) -> None:
        self.host.create_cgroups(self._owned_hierarchies())
        self.images.make_sandbox_archive(self.programs["pause"], self.layout.pause_archive)

    def _import_images(self) -> Deferred[None]:
        ctr, socket = self.programs["ctr"], self.layout.containerd_socket
        sandbox = self.images.import_archive(ctr, socket, self.layout.pause_archive)

        def others(_: object) -> Deferred[Any]:
            self.layout.images_dir.mkdir(mode=0o700, exist_ok=True)
            return self.images.import_folder(ctr, socket, self.layout.images_dir)

        return sandbox.addCallback(others).addCallback(lambda _: None)

    # -- the gates ------------------------------------------------------------------------

    def prepared(self) -> Deferred[None]:
        return self._prepared.when()

    def before_containerd(self) -> Deferred[None]:
        """containerd's files, from the mesh's MTU as it is now."""
        return self._prepared.when().addCallback(lambda _: self._write_containerd_files())

    def _write_containerd_files(self) -> None:
        if self._uplink is not None and host.keep_router_advertisements(self._uplink):
            self.log.info(
                "{interface} keeps taking router advertisements once pods make the node "
                "forward (accept_ra 2)",
                interface=self._uplink,
            )
        settings = containerd.RuntimeSettings(
            layout=self.layout,
            runc=self.programs["runc"],
            shim=self.programs["containerd-shim-runc-v2"],
            cni_dirs=self.cni_dirs,
            sandbox_image=self.images.sandbox_image,
            may_lower_oom_score=self.may_lower_oom_score,
            own_network=self.own_network,
        )
        write_atomically(self.layout.containerd_config, containerd.config(settings))
        if not self.own_network:
            return
        mtu = self.network.mtu
        if mtu is None:
            raise RuntimeSetupError("the mesh has no MTU yet: it is not up")
        try:
            if host.prepare_pod_bridge(containerd.POD_BRIDGE, mtu):
                self.log.info(
                    "Pods' bridge {bridge} made, without duplicate address detection",
                    bridge=containerd.POD_BRIDGE,
                )
        except (HostError, OSError) as error:
            raise RuntimeSetupError(f"the node's pod network cannot start: {error}") from None
        write_atomically(self.layout.cni_template, containerd.cni_template(self.layout, mtu))

    def before_kubelet(self) -> Deferred[Any]:
        """The images imported, the kubelet's files written, the Node registered."""

        def write(_: object) -> Deferred[Any]:
            settings = kubelet.config(
                self.context, str(self.layout.containerd_socket), self.may_lower_oom_score
            )
            write_atomically(self.layout.kubelet_config, kubelet.render(settings))
            write_atomically(self.layout.resolv_conf, kubelet.resolv_conf(self.context.dns))
            return self._register()

        return self._imported.when().addCallback(write)

    def _pods_known(self, prefix: ipaddress.IPv6Network) -> None:
        script = egress.rules(prefix, plan.ula_prefix(self.context.cluster))
        applied = egress.apply(self._reactor, self.programs["nft"], script, self._environ)

        def done(_: object) -> None:
            self.log.info("Pods of {prefix} leave the cluster masqueraded", prefix=str(prefix))

        def failed(failure: Failure) -> None:
            self.log.error("No egress for pods: {error}", error=failure.getErrorMessage())

        applied.addCallbacks(done, failed)

    def stop(self) -> None:
        if self.pods is not None:
            self.pods.stop()

    def before_kube_proxy(self) -> Deferred[None]:
        """Its configuration, with the node's addresses as they are now."""

        def write(_: object) -> None:
            addresses = [plan.mesh_address(self.context.cluster, self.context.name)]
            endpoint = self.network.endpoint
            if endpoint is not None:
                addresses.append(endpoint.host)
            settings = kube_proxy.config(self.context, addresses, self.may_lower_oom_score)
            write_atomically(self.layout.kube_proxy_config, kube_proxy.render(settings))

        return self._prepared.when().addCallback(write)

    def enter_command(self, argv: Sequence[str]) -> tuple[str, ...]:
        """``argv`` run in the runtime's cgroups, through the sweeper's ``enter``."""
        return (str(self.programs["sh"]), str(self.layout.sweeper_script), "enter", *argv)

    def status(self) -> dict[str, Any]:
        prefix = None if self.pods is None else self.pods.prefix
        return {
            "socket": str(self.layout.containerd_socket),
            "ctr": str(self.programs["ctr"]),
            "namespace": CRI_NAMESPACE,
            "cgroup": str(self.layout.cgroup),
            "oom_score_adj_lowered": self.may_lower_oom_score,
            "pod_prefix": None if prefix is None else str(prefix),
        }
