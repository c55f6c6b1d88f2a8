"""What the agent and the PKI worker say to each other: jobs, answers, the desk's memory.

The agent's :class:`~hepto.pki.service.PKIService` and the worker
(:mod:`hepto.pki.worker`, where a :class:`~hepto.pki.desk.Desk` does the batch) speak
one JSON line each way per batch.  These classes are what the lines mean; each writes
itself with ``to_json`` and reads itself back with ``from_json``, which checks every
field and raises :class:`MalformedMessage` naming the first one out of place.  Both
processes run the same source, so nonsense on the pipe means a bug or a damaged worker:
it must be a clear error (the worker answers "not a job", the service counts a failed
batch and tries again), never a ``KeyError`` deep in the desk.

A job::

    {"config": {"cluster", "name", "role", "node_dir", "lifetime", "identity"},
     "now": <POSIX seconds>, "start": bool, "memory": <the previous answer's> | null,
     "renew": [certificate, ...],
     "members": {name: null (left) | {"version", "role", "identity", "pki"}}}

An answer: ``memory``, ``section``, ``changes``, ``installed``, ``renewals``,
``revisits``, ``marks``, ``masters`` and ``status`` (:class:`Answer`); or
``{"error": {"kind", "message"}}`` (:class:`JobFailed`).  The worker adds ``log``, the
job's log events, which the service emits as its own.

The agent imports this module, so it imports no ``cryptography`` (``docs/memory.rst``).
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final, TypeVar

import attrs

from hepto.pki.errors import AuthorityError, WorkerError
from hepto.pki.refusals import RefusalLog
from hepto.pki.specs import RECORD_KEY

#: :attr:`JobFailed.kind` of damaged CA files: the agent stops with their one sentence.
AUTHORITY: Final = "authority"
#: :attr:`JobFailed.kind` of anything else: the batch failed and is tried again.
FAILED: Final = "failed"

T = TypeVar("T")
JSON = dict[str, Any]


class MalformedMessage(ValueError):
    """A job or answer that is not what this protocol says; the message says where."""


# -- reading JSON, strictly ---------------------------------------------------------------


def _object(value: object, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise MalformedMessage(f"{where} is {_kind(value)}, not an object")
    return value


def _field(data: Mapping[str, Any], key: str, where: str) -> object:
    if key not in data:
        raise MalformedMessage(f"{where} lacks {key!r}")
    return data[key]


def _string(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise MalformedMessage(f"{where} is {_kind(value)}, not a string")
    return value


def _integer(value: object, where: str) -> int:
    # JSON has no booleans apart from integers in Python: True is no version.
    if not isinstance(value, int) or isinstance(value, bool):
        raise MalformedMessage(f"{where} is {_kind(value)}, not an integer")
    return value


def _number(value: object, where: str) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise MalformedMessage(f"{where} is {_kind(value)}, not a number")
    try:
        number = float(value)
    except OverflowError:
        raise MalformedMessage(f"{where} is out of range") from None
    # Python's JSON reads NaN and Infinity, which no clock or timer can use.
    if not math.isfinite(number):
        raise MalformedMessage(f"{where} is {number}, not a finite number")
    return number


def _duration(value: object, where: str) -> datetime.timedelta:
    try:
        return datetime.timedelta(seconds=_number(value, where))
    except OverflowError:
        raise MalformedMessage(f"{where} is out of range") from None


def _boolean(value: object, where: str) -> bool:
    if not isinstance(value, bool):
        raise MalformedMessage(f"{where} is {_kind(value)}, not a boolean")
    return value


def _optional_string(value: object, where: str) -> str | None:
    return None if value is None else _string(value, where)


def _list(value: object, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise MalformedMessage(f"{where} is {_kind(value)}, not a list")
    return value


def _strings(value: object, where: str) -> list[str]:
    return [_string(item, f"{where}[{index}]") for index, item in enumerate(_list(value, where))]


def _map(value: object, where: str, read: Callable[[object, str], T]) -> dict[str, T]:
    """An object whose every value ``read`` accepts."""
    return {key: read(item, f"{where}[{key!r}]") for key, item in _object(value, where).items()}


def _row(value: object, where: str, length: int) -> list[Any]:
    row = _list(value, where)
    if len(row) != length:
        raise MalformedMessage(f"{where} has {len(row)} items, not {length}")
    return row


def _hex(value: object, where: str) -> bytes | None:
    text = _optional_string(value, where)
    if text is None:
        return None
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise MalformedMessage(f"{where} is not hexadecimal") from None


def _instant(value: object, where: str) -> datetime.datetime:
    text = _string(value, where)
    try:
        return datetime.datetime.fromisoformat(text)
    except ValueError:
        raise MalformedMessage(f"{where} is not an ISO 8601 time") from None


_KINDS: Final = {
    type(None): "null",
    bool: "a boolean",
    int: "an integer",
    float: "a number",
    str: "a string",
    list: "a list",
    dict: "an object",
}


def _kind(value: object) -> str:
    """What JSON calls the type of ``value``."""
    return _KINDS.get(type(value), f"a {type(value).__name__}")


def _pair(value: object, where: str) -> tuple[object, object]:
    first, second = _row(value, where, 2)
    return first, second


def _string_pair(value: object, where: str) -> tuple[str, str]:
    first, second = _pair(value, where)
    return _string(first, f"{where}[0]"), _string(second, f"{where}[1]")


def _refusal_log(entries: object, evicted: object, where: str) -> RefusalLog:
    for index, entry in enumerate(_list(entries, where)):
        at = f"{where}[{index}]"
        refusal = _object(entry, at)
        for key in ("member", "subject", "code", "reason"):
            _string(_field(refusal, key, at), f"{at}.{key}")
        _integer(_field(refusal, "count", at), f"{at}.count")
        for key in ("first", "last"):
            _instant(_field(refusal, key, at), f"{at}.{key}")
    return RefusalLog.from_json(entries, _integer(evicted, f"{where}_evicted"))  # type: ignore[arg-type]


# -- the job ------------------------------------------------------------------------------


@attrs.frozen
class DeskConfig:
    """Who the desk works for: the member, as the agent was started."""

    cluster: str
    name: str
    role: str
    node_dir: Path
    lifetime: datetime.timedelta
    #: The member's identity key (gossip's), which a master's proof names.
    identity: bytes | None = None

    def to_json(self) -> JSON:
        return {
            "cluster": self.cluster,
            "name": self.name,
            "role": self.role,
            "node_dir": str(self.node_dir),
            "lifetime": self.lifetime.total_seconds(),
            "identity": None if self.identity is None else self.identity.hex(),
        }

    @classmethod
    def from_json(cls, data: object, where: str = "config") -> DeskConfig:
        config = _object(data, where)
        return cls(
            cluster=_string(_field(config, "cluster", where), f"{where}.cluster"),
            name=_string(_field(config, "name", where), f"{where}.name"),
            role=_string(_field(config, "role", where), f"{where}.role"),
            node_dir=Path(_string(_field(config, "node_dir", where), f"{where}.node_dir")),
            lifetime=_duration(_field(config, "lifetime", where), f"{where}.lifetime"),
            identity=_hex(config.get("identity"), f"{where}.identity"),
        )


@attrs.frozen
class MemberEntry:
    """What the desk reads of a member's record: the rest of it is none of its business.

    ``role`` and ``pki`` are the member's word, as its record says them: the desk judges
    them (a ``pki`` entry that is no mapping is a refusal, not a malformed job).
    """

    version: int
    role: object
    pki: object
    identity: bytes | None = None

    def reviewed(self) -> tuple[object, object]:
        """What a review of this entry depends on: the service sends it only if it changed."""
        return (self.role, self.pki)

    def to_json(self) -> JSON:
        return {
            "version": self.version,
            "role": self.role,
            "identity": None if self.identity is None else self.identity.hex(),
            RECORD_KEY: self.pki,
        }

    @classmethod
    def from_json(cls, data: object, where: str) -> MemberEntry:
        entry = _object(data, where)
        return cls(
            version=_integer(_field(entry, "version", where), f"{where}.version"),
            role=entry.get("role"),
            pki=entry.get(RECORD_KEY),
            identity=_hex(entry.get("identity"), f"{where}.identity"),
        )


def _member_entry(data: object, where: str) -> MemberEntry | None:
    """A member's entry, or ``None`` for a member that left."""
    return None if data is None else MemberEntry.from_json(data, where)


