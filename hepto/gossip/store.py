"""The replicated cluster state: Membership's liveness joined with verified records.

:class:`RecordStore` is the :class:`hepto.state.ClusterState` every service consumes.
Records themselves never ride the gossip: a member that hears of a version newer than
the one it holds fetches the record over TCP from whoever advertised it, checks its
signature and the identity pinned to its name, and only then shows it to subscribers.
A digest heard in gossip is fetched alone; the digests of a push/pull are fetched from
its peer all in one stream (a joiner's whole state), and only what that peer did not
deliver is then fetched one by one.  Versions never go backwards.

A member's first record is no news: whoever learns of a member fetches its record, from
the member that told it of the newcomer (in gossip, or in a push/pull), so only records
that replace one held are advertised in turn.  A member asked for a record it is still
fetching answers once its own fetch ends (``docs/gossip-state.rst``, "How records
travel").
"""

from __future__ import annotations

import ipaddress
from collections import Counter, deque
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any, Final, Protocol

import attrs
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from hepto import plan
from hepto.config import Endpoint
from hepto.gossip.crypto import Drops
from hepto.gossip.identity import Identity, Pins
from hepto.gossip.records import (
    MAX_VERSION,
    RecordError,
    SignedRecord,
    open_record,
    sign_record,
)
from hepto.state import ALIVE, SUSPECT, Change, Listener, Member, Notifier
from hepto.waiters import Waiters

# Drop reasons of this layer.
CONFLICT: Final = "conflict"
OUTDATED_RECORD: Final = "outdated-record"
UNEXPECTED_RECORD: Final = "unexpected-record"

IDENTITY_CONFLICT: Final = "identity"
MESH_ADDRESS_CONFLICT: Final = "mesh-address"

Fetcher = Callable[[Endpoint, str], "Deferred[bytes | None]"]
#: Fetches the records of the names given from one holder, in one stream.  The holder
#: may send fewer than asked for: those it does not hold, and those beyond what one of
#: its replies carries.
BatchFetcher = Callable[[Endpoint, Sequence[str]], "Deferred[Sequence[bytes]]"]

#: Seconds a fetch of a record that we are still fetching ourselves waits for ours: a
#: newcomer's record travels down the tree of who told whom, each hop's fetch waiting
#: for the one above it; well within the asker's stream timeout (10 s).
SERVE_WAIT: Final = 3.0


class MembershipView(Protocol):
    """The part of :class:`hepto.gossip.swim.Membership` the store relies on.

    Its member states need ``name``, ``address``, ``role``, ``incarnation`` and ``status``.
    """

    on_digest: Callable[[Any, str, int], None] | None
    on_arrival: Callable[[Any, str], None] | None

    def members(self) -> Mapping[str, Any]: ...
    def subscribe(self, callback: Callable[[Any, Any], None]) -> Any: ...
    def broadcast_digest(self, name: str, version: int) -> None: ...


@attrs.define(eq=False)
class Conflict:
    """Something this node refuses to decide on its own, shown by ``hepto status``."""

    kind: str
    names: tuple[str, ...]
    detail: str
    first_seen: float
    last_seen: float
    count: int = 1

    def as_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "names": list(self.names),
            "detail": self.detail,
            "count": self.count,
            "first_seen": self.first_seen,
            "last_seen": self.last_seen,
        }


@attrs.define(eq=False)
class _Fetch:
    """A record wanted at ``wanted`` or newer, and where it may be had."""

    wanted: int
    candidates: list[Endpoint] = attrs.field(factory=list)
    tried: set[Endpoint] = attrs.field(factory=set)
    running: bool = False

    def offer(self, holder: Endpoint) -> None:
        if holder not in self.tried and holder not in self.candidates:
            self.candidates.append(holder)


