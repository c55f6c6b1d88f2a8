"""The PKI service: keeps this member's certificates issued, installed and renewed.

It is driven by the cluster state and its own renewal timers, never by polling:

- every member publishes, under the ``pki`` key of its record, the CSRs it still needs
  (``{"csr": {name: PEM}}``) and removes each one once the certificate is installed;
- the master publishes its Kubernetes CA certificate (``ca``), the certificates it
  signed for requests still outstanding (``signed``: ``{member: {name: PEM}}``) and
  its refusals of them (``refused``: ``{member: {name: {code, reason, key}}}``).

So the master's record holds only what is in flight: a member's CSR disappears once its
certificate is installed, and the master then drops the certificate.  In the steady
state the whole PKI costs one CA certificate (~700 bytes) in the master's record, and a
node joining or renewing adds ~1 KiB to its own record and ~1.5 KiB to the master's
until it is served.

State changes are collected and handled once per reactor turn (``callLater(0)``), so
that this service never publishes from inside a state listener and a burst of changes
costs one review and one publication.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Final

import attrs
from cryptography import x509
from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from hepto import plan
from hepto.config import NodeConfig
from hepto.pki import ca, keys, kubeconfig, policy, store
from hepto.pki.paths import KUBECONFIGS, Paths
from hepto.pki.policy import Refused
from hepto.pki.refusals import RefusalLog
from hepto.pki.requests import CERTIFICATES, CertificateSpec, is_master_role, specs_for_role
from hepto.pki.signer import LEAF_LIFETIME, KeyLedger, Signer
from hepto.pki.store import Slot
from hepto.pki.trust import Trust
from hepto.state import LEFT, ClusterState, Member

#: The record key this service owns.
RECORD_KEY: Final = "pki"
#: More CSRs than any role needs: a record with more is refused whole.
MAX_REQUESTS: Final = 8
#: Members whose answers the master's record carries at once.  Each costs ~1.5 KiB, so
#: this keeps the record near 300 KiB, well under gossip's 1 MiB limit, even when
#: hundreds of nodes join together; the others wait their turn (``deferred_requests``).
MAX_OUTSTANDING: Final = 200


@attrs.frozen
class CertificateChange:
    """A certificate (and its key, and kubeconfig if any) was installed or replaced."""

    name: str
    certificate: Path
    key: Path
    kubeconfig: Path | None
    not_after: datetime.datetime
    fingerprint: str


CertificateListener = Callable[[CertificateChange], None]


def check_files(config: NodeConfig, now: datetime.datetime | None = None) -> None:
    """Raise :class:`~hepto.pki.ca.AuthorityError` now if the service would at its start.

    For ``twistd hepto`` to report damaged CA or trust files in one sentence before the
    reactor runs.  Makes nothing: a first start has nothing to check.
    """
    paths = Paths(config.node_dir)
    now = now or datetime.datetime.now(datetime.UTC)
    trust = Trust.load(paths.trusted_ca)
    if not is_master_role(config.role) or not paths.authority_dir.exists():
        return
    authorities, _ = ca.load_or_create_authorities(paths.authority_dir, config.cluster, now)
    if trust.certificate is not None and trust.certificate != authorities.kubernetes.certificate:
        raise _foreign_pin(paths)


def _foreign_pin(paths: Paths) -> ca.AuthorityError:
    return ca.AuthorityError(
        f"{paths.trusted_ca}: this member trusts another cluster CA than its own "
        f"({paths.authority_dir}); remove one of them"
    )


def _utc(seconds: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(seconds, tz=datetime.UTC)


class PKIService(Service):
    """This member's side of the cluster PKI, and the signing desk when it is master."""

    log = Logger(namespace="hepto.pki")

    def __init__(
        self,
        cluster: str,
        name: str,
        role: str,
        node_dir: Path,
        state: ClusterState,
        clock: IReactorTime,
        lifetime: datetime.timedelta = LEAF_LIFETIME,
    ) -> None:
        self.setName("pki")
        self.cluster = cluster
        self.member = name
        self.role = role
        self.paths = Paths(node_dir)
        self.state = state
        self.clock = clock
        self.lifetime = lifetime
        self.specs: dict[str, CertificateSpec] = {
            spec.name: spec for spec in specs_for_role(role, cluster, name)
        }
        self.is_master = is_master_role(role)
        self.refusals = RefusalLog()
        self.dropped: dict[str, int] = {}
        self._slots: dict[str, Slot] = {}
        self._trust = Trust(self.paths.trusted_ca)
        self._signer: Signer | None = None
        self._authorities: ca.Authorities | None = None
        # The master's desk: what it reviewed, signed and refused, per member.
        self._reviewed: dict[tuple[str, str], tuple[object, object]] = {}
        self._signed: dict[str, dict[str, str]] = {}
        self._refused: dict[str, dict[str, dict[str, str | None]]] = {}
        # A member's view of what the master offers it.
        self._offers_seen: dict[tuple[str, str], str] = {}
        self._announcements_seen: dict[str, tuple[object, object]] = {}
        self._refused_by_master: dict[str, dict[str, Any]] = {}
        self._versions: dict[str, int] = {}
        self._waiting: set[str] = set()
        self._dirty: set[str] = set()
        self._review_call: IDelayedCall | None = None
        self._revisits: dict[str, IDelayedCall] = {}
        self._timers: dict[str, IDelayedCall] = {}
        self._waiters: list[tuple[frozenset[str], defer.Deferred[Paths]]] = []
        self._listeners: list[CertificateListener] = []
        self._published: object = None
        self._unsubscribe: Callable[[], None] | None = None

    @classmethod
    def from_config(
        cls, config: NodeConfig, state: ClusterState, clock: IReactorTime
    ) -> PKIService:
        return cls(config.cluster, config.name, config.role, config.node_dir, state, clock)

    # -- the component-facing API --------------------------------------------------------

    def installed(self, name: str) -> bool:
        slot = self._slots.get(name)
        return slot is not None and slot.certificate is not None

    def when_installed(self, names: Iterable[str]) -> defer.Deferred[Paths]:
        """Fires with :attr:`paths` once every named certificate (and its kubeconfig) is in place.

        Cancelling the Deferred just stops waiting.
        """
        wanted = frozenset(names)
        unknown = wanted - self.specs.keys()
        if unknown:
            raise ValueError(f"{', '.join(sorted(unknown))}: not certificates of a {self.role}")
        if all(self.installed(name) for name in wanted):
            return defer.succeed(self.paths)

        def cancel(deferred: defer.Deferred[Paths]) -> None:
            self._waiters = [waiter for waiter in self._waiters if waiter[1] is not deferred]

        deferred: defer.Deferred[Paths] = defer.Deferred(cancel)
        self._waiters.append((wanted, deferred))
        return deferred

    def subscribe(self, listener: CertificateListener) -> Callable[[], None]:
        """Call ``listener`` after each installation; returns an unsubscriber."""
        self._listeners.append(listener)

        def unsubscribe() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return unsubscribe

    def status(self) -> dict[str, Any]:
        """Everything ``hepto status`` shows of the PKI, as JSON-able values."""
        certificates: dict[str, Any] = {}
        for name, slot in sorted(self._slots.items()):
            entry: dict[str, Any] = {"state": "missing"}
            if slot.certificate is not None:
                entry = dict(ca.describe(slot.certificate))
                entry["renew_at"] = store.renewal_time(slot.certificate).isoformat()
                entry["state"] = (
                    "valid" if slot.certificate.not_valid_after_utc > self._now() else "expired"
                )
                entry["file"] = str(self.paths.certificate(name))
            if slot.pending is not None:
                entry["requested"] = keys.fingerprint(slot.pending)[:16]
            certificates[name] = entry
        result: dict[str, Any] = {
            "role": self.role,
            "trusted_ca": None
            if self._trust.certificate is None
            else ca.describe(self._trust.certificate),
            "certificates": certificates,
            "refusals": self.refusals.as_json(),
            "refusals_evicted": self.refusals.evicted,
            "dropped": dict(self.dropped),
        }
        if self._authorities is not None:
            result["authorities"] = {
                authority.name: ca.describe(authority.certificate)
                for authority in self._authorities
            }
            result["outstanding"] = {
                member: sorted(names) for member, names in sorted(self._signed.items())
            }
            result["waiting"] = sorted(self._waiting)
        else:
            result["refused_by_master"] = dict(self._refused_by_master)
        return result

    # -- lifecycle -----------------------------------------------------------------------

    def startService(self) -> None:
        """Load or make everything, then follow the state.

        Raises :class:`~hepto.pki.ca.AuthorityError` when CA files are damaged.
        """
        now = self._now()
        keys.ensure_directory(self.paths.pki_dir)
        self._trust = Trust.load(self.paths.trusted_ca)
        if self.is_master:
            self._start_authorities(now)
        for spec in self.specs.values():
            slot = store.load_slot(self.paths, spec)
            self._slots[spec.name] = slot
            if slot.certificate is not None and slot.key is not None:
                self._validate_installed(slot, now)
        for slot in self._slots.values():
            if self.is_master and slot.due(now):
                self._sign_locally(slot, now)
                continue
            if slot.certificate is not None:
                # Kept in use, even when due, until its replacement is installed.
                self._write_kubeconfig(slot)
            if slot.due(now) or slot.pending is not None:
                store.prepare_request(self.paths, slot)
            else:
                self._schedule_renewal(slot)
        self._publish()
        self._unsubscribe = self.state.subscribe(lambda change: self._mark(change.name))
        for name in self.state.members():
            self._mark(name)
        super().startService()

    def _start_authorities(self, now: datetime.datetime) -> None:
        authorities, created = ca.load_or_create_authorities(
            self.paths.authority_dir, self.cluster, now
        )
        self.log.info(
            "{verb} the certificate authorities of cluster {cluster} in {directory}",
            verb="Created" if created else "Loaded",
            cluster=self.cluster,
            directory=str(self.paths.authority_dir),
        )
        try:
            self._trust.pin(authorities.kubernetes.certificate)
        except Refused:
            raise _foreign_pin(self.paths) from None
        self._authorities = authorities
        self._signer = Signer(
            self.cluster, authorities, KeyLedger.load(self.paths.ledger), self.lifetime
        )

    def stopService(self) -> None:
        super().stopService()
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        calls = [*self._timers.values(), *self._revisits.values()]
        if self._review_call is not None:
            calls.append(self._review_call)
        for call in calls:
            if call.active():
                call.cancel()
        self._timers.clear()
        self._revisits.clear()
        self._review_call = None

    # -- own certificates ----------------------------------------------------------------

    def _now(self) -> datetime.datetime:
        return _utc(self.clock.seconds())

    def _validate_installed(self, slot: Slot, now: datetime.datetime) -> None:
        """A stored certificate must still chain to the trusted CA and suit its spec."""
        assert slot.certificate is not None and slot.key is not None
        if self._authorities is not None:
            authority: x509.Certificate | None = self._authorities[slot.spec.authority].certificate
        else:
            authority = self._trust.certificate
        if authority is None:
            store.forget_installed(slot)
            return
        try:
            policy.check_issued(slot.certificate, slot.spec, slot.key, authority, now)
        except Refused as refused:
            if refused.code == policy.VALIDITY and slot.certificate.not_valid_after_utc <= now:
                # Expired: keep it for status, the renewal is due at once anyway.
                return
            self.log.warn(
                "Replacing the stored {certificate}: {reason}",
                certificate=slot.name,
                reason=refused.reason,
            )
            store.forget_installed(slot)

    def _sign_locally(self, slot: Slot, now: datetime.datetime) -> None:
        assert self._signer is not None
        key = keys.generate_key()
        certificate = self._signer.sign_local(slot.spec, key.public_key(), now)
        self._install(slot, key, certificate)

    def _install(self, slot: Slot, key: keys.PrivateKey, certificate: x509.Certificate) -> None:
        store.install(self.paths, slot, key, certificate)
        kubeconfig_path = self._write_kubeconfig(slot)
        self._schedule_renewal(slot)
        self.log.info(
            "Installed {certificate} ({subject}) valid until {not_after}",
            certificate=slot.name,
            subject=certificate.subject.rfc4514_string(),
            not_after=certificate.not_valid_after_utc.isoformat(),
        )
        change = CertificateChange(
            name=slot.name,
            certificate=self.paths.certificate(slot.name),
            key=self.paths.key(slot.name),
            kubeconfig=kubeconfig_path,
            not_after=certificate.not_valid_after_utc,
            fingerprint=keys.fingerprint(key),
        )
        for listener in list(self._listeners):
            try:
                listener(change)
            except Exception:
                self.log.failure("Certificate listener {listener!r} failed", listener=listener)
        ready = [waiter for waiter in self._waiters if all(map(self.installed, waiter[0]))]
        self._waiters = [waiter for waiter in self._waiters if waiter not in ready]
        for _, deferred in ready:
            deferred.callback(self.paths)

    def _write_kubeconfig(self, slot: Slot) -> Path | None:
        users = [user for user, name in KUBECONFIGS.items() if name == slot.name]
        if not users or slot.certificate is None or slot.key is None:
            return None
        authority_pem = self._trust.pem
        assert authority_pem is not None
        path = self.paths.kubeconfig(users[0])
        text = kubeconfig.render(
            cluster=self.cluster,
            server=kubeconfig.server_url(plan.apiserver_address(self.cluster)),
            authority_pem=authority_pem,
            user=slot.spec.common_name,
            certificate_pem=store.certificate_pem(slot.certificate),
            key_pem=keys.private_pem(slot.key),
        )
        keys.write_secret(path, text.encode())
        return path

    def _schedule_renewal(self, slot: Slot) -> None:
        assert slot.certificate is not None
        previous = self._timers.pop(slot.name, None)
        if previous is not None and previous.active():
            previous.cancel()
        delay = (store.renewal_time(slot.certificate) - self._now()).total_seconds()
        self._timers[slot.name] = self.clock.callLater(max(0.0, delay), self._renew, slot.name)

    def _renew(self, name: str) -> None:
        self._timers.pop(name, None)
        slot = self._slots[name]
        self.log.info("Renewing {certificate}", certificate=name)
        if self.is_master:
            self._sign_locally(slot, self._now())
        else:
            store.prepare_request(self.paths, slot)
            self._publish()

    # -- the record ----------------------------------------------------------------------

    def _section(self) -> dict[str, Any] | None:
        section: dict[str, Any] = {}
        requests = {
            name: slot.request
            for name, slot in sorted(self._slots.items())
            if slot.pending is not None and slot.request is not None
        }
        if requests:
            section["csr"] = requests
        if self.is_master:
            section["ca"] = self._trust.pem
            if self._signed:
                section["signed"] = {member: dict(names) for member, names in self._signed.items()}
            if self._refused:
                section["refused"] = {
                    member: {name: dict(entry) for name, entry in names.items()}
                    for member, names in self._refused.items()
                }
        return section or None

    def _publish(self) -> None:
        section = self._section()
        if section == self._published:
            return
        try:
            self.state.publish(RECORD_KEY, section)
        except (TypeError, ValueError):
            self._count("publish_failures")
            self.log.failure("Could not publish the PKI entry of the record")
            return
        self._published = section

    # -- following the state ---------------------------------------------------------------

    def _mark(self, name: str) -> None:
        if name == self.state.name:
            return
        self._dirty.add(name)
        if self._review_call is None:
            self._review_call = self.clock.callLater(0, self._review)

    def _review(self) -> None:
        self._review_call = None
        dirty, self._dirty = self._dirty, set()
        members = self.state.members()
        for name in sorted(dirty):
            member = members.get(name)
            try:
                if member is None or member.status == LEFT:
                    self._forget(name)
                else:
                    self._review_member(member)
            except Exception:
                # A bug met with one member's record must not stop the others'.
                self._count("review_failures")
                self.log.failure("Reviewing the record of {member} failed", member=name)
        if self._signer is not None:
            self._signer.ledger.save()
        self._publish()

    def _forget(self, name: str) -> None:
        """A member left: drop what was in flight for it (its ledger entries stay)."""
        self._versions.pop(name, None)
        self._waiting.discard(name)
        if self._signed.pop(name, None) is not None:
            self._wake_waiting()
        self._refused.pop(name, None)
        self._announcements_seen.pop(name, None)
        for table in (self._reviewed, self._offers_seen):
            for key in [key for key in table if key[0] == name]:
                del table[key]

    def _count(self, what: str) -> None:
        self.dropped[what] = self.dropped.get(what, 0) + 1

    def _refuse(self, member: str, subject: str, refused: Refused) -> None:
        if self.refusals.add(member, subject, refused, self._now()):
            self.log.warn(
                "Refused {subject} of {member}: {reason}",
                member=member,
                subject=subject,
                code=refused.code,
                reason=refused.reason,
            )

    def _review_member(self, member: Member) -> None:
        record = member.record
        if record is None:
            return
        last = self._versions.get(member.name)
        if last is not None and record.version < last:
            self._count(policy.STALE_RECORD)
            self.log.warn(
                "Ignoring version {version} of {member}'s record: version {last} was seen",
                member=member.name,
                version=record.version,
                last=last,
            )
            return
        self._versions[member.name] = record.version
        section = record.get(RECORD_KEY)
        if section is not None and not isinstance(section, Mapping):
            self._refuse(
                member.name,
                "record",
                Refused(policy.MALFORMED, f"its {RECORD_KEY!r} entry is not a mapping"),
            )
            section = None
        section = section or {}
        role = record.get("role")
        self._review_announcement(member.name, role, section)
        if self._signer is not None:
            self._review_requests(member.name, role, section)
        else:
            self._review_offers(member.name, role, section)

    def _review_announcement(self, name: str, role: object, section: Mapping[str, Any]) -> None:
        pem = section.get("ca")
        if pem is None or self._announcements_seen.get(name) == (role, pem):
            return
        self._announcements_seen[name] = (role, pem)
        try:
            pinned = self._trust.consider(name, role, pem)
        except Refused as refused:
            self._refuse(name, "ca", refused)
            return
        self.refusals.clear(name, "ca")
        if pinned:
            assert self._trust.certificate is not None
            self.log.info(
                "Trusting the cluster CA {subject} announced by master {member}",
                subject=self._trust.certificate.subject.rfc4514_string(),
                member=name,
            )

    # -- the master's desk -----------------------------------------------------------------

    def _review_requests(self, member: str, role: object, section: Mapping[str, Any]) -> None:
        assert self._signer is not None
        requests = section.get("csr") or {}
        if not isinstance(requests, Mapping) or len(requests) > MAX_REQUESTS:
            what = "not a mapping" if not isinstance(requests, Mapping) else "too many"
            self._refuse(member, "csr", Refused(policy.MALFORMED, f"its CSR list is {what}"))
            requests = {}
        if requests and member not in self._signed and len(self._signed) >= MAX_OUTSTANDING:
            if member not in self._waiting:
                self._waiting.add(member)
                self._count("deferred_requests")
            return
        self._waiting.discard(member)
        now = self._now()
        for name, pem in requests.items():
            if self._reviewed.get((member, name)) == (role, pem):
                continue
            self._reviewed[member, name] = (role, pem)
            try:
                certificate = self._signer.sign_remote(member, role, name, pem, now)
            except Refused as refused:
                self._refuse(member, policy.shorten(name, 40), refused)
                self._signed.get(member, {}).pop(name, None)
                # Answers go back only under names a member could legitimately use.
                if name in CERTIFICATES:
                    self._refused.setdefault(member, {})[name] = {
                        "code": refused.code,
                        "reason": refused.reason,
                        "key": _request_key(pem),
                    }
                continue
            self.refusals.clear(member, name)
            self._refused.get(member, {}).pop(name, None)
            self._signed.setdefault(member, {})[name] = store.certificate_pem(certificate)
            self.log.info(
                "Signed {certificate} for {member} ({subject}) until {not_after}",
                certificate=name,
                member=member,
                subject=certificate.subject.rfc4514_string(),
                not_after=certificate.not_valid_after_utc.isoformat(),
            )
        # A request withdrawn means installed (or given up): its answer leaves the record.
        for table in (self._signed, self._refused):
            answers = table.get(member, {})
            for name in [name for name in answers if name not in requests]:
                del answers[name]
            if not answers and table.pop(member, None) is not None and table is self._signed:
                self._wake_waiting()
        for key in [key for key in self._reviewed if key[0] == member and key[1] not in requests]:
            del self._reviewed[key]

    def _wake_waiting(self) -> None:
        for name in sorted(self._waiting)[: MAX_OUTSTANDING - len(self._signed)]:
            self._mark(name)

    # -- a member receiving -----------------------------------------------------------------

    def _review_offers(self, master: str, role: object, section: Mapping[str, Any]) -> None:
        trusted = self._trust.pem
        if trusted is None or not is_master_role(role) or section.get("ca") != trusted:
            return
        refusals = _mapping_for(section.get("refused"), self.member)
        self._refused_by_master = {
            str(name): {
                "code": policy.shorten(entry.get("code"), 32),
                "reason": policy.shorten(entry.get("reason"), 200),
            }
            for name, entry in refusals.items()
            if isinstance(entry, Mapping)
        }
        for name, entry in refusals.items():
            slot = self._slots.get(name)
            if (
                isinstance(entry, Mapping)
                and entry.get("code") == policy.RETIRED_KEY
                and slot is not None
                and slot.pending is not None
                and entry.get("key") == keys.fingerprint(slot.pending)
            ):
                # The master will never sign this key again (an old backup?): start over.
                self.log.warn(
                    "The master refuses the key of {certificate} as retired; making a new one",
                    certificate=name,
                )
                store.drop_pending(self.paths, slot)
                store.prepare_request(self.paths, slot)
        now = self._now()
        for name, pem in _mapping_for(section.get("signed"), self.member).items():
            if self._offers_seen.get((master, name)) == pem:
                continue
            slot = self._slots.get(name)
            if slot is None or slot.pending is None:
                self._offers_seen[master, name] = pem
                continue
            self._consider_offer(master, slot, pem, now)

    def _consider_offer(self, master: str, slot: Slot, pem: object, now: datetime.datetime) -> None:
        assert slot.pending is not None and self._trust.certificate is not None
        try:
            certificate = policy.parse_certificate(pem)
        except Refused as refused:
            self._offers_seen[master, slot.name] = str(pem)
            self._refuse(master, slot.name, refused)
            return
        try:
            policy.check_issued(certificate, slot.spec, slot.pending, self._trust.certificate, now)
        except Refused as refused:
            if refused.code == policy.KEY_MISMATCH:
                # An answer to an earlier request of ours, still in the master's record.
                self._offers_seen[master, slot.name] = str(pem)
                self._count("offers_for_other_keys")
                return
            if refused.code == policy.VALIDITY and certificate.not_valid_before_utc > now:
                # Our clock is behind the master's: look again when it becomes valid.
                self._revisit(master, certificate.not_valid_before_utc)
            else:
                self._offers_seen[master, slot.name] = str(pem)
            self._refuse(master, slot.name, refused)
            return
        self._offers_seen[master, slot.name] = str(pem)
        self.refusals.clear(master, slot.name)
        self._install(slot, slot.pending, certificate)

    def _revisit(self, member: str, when: datetime.datetime) -> None:
        previous = self._revisits.pop(member, None)
        if previous is not None and previous.active():
            previous.cancel()
        delay = max(0.0, (when - self._now()).total_seconds()) + 1

        def again() -> None:
            self._revisits.pop(member, None)
            self._mark(member)

        self._revisits[member] = self.clock.callLater(delay, again)


def _mapping_for(table: object, member: str) -> Mapping[str, Any]:
    """``table[member]`` when both levels are mappings, else nothing."""
    if not isinstance(table, Mapping):
        return {}
    entry = table.get(member)
    return entry if isinstance(entry, Mapping) else {}


def _request_key(pem: object) -> str | None:
    """The fingerprint of a CSR's key, if it can be read at all."""
    try:
        return keys.fingerprint(policy.parse_csr(pem).public_key())  # type: ignore[arg-type]
    except (Refused, TypeError, ValueError):
        return None
