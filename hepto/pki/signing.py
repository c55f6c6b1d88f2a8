"""The master's signing desk: members' requests reviewed, and the answers in flight.

A :class:`SigningDesk` is the part of a master's :class:`~hepto.pki.desk.Desk` that
serves others: it reads the CSRs in a member's record, signs what policy allows
(:meth:`hepto.pki.signer.Signer.sign_remote`) and refuses the rest, and keeps the
answers that its record carries until the member withdraws the request (its
certificate is installed).  What the desk needs of a master for itself (its CAs, its
own certificates, signed locally) stays in :mod:`hepto.pki.desk`.

Like the desk, it lives for one batch: what it remembers between batches (the requests
it reviewed, its answers, the members waiting their turn) comes from and goes back to
the :class:`~hepto.pki.protocol.DeskMemory`.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Mapping
from typing import Any, Final

from hepto.pki import keys, policy, store
from hepto.pki.errors import Refused
from hepto.pki.joblog import Logger
from hepto.pki.protocol import DeskMemory, RefusedAnswer
from hepto.pki.refusals import RefusalLog
from hepto.pki.signer import Signer
from hepto.pki.specs import CERTIFICATES, CSR_KEY, REFUSED_KEY, SIGNED_KEY

#: More CSRs than any role needs: a record with more is refused whole.
MAX_REQUESTS: Final = 8
#: Members whose answers the master's record carries at once.  Each costs ~1.5 KiB, so
#: this keeps the record near 300 KiB, well under gossip's 1 MiB limit, even when
#: hundreds of nodes join together; the others wait their turn (``deferred_requests``).
MAX_OUTSTANDING: Final = 200


class SigningDesk:
    """Signs or refuses members' requests, and keeps the answers in flight."""

    log = Logger(namespace="hepto.pki")

    def __init__(
        self,
        signer: Signer,
        now: datetime.datetime,
        memory: DeskMemory,
        refusals: RefusalLog,
        *,
        refuse: Callable[[str, str, Refused], None],
        count: Callable[[str], None],
        mark: Callable[[str], None],
    ) -> None:
        """``refuse``, ``count`` and ``mark`` are the desk's: a refusal to log and show,
        a drop to count, a member to review again at once."""
        self.signer = signer
        self.now = now
        self.refusals = refusals
        self._refuse = refuse
        self._count = count
        self._mark = mark
        # Per (member, certificate), the role and CSR last reviewed: a request seen
        # before is not reviewed again.
        self._reviewed = memory.reviewed
        self._signed = memory.signed
        self._refused = memory.refused
        self._waiting = memory.waiting

    def remember(self, memory: DeskMemory) -> None:
        """Put what the next batch must know into ``memory``."""
        memory.reviewed = self._reviewed
        memory.signed = self._signed
        memory.refused = self._refused
        memory.waiting = self._waiting

    def section(self) -> dict[str, Any]:
        """The answers for the ``pki`` entry of the master's record."""
        section: dict[str, Any] = {}
        if self._signed:
            section[SIGNED_KEY] = {member: dict(names) for member, names in self._signed.items()}
        if self._refused:
            section[REFUSED_KEY] = {
                member: {name: dict(entry) for name, entry in names.items()}
                for member, names in self._refused.items()
            }
        return section

    def status(self) -> dict[str, Any]:
        """What ``hepto status`` shows of the desk: who has answers out, who waits."""
        return {
            "outstanding": {
                member: sorted(names) for member, names in sorted(self._signed.items())
            },
            "waiting": sorted(self._waiting),
        }

    def save(self) -> None:
        """Write the ledger of signed keys, before any answer it admitted is published."""
        self.signer.ledger.save()

    def forget(self, member: str) -> None:
        """``member`` left: its answers leave the record (its ledger entries stay)."""
        self._waiting.discard(member)
        if self._signed.pop(member, None) is not None:
            self._wake_waiting()
        self._refused.pop(member, None)
        for key in [key for key in self._reviewed if key[0] == member]:
            del self._reviewed[key]

    def review(self, member: str, role: object, section: Mapping[str, Any]) -> None:
        """Review the requests in ``member``'s record (its ``pki`` entry, ``section``)."""
        requests = section.get(CSR_KEY) or {}
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
        for name, pem in requests.items():
            if self._reviewed.get((member, name)) == (role, pem):
                continue
            self._reviewed[member, name] = (role, pem)
            try:
                certificate = self.signer.sign_remote(member, role, name, pem, self.now)
            except Refused as refused:
                self._refuse(member, policy.shorten(name, 40), refused)
                self._signed.get(member, {}).pop(name, None)
                # Answers go back only under names a member could legitimately use.
                if name in CERTIFICATES:
                    self._refused.setdefault(member, {})[name] = _answer(refused, pem)
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
        """Room was made in the record: as many waiting members as fit, in name order,
        get their review now."""
        for name in sorted(self._waiting)[: MAX_OUTSTANDING - len(self._signed)]:
            self._mark(name)


def _answer(refused: Refused, pem: object) -> RefusedAnswer:
    """A refusal as the master's record carries it, with the key it is about (so that
    the member can tell which of its requests it answers)."""
    return {"code": refused.code, "reason": refused.reason, "key": _request_key(pem)}


def _request_key(pem: object) -> str | None:
    """The fingerprint of a CSR's key, if it can be read at all."""
    try:
        return keys.fingerprint(policy.parse_csr(pem).public_key())  # type: ignore[arg-type]
    except (Refused, TypeError, ValueError):
        return None
