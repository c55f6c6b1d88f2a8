"""Issuing certificates, and the master's memory of which keys it has signed.

The signer copies nothing from a CSR but its public key: subject, names, usages and
lifetime all come from the :class:`~hepto.pki.requests.CertificateSpec`, so a CSR that
slipped past the policy still could not obtain more than the spec says.

Replays.  Gossip hands the master only the newest record of each member, signed by
that member's identity, so an old CSR cannot come back as current by itself.  The
:class:`KeyLedger` is the second line: once a member asks for a certificate for a new
key, the previous key is retired for that certificate and never signed again, even if
an old record (or a stolen old key with its old CSR) resurfaces, and across master
restarts since the ledger is stored.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from hepto.pki import keys, policy
from hepto.pki.ca import BACKDATE, Authorities, Authority
from hepto.pki.errors import Refused
from hepto.pki.joblog import Logger
from hepto.pki.keys import PublicKey
from hepto.pki.requests import extended_key_usage, subject, subject_alternative_name
from hepto.pki.specs import LEAF_LIFETIME, CertificateSpec

#: Retired keys remembered per member and certificate: one is added per renewal (every
#: eight months), so this is decades; a member rotating keys in a loop cannot grow the
#: ledger without bound, and gossip's ordering still protects older keys.
RETIRED_KEYS_KEPT: Final = 64
LEDGER_FORMAT: Final = 1

_LEAF_KEY_USAGE: Final = x509.KeyUsage(
    digital_signature=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=False,
    crl_sign=False,
    encipher_only=False,
    decipher_only=False,
)


def issue(
    authority: Authority,
    public_key: PublicKey,
    spec: CertificateSpec,
    now: datetime.datetime,
    lifetime: datetime.timedelta = LEAF_LIFETIME,
) -> x509.Certificate:
    """A leaf certificate for ``public_key`` stating exactly ``spec``."""
    # A leaf never outlives its CA: clients would reject it from that day anyway.
    not_after = min(now + lifetime, authority.certificate.not_valid_after_utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject(spec))
        .issuer_name(authority.certificate.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_LEAF_KEY_USAGE, critical=True)
        .add_extension(extended_key_usage(spec), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(authority.key.public_key()),
            critical=False,
        )
    )
    alternative_names = subject_alternative_name(spec)
    if alternative_names is not None:
        builder = builder.add_extension(alternative_names, critical=False)
    return builder.sign(authority.key, hashes.SHA256())


@attrs.define
class _Keys:
    current: str | None = None
    retired: list[str] = attrs.field(factory=list)


@attrs.define
class KeyLedger:
    """Per member and certificate: the key last signed, and those it replaced."""

    path: Path | None = None
    _entries: dict[tuple[str, str], _Keys] = attrs.field(factory=dict)
    #: Changed since the last :meth:`save`.
    dirty: bool = False
    log: Logger = attrs.field(factory=lambda: Logger(namespace="hepto.pki"), repr=False, eq=False)

    def admit(self, member: str, name: str, fingerprint: str) -> bool:
        """Accept signing ``fingerprint``; ``True`` when it is new (the ledger changed).

        Raises :class:`~hepto.pki.policy.Refused` for a key already retired.
        """
        entry = self._entries.setdefault((member, name), _Keys())
        if fingerprint == entry.current:
            return False
        if fingerprint in entry.retired:
            raise Refused(
                policy.RETIRED_KEY,
                f"the key {fingerprint[:16]} was replaced by a newer one: a replayed CSR",
            )
        if entry.current is not None:
            entry.retired = [*entry.retired, entry.current][-RETIRED_KEYS_KEPT:]
        entry.current = fingerprint
        self.dirty = True
        return True

    def as_json(self) -> dict[str, Any]:
        members: dict[str, dict[str, Any]] = {}
        for (member, name), entry in sorted(self._entries.items()):
            members.setdefault(member, {})[name] = {
                "current": entry.current,
                "retired": entry.retired,
            }
        return {"format": LEDGER_FORMAT, "members": members}

    def save(self) -> None:
        """Store the changes, if any: call it before any certificate it admitted leaves."""
        if self.dirty and self.path is not None:
            text = json.dumps(self.as_json(), indent=1, sort_keys=True) + "\n"
            keys.write_secret(self.path, text.encode())
        self.dirty = False

    @classmethod
    def load(cls, path: Path) -> KeyLedger:
        """The stored ledger; a damaged one is set aside and replaced by an empty one.

        Losing it only removes the second line of defence against replays, whereas
        refusing to start would stop the whole control plane over it.
        """
        ledger = cls(path)
        if not path.exists():
            return ledger
        try:
            ledger._entries = _parse_ledger(json.loads(path.read_text()))
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as error:
            aside = path.with_name(path.name + ".damaged")
            path.replace(aside)
            ledger.log.error(
                "Key ledger {path} is damaged ({error}); kept as {aside}, starting an empty one",
                path=str(path),
                error=str(error),
                aside=str(aside),
            )
        return ledger


def _parse_ledger(document: Mapping[str, Any]) -> dict[tuple[str, str], _Keys]:
    if document["format"] != LEDGER_FORMAT:
        raise ValueError(f"unknown format {document['format']!r}")
    entries = {}
    for member, names in document["members"].items():
        for name, entry in names.items():
            current = entry["current"]
            retired = entry["retired"]
            if not (current is None or isinstance(current, str)) or not all(
                isinstance(item, str) for item in retired
            ):
                raise ValueError(f"bad entry for {member}/{name}")
            entries[str(member), str(name)] = _Keys(current, list(retired))
    return entries


@attrs.define
class Signer:
    """The master's signing desk: its authorities, its policy, its ledger."""

    cluster: str
    authorities: Authorities
    ledger: KeyLedger = attrs.field(factory=KeyLedger)
    lifetime: datetime.timedelta = LEAF_LIFETIME

    def sign_local(
        self, spec: CertificateSpec, public_key: PublicKey, now: datetime.datetime
    ) -> x509.Certificate:
        """The master's own certificates: no policy, the spec is the master's own."""
        return issue(self.authorities[spec.authority], public_key, spec, now, self.lifetime)

    def sign_remote(
        self, member: str, role: object, name: object, pem: object, now: datetime.datetime
    ) -> x509.Certificate:
        """Sign a CSR found in ``member``'s record, or raise :class:`Refused`."""
        spec, public_key = policy.check_remote_request(self.cluster, member, role, name, pem)
        # The caller saves the ledger before publishing: a crash must not forget a
        # retirement, and one write per batch of signatures keeps a mass join cheap.
        self.ledger.admit(member, spec.name, keys.fingerprint(public_key))
        return issue(self.authorities[spec.authority], public_key, spec, now, self.lifetime)
