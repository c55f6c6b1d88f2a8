"""The node: one MultiService per host, whose children are hepto's services."""

from __future__ import annotations

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

    def __init__(self, config: NodeConfig, reactor: IReactorCore) -> None:
        super().__init__()
        self.config = config
        self.reactor = reactor
        self.setName("node")

    def setServiceParent(self, parent: Any) -> None:
        # twistd asks the Application for an ILogObserver before its --logfile default;
        # a plugin has no other hook to choose the log format.
        if self.config.log_format == "json" and isinstance(parent, Componentized):
            parent.setComponent(ILogObserver, json_lines_observer())
        super().setServiceParent(parent)

    def startService(self) -> None:
        plan = self.config.plan
        self.log.info(
            "hepto node {name} ({role}) of cluster {cluster}: mesh address {mesh_address}, "
            "apiserver {apiserver_address}, pods {pod_prefix}, services {service_prefix}",
            name=self.config.name,
            role=self.config.role,
            cluster=self.config.cluster,
            **plan.as_dict() | {"name": self.config.name},
        )
        super().startService()

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
