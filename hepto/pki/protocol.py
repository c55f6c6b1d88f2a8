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
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import attrs

from hepto.pki import fields
from hepto.pki.errors import AuthorityError, WorkerError
from hepto.pki.fields import MalformedMessage
from hepto.pki.refusals import RefusalLog
from hepto.pki.specs import (
    CA_KEY,
    MASTERSHIP_KEY,
    RECORD_KEY,
    REFUSED_KEY,
    SIGNED_KEY,
    is_master_role,
)

#: :attr:`JobFailed.kind` of damaged CA files: the agent stops with their one sentence.
AUTHORITY: Final = "authority"
#: :attr:`JobFailed.kind` of anything else: the batch failed and is tried again.
FAILED: Final = "failed"

JSON = dict[str, Any]


def _refusal_log(entries: object, evicted: object, where: str) -> RefusalLog:
    """The refusals as :meth:`RefusalLog.as_json` wrote them, checked first."""
    checked = fields.array(entries, where)
    for index, entry in enumerate(checked):
        refusal = fields.Fields(entry, f"{where}[{index}]")
        for key in ("member", "subject", "code", "reason"):
            refusal.read(key, fields.string)
        refusal.read("count", fields.integer)
        for key in ("first", "last"):
            refusal.read(key, fields.instant)
    return RefusalLog.from_json(checked, fields.integer(evicted, f"{where}_evicted"))


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
        config = fields.Fields(data, where)
        return cls(
            cluster=config.read("cluster", fields.string),
            name=config.read("name", fields.string),
            role=config.read("role", fields.string),
            node_dir=Path(config.read("node_dir", fields.string)),
            lifetime=config.read("lifetime", fields.duration),
            identity=fields.hex_bytes(config.get("identity"), config.at("identity")),
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

    def reviewed(self, reader: str | None = None) -> object:
        """What a review of this entry depends on: the service sends it only if it changed.

        A master's desk (``reader`` None) reads all of it.  The desk of another member,
        ``reader``, reads only the role, the CA, the proof of mastership and the answers
        addressed to ``reader``: a master answering some other member's request does not
        wake every member's worker.
        """
        if reader is None or not isinstance(self.pki, Mapping):
            return (self.role, self.pki)
        return (
            self.role,
            self.pki.get(CA_KEY),
            self.pki.get(MASTERSHIP_KEY),
            _entry_for(self.pki.get(SIGNED_KEY), reader),
            _entry_for(self.pki.get(REFUSED_KEY), reader),
        )

    def concerns_members(self) -> bool:
        """Whether a desk other than a master's can learn anything from this entry.

        Such a desk reads only what masters publish (their CA, their answers, the proof
        of their mastership) and refuses a CA announced by a member that is none: a
        node's entry that holds only its own requests is the master's business alone.
        Sparing the worker those spares every member a worker's start (~0.4 CPU-s: an
        interpreter importing ``cryptography``) each time another member joins or renews.
        """
        return is_master_role(self.role) or (isinstance(self.pki, Mapping) and CA_KEY in self.pki)

    def to_json(self) -> JSON:
        return {
            "version": self.version,
            "role": self.role,
            "identity": None if self.identity is None else self.identity.hex(),
            RECORD_KEY: self.pki,
        }

    @classmethod
    def from_json(cls, data: object, where: str) -> MemberEntry:
        entry = fields.Fields(data, where)
        return cls(
            version=entry.read("version", fields.integer),
            role=entry.get("role"),
            pki=entry.get(RECORD_KEY),
            identity=fields.hex_bytes(entry.get("identity"), entry.at("identity")),
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
        job = fields.Fields(data, "the job", prefix="")
        start = job.read("start", fields.boolean)
        memory = job.read("memory", fields.raw)
        if memory is None and not start:
            raise MalformedMessage("a batch other than the start needs the desk's memory")
        return cls(
            config=job.read("config", DeskConfig.from_json),
            now=job.read("now", fields.number),
            start=start,
            memory=None if memory is None else DeskMemory.from_json(memory),
            renew=tuple(job.read("renew", fields.strings)),
            members=job.read("members", fields.each(_member_entry)),
        )


# -- the desk's memory --------------------------------------------------------------------

#: A master's answer to a request it refused: ``{"code", "reason", "key"}``, as its
#: record carries it (``key``: the refused CSR key's fingerprint, if it could be read).
RefusedAnswer = dict[str, str | None]


_refused_answer = fields.each(fields.optional_string)
_string_map = fields.each(fields.string)


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
        memory = fields.Fields(data, where)
        reviewed: dict[tuple[str, str], tuple[object, object]] = {}
        for index, row in enumerate(memory.read("reviewed", fields.array)):
            at = f"{memory.at('reviewed')}[{index}]"
            member, name, role, pem = fields.row(row, at, 4)
            reviewed[fields.string(member, f"{at}[0]"), fields.string(name, f"{at}[1]")] = (
                role,
                pem,
            )
        offers_seen: dict[tuple[str, str], str] = {}
        for index, row in enumerate(memory.read("offers_seen", fields.array)):
            at = f"{memory.at('offers_seen')}[{index}]"
            master, name, pem = (fields.string(item, at) for item in fields.row(row, at, 3))
            offers_seen[master, name] = pem
        return cls(
            reviewed=reviewed,
            signed=memory.read("signed", fields.each(_string_map)),
            refused=memory.read("refused", fields.each(fields.each(_refused_answer))),
            offers_seen=offers_seen,
            announcements_seen=memory.read("announcements_seen", fields.each(fields.pair)),
            refused_by_master=memory.read("refused_by_master", fields.each(_string_map)),
            versions=memory.read("versions", fields.each(fields.integer)),
            waiting=set(memory.read("waiting", fields.strings)),
            masters=set(memory.read("masters", fields.strings)),
            refusals=_refusal_log(
                memory.read("refusals", fields.raw),
                memory.read("refusals_evicted", fields.raw),
                memory.at("refusals"),
            ),
            dropped=memory.read("dropped", fields.each(fields.integer)),
            requests=memory.read("requests", fields.each(fields.string_pair)),
            ignored=memory.read("ignored", fields.each(fields.string)),
            installed=memory.read("installed", fields.each(fields.string)),
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
        change = fields.Fields(data, where)
        kubeconfig = change.read("kubeconfig", fields.optional_string)
        return cls(
            name=change.read("name", fields.string),
            certificate=Path(change.read("certificate", fields.string)),
            key=Path(change.read("key", fields.string)),
            kubeconfig=None if kubeconfig is None else Path(kubeconfig),
            not_after=change.read("not_after", fields.instant),
            fingerprint=change.read("fingerprint", fields.string),
        )


def _changes(value: object, where: str) -> tuple[CertificateChange, ...]:
    return tuple(
        CertificateChange.from_json(change, f"{where}[{index}]")
        for index, change in enumerate(fields.array(value, where))
    )


def _status(value: object, where: str) -> dict[str, Any]:
    """``hepto status``'s view of the PKI: free-form, but for what the service reads."""
    status = dict(fields.mapping(value, where))
    certificates = fields.each(fields.mapping)(
        status.get("certificates", {}), f"{where}.certificates"
    )
    for name, entry in certificates.items():
        if "not_after" in entry:
            fields.instant(entry["not_after"], f"{where}.certificates[{name!r}].not_after")
    fields.each(fields.integer)(status.get("dropped", {}), f"{where}.dropped")
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
        answer = fields.Fields(data, "the answer", prefix="")
        return cls(
            memory=answer.read("memory", DeskMemory.from_json),
            section=answer.read("section", fields.raw),
            changes=answer.read("changes", _changes),
            installed=frozenset(answer.read("installed", fields.strings)),
            renewals=answer.read("renewals", fields.each(fields.number)),
            revisits=answer.read("revisits", fields.each(fields.number)),
            marks=frozenset(answer.read("marks", fields.strings)),
            masters=frozenset(answer.read("masters", fields.strings)),
            status=answer.read("status", _status),
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
        answer = fields.Fields(data, "the answer", prefix="")
        error = answer.read("error", fields.Fields)
        return cls(
            kind=error.read("kind", fields.string), message=error.read("message", fields.string)
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


def _entry_for(table: object, member: str) -> object:
    return table.get(member) if isinstance(table, Mapping) else None
