"""The node's own Node object, which its agent makes before the kubelet starts.

A kubelet without a cloud provider reports only its ``--node-ip`` (InternalIP) and its
hostname, and writes them over any other address at each status update.  With
``--cloud-provider=external`` it leaves addresses alone once a Node has some, but it
registers a Node of its own making with a taint that only a cloud controller removes.
So the agent creates the Node first, as the node itself (the kubelet's client
certificate), with its labels and all its addresses: InternalIP the mesh address,
ExternalIP the public address, Hostname the node name.  The kubelet then finds it
existing and adds no taint.  The rationale, with references to the Kubernetes sources,
is in ``docs/nodes.rst``.

:func:`desired_node` and :func:`patches` are pure; :func:`register_node` does the
requests, and retries while the apiserver cannot be reached.
"""

from __future__ import annotations

import http
import ipaddress
from collections.abc import Awaitable, Mapping
from typing import Any, Final, Protocol
from urllib.parse import quote

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from hepto.backoff import BackoffPolicy
from hepto.goarch import go_architecture
from hepto.kube import retry
from hepto.kube.api import JSON, APIError
from hepto.kube.component import ROLE_LABEL

NODES: Final = "/api/v1/nodes"

HOSTNAME_LABEL: Final = "kubernetes.io/hostname"
OS_LABEL: Final = "kubernetes.io/os"
ARCH_LABEL: Final = "kubernetes.io/arch"

INTERNAL_IP: Final = "InternalIP"
EXTERNAL_IP: Final = "ExternalIP"
HOSTNAME: Final = "Hostname"


RETRY: Final = retry.RETRY
#: Another writer (the kubelet, an operator) creating or deleting the Node between our
#: read and our write makes us read again at once, a few times, then back off.
RACES: Final = 3

log = Logger()


@attrs.frozen
class NodeAddress:
    type: str
    address: str

    def as_json(self) -> dict[str, str]:
        return {"type": self.type, "address": self.address}


def _labels(value: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(value.items()))


@attrs.frozen
class DesiredNode:
    """What this node's Node must state: its name, labels and addresses.

    Labels are those the agent owns; others (the kubelet's, an operator's) are left
    alone.  Addresses are the whole list, in order.
    """

    name: str
    labels: tuple[tuple[str, str], ...] = attrs.field(converter=_labels)
    addresses: tuple[NodeAddress, ...]

    @property
    def path(self) -> str:
        return f"{NODES}/{quote(self.name, safe='')}"

    def manifest(self) -> JSON:
        """The Node to create; the apiserver keeps a status given at creation."""
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": self.name, "labels": dict(self.labels)},
            "status": {"addresses": [address.as_json() for address in self.addresses]},
        }


def desired_node(
    name: str,
    role: str,
    mesh_address: ipaddress.IPv6Address,
    public_address: ipaddress.IPv6Address | None,
    machine: str | None = None,
) -> DesiredNode:
    """The Node of node ``name``; without a known public address, no ExternalIP."""
    labels = {
        ROLE_LABEL: role,
        HOSTNAME_LABEL: name,
        OS_LABEL: "linux",
        ARCH_LABEL: go_architecture(machine),
    }
    addresses = [NodeAddress(INTERNAL_IP, str(mesh_address))]
    if public_address is not None:
        addresses.append(NodeAddress(EXTERNAL_IP, str(public_address)))
    addresses.append(NodeAddress(HOSTNAME, name))
    return DesiredNode(name, labels, tuple(addresses))


@attrs.frozen
class Patch:
    """A merge patch of the Node (``subresource`` ``""``) or of its status."""

    what: str
    subresource: str
    body: JSON

    def path(self, node: DesiredNode) -> str:
        return f"{node.path}/{self.subresource}" if self.subresource else node.path


