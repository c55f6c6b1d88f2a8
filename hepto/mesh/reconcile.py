"""The mesh as it should be, from membership alone, and the changes that get a device there.

Pure functions of plain values: no reactor, no I/O.  :func:`desired_mesh` turns the
members into peers and routes; :func:`plan_peer_changes` compares them with what a device
actually has and returns the fewest changes, none when nothing differs.
"""

from __future__ import annotations

import bisect
import functools
import ipaddress
from collections.abc import Collection, Mapping, Sequence
from typing import Final

import attrs

from hepto import plan
from hepto.mesh import record
from hepto.mesh.backend import (
    AddPeer,
    DeviceStatus,
    IPNetwork,
    PeerChange,
    PeerSpec,
    PeerStatus,
    RemovePeer,
    UpdatePeer,
)
from hepto.mesh.keys import bound_public_key
from hepto.mesh.record import RecordError
from hepto.state import Change, Member

#: Seconds; below the 30 s that the most impatient common NATs keep a UDP mapping.
DEFAULT_KEEPALIVE: Final = 25
#: IPv6 header 40 + UDP header 8 + WireGuard data header 16 + authentication tag 16.
WIREGUARD_OVERHEAD: Final = 80
#: IPv6's minimum link MTU (RFC 8200): a smaller one would break IPv6 itself.
MINIMUM_MTU: Final = 1280


def mesh_mtu(underlay_mtu: int) -> int:
    return max(MINIMUM_MTU, underlay_mtu - WIREGUARD_OVERHEAD)


@functools.lru_cache(maxsize=plan.ADDRESS_CACHE)
def host_network(address: ipaddress.IPv6Address) -> ipaddress.IPv6Network:
    return ipaddress.IPv6Network((address, 128))


def own_addresses(cluster: str, name: str, is_master: bool) -> frozenset[ipaddress.IPv6Address]:
    """The addresses the mesh interface carries: the node's, and the apiserver's on the master."""
    addresses = {plan.mesh_address(cluster, name)}
    if is_master:
        addresses.add(plan.apiserver_address(cluster))
    return frozenset(addresses)


@attrs.frozen
class Problem:
    """A member whose record the mesh could not use (entirely or in part), and why.

    ``kind`` names the counter of such drops: ``bad_wireguard``, ``bad_pod_prefix``,
    ``foreign_key``, ``duplicate_key``, ``unproven_master`` or ``overlap``.
    """

    member: str
    kind: str
    reason: str


@attrs.frozen
class Desired:
    """Peers by public key, the routes through the mesh interface, and what was left out."""

    peers: Mapping[str, PeerSpec]
    routes: frozenset[ipaddress.IPv6Network]
    problems: frozenset[Problem] = frozenset()


