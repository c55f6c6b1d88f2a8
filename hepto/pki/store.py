"""A member's own certificates on disk: one :class:`Slot` per certificate it holds.

A slot has at most two keys: the one of the installed certificate, and a pending one
whose CSR is out (first issue, or renewal).  Renewal makes a new key: a key then lives
at most one certificate lifetime, and a replayed CSR can only name a key that the
master has already retired (see :mod:`hepto.pki.signer`).  The pending key is stored
before its CSR is published, so a restart re-asks for the same key instead of
abandoning one the master may already have signed.

Installing writes the key, then the certificate, each atomically; components are told
afterwards (:class:`~hepto.pki.service.PKIService` subscribers) and restart on the pair.
"""

from __future__ import annotations

import contextlib
import datetime
from typing import Final

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from hepto.pki import keys
from hepto.pki.joblog import Logger
from hepto.pki.keys import PrivateKey
from hepto.pki.paths import Paths
from hepto.pki.requests import build_csr
from hepto.pki.specs import CertificateSpec

#: Renew once this share of a certificate's life has passed: a third of a year is left
#: to get a new one across master outages, as the issue asks.
RENEW_AFTER: Final = 2 / 3

log = Logger(namespace="hepto.pki")


def renewal_time(certificate: x509.Certificate) -> datetime.datetime:
    start, end = certificate.not_valid_before_utc, certificate.not_valid_after_utc
    return start + (end - start) * RENEW_AFTER


def certificate_pem(certificate: x509.Certificate) -> str:
    return certificate.public_bytes(serialization.Encoding.PEM).decode("ascii")


@attrs.define
class Slot:
    """One certificate of this member, its key, and a key waiting for a certificate."""

    spec: CertificateSpec
    key: PrivateKey | None = attrs.field(default=None, repr=False)
    certificate: x509.Certificate | None = None
    pending: PrivateKey | None = attrs.field(default=None, repr=False)
    #: The CSR published for ``pending``, kept so that every publication is identical.
    request: str | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    def due(self, now: datetime.datetime) -> bool:
        return self.certificate is None or now >= renewal_time(self.certificate)


def load_slot(paths: Paths, spec: CertificateSpec, report: bool = True) -> Slot:
    """What the disk holds for ``spec``; damaged files are ignored (and reported if ``report``).

    Unlike CAs, a leaf is cheap to replace: a damaged one just gets requested again.
    """
    warn = log.warn if report else _quiet
    slot = Slot(spec)
    key_file, cert_file = paths.key(spec.name), paths.certificate(spec.name)
    pending_file = paths.pending_key(spec.name)
    if key_file.exists() and cert_file.exists():
        try:
            key = keys.read_private_key(key_file)
            certificate = x509.load_pem_x509_certificate(cert_file.read_bytes())
        except (OSError, ValueError) as error:
            warn(
                "Ignoring the damaged {certificate} files: {error}",
                certificate=spec.name,
                error=str(error),
            )
        else:
            if keys.same_key(key, certificate.public_key()):  # type: ignore[arg-type]
                slot.key, slot.certificate = key, certificate
            else:
                warn(
                    "Ignoring {certificate}: its certificate and key do not match",
                    certificate=spec.name,
                )
    if pending_file.exists():
        try:
            slot.pending = keys.read_private_key(pending_file)
        except (OSError, ValueError) as error:
            warn(
                "Ignoring the damaged pending key of {certificate}: {error}",
                certificate=spec.name,
                error=str(error),
            )
    return slot


def _quiet(format: str, **fields: object) -> None:
    """Reports nothing: the files were reported when first loaded."""


def forget_installed(slot: Slot) -> None:
    slot.key = slot.certificate = None


def prepare_request(paths: Paths, slot: Slot) -> str:
    """The CSR for the slot's pending key, making and storing the key first if needed."""
    if slot.pending is None:
        slot.pending = keys.generate_key()
        keys.write_private_key(paths.pending_key(slot.name), slot.pending)
        slot.request = None
    if slot.request is None:
        csr = build_csr(slot.spec, slot.pending)
        slot.request = csr.public_bytes(serialization.Encoding.PEM).decode("ascii")
    return slot.request


def drop_pending(paths: Paths, slot: Slot) -> None:
    slot.pending = None
    slot.request = None
    with contextlib.suppress(FileNotFoundError):
        paths.pending_key(slot.name).unlink()


def install(paths: Paths, slot: Slot, key: PrivateKey, certificate: x509.Certificate) -> None:
    """Put ``certificate`` and its ``key`` in place of the slot's current pair."""
    keys.write_private_key(paths.key(slot.name), key)
    keys.write_public(paths.certificate(slot.name), certificate_pem(certificate).encode())
    slot.key, slot.certificate = key, certificate
    if slot.pending is not None and keys.same_key(slot.pending, key):
        drop_pending(paths, slot)