@attrs.frozen
class Job:
    """One batch: start (or resume from ``memory``), renew, then review ``members``."""

    config: DeskConfig
    #: POSIX seconds: the desk's clock is the agent's (``task.Clock`` in tests).
    now: float
    start: bool
    memory: DeskMemory | None = None
    renew: tuple[str, ...] = ()
    #: By name, in no particular order (the desk reviews them in name order).
    members: Mapping[str, MemberEntry | None] = attrs.field(factory=dict)

    def to_json(self) -> JSON:
        return {
            "config": self.config.to_json(),
            "now": self.now,
            "start": self.start,
            "memory": None if self.memory is None else self.memory.to_json(),
            "renew": list(self.renew),
            "members": {
                name: None if entry is None else entry.to_json()
                for name, entry in self.members.items()
            },
        }

    @classmethod
    def from_json(cls, data: object) -> Job:
        job = _object(data, "the job")
        start = _boolean(_field(job, "start", "the job"), "start")
        memory = _field(job, "memory", "the job")
        if memory is None and not start:
            raise MalformedMessage("a batch other than the start needs the desk's memory")
        return cls(
            config=DeskConfig.from_json(_field(job, "config", "the job")),
            now=_number(_field(job, "now", "the job"), "now"),
            start=start,
            memory=None if memory is None else DeskMemory.from_json(memory),
            renew=tuple(_strings(_field(job, "renew", "the job"), "renew")),
            members=_map(_field(job, "members", "the job"), "members", _member_entry),
        )


