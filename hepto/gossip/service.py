"""The gossip service: Membership, the record store and the transport, on the reactor.

:class:`GossipService` builds everything from a :class:`~hepto.config.NodeConfig`:
it loads (or makes) the identity and the saved state, joins through the anchors (and
the members it knew before a restart) by TCP push/pull, retrying with exponential
backoff while none answers, then exchanges full state with a random member every
push/pull interval and tries to reconnect to dead members and anchors, so that a healed
partition merges again.  Stopping it announces a graceful leave first.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from hepto.backoff import Backoff, BackoffPolicy
from hepto.config import Endpoint, NodeConfig
from hepto.control import RequestError
from hepto.errors import StartupError
from hepto.gossip.crypto import Drops, Keyring
from hepto.gossip.identity import IDENTITY_FILE, Identity, Pins, load_or_create
from hepto.gossip.knocks import Knocks
from hepto.gossip.persistence import STATE_FILE, KnownMember, SavedState, StateFile
from hepto.gossip.profile import LAN, Profile
from hepto.gossip.proofs import Notary
from hepto.gossip.reach import Reach
from hepto.gossip.records import RecordError, SignedRecord, open_record
from hepto.gossip.store import RecordStore
from hepto.gossip.streams import (
    RECORDS_REPLY,
    Fetch,
    FetchRecords,
    PeerState,
    PushPull,
    Record,
    Records,
    StreamAck,
    StreamMessage,
    StreamPing,
)
from hepto.gossip.swim import Membership
from hepto.gossip.table import MemberState
from hepto.gossip.transport import GossipTransport
from hepto.interfaces import IF_INET6, public_address
from hepto.once import Once
from hepto.state import ALIVE, DEAD, Change

#: Retries of a join nobody answered, from one second doubling up to a minute: a cluster
#: whose anchors boot later is joined within a minute of them, without hammering them.
JOIN_RETRY: Final = BackoffPolicy(initial=1.0, maximum=60.0)
#: Members tried at once when joining, besides the anchors: enough to find one alive
#: after a restart, few enough not to flood.
JOIN_KNOWN_MEMBERS: Final = 3
#: Record keys the ``publish`` control command may set.
OPERATOR_KEY_PREFIX: Final = "x-"
#: Seconds a burst of membership changes waits before the saved state is rewritten.
SAVE_DELAY: Final = 5.0


class GossipError(StartupError):
    """Gossip cannot start; the message says why."""


def gossip_endpoint(config: NodeConfig, if_inet6: Path = IF_INET6) -> Endpoint:
    """Where this node gossips: its ``--ip``, else the public address of ``--iface``."""
    if config.ip is not None:
        return Endpoint(config.ip.ip, config.port)
    assert config.iface is not None  # NodeConfig wants one of them
    address = public_address(config.iface, if_inet6)
    if address is None:
        raise GossipError(f"--iface {config.iface} has no usable global IPv6 address to gossip on")
    return Endpoint(address, config.port)


class GossipService(Service):
    """This node's membership and replicated state; ``state`` is the ClusterState."""

    log = Logger(namespace="hepto.gossip")

    def __init__(
        self,
        config: NodeConfig,
        reactor: Any,
        identity: Identity,
        saved: SavedState,
        address: Endpoint,
        profile: Profile = LAN,
        rng: random.Random | None = None,
    ) -> None:
        """Gossip of ``identity`` on ``address``, resuming ``saved``; no I/O before start."""
        super().__init__()
        self.setName("gossip")
        self.config = config
        self.reactor = reactor
        self.profile = profile
        self.rng = rng or random.SystemRandom()
        self.address = address
        self.identity = identity
        self.state_file = StateFile(config.node_dir / STATE_FILE)
        self._known = saved.members
        self.drops = Drops(reactor)
        self.keyring = Keyring.from_cluster_keys(
            config.keyring, config.cluster, reactor, self.drops
        )
        self.transport = GossipTransport(reactor, self.keyring, self.address)
        pins = Pins.from_mapping(saved.pins)
        # A restart comes back with a higher incarnation, so that nobody takes the news
        # of our death (or leave) before it for news about us now.
        self.membership = Membership(
            config.name,
            self.address,
            config.role,
            reactor,
            self.transport,
            profile,
            random.Random(self.rng.getrandbits(64)),
            incarnation=saved.incarnation + 1,
            notary=Notary(config.cluster, config.name, self.identity, pins.get),
        )
        self.store = RecordStore.create(
            cluster=config.cluster,
            name=config.name,
            identity=self.identity,
            data={"role": config.role, "gossip": str(self.address)},
            previous=self._previous_record(saved),
            membership=self.membership,
            fetch=self.transport.fetch,
            fetch_many=self.transport.fetch_many,
            clock=reactor,
            drops=self.drops,
            pins=pins,
            on_own_record=self._own_record_changed,
        )
        self.knocks = Knocks(
            config.name,
            reactor,
            send=self.transport.send,
            send_aside=self.transport.send_aside,
            passing=self.membership.receive,
            count_drop=self.drops.count,
        )
        #: The members that reach this node unprompted: the mesh's keepalives read it.
        self.reach = Reach(
            config.name, reactor, self.knocks.ask, random.Random(self.rng.getrandbits(64))
        )
        self.transport.receiver = self.knocks.receive
        self.transport.responder = self
        self.membership.on_reap = self._reaped
        self.joined = False
        self._joined_once: Once[None] = Once()
        self._join_retries = Backoff(JOIN_RETRY)
        self._timers: dict[str, IDelayedCall] = {}
        self._saved_incarnation = saved.incarnation
        self._stopping = False

    @classmethod
    def from_config(
        cls,
        config: NodeConfig,
        reactor: Any,
        profile: Profile = LAN,
        rng: random.Random | None = None,
        address: Endpoint | None = None,
    ) -> GossipService:
        """Gossip as the node's directory and interface have it: reads (and on a first
        start makes) the identity, reads the saved state, finds the address if not given.

        Call it when the node starts, not when it is configured.
        """
        node_dir = config.node_dir
        return cls(
            config,
            reactor,
            identity=load_or_create(node_dir / IDENTITY_FILE),
            saved=StateFile(node_dir / STATE_FILE).load(),
            address=address or gossip_endpoint(config),
            profile=profile,
            rng=rng,
        )

    @property
    def state(self) -> RecordStore:
        """The :class:`hepto.state.ClusterState` of this node."""
        return self.store

    def _previous_record(self, saved: SavedState) -> SignedRecord | None:
        if saved.record is None:
            return None
        try:
            record = open_record(saved.record, self.config.cluster)
        except RecordError as error:
            self.log.warn("Ignoring the saved record: {error}", error=error)
            return None
        if record.name != self.config.name or record.key != self.identity.public_key:
            self.log.warn("Ignoring a saved record of another name or identity")
            return None
        return record

    # Lifecycle

    def startService(self) -> None:
        self._stopping = False
        self.transport.listen()
        self.store.subscribe(self._state_changed)
        self.membership.subscribe(self._member_changed)
        self.membership.subscribe(self.reach.member_changed)
        # Saves the state, new incarnation included, before anyone hears of either.
        self.store.start()
        self.membership.start()
        super().startService()
        self.log.info(
            "Gossip of {name} on {address}: incarnation {incarnation}, record version "
            "{version}, identity {identity}",
            name=self.config.name,
            address=self.address,
            incarnation=self.membership.incarnation,
            version=self.store.own.version,
            identity=self.identity.public_key.hex(),
        )
        self._join()

    def stopService(self) -> Deferred[None]:
        was_running = self.running
        self._stopping = True
        for timer in self._timers.values():
            if timer.active():
                timer.cancel()
        self._timers.clear()
        if not was_running:
            return succeed(None)
        leaving = self.membership.leave()

        def shut() -> Deferred[Any]:
            self.reach.stop()
            self.knocks.stop()
            self.membership.stop()
            self.store.stop()
            self._save()
            return self.transport.stop()

        def stopped(_: object) -> None:
            Service.stopService(self)

        # The leave fires from inside Membership (once its last send went out): stop it
        # from a fresh reactor turn, never re-entering it.
        return leaving.addBoth(lambda _: deferLater(self.reactor, 0, shut)).addBoth(stopped)

    # Joining and anti-entropy

    def _join_candidates(self) -> list[Endpoint]:
        candidates = list(self.config.anchors)
        known = [member.address for member in self._known if member.name != self.config.name]
        self.rng.shuffle(known)
        candidates += known[:JOIN_KNOWN_MEMBERS]
        unique = dict.fromkeys(candidate for candidate in candidates if candidate != self.address)
        return list(unique)

    def _join(self) -> None:
        self._timers.pop("join", None)
        if self._others_reachable():
            self._joined("others reached us first")
            return
        candidates = self._join_candidates()
        if not candidates:
            self._joined("first member: no anchor to join")
            return
        attempts = [self._exchange(candidate, join=True) for candidate in candidates]
        DeferredList(attempts, fireOnOneCallback=True, consumeErrors=True).addCallback(
            self._join_answered, candidates
        )

    def _join_answered(self, result: Any, candidates: Sequence[Endpoint]) -> None:
        if not self.running:
            return
        if isinstance(result, tuple):  # fireOnOneCallback: (result, index)
            self._joined(f"through {candidates[result[1]]}")
            return
        # Spread, so that the members of a cluster that boots at once do not join in step.
        delay = self._join_retries.failed() * self.rng.uniform(0.75, 1.25)
        self.log.warn(
            "No anchor answered ({candidates}); retrying in {delay:.1f} s",
            candidates=", ".join(map(str, candidates)),
            delay=delay,
        )
        self._schedule("join", delay, self._join)

    def when_joined(self) -> Deferred[None]:
        """Fires once this member has joined its cluster (at once if it has)."""
        return self._joined_once.when()

    def _joined(self, how: str) -> None:
        if not self.joined:
            self.joined = True
            self._joined_once.fire(None)
            self._join_retries.reset()
            self.log.info(
                "Joined the cluster {cluster} ({how})", cluster=self.config.cluster, how=how
            )
        self._schedule("push-pull", self._push_pull_delay(), self._push_pull)
        self._schedule("reconnect", self._reconnect_delay(), self._reconnect)

    def _push_pull_delay(self) -> float:
        # Stretched in large clusters, and early while exchanges still bring news (joins).
        return self.membership.push_pull_interval() * self.rng.uniform(0.9, 1.1)

    def _reconnect_delay(self) -> float:
        # Dead members and anchors are retried three times per push/pull interval, so
        # that two halves of a healed partition find each other within seconds.
        return self.profile.push_pull_interval / 3 * self.rng.uniform(0.9, 1.1)

    def _push_pull(self) -> None:
        peer = self.membership.push_pull_target()
        if peer is None or peer.name == self.config.name:
            self._schedule("push-pull", self._push_pull_delay(), self._push_pull)
            return
        exchanged = self._exchange(peer.address, join=False)
        exchanged.addErrback(self._exchange_failed, peer.address)
        # The next one is timed once this one is merged: its news decides how soon.
        exchanged.addCallback(
            lambda _: self._schedule("push-pull", self._push_pull_delay(), self._push_pull)
        )

    def _reconnect(self) -> None:
        """Try a dead member or an anchor not known alive: how partitions heal."""
        self._schedule("reconnect", self._reconnect_delay(), self._reconnect)
        alive = {state.address for state in self.membership.members().values() if state.reachable}
        candidates = [
            state.address
            for state in self.membership.members().values()
            if state.status == DEAD and state.name != self.config.name
        ]
        candidates += [anchor for anchor in self.config.anchors if anchor not in alive]
        candidates = [c for c in candidates if c != self.address]
        if candidates:
            target = self.rng.choice(candidates)
            self._exchange(target, join=False).addErrback(self._exchange_failed, target)

    def _exchange_failed(self, failure: Failure, peer: Endpoint) -> None:
        self.log.debug(
            "Push/pull with {peer} failed: {error}", peer=peer, error=failure.getErrorMessage()
        )

    def _exchange(self, peer: Endpoint, join: bool) -> Deferred[None]:
        exchanged = self.transport.push_pull(peer, self._local_state(join))
        return exchanged.addCallback(self._merge, catching_up=join)

    def _local_state(self, join: bool) -> PushPull:
        return PushPull(
            sender=self.config.name,
            join=join,
            members=tuple(
                PeerState(s.name, s.address, s.role, s.incarnation, s.status, s.proof)
                for s in self.membership.local_state()
            ),
            digests=tuple(sorted(self.store.digests().items())),
        )

    def _merge(self, remote: PushPull, catching_up: bool = False) -> None:
        now = self.reactor.seconds()
        self.membership.merge_state(
            [
                MemberState(p.name, p.address, p.role, p.incarnation, p.status, now, p.proof)
                for p in remote.members
            ]
        )
        holder = next((p.address for p in remote.members if p.name == remote.sender), None)
        if holder is None:
            return
        owners = {p.name: p.address for p in remote.members if p.status == ALIVE}
        self.store.want_from(holder, remote.digests, owners, advertise=not catching_up)

    def respond(
        self, request: StreamMessage, peer: Endpoint
    ) -> StreamMessage | Deferred[StreamMessage] | None:
        """Answer a stream: the Responder of :class:`GossipTransport`."""
        if isinstance(request, PushPull):
            if request.join:
                self.log.info("{member} joins through us", member=request.sender)
            self._merge(request)
            return self._local_state(join=False)
        if isinstance(request, Fetch):
            name = request.name
            fetching = self.store.until_fetched(name)
            if fetching is None:
                return Record(self.store.record_blob(name))
            return fetching.addCallback(lambda _: Record(self.store.record_blob(name)))
        if isinstance(request, FetchRecords):
            names = request.names
            own = self.store.until_fetched(self.config.name) if self.config.name in names else None
            if own is None:
                return Records(tuple(self.store.record_blobs(names, RECORDS_REPLY)))
            return own.addCallback(
                lambda _: Records(tuple(self.store.record_blobs(names, RECORDS_REPLY)))
            )
        if isinstance(request, StreamPing):
            return StreamAck(request.ping.target == self.config.name)
        return None

    def _others_reachable(self) -> bool:
        return any(
            state.reachable and state.name != self.config.name
            for state in self.membership.members().values()
        )

    def _schedule(self, name: str, delay: float, call: Any) -> None:
        if not self.running or self._stopping:
            return
        timer = self._timers.get(name)
        if timer is not None and timer.active():
            timer.cancel()
        self._timers[name] = self.reactor.callLater(delay, call)

    # Persistence

    def _own_record_changed(self, record: SignedRecord) -> None:
        # Synchronously: a record announced but not saved could reuse its version after
        # a crash, and others would ignore the new one.
        self._save(record)

    def _member_changed(self, old: MemberState | None, new: MemberState) -> None:
        if new.name == self.config.name:
            if new.incarnation > self._saved_incarnation:
                self._save()
        elif old is None or (old.address, old.role) != (new.address, new.role):
            # Only what is saved of others: under loss, suspicions come and go by the
            # thousand and each rewrite of the file costs two fsyncs.
            self._save_soon()

    def _save_soon(self) -> None:
        """Save within SAVE_DELAY: later changes ride on the save already planned."""
        if "save" not in self._timers or not self._timers["save"].active():
            self._schedule("save", SAVE_DELAY, self._save)

    def _state_changed(self, change: Change) -> None:
        if self.store.pins.changed:
            self._schedule("save", SAVE_DELAY, self._save)
        if change.name != self.config.name and change.new is not None:
            # Its record is in: the identity that signed it is pinned to its name.
            self.membership.identity_pinned(change.name)

    def _reaped(self, state: MemberState) -> None:
        self.store.forget(state.name)

    def _save(self, record: SignedRecord | None = None) -> None:
        pending = self._timers.pop("save", None)
        if pending is not None and pending.active():
            pending.cancel()
        members = tuple(
            KnownMember(state.name, state.address, state.role)
            for state in self.membership.members().values()
            if state.name != self.config.name
        )
        saved = SavedState(
            incarnation=self.membership.incarnation,
            record=(record or self.store.own).blob,
            members=members or self._known,
            pins=self.store.pins.as_mapping(),
        )
        try:
            self.state_file.save(saved)
        except OSError as error:
            self.log.error(
                "Cannot save the gossip state to {path}: {error}",
                path=self.state_file.path,
                error=error,
            )
            return
        self.store.pins.changed = False
        self._saved_incarnation = saved.incarnation

    def hold_own_record(self) -> Callable[[], None]:
        """Make fetches of this member's record wait until the returned callable is
        called (or a few seconds): :meth:`RecordStore.hold_own`."""
        return self.store.hold_own()

    # Control

    def publish_command(self, request: Mapping[str, Any]) -> Mapping[str, Any]:
        """``{"command": "publish", "key": "x-...", "value": ...}``: an operator's annotation.

        Only ``x-`` keys: every other top-level key belongs to one service.
        """
        key, value = request.get("key"), request.get("value")
        if not isinstance(key, str) or not key.startswith(OPERATOR_KEY_PREFIX):
            raise RequestError(f"publish sets keys starting with {OPERATOR_KEY_PREFIX!r} only")
        try:
            self.store.publish(key, value)
        except (TypeError, ValueError) as error:
            raise RequestError(str(error)) from None
        return {"name": self.config.name, "version": self.store.own.version}

    # Status

    def status(self) -> dict[str, Any]:
        """The gossip part of ``hepto status --json`` (see docs/gossip-state.rst)."""
        drops = Counter(self.drops.counts)
        drops.update(self.membership.drops)
        return {
            "name": self.config.name,
            "cluster": self.config.cluster,
            "address": str(self.address),
            "identity": self.identity.public_key.hex(),
            "incarnation": self.membership.incarnation,
            "version": self.store.own.version,
            "joined": self.joined,
            "health": self.membership.health,
            "members": self.store.status(),
            "drops": dict(sorted(drops.items())),
            "conflicts": self.store.conflicts(),
            "swim": {
                "entered": dict(sorted(self.membership.entered.items())),
                "refutations": self.membership.refutations,
            },
            "fetches": dict(sorted(self.store.fetched.items())),
            "traffic": {
                "datagrams_sent": self.transport.sent,
                "datagrams_received": self.transport.received,
                "bytes_sent": self.transport.bytes_sent,
                "bytes_received": self.transport.bytes_received,
            },
        }
