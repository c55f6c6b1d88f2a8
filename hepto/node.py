"""The node: one MultiService per host, whose children are hepto's services."""

from __future__ import annotations

import gc
import signal
from collections.abc import Generator
from pathlib import Path
from typing import Any

from twisted.application.service import MultiService, Service
from twisted.internet.defer import CancelledError, Deferred, inlineCallbacks, maybeDeferred
from twisted.internet.error import CannotListenError
from twisted.logger import ILogObserver, Logger
from twisted.python.components import Componentized
from twisted.python.failure import Failure

from hepto import datadir, notify
from hepto.backup.service import BackupService, take_in_child
from hepto.backup.store import DIRECTORY as BACKUPS
from hepto.config import NodeConfig
from hepto.control import SOCKET_NAME, ControlService
from hepto.errors import StartupError
from hepto.exitstatus import exit_after_twistd
from hepto.gossip.profile import PROFILES
from hepto.gossip.service import GossipService
from hepto.kube.service import KubeService
from hepto.logs import json_lines_observer
from hepto.mesh.service import MeshService, mesh_service
from hepto.metrics.exposition import render
from hepto.metrics.families import status_families
from hepto.metrics.http import MetricsService
from hepto.metrics.process import process_families
from hepto.pki.service import PKIService


class NodeService(MultiService):
    """A hepto node of one role; the services of the later layers are its children.

    Made, it only holds its configuration: as Twisted's own services do, it does its I/O
    when it starts.  ``privilegedStartService`` (which twistd calls after it has forked
    into the background, before ``startService``) prepares the node's directory, then
    makes the children, which read their keys and state and open their sockets.

    The manhole's namespace holds this object as ``node``: every part is reachable
    from it by name (``node.getServiceNamed("gossip")``).
    """

    log = Logger()
    control: ControlService
    gossip: GossipService
    pki: PKIService
    mesh: MeshService
    kube: KubeService
    backup: BackupService | None = None
    metrics: MetricsService | None = None

    def __init__(
        self,
        config: NodeConfig,
        # Core, time, process, UDP, TCP and UNIX: no single interface says it all.
        reactor: Any,
        owns_process: bool = False,
    ) -> None:
        super().__init__()
        self.config = config
        self.reactor = reactor
        #: Whether the node is the whole process (twistd's): it then sets the process's
        #: signal handlers and its exit status.
        self._owns_process = owns_process
        self._stop_requested = False
        self._prepared = False
        self._readiness: Deferred[None] | None = None
        self.setName("node")

    def privilegedStartService(self) -> None:
        self._prepare()
        super().privilegedStartService()

    def _prepare(self) -> None:
        """The node's directory, then the children; once."""
        if self._prepared:
            return
        try:
            prepare_node_dir(self.config.node_dir)
            self._make_children()
        except StartupError as error:
            # Raised before the reactor runs: twistd would print a traceback and go on.
            raise SystemExit(f"hepto: {error}") from None
        self._prepared = True

    def _make_children(self) -> None:
        config, reactor = self.config, self.reactor
        self.gossip = GossipService.from_config(
            config, reactor, profile=PROFILES[config.gossip_profile]
        )
        self.pki = PKIService.from_config(
            config, self.gossip.state, reactor, identity=self.gossip.identity.public_key
        )
        self.mesh = mesh_service(
            config,
            self.gossip.state,
            reactor,
            self.gossip.identity.signing_key,
            masters=self.pki,
            reach=self.gossip.reach,
        )
        self.kube = KubeService(
            config, self.pki, reactor, network=self.mesh, state=self.gossip.state
        )
        if config.is_master:
            self.backup = BackupService(
                config.node_dir / BACKUPS,
                take_in_child(
                    reactor, config.node_dir, config.cluster, config.name, config.keyring
                ),
                reactor,
                interval=config.backup_interval,
                keep=config.backup_keep,
            )
        self.control = self._control_socket()
        # Children start in this order and stop in the reverse one (stopService below):
        # the control socket and the metrics answer until the end; gossip comes up
        # before the services that read the cluster state, and leaves after them;
        # backups, which need etcd, come last and go first.
        self.control.setServiceParent(self)
        if config.metrics is not None:
            self.metrics = MetricsService(
                reactor, str(config.metrics.host), config.metrics.port, self._scrape
            )
            self.metrics.setServiceParent(self)
        for service in (self.gossip, self.pki, self.mesh, self.kube):
            service.setServiceParent(self)
        if self.backup is not None:
            self.backup.setServiceParent(self)
        if config.manhole is not None:
            from hepto.manhole import manhole_service

            manhole_service(
                reactor, config.manhole, config.node_dir, self.namespace
            ).setServiceParent(self)

    def _control_socket(self) -> ControlService:
        """``hepto status``: gossip's view at the top, every other service's in its section."""
        control = ControlService(self.config.node_dir / SOCKET_NAME, self._core, self.reactor)
        control.sections.update(pki=self.pki.status, mesh=self.mesh.status, kube=self.kube.status)
        if self.backup is not None:
            control.sections["backup"] = self.backup.status
            control.commands["backup"] = self.backup.backup_command
        control.commands["publish"] = self.gossip.publish_command
        return control

    def _core(self) -> dict[str, Any]:
        return {
            **self.gossip.status(),
            "metrics_url": None if self.metrics is None else self.metrics.url,
        }

    def _scrape(self) -> bytes:
        """One scrape: the status's figures (one source for both), the process's own."""
        return render([*status_families(self.control.status()), *process_families()])

    def setServiceParent(self, parent: Any) -> None:
        # twistd asks the Application for an ILogObserver before its --logfile default;
        # a plugin has no other hook to choose the log format.
        if self.config.log_format == "json" and isinstance(parent, Componentized):
            parent.setComponent(ILogObserver, json_lines_observer())
        super().setServiceParent(parent)

    def startService(self) -> None:
        self.log.info(
            "hepto node {name} ({role}) of cluster {cluster}: mesh address {mesh_address}, "
            "apiserver {apiserver_address}, pods {pod_prefix}, services {service_prefix}",
            role=self.config.role,
            **self.config.plan.as_dict(),
        )
        self._prepare()  # if nobody called privilegedStartService, as Twisted's servers allow
        # The PKI's first batch, which runs while the node joins, publishes this member's
        # certificate requests: until it has, whoever fetches our record waits, so that
        # the record every member first holds is the whole one (docs/gossip-state.rst).
        release = self.gossip.hold_own_record()
        self.pki.when_started().addBoth(lambda _: release())
        try:
            super().startService()
        except (StartupError, CannotListenError) as error:
            # Raised before the reactor runs: twistd would print a traceback and go on.
            raise SystemExit(f"hepto: {error}") from None
        self.reactor.callWhenRunning(self._running)

    def _running(self) -> None:
        if self._owns_process:
            # twistd re-raises a stopping signal at exit, so the status would say "killed";
            # a stop the operator asked for is a success, and its status is 0.
            for number in (signal.SIGTERM, signal.SIGINT):
                signal.signal(number, self._stop_on_signal)
            # What the start made (modules, classes, services) lives as long as the
            # process: the collector's full passes stop walking it, each of which took
            # 11 ms of a member's CPU during one join in ten (docs/benchmarks.rst).
            gc.freeze()
        # Logged once signals stop the node cleanly: tests and tools wait for it.
        self.log.info("hepto node {name} running", name=self.config.name)
        # The PKI's start runs while the node runs; a node without it cannot go on.
        self.pki.when_started().addErrback(self._cannot_go_on)
        self._readiness = Deferred.fromCoroutine(self._until_ready())
        self._readiness.addErrback(self._readiness_failed)

    async def _until_ready(self) -> None:
        """Tell systemd READY=1 once the node's services are up, and meanwhile what the
        node waits for (``systemctl status`` shows it): docs/systemd.rst."""
        self._notify("STATUS=joining the cluster")
        await self.gossip.when_joined()
        self._notify("STATUS=waiting for this node's certificates")
        await self.pki.when_installed(self.pki.specs)
        self._notify("STATUS=waiting for the mesh addresses")
        await self.mesh.when_addresses_ready()
        components = ", ".join(component.name for component in self.kube.components)
        if components:
            self._notify(f"STATUS=waiting for {components} to be ready")
        await self.kube.supervisor.when_ready()
        self.log.info("hepto node {name} ready", name=self.config.name)
        self._notify("READY=1\nSTATUS=running")

    def _readiness_failed(self, failure: Any) -> None:
        if not failure.check(CancelledError):  # stopped before ready: nothing to say
            self.log.failure("Waiting for the node to be ready failed", failure)

    def _cannot_go_on(self, failure: Failure) -> None:
        """Stop the node on an error that leaves it nothing to do: like an error found
        before the reactor runs, one sentence and exit status 1 (docs/operations.rst)."""
        if self._stop_requested or not self.running:
            # A stop signal reaches the node's whole process group, its PKI worker too,
            # whose batch then fails: that is the stop, not an error.
            return
        # A StartupError: the PKI has logged and wrapped whatever else went wrong.
        reason = failure.getErrorMessage()
        self.log.critical(
            "hepto node {name} cannot go on: {reason}", name=self.config.name, reason=reason
        )
        if self._owns_process:
            exit_after_twistd(1, f"hepto: {reason}")
        self.reactor.stop()

    def _notify(self, message: str) -> None:
        try:
            notify.send(message)
        except OSError as error:
            self.log.warn(
                "Cannot notify systemd ({message!r}): {error}", message=message, error=error
            )

    def _stop_on_signal(self, number: int, frame: object) -> None:
        self.log.info("Received {signal}, stopping", signal=signal.Signals(number).name)
        self._stop_requested = True
        self.reactor.callFromThread(self.reactor.stop)

    def namespace(self) -> dict[str, Any]:
        """The manhole's names: the node, its configuration and plan, the reactor."""
        return {
            "node": self,
            "config": self.config,
            "plan": self.config.plan,
            "reactor": self.reactor,
            "services": {service.name: service for service in self},
        }

    @inlineCallbacks
    def stopService(self) -> Generator[Deferred[Any], Any, None]:
        """Stop the children one at a time, last started first.

        MultiService would stop them all at once; but Kubernetes components must go
        while the mesh still carries their addresses, and the gossip leave comes last.
        """
        self.log.info("hepto node {name} stopping", name=self.config.name)
        self._notify("STOPPING=1\nSTATUS=stopping")
        readiness, self._readiness = self._readiness, None
        if readiness is not None:
            readiness.cancel()
        Service.stopService(self)
        for child in reversed(list(self)):
            try:
                yield maybeDeferred(child.stopService)
            except Exception:
                self.log.failure("{service} failed to stop", service=child.name)


def prepare_node_dir(path: Path) -> None:
    """Make the node's directory (0700, parents 0755), or refuse one a local user could swap."""
    try:
        datadir.prepare_node_dir(path)
    except datadir.UnsafePath as error:
        raise StartupError(f"--data-dir: {error}") from None
    except OSError as error:
        where = error.filename or path
        raise StartupError(f"--data-dir: cannot create {where}: {error.strerror}") from None