# -- the desk's memory --------------------------------------------------------------------

#: A master's answer to a request it refused: ``{"code", "reason", "key"}``, as its
#: record carries it (``key``: the refused CSR key's fingerprint, if it could be read).
RefusedAnswer = dict[str, str | None]


def _refused_answer(value: object, where: str) -> RefusedAnswer:
    return _map(value, where, _optional_string)


def _string_map(value: object, where: str) -> dict[str, str]:
    return _map(value, where, _string)


@attrs.define
class DeskMemory:
    """What the desk must remember from one batch to the next that its files do not say.

    The service keeps it between batches without reading it, and hands it back with the
    next job; the desk takes it up (:meth:`hepto.pki.desk.Desk.resume`).
    """

    #: The master's: per (member, certificate), the role and CSR it last reviewed.
    reviewed: dict[tuple[str, str], tuple[object, object]] = attrs.field(factory=dict)
    #: The master's answers still in flight, per member and certificate: PEM ...
    signed: dict[str, dict[str, str]] = attrs.field(factory=dict)
    #: ... or a refusal.
    refused: dict[str, dict[str, RefusedAnswer]] = attrs.field(factory=dict)
    #: A member's: per (master, certificate), the offer it last considered.
    offers_seen: dict[tuple[str, str], str] = attrs.field(factory=dict)
    #: Per member, the (role, CA) it last announced.
    announcements_seen: dict[str, tuple[object, object]] = attrs.field(factory=dict)
    #: A member's: what the master refused it, per certificate (``code``, ``reason``).
    refused_by_master: dict[str, dict[str, str]] = attrs.field(factory=dict)
    #: The newest record version reviewed, per member: older ones are replays.
    versions: dict[str, int] = attrs.field(factory=dict)
    #: The master's: members whose requests wait for room in its record.
    waiting: set[str] = attrs.field(factory=set)
    #: The members proven masters (:mod:`hepto.pki.mastership`).
    masters: set[str] = attrs.field(factory=set)
    refusals: RefusalLog = attrs.field(factory=RefusalLog)
    dropped: dict[str, int] = attrs.field(factory=dict)
    #: Each CSR published, with its key's fingerprint: ``(fingerprint, PEM)``.  A new
    #: CSR for the same key would differ (ECDSA signatures are randomised) and be
    #: published anew.
    requests: dict[str, tuple[str, str]] = attrs.field(factory=dict)
    #: Installed certificates set aside (their fingerprints), though still on disk.
    ignored: dict[str, str] = attrs.field(factory=dict)
    #: What the service knows installed (fingerprints), so that the next batch notices
    #: what a failed one installed.
    installed: dict[str, str] = attrs.field(factory=dict)

    def to_json(self) -> JSON:
        return {
            "reviewed": [[*key, *value] for key, value in self.reviewed.items()],
            "signed": self.signed,
            "refused": self.refused,
            "offers_seen": [[*key, pem] for key, pem in self.offers_seen.items()],
            "announcements_seen": {
                name: list(value) for name, value in self.announcements_seen.items()
            },
            "refused_by_master": self.refused_by_master,
            "versions": self.versions,
            "waiting": sorted(self.waiting),
            "masters": sorted(self.masters),
            "refusals": self.refusals.as_json(),
            "refusals_evicted": self.refusals.evicted,
            "dropped": self.dropped,
            "requests": {name: list(value) for name, value in self.requests.items()},
            "ignored": self.ignored,
            "installed": self.installed,
        }

    @classmethod
    def from_json(cls, data: object, where: str = "memory") -> DeskMemory:
        memory = _object(data, where)

        def field(key: str) -> object:
            return _field(memory, key, where)

        reviewed: dict[tuple[str, str], tuple[object, object]] = {}
        for index, row in enumerate(_list(field("reviewed"), f"{where}.reviewed")):
            at = f"{where}.reviewed[{index}]"
            member, name, role, pem = _row(row, at, 4)
            reviewed[_string(member, f"{at}[0]"), _string(name, f"{at}[1]")] = (role, pem)
        offers_seen: dict[tuple[str, str], str] = {}
        for index, row in enumerate(_list(field("offers_seen"), f"{where}.offers_seen")):
            at = f"{where}.offers_seen[{index}]"
            master, name, pem = (_string(item, at) for item in _row(row, at, 3))
            offers_seen[master, name] = pem
        return cls(
            reviewed=reviewed,
            signed=_map(field("signed"), f"{where}.signed", _string_map),
            refused=_map(
                field("refused"),
                f"{where}.refused",
                lambda value, at: _map(value, at, _refused_answer),
            ),
            offers_seen=offers_seen,
            announcements_seen=_map(
                field("announcements_seen"), f"{where}.announcements_seen", _pair
            ),
            refused_by_master=_map(
                field("refused_by_master"), f"{where}.refused_by_master", _string_map
            ),
            versions=_map(field("versions"), f"{where}.versions", _integer),
            waiting=set(_strings(field("waiting"), f"{where}.waiting")),
            masters=set(_strings(field("masters"), f"{where}.masters")),
            refusals=_refusal_log(
                field("refusals"), field("refusals_evicted"), f"{where}.refusals"
            ),
            dropped=_map(field("dropped"), f"{where}.dropped", _integer),
            requests=_map(field("requests"), f"{where}.requests", _string_pair),
            ignored=_map(field("ignored"), f"{where}.ignored", _string),
            installed=_map(field("installed"), f"{where}.installed", _string),
        )