@attrs.define(eq=False, kw_only=True)
class RecordStore:
    """This member's record, the verified records of others, and who is alive."""

    cluster: str
    identity: Identity
    membership: MembershipView
    fetch: Fetcher
    fetch_many: BatchFetcher
    clock: IReactorTime
    pins: Pins = attrs.field(factory=Pins)
    drops: Drops
    #: Called with each new own record, before anyone hears of it: to persist it.
    on_own_record: Callable[[SignedRecord], None] = lambda record: None
    _own: SignedRecord
    _records: dict[str, SignedRecord] = attrs.field(factory=dict)
    _states: dict[str, Any] = attrs.field(factory=dict)
    _view: dict[str, Member] = attrs.field(factory=dict)
    _fetches: dict[str, _Fetch] = attrs.field(factory=dict)
    #: Askers of a record that we hold none of yet and are fetching, by name; and of
    #: our own, while it is held (:meth:`hold_own`).
    _waiting: dict[str, Waiters[None]] = attrs.field(factory=dict)
    _own_holds: int = 0
    #: Fetches running at once.  A joiner learns of every record in one push/pull; a
    #: hundred connections at once would help neither it nor the members it asks.
    max_fetches: int = 16
    _running: int = 0
    #: Records fetched, by result (``ok``, ``missing``: the holder had none,
    #: ``failed``), each record of a batch counted; never reset.
    fetched: Counter[str] = attrs.field(factory=Counter)
    _queued: deque[str] = attrs.field(factory=deque)
    _conflicts: dict[tuple[str, tuple[str, ...]], Conflict] = attrs.field(factory=dict)
    _mesh_owners: dict[ipaddress.IPv6Address, str] = attrs.field(factory=dict)
    _notifier: Notifier = attrs.field(factory=Notifier)
    _log: Logger = attrs.field(factory=lambda: Logger(namespace="hepto.gossip.store"))

    @classmethod
    def create(
        cls,
        *,
        cluster: str,
        name: str,
        identity: Identity,
        data: Mapping[str, Any],
        previous: SignedRecord | None = None,
        **kwargs: Any,
    ) -> RecordStore:
        """A store whose own record follows ``previous`` (the one saved), with ``data`` on top."""
        version = 1 if previous is None else previous.version + 1
        merged = {**(previous.data if previous else {}), **data}
        own = sign_record(identity, cluster, name, version, merged)
        return cls(cluster=cluster, identity=identity, own=own, **kwargs)

    # ClusterState

    @property
    def name(self) -> str:
        return self._own.name

    def members(self) -> Mapping[str, Member]:
        return dict(self._view)

    def publish(self, key: str, value: Any) -> None:
        data = dict(self._own.data)
        if value is None:
            if key not in data:
                return
            del data[key]
        else:
            data[key] = value
        new = sign_record(self.identity, self.cluster, self.name, self._own.version + 1, data)
        if new.data == self._own.data:
            return  # A republished equal value costs no version and no traffic.
        self._replace_own(new)

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        return self._notifier.subscribe(listener)

    # Wiring

    @property
    def own(self) -> SignedRecord:
        return self._own

    def start(self) -> None:
        """Listen to Membership, then announce our record."""
        self.membership.on_digest = self._digest_heard
        self.membership.on_arrival = self._arrival_heard
        self.membership.subscribe(self._member_changed)
        self._check_mesh_address(self.name)
        for state in list(self.membership.members().values()):
            self._member_changed(None, state)
        self._refresh(self.name)
        self.on_own_record(self._own)
        self.membership.broadcast_digest(self.name, self._own.version)

    def record_blob(self, name: str) -> bytes | None:
        """The wire form of the record held for ``name``: what a fetch is answered with."""
        held = self._own if name == self.name else self._records.get(name)
        return None if held is None else held.blob

    def digests(self) -> dict[str, int]:
        """Every record held, by name and version: our side of a push/pull."""
        held = {name: record.version for name, record in self._records.items()}
        held[self.name] = self._own.version
        return held

    def stop(self) -> None:
        """Answer whoever waits for a record we are fetching with what we hold."""
        for name in list(self._waiting):
            self._release(name)

    def forget(self, name: str) -> None:
        """Membership dropped ``name`` for good: so do we (its pin stays)."""
        self._states.pop(name, None)
        self._records.pop(name, None)
        self._fetches.pop(name, None)
        self._refresh(name)
        self._release(name)

    def until_fetched(self, name: str) -> Deferred[None] | None:
        """While we fetch the record of ``name`` and hold none, or while our own is held
        (:meth:`hold_own`): a Deferred that fires once we hold it or give up, or once our
        own is released, at the latest in ``SERVE_WAIT`` seconds; else None.

        What answers a fetch of a record we are fetching ourselves: a newcomer's
        record is asked of whoever told of the newcomer, often before it holds it.
        """
        if name == self.name:
            if not self._own_holds:
                return None
        elif name in self._records or name not in self._fetches:
            return None
        waiter = self._waiting.setdefault(name, Waiters()).wait()
        # Cancelled at the timeout, so forgotten by the waiters; answered all the same.
        waiter.addTimeout(SERVE_WAIT, self.clock, onTimeoutCancel=lambda result, timeout: None)
        return waiter

    def hold_own(self) -> Callable[[], None]:
        """Until the returned callable is called, a fetch of our own record waits for it
        (at most ``SERVE_WAIT`` seconds), as one of a record we are fetching does.

        For a start whose services publish more a moment later (the PKI's requests): the
        record that every member first fetches, on hearing of our arrival, is then the
        whole one, and no second version has to spread as news (see :meth:`_take`)."""
        self._own_holds += 1
        released = False

        def release() -> None:
            nonlocal released
            if released:
                return
            released = True
            self._own_holds -= 1
            if not self._own_holds:
                self._release(self.name)

        return release

    def _release(self, name: str) -> None:
        waiters = self._waiting.pop(name, None)
        if waiters is not None:
            waiters.fire(None)

    def want(self, name: str, version: int, holder: Endpoint) -> None:
        """``holder`` has ``name`` at ``version``: fetch it unless we hold that already."""
        pending = self._pending(name, version)
        if pending is None:
            return
        pending.offer(holder)
        if not (pending.running or name in self._queued):
            self._start_or_queue(name, pending)

    def want_from(
        self,
        holder: Endpoint,
        digests: Iterable[tuple[str, int]],
        owners: Mapping[str, Endpoint],
        advertise: bool = True,
    ) -> None:
        """``holder`` has each of ``digests`` (a push/pull): what we lack, fetch from it at once.

        One stream carries them all, where a hundred fetches would each cost a connection
        and the attention of a member; whatever the holder does not deliver is then
        fetched one by one, from ``owners`` first (an owner holds its newest record).
        Without ``advertise`` (a joiner catching up), the records taken are no news to
        gossip: the cluster holds them already.  The records of ``owners`` that the
        holder has none of, and we neither, come from their owners: nobody advertises a
        member's first record.
        """
        digests = list(digests)
        listed = {name for name, _ in digests}
        for name, address in owners.items():
            if name not in listed:
                self.want(name, 1, address)  # nothing if we hold it (any version is >= 1)
        batch: dict[str, _Fetch] = {}
        for name, version in digests:
            pending = self._pending(name, version)
            if pending is None:
                continue
            owner = owners.get(name)
            if owner is not None and name != self.name:
                pending.offer(owner)
            if pending.running or name in self._queued or name in batch:
                pending.offer(holder)
                continue
            pending.tried.add(holder)
            pending.running = True
            batch[name] = pending
        if batch:
            self._fetch_batch(holder, batch, advertise)

    def accept(self, blob: bytes, source: object = None, expected: str | None = None) -> bool:
        """Verify and keep a record; False (counted) if refused or not newer."""
        record = self._open(blob, source, None if expected is None else (expected,))
        return record is not None and self._take(record, source)

    def record_blobs(self, names: Iterable[str], budget: int) -> list[bytes]:
        """The records held of ``names``, in that order, as many as ``budget`` bytes allow
        (the first always): what a batch fetch is answered with."""
        blobs: list[bytes] = []
        size = 0
        for name in names:
            blob = self.record_blob(name)
            if blob is None:
                continue
            if blobs and size + len(blob) > budget:
                break
            blobs.append(blob)
            size += len(blob)
        return blobs

    def conflicts(self) -> list[dict[str, Any]]:
        return [conflict.as_json() for conflict in self._conflicts.values()]

    def status(self) -> list[dict[str, Any]]:
        """The ``members`` list of ``hepto status --json``."""
        rows = []
        for name in sorted(self._view):
            member = self._view[name]
            state = self._states.get(name)
            record = member.record
            rows.append(
                {
                    "name": name,
                    "role": (record.get("role") if record else None)
                    or (state.role if state is not None else None),
                    "address": str(state.address) if state is not None else None,
                    "state": member.status,
                    "incarnation": state.incarnation if state is not None else None,
                    "version": record.version if record else None,
                }
            )
        return rows

    # Internals

    def _open(
        self, blob: bytes, source: object, expected: Collection[str] | None
    ) -> SignedRecord | None:
        try:
            record = open_record(blob, self.cluster)
        except RecordError as error:
            self.drops.count(error.reason, source, error.detail)
            return None
        if expected is not None and record.name not in expected:
            wanted = ", ".join(sorted(expected)[:3]) + (", …" if len(expected) > 3 else "")
            self.drops.count(UNEXPECTED_RECORD, source, f"asked for {wanted}, got {record.name}")
            return None
        return record

    def _take(self, record: SignedRecord, source: object, advertise: bool = True) -> bool:
        if record.name == self.name:
            return self._accept_own(record, source)
        if not self.pins.check(record.name, record.key):
            self._identity_conflict(record, source)
            return False
        held = self._records.get(record.name)
        if held is not None and record.version <= held.version:
            if record.version < held.version:
                self.drops.count(
                    OUTDATED_RECORD, source, f"{record.name} v{record.version} < v{held.version}"
                )
            return False
        self._records[record.name] = record
        # Epidemic spread: every new holder of a new version advertises, not the owner
        # alone, so a change reaches everyone in O(log N) gossip rounds rather than at
        # the next push/pull.  A member's first record is no news: whoever learns of the
        # member fetches it (a hundred members each advertising a newcomer's record cost
        # each of them more datagrams than the newcomer's arrival itself), and neither
        # are the records a joiner catches up on.
        if advertise and held is not None:
            self.membership.broadcast_digest(record.name, record.version)
        self._log.debug(
            "Record of {member} now at version {version} ({size} bytes)",
            member=record.name,
            version=record.version,
            size=len(record),
        )
        self._refresh(record.name)
        self._release(record.name)
        return True

    def _pending(self, name: str, version: int) -> _Fetch | None:
        """The fetch of ``name`` at ``version`` or newer; None if not worth one."""
        held = self._own if name == self.name else self._records.get(name)
        if (held is not None and held.version >= version) or version > MAX_VERSION:
            return None  # A version no record can have is not worth a connection.
        pending = self._fetches.get(name)
        if pending is None:
            pending = self._fetches[name] = _Fetch(version)
        elif version > pending.wanted:
            pending.wanted = version
            pending.tried.clear()  # A newer version: every holder is worth asking again.
        return pending

    def _start_or_queue(self, name: str, pending: _Fetch) -> None:
        if self._running < self.max_fetches:
            self._next_fetch(name, pending)
        else:
            self._queued.append(name)

    def _fetch_batch(self, holder: Endpoint, batch: dict[str, _Fetch], advertise: bool) -> None:
        fetched: Deferred[Sequence[bytes]] = maybeDeferred(self.fetch_many, holder, list(batch))
        fetched.addCallbacks(
            self._batch_fetched,
            self._batch_failed,
            callbackArgs=(holder, batch, advertise),
            errbackArgs=(holder, batch),
        )

    def _batch_fetched(
        self, blobs: Sequence[bytes], holder: Endpoint, batch: dict[str, _Fetch], advertise: bool
    ) -> None:
        sent: dict[str, SignedRecord] = {}
        for blob in blobs:
            record = self._open(blob, holder, batch)
            if record is not None:
                sent.setdefault(record.name, record)
        self.fetched["ok"] += len(sent)
        for record in sent.values():
            self._take(record, holder, advertise)
        # A holder answers in the order asked and stops at its reply's size: what comes
        # after the last record it sent, it may hold still, and is asked again.  The
        # rest (skipped: not held; or sent but not new enough) go one by one.
        position = {name: index for index, name in enumerate(batch)}
        last = max((position[name] for name in sent), default=len(batch))
        again = {}
        for name, pending in batch.items():
            if self._fetches.get(name) is not pending:
                continue  # Forgotten meanwhile.
            if self._satisfied(name, pending):
                del self._fetches[name]
            elif position[name] > last:
                again[name] = pending
            else:
                if name not in sent:
                    self.fetched["missing"] += 1
                pending.running = False
                self._start_or_queue(name, pending)
        if again:
            self._fetch_batch(holder, again, advertise)

    def _batch_failed(self, failure: Failure, holder: Endpoint, batch: dict[str, _Fetch]) -> None:
        self.fetched["failed"] += len(batch)
        self._log.info(
            "Fetching {count} records from {holder} failed: {error}",
            count=len(batch),
            holder=holder,
            error=failure.getErrorMessage(),
        )
        for name, pending in batch.items():
            if self._fetches.get(name) is pending:
                # A member older than batches hangs up on one, and serves records one
                # by one: the holder is asked again, after the owner.
                pending.tried.discard(holder)
                pending.offer(holder)
                pending.running = False
                self._start_or_queue(name, pending)

    def _replace_own(self, record: SignedRecord) -> None:
        self.on_own_record(record)
        self._own = record
        self._refresh(self.name)
        self.membership.broadcast_digest(self.name, record.version)

    def _accept_own(self, record: SignedRecord, source: object) -> bool:
        if record.key != self.identity.public_key:
            self._identity_conflict(record, source)
            return False
        if record.version <= self._own.version:
            return False
        # Our own record, newer than ours: this node's state was restored from an older
        # copy. Move past it so that others take our record again.
        self._log.warn(
            "Others hold our record at version {theirs}, ahead of ours ({ours}): "
            "moving on to {next}",
            theirs=record.version,
            ours=self._own.version,
            next=record.version + 1,
        )
        self._replace_own(
            sign_record(self.identity, self.cluster, self.name, record.version + 1, self._own.data)
        )
        return False

    def _digest_heard(self, holder: Any, name: str, version: int) -> None:
        self.want(name, version, holder.address)

    def _arrival_heard(self, teller: Any, name: str) -> None:
        """``teller`` told us of ``name``, a member new to us: its record, of any version,
        comes from the teller, which holds it or is fetching it (the owner is the last
        resort, as for any fetch)."""
        self.want(name, 1, teller.address)

    def _next_fetch(self, name: str, pending: _Fetch) -> None:
        owner = self._states.get(name)
        # Last resort: the owner itself, even suspected (in a join storm, most suspicions
        # are of members too busy to answer in time, which a stream waits out).
        if not pending.candidates and owner is not None and owner.status in (ALIVE, SUSPECT):
            pending.offer(owner.address)
        if not pending.candidates:
            del self._fetches[name]
            self._release(name)
            self._log.info(
                "No holder left to fetch {member} v{version} from; push/pull will repair",
                member=name,
                version=pending.wanted,
            )
            return
        holder = pending.candidates.pop(0)
        pending.tried.add(holder)
        pending.running = True
        self._running += 1
        fetched: Deferred[bytes | None] = maybeDeferred(self.fetch, holder, name)
        fetched.addCallbacks(
            self._fetched,
            self._fetch_failed,
            callbackArgs=(name, pending, holder),
            errbackArgs=(name, pending, holder),
        )

    def _fetched(self, blob: bytes | None, name: str, pending: _Fetch, holder: Endpoint) -> None:
        pending.running = False
        self._running -= 1
        self.fetched["ok" if blob is not None else "missing"] += 1
        if blob is not None:
            self.accept(blob, holder, expected=name)
        self._fetch_done(name, pending)

    def _fetch_failed(self, failure: Failure, name: str, pending: _Fetch, holder: Endpoint) -> None:
        pending.running = False
        self._running -= 1
        self.fetched["failed"] += 1
        self._log.info(
            "Fetching the record of {member} from {holder} failed: {error}",
            member=name,
            holder=holder,
            error=failure.getErrorMessage(),
        )
        self._fetch_done(name, pending)

    def _fetch_done(self, name: str, pending: _Fetch) -> None:
        if self._fetches.get(name) is pending:  # (else forgotten meanwhile)
            if self._satisfied(name, pending):
                del self._fetches[name]
            else:
                self._next_fetch(name, pending)
        while self._queued and self._running < self.max_fetches:
            queued = self._queued.popleft()
            waiting = self._fetches.get(queued)
            if waiting is None or waiting.running:
                continue
            if self._satisfied(queued, waiting):  # A gossiped copy may have come first.
                del self._fetches[queued]
            else:
                self._next_fetch(queued, waiting)

    def _satisfied(self, name: str, pending: _Fetch) -> bool:
        held = self._own if name == self.name else self._records.get(name)
        return held is not None and held.version >= pending.wanted

    def _member_changed(self, old: Any, new: Any) -> None:
        first = new.name not in self._states
        self._states[new.name] = new
        if first:
            self._check_mesh_address(new.name)
        self._refresh(new.name)

    def _refresh(self, name: str) -> None:
        state = self._states.get(name)
        new: Member | None
        if state is None and name != self.name:
            new = None
        else:
            held = self._own if name == self.name else self._records.get(name)
            status = state.status if state is not None else ALIVE
            new = Member(name, status, held.record if held is not None else None)
        old = self._view.get(name)
        if old == new:
            return
        if new is None:
            del self._view[name]
        else:
            self._view[name] = new
        self._notifier.notify(Change(name, old, new))

    def _identity_conflict(self, record: SignedRecord, source: object) -> None:
        pinned = self.pins.get(record.name) or self.identity.public_key
        detail = (
            f"record v{record.version} signed by {record.key.hex()[:16]}…, "
            f"but {pinned.hex()[:16]}… is pinned"
        )
        self.drops.count(CONFLICT, source, f"{record.name}: {detail}")
        self._report(IDENTITY_CONFLICT, (record.name,), detail)

    def _check_mesh_address(self, name: str) -> None:
        address = plan.mesh_address(self.cluster, name)
        claimant = self._mesh_owners.setdefault(address, name)
        if address == plan.apiserver_address(self.cluster):
            self._report(MESH_ADDRESS_CONFLICT, (name,), f"{address} is the apiserver's address")
        elif claimant != name and plan.mesh_address_conflict(self.cluster, claimant, name):
            self._report(
                MESH_ADDRESS_CONFLICT,
                tuple(sorted((claimant, name))),
                f"both names map to {address}",
            )

    def _report(self, kind: str, names: tuple[str, ...], detail: str) -> None:
        now = self.clock.seconds()
        known = self._conflicts.get((kind, names))
        if known is not None:
            known.count += 1
            known.last_seen = now
            known.detail = detail
            return
        self._conflicts[(kind, names)] = Conflict(kind, names, detail, now, now)
        self._log.error(
            "Conflict ({kind}) about {names}: {detail}",
            kind=kind,
            names=", ".join(names),
            detail=detail,
        )