def desired_mesh(
    cluster: str,
    own_name: str,
    is_master: bool,
    own_public_key: str,
    members: Mapping[str, Member],
    keepalive: int = DEFAULT_KEEPALIVE,
    masters: Collection[str] | None = None,
    unprompted: Collection[str] = frozenset(),
) -> Desired:
    """Exactly the other reachable members that published a usable ``wireguard`` key.

    Each peer gets ``keepalive``, but those in ``unprompted``, which reach this node
    without its keeping the path open (:mod:`hepto.gossip.reach`): they get none.

    Members are taken in name order, so that when two claim one public key or one
    allowed prefix, every node keeps the same one and reports the other.  ``masters``
    are the members the cluster CA proves masters (:mod:`hepto.pki.mastership`): only
    they get the apiserver's address; None takes every record's word for its role
    (the in-memory clusters of tests, whose records nobody signs).
    """
    claimed = _Claims()
    for address in own_addresses(cluster, own_name, is_master):
        claimed.add(host_network(address), own_name)
    own = members.get(own_name)
    if own is not None and own.record is not None and own.record.get(record.POD_PREFIX):
        try:
            claimed.add(
                record.parse_pod_prefix(cluster, own.record.get(record.POD_PREFIX)), own_name
            )
        except RecordError:
            pass  # Our own record is not ours to judge here; the allocator logs it.
    owners = {own_public_key: own_name}
    peers: dict[str, PeerSpec] = {}
    problems: set[Problem] = set()
    # The service prefix too: a node's own connection to a ClusterIP needs a route to
    # leave by before kube-proxy's output hook rewrites it into a pod's address.
    routes = {plan.mesh_prefix(cluster), plan.service_prefix(cluster)}
    for name in sorted(members):
        member = members[name]
        if name == own_name or not member.reachable or member.record is None:
            continue
        value = member.record.get(record.WIREGUARD)
        if value is None:
            continue  # Not meshed yet: its mesh service has not started.
        try:
            public_key, endpoint = record.parse_wireguard(value)
        except RecordError as error:
            problems.add(Problem(name, "bad_wireguard", str(error)))
            continue
        identity = member.record.identity
        if identity is not None and public_key != bound_public_key(identity):
            # A key that is not the author's own: it would take its owner's peer.
            problems.add(Problem(name, "foreign_key", "not the WireGuard key of its identity"))
            continue
        if public_key in owners:
            problems.add(
                Problem(name, "duplicate_key", f"public key already used by {owners[public_key]}")
            )
            continue
        # Distinct by construction (a /128 of its own, the apiserver's, a /64): a list.
        wanted: list[IPNetwork] = [host_network(plan.mesh_address(cluster, name))]
        if member.record.get(record.ROLE) in record.MASTER_ROLES:
            if masters is None or name in masters:
                wanted.append(host_network(plan.apiserver_address(cluster)))
            else:
                problems.add(
                    Problem(name, "unproven_master", "says it is a master; the cluster CA does not")
                )
        pod_value = member.record.get(record.POD_PREFIX)
        pod_prefix = None
        if pod_value is not None:
            try:
                pod_prefix = record.parse_pod_prefix(cluster, pod_value)
            except RecordError as error:
                problems.add(Problem(name, "bad_pod_prefix", str(error)))
            else:
                wanted.append(pod_prefix)
        allowed: list[IPNetwork] = []
        for network in sorted(wanted, key=_network_order) if len(wanted) > 1 else wanted:
            holder = claimed.overlapping(network)
            if holder is not None:
                problems.add(Problem(name, "overlap", f"{network} overlaps {holder}'s"))
                continue
            claimed.add(network, name)
            allowed.append(network)
        owners[public_key] = name
        peers[public_key] = PeerSpec(
            name,
            public_key,
            endpoint,
            frozenset(allowed),
            0 if name in unprompted else keepalive,
        )
        if pod_prefix is not None and pod_prefix in allowed:
            routes.add(pod_prefix)
    return Desired(peers, frozenset(routes), frozenset(problems))


def concerns_mesh(change: Change) -> bool:
    """Whether ``change`` can change :func:`desired_mesh`'s answer.

    Most changes cannot: a member suspected or cleared stays reachable, and most record
    changes (certificates, CSRs) touch nothing the mesh reads. Under packet loss, a
    hundred members see thousands of suspicions a minute; working the mesh out again for
    each of them once took most of an agent's CPU.
    """
    return _mesh_view(change.old) != _mesh_view(change.new)


def _mesh_view(member: Member | None) -> object:
    """What :func:`desired_mesh` reads of a member.

    Of a member that is no peer (unreachable, or without a WireGuard key yet: a joiner
    before its mesh is up, whose appearance and first records thus cost no pass), only
    the pod prefix, which it reads of this node's own record.
    """
    if member is None or member.record is None:
        return None
    wireguard = member.record.get(record.WIREGUARD)
    pod_prefix = member.record.get(record.POD_PREFIX)
    if wireguard is None or not member.reachable:
        return pod_prefix
    return (wireguard, member.record.get(record.ROLE), pod_prefix)


def _network_order(network: IPNetwork) -> tuple[object, int]:
    return (network.network_address, network.prefixlen)


