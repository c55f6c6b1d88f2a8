"""The PKI's decisions, one batch at a time: what :mod:`hepto.pki.service` asks the worker.

A :class:`Desk` is made for one batch of work and thrown away after it.  It is the PKI
service as it was when it ran in the agent, minus everything that waits: it starts (loads
or makes the CAs and this member's keys, signs the master's own certificates), renews,
and reviews the records of members that changed, and it says what it did.  Everything it
must remember between batches is :meth:`Desk.memory`, a
:class:`~hepto.pki.protocol.DeskMemory`, which the resident service keeps and hands back
with the next batch; files are reloaded from disk every time, and
only a desk writes them, each atomically (:func:`hepto.files.write_atomically`).

What a batch produces, besides files:

- :meth:`Desk.section`, the ``pki`` entry of this member's record;
- :attr:`Desk.changes`, the certificates installed (the service tells its listeners);
- :attr:`Desk.renewals` and :attr:`Desk.revisits`, when to come back (the service owns
  the timers): renew a certificate, or look at a member's record again;
- :attr:`Desk.marks`, members whose records deserve another review at once;
- :meth:`Desk.status`, what ``hepto status`` shows.

On a master, the review of other members' requests is a
:class:`~hepto.pki.signing.SigningDesk`'s; the desk keeps what serves the master itself
(its CAs, its own certificates, signed locally).  On any other member, the master's
answers (certificates offered, refusals) are reviewed by :class:`~hepto.pki.offers.Offers`.
The record protocol itself is described in :mod:`hepto.pki.service`.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from hepto import plan
from hepto.pki import ca, keys, kubeconfig, mastership, policy, store
from hepto.pki.errors import AuthorityError, Refused
from hepto.pki.joblog import Logger
from hepto.pki.offers import Offers
from hepto.pki.paths import KUBECONFIGS, Paths
from hepto.pki.protocol import CertificateChange, DeskMemory, MemberEntry
from hepto.pki.refusals import RefusalLog
from hepto.pki.signer import KeyLedger, Signer
from hepto.pki.signing import SigningDesk
from hepto.pki.specs import (
    CA_KEY,
    CSR_KEY,
    LEAF_LIFETIME,
    RECORD_KEY,
    CertificateSpec,
    is_master_role,
    specs_for_role,
)
from hepto.pki.store import Slot
from hepto.pki.trust import Trust


def foreign_pin(paths: Paths) -> AuthorityError:
    return AuthorityError(
        f"{paths.trusted_ca}: this member trusts another cluster CA than its own "
        f"({paths.authority_dir}); remove one of them"
    )


def _certificate_fingerprint(certificate: x509.Certificate) -> str:
    return certificate.fingerprint(hashes.SHA256()).hex()


class Desk:
    """One batch of this member's PKI work, in the worker: its certificates, and the
    signing desk when it is master (``hepto.pki.service`` keeps what lasts between)."""

    log = Logger(namespace="hepto.pki")

    def __init__(
        self,
        cluster: str,
        name: str,
        role: str,
        node_dir: Path,
        now: datetime.datetime,
        lifetime: datetime.timedelta = LEAF_LIFETIME,
        identity: bytes | None = None,
    ) -> None:
        self.cluster = cluster
        #: This member's identity key (gossip's), which a master's proof names.
        self.identity = identity
        self.member = name
        self.role = role
        self.paths = Paths(node_dir)
        self.now = now
        self.lifetime = lifetime
        self.specs: dict[str, CertificateSpec] = {
            spec.name: spec for spec in specs_for_role(role, cluster, name)
        }
        self.is_master = is_master_role(role)
        self.refusals = RefusalLog()
        self.dropped: dict[str, int] = {}
        self._slots: dict[str, Slot] = {}
        # Installed certificates set aside at start (their fingerprints), though on disk.
        self._ignored: dict[str, str] = {}
        self._trust = Trust(self.paths.trusted_ca)
        self._signer: Signer | None = None
        self._authorities: ca.Authorities | None = None
        # The master's: its review of others' requests, and its answers in flight.
        self._signing: SigningDesk | None = None
        self._announcements_seen: dict[str, tuple[object, object]] = {}
        self._versions: dict[str, int] = {}
        #: The members proven masters (hepto.pki.mastership), by their records.
        self.masters: set[str] = set()
        # What this batch did.
        self.changes: list[CertificateChange] = []
        self.renewals: dict[str, float] = {}
        self.revisits: dict[str, float] = {}
        self.marks: set[str] = set()
        # A member's review of what the master answers it (a master's is never asked).
        self._offers = self._make_offers(DeskMemory())

    # -- memory between batches -----------------------------------------------------------

    def memory(self) -> DeskMemory:
        """Everything the next batch must know that the files do not say."""
        memory = DeskMemory(
            announcements_seen=self._announcements_seen,
            versions=self._versions,
            masters=self.masters,
            refusals=self.refusals,
            dropped=self.dropped,
            requests={
                name: (keys.fingerprint(slot.pending), slot.request)
                for name, slot in self._slots.items()
                if slot.pending is not None and slot.request is not None
            },
            ignored=self._ignored,
            installed={
                name: _certificate_fingerprint(slot.certificate)
                for name, slot in self._slots.items()
                if slot.certificate is not None
            },
        )
        self._offers.remember(memory)
        if self._signing is not None:
            self._signing.remember(memory)
        return memory

    def _restore(self, memory: DeskMemory) -> None:
        self._announcements_seen = memory.announcements_seen
        self._versions = memory.versions
        self.masters = memory.masters
        self.refusals = memory.refusals
        self.dropped = memory.dropped
        self._ignored = memory.ignored
        self._offers = self._make_offers(memory)

    def _make_offers(self, memory: DeskMemory) -> Offers:
        return Offers(
            self.member,
            self.paths,
            self.now,
            self._slots,
            self.refusals,
            refuse=self._refuse,
            count=self._count,
            install=self._install,
            revisit=self._revisit,
            seen=memory.offers_seen,
            refused_by_master=memory.refused_by_master,
        )

    # -- starting, and resuming -------------------------------------------------------------

    def start(self) -> None:
        """Load or make everything: the start of the PKI service.

        Raises :class:`~hepto.pki.errors.AuthorityError` when CA files are damaged.
        """
        keys.ensure_directory(self.paths.pki_dir)
        self._trust = Trust.load(self.paths.trusted_ca)
        if self.is_master:
            self._start_authorities()
        for spec in self.specs.values():
            slot = store.load_slot(self.paths, spec)
            self._slots[spec.name] = slot
            if slot.certificate is not None and slot.key is not None:
                self._validate_installed(slot)
        for slot in self._slots.values():
            if self.is_master and slot.due(self.now):
                self._sign_locally(slot)
                continue
            if slot.certificate is not None:
                # Kept in use, even when due, until its replacement is installed.
                self._write_kubeconfig(slot)
            if slot.due(self.now) or slot.pending is not None:
                store.prepare_request(self.paths, slot)
            else:
                self._schedule_renewal(slot)

    def resume(self, memory: DeskMemory) -> None:
        """Take up where the previous batch left: its memory, and the files."""
        self._restore(memory)
        self._trust = Trust.load(self.paths.trusted_ca)
        if self.is_master:
            authorities = ca.load_authorities(self.paths.authority_dir, self.now)
            self._use_authorities(authorities, memory)
        requests = memory.requests
        adopted: list[Slot] = []
        for spec in self.specs.values():
            slot = store.load_slot(self.paths, spec, report=False)
            if slot.certificate is not None and (
                self._ignored.get(spec.name) == _certificate_fingerprint(slot.certificate)
            ):
                store.forget_installed(slot)
            if slot.certificate is not None and (
                memory.installed.get(spec.name) != _certificate_fingerprint(slot.certificate)
            ):
                adopted.append(slot)
            if slot.pending is not None:
                fingerprint, request = requests.get(spec.name, (None, None))
                if fingerprint == keys.fingerprint(slot.pending):
                    slot.request = request
                else:
                    # A batch that failed after making this key: its CSR anew.
                    store.prepare_request(self.paths, slot)
            self._slots[spec.name] = slot
        for slot in adopted:
            self._adopt(slot)

    def _start_authorities(self) -> None:
        authorities, created = ca.load_or_create_authorities(
            self.paths.authority_dir, self.cluster, self.now
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
            raise foreign_pin(self.paths) from None
        self._use_authorities(authorities, DeskMemory())

    def _use_authorities(self, authorities: ca.Authorities, memory: DeskMemory) -> None:
        """The master's CAs: to sign its own certificates, and others' (as remembered)."""
        self._authorities = authorities
        self._signer = Signer(
            self.cluster, authorities, KeyLedger.load(self.paths.ledger), self.lifetime
        )
        self._signing = SigningDesk(
            self._signer,
            self.now,
            memory,
            self.refusals,
            refuse=self._refuse,
            count=self._count,
            mark=self._mark,
        )

    # -- own certificates ----------------------------------------------------------------

    def _validate_installed(self, slot: Slot) -> None:
        """A stored certificate must still chain to the trusted CA and suit its spec."""
        assert slot.certificate is not None and slot.key is not None
        if self._authorities is not None:
            authority: x509.Certificate | None = self._authorities[slot.spec.authority].certificate
        else:
            authority = self._trust.certificate
        if authority is None:
            self._ignore(slot)
            return
        try:
            policy.check_issued(slot.certificate, slot.spec, slot.key, authority, self.now)
        except Refused as refused:
            if refused.code == policy.VALIDITY and slot.certificate.not_valid_after_utc <= self.now:
                # Expired: keep it for status, the renewal is due at once anyway.
                return
            self.log.warn(
                "Replacing the stored {certificate}: {reason}",
                certificate=slot.name,
                reason=refused.reason,
            )
            self._ignore(slot)

    def _ignore(self, slot: Slot) -> None:
        assert slot.certificate is not None
        self._ignored[slot.name] = _certificate_fingerprint(slot.certificate)
        store.forget_installed(slot)

    def _sign_locally(self, slot: Slot) -> None:
        assert self._signer is not None
        key = keys.generate_key()
        certificate = self._signer.sign_local(slot.spec, key.public_key(), self.now)
        self._install(slot, key, certificate)

    def _install(self, slot: Slot, key: keys.PrivateKey, certificate: x509.Certificate) -> None:
        store.install(self.paths, slot, key, certificate)
        self._ignored.pop(slot.name, None)
        self.log.info(
            "Installed {certificate} ({subject}) valid until {not_after}",
            certificate=slot.name,
            subject=certificate.subject.rfc4514_string(),
            not_after=certificate.not_valid_after_utc.isoformat(),
        )
        self._installed_now(slot)

    def _adopt(self, slot: Slot) -> None:
        """A certificate that a batch installed but could not report (its worker died)."""
        assert slot.certificate is not None
        self.log.info(
            "Found {certificate} ({subject}) installed by an interrupted batch",
            certificate=slot.name,
            subject=slot.certificate.subject.rfc4514_string(),
        )
        self._installed_now(slot)

    def _installed_now(self, slot: Slot) -> None:
        """Kubeconfig, renewal and news of the slot's certificate, new to the service."""
        assert slot.certificate is not None and slot.key is not None
        certificate, key = slot.certificate, slot.key
        kubeconfig_path = self._write_kubeconfig(slot)
        self._schedule_renewal(slot)
        self.changes.append(
            CertificateChange(
                name=slot.name,
                certificate=self.paths.certificate(slot.name),
                key=self.paths.key(slot.name),
                kubeconfig=kubeconfig_path,
                not_after=certificate.not_valid_after_utc,
                fingerprint=keys.fingerprint(key),
            )
        )

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
        self.renewals[slot.name] = store.renewal_time(slot.certificate).timestamp()

    def renew(self, name: str) -> None:
        """A renewal timer fired: make a new key, and sign it (master) or ask for it."""
        slot = self._slots[name]
        self.renewals.pop(name, None)
        self.log.info("Renewing {certificate}", certificate=name)
        if self.is_master:
            self._sign_locally(slot)
        else:
            store.prepare_request(self.paths, slot)

    def installed(self) -> list[str]:
        return sorted(name for name, slot in self._slots.items() if slot.certificate is not None)

    def status(self) -> dict[str, Any]:
        """Everything ``hepto status`` shows of the PKI, as JSON-able values."""
        certificates: dict[str, Any] = {}
        for name, slot in sorted(self._slots.items()):
            entry: dict[str, Any] = {"state": "missing"}
            if slot.certificate is not None:
                entry = dict(ca.describe(slot.certificate))
                entry["renew_at"] = store.renewal_time(slot.certificate).isoformat()
                entry["state"] = (
                    "valid" if slot.certificate.not_valid_after_utc > self.now else "expired"
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
        if self._authorities is not None and self._signing is not None:
            result["authorities"] = {
                authority.name: ca.describe(authority.certificate)
                for authority in self._authorities
            }
            result.update(self._signing.status())
        else:
            result["refused_by_master"] = dict(self._offers.refused_by_master)
        return result

    # -- the record ----------------------------------------------------------------------

    def section(self) -> dict[str, Any] | None:
        """The ``pki`` entry of this member's record, ``None`` for none."""
        section: dict[str, Any] = {}
        requests = {
            name: slot.request
            for name, slot in sorted(self._slots.items())
            if slot.pending is not None and slot.request is not None
        }
        if requests:
            section[CSR_KEY] = requests
        if self.is_master:
            section[CA_KEY] = self._trust.pem
            if self.identity is not None and self._authorities is not None:
                section[mastership.PROOF_KEY] = mastership.prove(
                    self._authorities.kubernetes.key, self.cluster, self.member, self.identity
                )
            if self._signing is not None:
                section.update(self._signing.section())
        return section or None

    # -- following the state ---------------------------------------------------------------

    def review(self, members: Mapping[str, MemberEntry | None]) -> None:
        """Review the records of members that changed (``None``: the member left)."""
        for name in sorted(members):
            entry = members[name]
            try:
                if entry is None:
                    self._forget(name)
                else:
                    self._review_member(name, entry)
            except Exception:
                # A bug met with one member's record must not stop the others'.
                self._count("review_failures")
                self.log.failure("Reviewing the record of {member} failed", member=name)
        if self._signing is not None:
            self._signing.save()

    def _mark(self, name: str) -> None:
        self.marks.add(name)

    def _forget(self, name: str) -> None:
        """A member left: drop what was in flight for it (its ledger entries stay)."""
        self._versions.pop(name, None)
        if self._signing is not None:
            self._signing.forget(name)
        self._announcements_seen.pop(name, None)
        self.masters.discard(name)
        self._offers.forget(name)

    def _count(self, what: str) -> None:
        self.dropped[what] = self.dropped.get(what, 0) + 1

    def _refuse(self, member: str, subject: str, refused: Refused) -> None:
        if self.refusals.add(member, subject, refused, self.now):
            self.log.warn(
                "Refused {subject} of {member}: {reason}",
                member=member,
                subject=subject,
                code=refused.code,
                reason=refused.reason,
            )

    def _review_member(self, name: str, entry: MemberEntry) -> None:
        version = entry.version
        last = self._versions.get(name)
        if last is not None and version < last:
            self._count(policy.STALE_RECORD)
            self.log.warn(
                "Ignoring version {version} of {member}'s record: version {last} was seen",
                member=name,
                version=version,
                last=last,
            )
            return
        self._versions[name] = version
        section = entry.pki
        if section is not None and not isinstance(section, Mapping):
            self._refuse(
                name,
                "record",
                Refused(policy.MALFORMED, f"its {RECORD_KEY!r} entry is not a mapping"),
            )
            section = None
        section = section or {}
        role = entry.role
        self._review_announcement(name, role, section)
        self._review_mastership(name, role, section, entry.identity)
        if self._signing is not None:
            self._signing.review(name, role, section)
        else:
            self._offers.review(name, role, section, self._trust)

    def _review_announcement(self, name: str, role: object, section: Mapping[str, Any]) -> None:
        pem = section.get(CA_KEY)
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

    def _review_mastership(
        self, name: str, role: object, section: Mapping[str, Any], identity: bytes | None
    ) -> None:
        """A member is a master for us once the pinned CA's key says so, for its identity."""
        proven = False
        # A record without identity is an in-memory one of the tests: nothing to judge.
        if is_master_role(role) and self._trust.certificate is not None and identity:
            proven = mastership.verify(
                self._trust.certificate.public_key(),  # type: ignore[arg-type]
                section.get(mastership.PROOF_KEY),
                self.cluster,
                name,
                identity,
            )
            if not proven:
                self._refuse(
                    name,
                    "role",
                    Refused(
                        policy.UNPROVEN_MASTER,
                        "says it is a master, without the cluster CA's proof for its identity",
                    ),
                )
        if proven:
            self.refusals.clear(name, "role")
            if name not in self.masters:
                self.log.info("{member} is a master: the cluster CA says so", member=name)
            self.masters.add(name)
        else:
            self.masters.discard(name)

    def _revisit(self, member: str, when: datetime.datetime) -> None:
        """Look at ``member``'s record again a second after ``when`` (or from now)."""
        self.revisits[member] = max(when, self.now).timestamp() + 1
