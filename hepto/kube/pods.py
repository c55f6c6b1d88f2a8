"""This node's pod prefix, in its gossip record, for the mesh to route it.

kube-controller-manager gives each Node a /64 of the cluster's pod prefix; the kubelet
hands it to containerd, which renders the CNI configuration from its template once, and
from then on hands out pod addresses from it.  That file is therefore the truth of where
this node's pods are: the agent watches for it (inotify, no polling), reads the prefix
and publishes it as ``pod_prefix``; every member's mesh then allows and routes it to
this node (:mod:`hepto.mesh.reconcile`).  See ``docs/nodes.rst``.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from hepto.mesh.record import POD_PREFIX, RecordError, parse_pod_prefix
from hepto.state import ClusterState
from hepto.watch import FileWatch

#: The file containerd renders from ``conf_template`` (``internal/cri/server/
#: update_runtime_config.go``, ``cniConfigFileName``).
CNI_FILE: Final = "10-containerd-net.conflist"


class PodPrefixError(Exception):
    """The CNI configuration names no usable pod prefix; ``str()`` says why."""


def pod_prefix_of(text: str, cluster: str) -> ipaddress.IPv6Network:
    """The subnet of the configuration's ``host-local`` range, inside the cluster's."""
    try:
        network = json.loads(text)
        [[first, *_], *_] = network["plugins"][0]["ipam"]["ranges"]
        subnet = first["subnet"]
    except (ValueError, KeyError, IndexError, TypeError):
        raise PodPrefixError("no host-local range in the CNI configuration") from None
    try:
        return parse_pod_prefix(cluster, subnet)
    except RecordError as error:
        raise PodPrefixError(str(error)) from None


class PodPrefixPublisher:
    """Publishes ``pod_prefix`` once containerd has written the node's CNI file."""

    log = Logger()

    def __init__(
        self,
        state: ClusterState,
        cluster: str,
        directory: Path,
        reactor: Any,
        known: Callable[[ipaddress.IPv6Network], object] | None = None,
    ) -> None:
        self._state = state
        self._known = known
        self._cluster = cluster
        self._directory = directory
        self._reactor = reactor
        self._watch: FileWatch | None = None
        self._waiting: Deferred[None] | None = None
        self.prefix: ipaddress.IPv6Network | None = None

    def start(self) -> None:
        self._directory.mkdir(parents=True, exist_ok=True)
        self._watch = FileWatch(self._reactor, self._directory)
        self._waiting = self._watch.appeared(CNI_FILE)
        self._waiting.addCallbacks(self._appeared, self._failed)

    def _appeared(self, _: object) -> None:
        self._waiting = None
        path = self._directory / CNI_FILE
        try:
            prefix = pod_prefix_of(path.read_text(), self._cluster)
        except (OSError, PodPrefixError) as error:
            self.log.error("No pod prefix from {path}: {error}", path=str(path), error=str(error))
            return
        self.prefix = prefix
        self._state.publish(POD_PREFIX, str(prefix))
        self.log.info("Pods of this node are in {prefix}", prefix=str(prefix))
        if self._known is not None:
            self._known(prefix)

    def _failed(self, failure: Failure) -> None:
        if not failure.check(CancelledError):
            self.log.failure("Watching for the CNI configuration failed", failure)

    def stop(self) -> None:
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            waiting.cancel()
        watch, self._watch = self._watch, None
        if watch is not None:
            watch.close()
