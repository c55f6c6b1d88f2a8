"""The mesh as it should be, from membership alone, and the changes that get a device there.

Pure functions of plain values: no reactor, no I/O.  :func:`desired_mesh` turns the
members into peers and routes; :func:`plan_peer_changes` compares them with what a device
actually has and returns the fewest changes, none when nothing differs.
"""

from __future__ import annotations

import bisect
import functools
import ipaddress
from collections.abc import Collection, Mapping, MutableMapping, Sequence
from typing import Final, TypeVar

import attrs

from hepto import plan
from hepto.config import Endpoint
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
from hepto.state import Change, Member, Record

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


@attrs.frozen
class _Span:
    """A network and the integers that overlap tests compare, worked out once."""

    network: IPNetwork
    version: int
    length: int
    first: int
    last: int

    @classmethod
    def of(cls, network: IPNetwork) -> _Span:
        return cls(
            network,
            network.version,
            network.prefixlen,
            int(network.network_address),
            int(network.broadcast_address),
        )


@attrs.define
class _Candidate:
    """What a pass takes of one record, the same at every pass until a new version.

    ``problem`` is set when the record gives no peer at all; ``pod_problem`` when its pod
    prefix is unusable (the peer stands without it).  ``last`` is the peer the last pass
    made of it, and what it was made from: the same peer is the same object, which the
    comparison of a pass's result with the last one's passes over at once.
    """

    record: object
    problem: Problem | None = None
    public_key: str = ""
    endpoint: Endpoint | None = None
    mesh: _Span | None = None
    says_master: bool = False
    pod: _Span | None = None
    pod_prefix: ipaddress.IPv6Network | None = None
    pod_problem: Problem | None = None
    last: tuple[tuple[tuple[_Span, ...], int], PeerSpec] | None = None


#: Per member name, what the last passes took of its record (see :func:`desired_mesh`).
Candidates = MutableMapping[str, _Candidate]


def _candidate(cluster: str, name: str, member_record: Record) -> _Candidate | None:
    value = member_record.get(record.WIREGUARD)
    if value is None:
        return None  # Not meshed yet: its mesh service has not started.
    try:
        public_key, endpoint = record.parse_wireguard(value)
    except RecordError as error:
        return _Candidate(member_record, Problem(name, "bad_wireguard", str(error)))
    identity = member_record.identity
    if identity is not None and public_key != bound_public_key(identity):
        # A key that is not the author's own: it would take its owner's peer.
        return _Candidate(
            member_record, Problem(name, "foreign_key", "not the WireGuard key of its identity")
        )
    pod_prefix, pod_problem = None, None
    pod_value = member_record.get(record.POD_PREFIX)
    if pod_value is not None:
        try:
            pod_prefix = record.parse_pod_prefix(cluster, pod_value)
        except RecordError as error:
            pod_problem = Problem(name, "bad_pod_prefix", str(error))
    return _Candidate(
        member_record,
        public_key=public_key,
        endpoint=endpoint,
        mesh=_Span.of(host_network(plan.mesh_address(cluster, name))),
        says_master=member_record.get(record.ROLE) in record.MASTER_ROLES,
        pod=None if pod_prefix is None else _Span.of(pod_prefix),
        pod_prefix=pod_prefix,
        pod_problem=pod_problem,
    )