# -- the answer ---------------------------------------------------------------------------


@attrs.frozen
class CertificateChange:
    """A certificate (and its key, and kubeconfig if any) was installed or replaced."""

    name: str
    certificate: Path
    key: Path
    kubeconfig: Path | None
    not_after: datetime.datetime
    fingerprint: str

    def to_json(self) -> JSON:
        return {
            "name": self.name,
            "certificate": str(self.certificate),
            "key": str(self.key),
            "kubeconfig": None if self.kubeconfig is None else str(self.kubeconfig),
            "not_after": self.not_after.isoformat(),
            "fingerprint": self.fingerprint,
        }

    @classmethod
    def from_json(cls, data: object, where: str) -> CertificateChange:
        change = _object(data, where)
        kubeconfig = _optional_string(_field(change, "kubeconfig", where), f"{where}.kubeconfig")
        return cls(
            name=_string(_field(change, "name", where), f"{where}.name"),
            certificate=Path(_string(_field(change, "certificate", where), f"{where}.certificate")),
            key=Path(_string(_field(change, "key", where), f"{where}.key")),
            kubeconfig=None if kubeconfig is None else Path(kubeconfig),
            not_after=_instant(_field(change, "not_after", where), f"{where}.not_after"),
            fingerprint=_string(_field(change, "fingerprint", where), f"{where}.fingerprint"),
        )


