"""The master's certificate authorities and service-account key pair.

They are made once, on the master's first start, and only ever loaded afterwards: a
new CA would silently orphan every certificate of the cluster, so a master whose CA
files are damaged refuses to start (:class:`AuthorityError`) rather than mint new ones.
They are written into a side directory and renamed into place as a whole, so a crash
while creating them leaves either nothing or a complete set.
"""

from __future__ import annotations

import datetime
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import attrs
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from hepto.pki import keys
from hepto.pki.errors import AuthorityError
from hepto.pki.keys import PrivateKey, PublicKey
from hepto.pki.paths import (
    SERVICE_ACCOUNT,
    certificate_path,
    key_path,
    service_account_key_path,
    service_account_public_path,
)
from hepto.pki.specs import AUTHORITIES, ETCD_CA, FRONT_PROXY_CA, KUBERNETES_CA

__all__ = [
    "SERVICE_ACCOUNT",
    "AuthorityError",
    "certificate_path",
    "key_path",
    "service_account_key_path",
    "service_account_public_path",
]

#: Ten years, as kubeadm: longer than any cluster hepto expects to run without a rebuild.
CA_LIFETIME: Final = datetime.timedelta(days=3650)
#: Certificates start this much in the past, so that a member whose clock is a little
#: behind the master's does not reject a certificate as not yet valid.
BACKDATE: Final = datetime.timedelta(minutes=5)


@attrs.frozen
class Authority:
    """A CA certificate with its private key."""

    name: str
    certificate: x509.Certificate
    key: PrivateKey = attrs.field(repr=False)

    @property
    def certificate_pem(self) -> str:
        return self.certificate.public_bytes(serialization.Encoding.PEM).decode("ascii")


@attrs.frozen
class Authorities:
    """All the master signs with."""

    kubernetes: Authority
    etcd: Authority
    front_proxy: Authority
    service_account_key: PrivateKey = attrs.field(repr=False)

    def __getitem__(self, name: str) -> Authority:
        return {
            KUBERNETES_CA: self.kubernetes,
            ETCD_CA: self.etcd,
            FRONT_PROXY_CA: self.front_proxy,
        }[name]

    def __iter__(self) -> Iterator[Authority]:
        return iter((self.kubernetes, self.etcd, self.front_proxy))


def create_authority(name: str, cluster: str, now: datetime.datetime) -> Authority:
    key = keys.generate_key()
    # CN is capped at 64 characters: the cluster name goes into its own attribute.
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "hepto"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, cluster),
            x509.NameAttribute(NameOID.COMMON_NAME, f"{name}-ca"),
        ]
    )
    public = key.public_key()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + CA_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Authority(name, certificate, key)


def _files(directory: Path) -> list[Path]:
    files = []
    for name in AUTHORITIES:
        files += [certificate_path(directory, name), key_path(directory, name)]
    return [*files, service_account_key_path(directory), service_account_public_path(directory)]


def write_authorities(directory: Path, authorities: Authorities) -> None:
    for authority in authorities:
        keys.write_public(
            certificate_path(directory, authority.name), authority.certificate_pem.encode()
        )
        keys.write_private_key(key_path(directory, authority.name), authority.key)
    keys.write_private_key(service_account_key_path(directory), authorities.service_account_key)
    keys.write_public(
        service_account_public_path(directory),
        keys.public_pem(authorities.service_account_key.public_key()),
    )


def create_authorities(directory: Path, cluster: str, now: datetime.datetime) -> Authorities:
    """Make and store a new set; ``directory`` must not exist yet."""
    authorities = Authorities(
        kubernetes=create_authority(KUBERNETES_CA, cluster, now),
        etcd=create_authority(ETCD_CA, cluster, now),
        front_proxy=create_authority(FRONT_PROXY_CA, cluster, now),
        service_account_key=keys.generate_key(),
    )
    aside = directory.with_name(f".{directory.name}.new")
    shutil.rmtree(aside, ignore_errors=True)
    keys.ensure_directory(aside)
    write_authorities(aside, authorities)
    aside.rename(directory)
    return authorities


