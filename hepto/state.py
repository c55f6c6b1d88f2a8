"""What every hepto service knows of the cluster: its members, their records, changes.

Gossip maintains this view; PKI, mesh and Kubernetes services only read it, subscribe
to it and publish into their own member's record.  They depend on :class:`ClusterState`
alone, never on gossip, so each is tested against :class:`MemoryCluster`.

A record's ``data`` is a JSON-compatible mapping whose top-level keys are owned by one
service each (``role``, ``wireguard``, ``pki``, ...): a service publishes only its keys.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, Final, Protocol

import attrs

from hepto.observers import Observers

ALIVE: Final = "alive"
SUSPECT: Final = "suspect"
DEAD: Final = "dead"
LEFT: Final = "left"
STATUSES: Final = (ALIVE, SUSPECT, DEAD, LEFT)


@attrs.frozen
class Record:
    """One member's record; only its owner makes new versions of it."""

    name: str
    version: int
    data: Mapping[str, Any] = attrs.field(factory=dict)
    #: The Ed25519 public key that signed it, pinned to ``name``; None only in the
    #: in-memory clusters of tests, whose records nobody signs.
    identity: bytes | None = None

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)


@attrs.frozen
class Member:
    """A member as this node sees it: its liveness and the newest record it holds."""

    name: str
    status: str
    record: Record | None = None

    @property
    def reachable(self) -> bool:
        """Alive or merely suspected: still a peer until it is declared dead or leaves."""
        return self.status in (ALIVE, SUSPECT)


@attrs.frozen
class Change:
    """A member appeared (``old`` is None), changed, or was forgotten (``new`` is None)."""

    name: str
    old: Member | None
    new: Member | None


Listener = Callable[[Change], None]


class ClusterState(Protocol):
    """The view of the cluster that services read, subscribe to and publish into."""

    @property
    def name(self) -> str:
        """This member's own name."""

    def members(self) -> Mapping[str, Member]:
        """Every known member, this one included, by name."""

    def publish(self, key: str, value: Any) -> None:
        """Set ``key`` of this member's record (``None`` removes it) as a new version."""

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener`` with every later change, on the reactor; returns an unsubscriber."""


@attrs.define
class Notifier:
    """Delivers changes to listeners in order, even when a listener causes more changes.

    A listener that raises is logged and does not stop the others: one service's bug
    must not stall membership.
    """

    _listeners: Observers[[Change]] = attrs.field(factory=lambda: Observers("State listener"))
    _pending: deque[Change] = attrs.field(factory=deque)
    _delivering: bool = False

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        return self._listeners.subscribe(listener)

    def notify(self, change: Change) -> None:
        self._pending.append(change)
        if self._delivering:
            return
        self._delivering = True
        try:
            while self._pending:
                self._listeners.notify(self._pending.popleft())
        finally:
            self._delivering = False


@attrs.define
class MemoryCluster:
    """Several members in one process that see each other's records at once.

    For unit tests of services that react to state: it has no network and no delay.
    """

    _views: dict[str, MemoryState] = attrs.field(factory=dict)

    def join(self, name: str, **data: Any) -> MemoryState:
        view = MemoryState(name, self)
        self._views[name] = view
        record = Record(name, 1, dict(data))
        self._spread(Member(name, ALIVE, record))
        for other in self._views.values():
            if other.name != name:
                view._learn(other._members[other.name])
        return view

    def set_status(self, name: str, status: str) -> None:
        member = self._views[name]._members[name]
        self._spread(attrs.evolve(member, status=status))

    def _spread(self, member: Member) -> None:
        for view in list(self._views.values()):
            view._learn(member)


@attrs.define
class MemoryState:
    """One member's view inside a :class:`MemoryCluster`."""

    _name: str
    _cluster: MemoryCluster
    _members: dict[str, Member] = attrs.field(factory=dict)
    _notifier: Notifier = attrs.field(factory=Notifier)

    @property
    def name(self) -> str:
        return self._name

    def members(self) -> Mapping[str, Member]:
        return dict(self._members)

    def publish(self, key: str, value: Any) -> None:
        own = self._members[self._name]
        assert own.record is not None
        data = dict(own.record.data)
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
        record = Record(self._name, own.record.version + 1, data)
        self._cluster._spread(attrs.evolve(own, record=record))

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        return self._notifier.subscribe(listener)

    def _learn(self, member: Member) -> None:
        old = self._members.get(member.name)
        if old == member:
            return
        # A listener publishing from inside a notification spreads its newer record
        # first; the older one, delivered after it, must not win (as in gossip).
        if (
            old is not None
            and old.record is not None
            and member.record is not None
            and member.record.version < old.record.version
        ):
            return
        self._members[member.name] = member
        self._notifier.notify(Change(member.name, old, member))
