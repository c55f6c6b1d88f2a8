"""The addressing plan: every prefix and address of a cluster, derived from names alone.

Nothing here is configured and nothing is stored: any member, and ``hepto info`` on
any machine, derives the same plan from the cluster name (and the node name for the
node's own mesh address).  The rationale is in ``docs/addressing.rst``.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
from typing import Any

import attrs

#: Subnet IDs inside the cluster's ULA /48.
MESH_SUBNET = 0x0100
#: The upper half of the /48: subnets 8000 to ffff, one /64 per node.
POD_SUBNET = 0x8000
SERVICE_SUBNET = 0x0300

#: 15 bits of nodes (32,768): kube-controller-manager allows at most 16 between the
#: cluster's pod prefix and a node's, and a /48 would swallow the mesh and services.
POD_PREFIX_LENGTH = 49
#: The size of the prefix kube-controller-manager hands to each node.
NODE_POD_PREFIX_LENGTH = 64
SERVICE_PREFIX_LENGTH = 112
#: The conventional tenth service address, as kubeadm and k3s use for cluster DNS.
DNS_SERVICE_OFFSET = 10
#: Members' addresses remembered: the mesh asks for every member's at every change of
#: membership (``docs/mesh.rst``, "Reconciling"), and deriving one costs two hashes.
ADDRESS_CACHE = 4096


def _digest(*parts: str) -> bytes:
    """A domain-separated hash of names, so a cluster named like a node never collides."""
    h = hashlib.sha256()
    for part in parts:
        encoded = part.encode("utf-8")
        h.update(len(encoded).to_bytes(2, "big"))
        h.update(encoded)
    return h.digest()


@functools.lru_cache(maxsize=16)
def ula_prefix(cluster: str) -> ipaddress.IPv6Network:
    """RFC 4193 layout: ``fd`` then a 40-bit global ID, here a hash of the cluster name."""
    global_id = int.from_bytes(_digest("hepto/ula", cluster)[:5], "big")
    return ipaddress.IPv6Network(((0xFD << 120) | (global_id << 80), 48))


@functools.lru_cache(maxsize=64)
def _subnet(cluster: str, subnet_id: int, length: int) -> ipaddress.IPv6Network:
    base = int(ula_prefix(cluster).network_address) | (subnet_id << 64)
    return ipaddress.IPv6Network((base, length))


def mesh_prefix(cluster: str) -> ipaddress.IPv6Network:
    return _subnet(cluster, MESH_SUBNET, 64)


def pod_prefix(cluster: str) -> ipaddress.IPv6Network:
    return _subnet(cluster, POD_SUBNET, POD_PREFIX_LENGTH)


def service_prefix(cluster: str) -> ipaddress.IPv6Network:
    return _subnet(cluster, SERVICE_SUBNET, SERVICE_PREFIX_LENGTH)


def _interface_id(*parts: str) -> int:
    """A 64-bit interface ID; never 0 (the subnet-router anycast address of RFC 4291)."""
    value = int.from_bytes(_digest(*parts)[:8], "big")
    return value or 1


def _mesh_host(cluster: str, interface_id: int) -> ipaddress.IPv6Address:
    return ipaddress.IPv6Address(int(mesh_prefix(cluster).network_address) | interface_id)


@functools.lru_cache(maxsize=ADDRESS_CACHE)
def mesh_address(cluster: str, name: str) -> ipaddress.IPv6Address:
    """The node's own address on the mesh, from its name.

    Two names of one cluster that hash to the same address are told apart by gossip,
    which reports the clash (:func:`mesh_address_conflict`), never shares the address.
    """
    return _mesh_host(cluster, _interface_id("hepto/node", cluster, name))


@functools.lru_cache(maxsize=16)
def apiserver_address(cluster: str) -> ipaddress.IPv6Address:
    """The address whichever member is master serves the API on, from the cluster alone."""
    return _mesh_host(cluster, _interface_id("hepto/apiserver", cluster))


def kubernetes_service_address(cluster: str) -> ipaddress.IPv6Address:
    return service_prefix(cluster).network_address + 1


def dns_address(cluster: str) -> ipaddress.IPv6Address:
    return service_prefix(cluster).network_address + DNS_SERVICE_OFFSET


def mesh_address_conflict(cluster: str, first: str, second: str) -> bool:
    """Whether two distinct node names claim one mesh address (or the apiserver's)."""
    if first == second:
        return False
    taken = mesh_address(cluster, first)
    return taken in (mesh_address(cluster, second), apiserver_address(cluster))


@attrs.frozen
class Plan:
    """The addressing plan of one node of one cluster."""

    cluster: str
    name: str | None = None

    @property
    def ula_prefix(self) -> ipaddress.IPv6Network:
        return ula_prefix(self.cluster)

    @property
    def mesh_prefix(self) -> ipaddress.IPv6Network:
        return mesh_prefix(self.cluster)

    @property
    def mesh_address(self) -> ipaddress.IPv6Address | None:
        return None if self.name is None else mesh_address(self.cluster, self.name)

    @property
    def apiserver_address(self) -> ipaddress.IPv6Address:
        return apiserver_address(self.cluster)

    @property
    def pod_prefix(self) -> ipaddress.IPv6Network:
        return pod_prefix(self.cluster)

    @property
    def service_prefix(self) -> ipaddress.IPv6Network:
        return service_prefix(self.cluster)

    @property
    def kubernetes_service_address(self) -> ipaddress.IPv6Address:
        return kubernetes_service_address(self.cluster)

    @property
    def dns_address(self) -> ipaddress.IPv6Address:
        return dns_address(self.cluster)

    def as_dict(self) -> dict[str, Any]:
        """The documented JSON object of ``hepto info --json``; values are strings."""
        return {
            "cluster": self.cluster,
            "name": self.name,
            "ula_prefix": str(self.ula_prefix),
            "mesh_prefix": str(self.mesh_prefix),
            "mesh_address": None if self.mesh_address is None else str(self.mesh_address),
            "apiserver_address": str(self.apiserver_address),
            "pod_prefix": str(self.pod_prefix),
            "node_pod_prefix_length": NODE_POD_PREFIX_LENGTH,
            "service_prefix": str(self.service_prefix),
            "kubernetes_service_address": str(self.kubernetes_service_address),
            "dns_address": str(self.dns_address),
        }