def patches(existing: Mapping[str, Any], desired: DesiredNode) -> list[Patch]:
    """The merge patches that make ``existing`` state ``desired``; none when it does.

    Labels go to the Node itself and only those that differ are sent.  Addresses go to
    its status subresource (the Node's own endpoint ignores status), as the whole list:
    a merge patch replaces a list whole.
    """
    needed = []
    labels = (existing.get("metadata") or {}).get("labels") or {}
    changed = {key: value for key, value in desired.labels if labels.get(key) != value}
    if changed:
        needed.append(Patch("labels", "", {"metadata": {"labels": changed}}))
    addresses = (existing.get("status") or {}).get("addresses") or []
    wanted = [address.as_json() for address in desired.addresses]
    if addresses != wanted:
        needed.append(Patch("addresses", "status", {"status": {"addresses": wanted}}))
    return needed


class NodeAPI(Protocol):
    """What registration needs of an apiserver client (:class:`hepto.kube.api.APIClient`)."""

    def get(self, path: str) -> Deferred[JSON]: ...

    def create(self, path: str, body: Mapping[str, Any]) -> Deferred[JSON]: ...

    def merge_patch(self, path: str, patch: Mapping[str, Any]) -> Deferred[JSON]: ...


class RegistrationFailed(Exception):
    """The apiserver refused the Node in a way that asking again cannot change."""

    def __init__(self, node: str, error: APIError) -> None:
        super().__init__(f"node {node} cannot be registered: {error}")
        self.node = node
        self.error = error


class Raced(Exception):
    """The Node kept appearing or vanishing between our read and our write."""


def register_node(
    client: NodeAPI,
    node: DesiredNode,
    *,
    clock: IReactorTime,
    policy: BackoffPolicy = RETRY,
) -> Deferred[None]:
    """Makes the Node state ``node``: creates it, or patches what differs.

    Tries again, after ``policy``'s delays, while the apiserver cannot be reached or
    answers 5xx or 429, logging each new reason once.  Fails with
    :class:`RegistrationFailed` on another error status (a 403 from NodeRestriction, for
    one).  Cancelling the Deferred stops at once, in a request or between attempts.
    """
    return Deferred.fromCoroutine(_register(client, node, clock, policy))


async def _register(
    client: NodeAPI, node: DesiredNode, clock: IReactorTime, policy: BackoffPolicy
) -> None:
    attempts = 0

    def attempt() -> Awaitable[str]:
        nonlocal attempts
        attempts += 1
        return _reconcile(client, node)

    try:
        done = await retry.until_done(
            attempt,
            what=f"Node {node.name} not registered yet",
            clock=clock,
            policy=policy,
            transient=(*retry.TRANSIENT, Raced),
        )
    except APIError as error:
        raise RegistrationFailed(node.name, error) from error
    log.info(
        "Node {node} registered ({done}): {addresses}",
        node=node.name,
        done=done,
        addresses=", ".join(f"{a.type} {a.address}" for a in node.addresses),
        attempts=attempts,
    )


async def _reconcile(client: NodeAPI, node: DesiredNode) -> str:
    """One pass: read the Node, then create it or patch it; what was done."""
    for _ in range(RACES):
        try:
            existing = await client.get(node.path)
        except APIError as error:
            if error.status != http.HTTPStatus.NOT_FOUND:
                raise
            try:
                await client.create(NODES, node.manifest())
            except APIError as refused:
                if refused.status == http.HTTPStatus.CONFLICT:
                    continue  # created meanwhile, by its kubelet: read it and patch it
                raise
            return "created"
        needed = patches(existing, node)
        try:
            for patch in needed:
                await client.merge_patch(patch.path(node), patch.body)
        except APIError as error:
            if error.status == http.HTTPStatus.NOT_FOUND:
                continue  # deleted meanwhile: create it again
            raise
        if not needed:
            return "unchanged"
        return " and ".join(patch.what for patch in needed) + " updated"
    raise Raced(f"the Node changed under {RACES} attempts in a row")