def desired_mesh(
    cluster: str,
    own_name: str,
    is_master: bool,
    own_public_key: str,
    members: Mapping[str, Member],
    keepalive: int = DEFAULT_KEEPALIVE,
    masters: Collection[str] | None = None,
    unprompted: Collection[str] = frozenset(),
    candidates: Candidates | None = None,
) -> Desired:
    """Exactly the other reachable members that published a usable ``wireguard`` key.

    Each peer gets ``keepalive``, but those in ``unprompted``, which reach this node
    without its keeping the path open (:mod:`hepto.gossip.reach`): they get none.

    Members are taken in name order, so that when two claim one public key or one
    allowed prefix, every node keeps the same one and reports the other.  ``masters``
    are the members the cluster CA proves masters (:mod:`hepto.pki.mastership`): only
    they get the apiserver's address; None takes every record's word for its role
    (the in-memory clusters of tests, whose records nobody signs).

    ``candidates``, kept by the caller from pass to pass (always for one cluster), saves
    working out again what each record gives: a join changes one member of a hundred,
    and a pass at a hundred took 1.3 ms, two or three times per join on every member.
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
    apiserver = _Span.of(host_network(plan.apiserver_address(cluster)))
    if candidates is None:
        candidates = {}
    owners = {own_public_key: own_name}
    peers: dict[str, PeerSpec] = {}
    problems: set[Problem] = set()
    # The service prefix too: a node's own connection to a ClusterIP needs a route to
    # leave by before kube-proxy's output hook rewrites it into a pod's address.
    routes = {plan.mesh_prefix(cluster), plan.service_prefix(cluster)}
    for name in sorted(members):
        member = members[name]
        member_record = member.record
        if name == own_name or not member.reachable or member_record is None:
            continue
        candidate = candidates.get(name)
        if candidate is None or candidate.record is not member_record:
            candidate = _candidate(cluster, name, member_record)
            if candidate is None:
                candidates.pop(name, None)
                continue
            candidates[name] = candidate
        if candidate.problem is not None:
            problems.add(candidate.problem)
            continue
        public_key = candidate.public_key
        if public_key in owners:
            problems.add(
                Problem(name, "duplicate_key", f"public key already used by {owners[public_key]}")
            )
            continue
        # Distinct by construction (a /128 of its own, the apiserver's, a /64): a list.
        assert candidate.mesh is not None and candidate.endpoint is not None
        wanted = [candidate.mesh]
        if candidate.says_master:
            if masters is None or name in masters:
                wanted.append(apiserver)
            else:
                problems.add(
                    Problem(name, "unproven_master", "says it is a master; the cluster CA does not")
                )
        if candidate.pod_problem is not None:
            problems.add(candidate.pod_problem)
        elif candidate.pod is not None:
            wanted.append(candidate.pod)
        allowed_spans: list[_Span] = []
        for span in sorted(wanted, key=_span_order) if len(wanted) > 1 else wanted:
            holder = claimed.overlapping_span(span)
            if holder is not None:
                problems.add(Problem(name, "overlap", f"{span.network} overlaps {holder}'s"))
                continue
            claimed.add_span(span, name)
            allowed_spans.append(span)
        owners[public_key] = name
        made_of = (tuple(allowed_spans), 0 if name in unprompted else keepalive)
        if candidate.last is not None and candidate.last[0] == made_of:
            spec = candidate.last[1]
        else:
            spec = PeerSpec(
                name,
                public_key,
                candidate.endpoint,
                frozenset(span.network for span in allowed_spans),
                made_of[1],
            )
            candidate.last = (made_of, spec)
        peers[public_key] = spec
        if candidate.pod_prefix is not None and candidate.pod in allowed_spans:
            routes.add(candidate.pod_prefix)
    for name in candidates.keys() - members.keys():
        del candidates[name]
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


def _span_order(span: _Span) -> tuple[int, int, int]:
    return (span.version, span.first, span.length)


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
        self.add_span(_Span.of(network), holder)

    def overlapping(self, network: IPNetwork) -> str | None:
        """Who holds a network overlapping ``network``, if anyone."""
        return self.overlapping_span(_Span.of(network))

    def add_span(self, span: _Span, holder: str) -> None:
        key = (span.version, span.length)
        claims = self._lengths.get(key)
        if claims is None:
            claims = self._lengths[key] = ([], {})
            bisect.insort(self._order, key)
        starts, holders = claims
        if span.first not in holders:
            bisect.insort(starts, span.first)
        holders[span.first] = holder

    def overlapping_span(self, span: _Span) -> str | None:
        first, max_length = span.first, 32 if span.version == 4 else 128
        for key in self._order:
            version, length = key
            if version != span.version:
                continue
            starts, holders = self._lengths[key]
            if length <= span.length:
                host_bits = max_length - length
                holder = holders.get(first >> host_bits << host_bits)
                if holder is not None:
                    return holder
            else:
                index = bisect.bisect_left(starts, first)
                if index < len(starts) and starts[index] <= span.last:
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


#: What a link carries: routes (networks) and addresses (with their prefix length).
Carried = TypeVar("Carried", ipaddress.IPv6Network, ipaddress.IPv6Interface)


def plan_set(
    actual: frozenset[Carried], desired: frozenset[Carried]
) -> tuple[list[Carried], list[Carried]]:
    """(to add, to remove), each sorted, for routes or addresses."""
    return sorted(desired - actual), sorted(actual - desired)