def _problem(path: Path, text: str) -> AuthorityError:
    return AuthorityError(
        f"{path}: {text}. The cluster's CA files are damaged; hepto will not replace them "
        "(every certificate of the cluster depends on them): restore them from a backup"
    )


def load_authority(directory: Path, name: str, now: datetime.datetime) -> Authority:
    cert_file, key_file = certificate_path(directory, name), key_path(directory, name)
    try:
        certificate = x509.load_pem_x509_certificate(cert_file.read_bytes())
    except OSError as error:
        raise _problem(cert_file, error.strerror or str(error)) from None
    except ValueError as error:
        raise _problem(cert_file, f"not a PEM certificate ({error})") from None
    try:
        key = keys.read_private_key(key_file)
    except OSError as error:
        raise _problem(key_file, error.strerror or str(error)) from None
    except keys.BadKey as error:
        raise _problem(key_file, str(error)) from None
    if not keys.same_key(key, certificate.public_key()):  # type: ignore[arg-type]
        raise _problem(key_file, f"does not match the certificate {cert_file.name}")
    try:
        constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints)
    except (x509.ExtensionNotFound, ValueError):
        raise _problem(cert_file, "is not a CA certificate") from None
    if not constraints.value.ca:
        raise _problem(cert_file, "is not a CA certificate")
    try:
        certificate.verify_directly_issued_by(certificate)
    except (ValueError, TypeError, InvalidSignature):
        raise _problem(cert_file, "is not a valid self-signed certificate") from None
    if certificate.not_valid_after_utc <= now:
        raise _problem(
            cert_file,
            f"expired on {certificate.not_valid_after_utc:%Y-%m-%d}; hepto does not rotate CAs",
        )
    return Authority(name, certificate, key)


def load_authorities(directory: Path, now: datetime.datetime) -> Authorities:
    loaded = {name: load_authority(directory, name, now) for name in AUTHORITIES}
    sa_key_file = service_account_key_path(directory)
    sa_public_file = service_account_public_path(directory)
    try:
        sa_key = keys.read_private_key(sa_key_file)
    except OSError as error:
        raise _problem(sa_key_file, error.strerror or str(error)) from None
    except keys.BadKey as error:
        raise _problem(sa_key_file, str(error)) from None
    try:
        sa_public: PublicKey = keys.load_public_pem(sa_public_file.read_bytes())
    except OSError as error:
        raise _problem(sa_public_file, error.strerror or str(error)) from None
    except keys.BadKey as error:
        raise _problem(sa_public_file, str(error)) from None
    if not keys.same_key(sa_key, sa_public):
        raise _problem(sa_public_file, f"does not match {sa_key_file.name}")
    return Authorities(
        kubernetes=loaded[KUBERNETES_CA],
        etcd=loaded[ETCD_CA],
        front_proxy=loaded[FRONT_PROXY_CA],
        service_account_key=sa_key,
    )


def load_or_create_authorities(
    directory: Path, cluster: str, now: datetime.datetime
) -> tuple[Authorities, bool]:
    """The master's authorities, made on first start; ``True`` when they were just made.

    A missing directory means a first start.  An existing one must hold a complete,
    consistent set, or :class:`AuthorityError` is raised.
    """
    if not directory.exists():
        return create_authorities(directory, cluster, now), True
    missing = [path.name for path in _files(directory) if not path.exists()]
    if missing:
        raise _problem(directory, f"lacks {', '.join(missing)}")
    return load_authorities(directory, now), False


def describe(certificate: x509.Certificate) -> dict[str, str]:
    """The JSON-able summary of a certificate for ``hepto status``."""
    return {
        "subject": certificate.subject.rfc4514_string(),
        "issuer": certificate.issuer.rfc4514_string(),
        "serial": format(certificate.serial_number, "x"),
        "not_before": certificate.not_valid_before_utc.isoformat(),
        "not_after": certificate.not_valid_after_utc.isoformat(),
        "fingerprint": certificate.fingerprint(hashes.SHA256()).hex(),
    }
