"""A member's side of the master's answers: the certificates it offers, and its refusals.

:class:`Offers` is the part of a member's :class:`~hepto.pki.desk.Desk` that reads the
master's record: the certificates signed for this member's pending keys, each checked
(:func:`hepto.pki.policy.check_issued`) before it is installed, and the refusals, which
``hepto status`` shows and which tell the member when a key of its own will never be
signed.  It is the counterpart of the master's :class:`~hepto.pki.signing.SigningDesk`;
a master signs its own certificates locally, so its desk never asks this part.

Like the desk, it lives for one batch: the offers already looked at and the master's
refusals come from and go back to the :class:`~hepto.pki.protocol.DeskMemory`.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import attrs
from cryptography import x509

from hepto.pki import keys, policy, store
from hepto.pki.errors import Refused
from hepto.pki.joblog import Logger
from hepto.pki.paths import Paths
from hepto.pki.protocol import DeskMemory
from hepto.pki.refusals import RefusalLog
from hepto.pki.specs import CA_KEY, REFUSED_KEY, SIGNED_KEY, is_master_role
from hepto.pki.store import Slot
from hepto.pki.trust import Trust


@attrs.define(eq=False)
class Offers:
    """Installs what the master signed for this member, and heeds what it refused.

    ``slots`` are the desk's (filled as it starts or resumes); ``refuse``, ``count``,
    ``install`` and ``revisit`` are the desk's too: a refusal to log and show, a drop to
    count, a certificate to install, a master's record to look at again later.
    """

    log: ClassVar[Logger] = Logger(namespace="hepto.pki")

    member: str
    paths: Paths
    now: datetime.datetime
    slots: Mapping[str, Slot]
    refusals: RefusalLog
    refuse: Callable[[str, str, Refused], None]
    count: Callable[[str], None]
    install: Callable[[Slot, keys.PrivateKey, x509.Certificate], None]
    revisit: Callable[[str, datetime.datetime], None]
    #: Per (master, certificate), the offer last looked at: one seen before is not
    #: looked at again.
    seen: dict[tuple[str, str], str] = attrs.field(factory=dict)
    #: What the master refused this member, per certificate (``code``, ``reason``).
    refused_by_master: dict[str, dict[str, str]] = attrs.field(factory=dict)

    def remember(self, memory: DeskMemory) -> None:
        """Put what the next batch must know into ``memory``."""
        memory.offers_seen = self.seen
        memory.refused_by_master = self.refused_by_master

    def forget(self, member: str) -> None:
        """``member`` left: the offers it made are forgotten."""
        for key in [key for key in self.seen if key[0] == member]:
            del self.seen[key]

    def review(self, master: str, role: object, section: Mapping[str, Any], trust: Trust) -> None:
        """Review the answers in ``master``'s record (its ``pki`` entry, ``section``), if
        it is a master of the CA that ``trust`` pins."""
        trusted = trust.pem
        if trusted is None or not is_master_role(role) or section.get(CA_KEY) != trusted:
            return
        refusals = _mapping_for(section.get(REFUSED_KEY), self.member)
        self.refused_by_master = {
            str(name): {
                "code": policy.shorten(entry.get("code"), 32),
                "reason": policy.shorten(entry.get("reason"), 200),
            }
            for name, entry in refusals.items()
            if isinstance(entry, Mapping)
        }
        for name, entry in refusals.items():
            slot = self.slots.get(name)
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
        for name, pem in _mapping_for(section.get(SIGNED_KEY), self.member).items():
            if self.seen.get((master, name)) == pem:
                continue
            slot = self.slots.get(name)
            if slot is None or slot.pending is None:
                self.seen[master, name] = pem
                continue
            self._consider(master, slot, pem, trust)

    def _consider(self, master: str, slot: Slot, pem: object, trust: Trust) -> None:
        assert slot.pending is not None and trust.certificate is not None
        try:
            certificate = policy.parse_certificate(pem)
        except Refused as refused:
            self.seen[master, slot.name] = str(pem)
            self.refuse(master, slot.name, refused)
            return
        try:
            policy.check_issued(certificate, slot.spec, slot.pending, trust.certificate, self.now)
        except Refused as refused:
            if refused.code == policy.KEY_MISMATCH:
                # An answer to an earlier request of ours, still in the master's record.
                self.seen[master, slot.name] = str(pem)
                self.count("offers_for_other_keys")
                return
            if refused.code == policy.VALIDITY and certificate.not_valid_before_utc > self.now:
                # Our clock is behind the master's: look again when it becomes valid.
                self.revisit(master, certificate.not_valid_before_utc)
            else:
                self.seen[master, slot.name] = str(pem)
            self.refuse(master, slot.name, refused)
            return
        self.seen[master, slot.name] = str(pem)
        self.refusals.clear(master, slot.name)
        self.install(slot, slot.pending, certificate)


def _mapping_for(table: object, member: str) -> Mapping[str, Any]:
    """``table[member]`` when both levels are mappings, else nothing."""
    if not isinstance(table, Mapping):
        return {}
    entry = table.get(member)
    return entry if isinstance(entry, Mapping) else {}
