"""The node: one MultiService per host, whose children are hepto's services."""

from __future__ import annotations

import signal
from typing import Any

from twisted.application.service import MultiService
from twisted.internet.interfaces import IReactorCore
from twisted.logger import ILogObserver, Logger
from twisted.python.components import Componentized

from hepto.config import NodeConfig
from hepto.logs import json_lines_observer


class NodeService(MultiService):
    """A hepto node of one role; the services of the later layers are its children.

    The manhole's namespace holds this object as ``node``: every part is reachable
    from it by name (``node.getServiceNamed("gossip")``).
    """

    log = Logger()

    def __init__(
        self, config: NodeConfig, reactor: IReactorCore, exit_cleanly_on_signals: bool = False
    ) -> None:
        super().__init__()
        self.config = config
        self.reactor = reactor
        self._exit_cleanly_on_signals = exit_cleanly_on_signals
        self.setName("node")
        if config.manhole is not None:
            from hepto.manhole import manhole_service

            manhole_service(
                reactor, config.manhole, config.node_dir, self.namespace
            ).setServiceParent(self)

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
        super().startService()
        self.reactor.callWhenRunning(self._running)

    def _running(self) -> None:
        if self._exit_cleanly_on_signals:
            # twistd re-raises a stopping signal at exit, so the status would say "killed";
            # a stop the operator asked for is a success, and its status is 0.
            for number in (signal.SIGTERM, signal.SIGINT):
                signal.signal(number, self._stop_on_signal)
        # Logged once signals stop the node cleanly: tests and tools wait for it.
        self.log.info("hepto node {name} running", name=self.config.name)

    def _stop_on_signal(self, number: int, frame: object) -> None:
        self.log.info("Received {signal}, stopping", signal=signal.Signals(number).name)
        self.reactor.callFromThread(self.reactor.stop)  # type: ignore[attr-defined]

    def namespace(self) -> dict[str, Any]:
        """The manhole's names: the node, its configuration and plan, the reactor."""
        return {
            "node": self,
            "config": self.config,
            "plan": self.config.plan,
            "reactor": self.reactor,
            "services": {service.name: service for service in self},
        }

    def stopService(self) -> Any:
        self.log.info("hepto node {name} stopping", name=self.config.name)
        return super().stopService()