class _Claims:
    """Networks claimed so far, and by whom, indexed by prefix length.

    Claimed networks never overlap each other, so a candidate overlaps a claimed network
    either inside one at least as wide (one lookup per such length) or around narrower
    ones (one bisection per such length): a few steps per candidate instead of a scan of
    every claim, which made each pass quadratic in the number of members.
    """

    def __init__(self) -> None:
        self._lengths: dict[tuple[int, int], tuple[list[int], dict[int, str]]] = {}
        #: The keys of ``_lengths`` in order, so that the holder named is always the same.
        self._order: list[tuple[int, int]] = []

    def add(self, network: IPNetwork, holder: str) -> None:
        key = (network.version, network.prefixlen)
        claims = self._lengths.get(key)
        if claims is None:
            claims = self._lengths[key] = ([], {})
            bisect.insort(self._order, key)
        starts, holders = claims
        start = int(network.network_address)
        if start not in holders:
            bisect.insort(starts, start)
        holders[start] = holder

    def overlapping(self, network: IPNetwork) -> str | None:
        """Who holds a network overlapping ``network``, if anyone."""
        first = int(network.network_address)
        for key in self._order:
            version, length = key
            if version != network.version:
                continue
            starts, holders = self._lengths[key]
            if length <= network.prefixlen:
                host_bits = network.max_prefixlen - length
                holder = holders.get(first >> host_bits << host_bits)
                if holder is not None:
                    return holder
            else:
                last = int(network.broadcast_address)
                index = bisect.bisect_left(starts, first)
                if index < len(starts) and starts[index] <= last:
                    return holders[starts[index]]
        return None


def plan_peer_changes(
    desired: Mapping[str, PeerSpec],
    actual: Mapping[str, PeerStatus],
    previous: Mapping[str, PeerSpec],
) -> list[PeerChange]:
    """What turns the device's ``actual`` peers into ``desired``; empty when they agree.

    ``previous`` is what the last pass asked for.  A device moves a peer's endpoint to
    wherever its authenticated packets come from (roaming, how WireGuard crosses NAT):
    writing the advertised endpoint back on every pass would undo that, so the endpoint
    is only set for a new peer, one with none, or when the advertised endpoint changes.
    Removals come first, so that a prefix moving between peers is never held twice.
    """
    changes: list[PeerChange] = [
        RemovePeer(key, previous[key].name if key in previous else None)
        for key in sorted(actual)
        if key not in desired
    ]
    for key, spec in sorted(desired.items(), key=lambda item: item[1].name):
        current = actual.get(key)
        if current is None:
            changes.append(AddPeer(spec))
            continue
        before = previous.get(key)
        if before is not None and before.endpoint == spec.endpoint:
            # Advertised as before: a device's endpoint that differs has roamed (kept),
            # and only a peer left without one gets it back.  Most passes meet only this
            # case, at every peer: formatting each endpoint to compare was half the pass.
            endpoint = current.endpoint is None
        else:
            endpoint = current.endpoint != str(spec.endpoint)
        if (
            endpoint
            or current.allowed_ips != spec.allowed_ips
            or current.keepalive != spec.keepalive
        ):
            changes.append(UpdatePeer(spec, endpoint))
    return changes


def after_changes(device: DeviceStatus, changes: Sequence[PeerChange]) -> DeviceStatus:
    """The device as ``changes`` leave it, without asking it again: a device holds what
    it was told. Handshakes, traffic and a roaming endpoint show at the next read.  An
    update of a peer the device lacks changes nothing (``update_only``)."""
    peers = dict(device.peers)
    for change in changes:
        if isinstance(change, RemovePeer):
            peers.pop(change.public_key, None)
            continue
        spec = change.spec
        current = peers.get(spec.public_key)
        if current is None and isinstance(change, UpdatePeer):
            continue
        if current is None:
            peers[spec.public_key] = PeerStatus(
                spec.public_key, str(spec.endpoint), spec.allowed_ips, spec.keepalive
            )
        else:
            moved = isinstance(change, AddPeer) or change.endpoint
            peers[spec.public_key] = attrs.evolve(
                current,
                endpoint=str(spec.endpoint) if moved else current.endpoint,
                allowed_ips=spec.allowed_ips,
                keepalive=spec.keepalive,
            )
    return attrs.evolve(device, peers=peers)


def plan_set(
    actual: frozenset[ipaddress.IPv6Network], desired: frozenset[ipaddress.IPv6Network]
) -> tuple[list[ipaddress.IPv6Network], list[ipaddress.IPv6Network]]:
    """(to add, to remove), each sorted, for routes or addresses."""
    return sorted(desired - actual), sorted(actual - desired)