def _status(value: object, where: str) -> dict[str, Any]:
    """``hepto status``'s view of the PKI: free-form, but for what the service reads."""
    status = dict(_object(value, where))
    certificates = _map(status.get("certificates", {}), f"{where}.certificates", _object)
    for name, entry in certificates.items():
        if "not_after" in entry:
            _instant(entry["not_after"], f"{where}.certificates[{name!r}].not_after")
    _map(status.get("dropped", {}), f"{where}.dropped", _integer)
    return status


@attrs.frozen
class Answer:
    """What the desk did in one batch, besides writing files."""

    memory: DeskMemory
    #: The ``pki`` entry of this member's record (``None``: none).
    section: object
    #: The certificates installed, for the service's listeners.
    changes: tuple[CertificateChange, ...]
    #: Every certificate installed now, new or not.
    installed: frozenset[str]
    #: When to renew each certificate, and to look at members' records again (POSIX).
    renewals: Mapping[str, float]
    revisits: Mapping[str, float]
    #: Members whose records deserve another review at once.
    marks: frozenset[str]
    #: The members the cluster CA proves masters (:mod:`hepto.pki.mastership`).
    masters: frozenset[str]
    #: What ``hepto status`` shows of the PKI.
    status: dict[str, Any]

    @property
    def refusals(self) -> RefusalLog:
        return self.memory.refusals

    def to_json(self) -> JSON:
        return {
            "memory": self.memory.to_json(),
            "section": self.section,
            "changes": [change.to_json() for change in self.changes],
            "installed": sorted(self.installed),
            "renewals": dict(self.renewals),
            "revisits": dict(self.revisits),
            "marks": sorted(self.marks),
            "masters": sorted(self.masters),
            "status": self.status,
        }

    @classmethod
    def from_json(cls, data: object) -> Answer:
        answer = _object(data, "the answer")

        def field(key: str) -> object:
            return _field(answer, key, "the answer")

        return cls(
            memory=DeskMemory.from_json(field("memory")),
            section=field("section"),
            changes=tuple(
                CertificateChange.from_json(change, f"changes[{index}]")
                for index, change in enumerate(_list(field("changes"), "changes"))
            ),
            installed=frozenset(_strings(field("installed"), "installed")),
            renewals=_map(field("renewals"), "renewals", _number),
            revisits=_map(field("revisits"), "revisits", _number),
            marks=frozenset(_strings(field("marks"), "marks")),
            masters=frozenset(_strings(field("masters"), "masters")),
            status=_status(field("status"), "status"),
        )


@attrs.frozen
class JobFailed:
    """A job the desk could not do, and why."""

    #: :data:`AUTHORITY` or :data:`FAILED`.
    kind: str
    message: str

    def error(self) -> Exception:
        """What the service raises for it."""
        if self.kind == AUTHORITY:
            return AuthorityError(self.message)
        return WorkerError(f"the PKI worker failed: {self.message}")

    def to_json(self) -> JSON:
        return {"error": {"kind": self.kind, "message": self.message}}

    @classmethod
    def from_json(cls, data: object) -> JobFailed:
        error = _object(_field(_object(data, "the answer"), "error", "the answer"), "error")
        return cls(
            kind=_string(_field(error, "kind", "error"), "error.kind"),
            message=_string(_field(error, "message", "error"), "error.message"),
        )


def read_answer(data: object) -> Answer:
    """The answer the worker wrote.

    Raises :class:`~hepto.pki.errors.AuthorityError` or
    :class:`~hepto.pki.errors.WorkerError` for an answer that says the job failed, and
    :class:`MalformedMessage` for one that is no answer at all.
    """
    if isinstance(data, Mapping) and "error" in data:
        raise JobFailed.from_json(data).error()
    return Answer.from_json(data)
