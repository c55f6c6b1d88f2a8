"""What the master agrees to sign, and what a member agrees to install.

Both directions compare against the one :class:`~hepto.pki.requests.CertificateSpec`
that the member's name and role imply, rather than listing what is forbidden: a CSR is
signed only when it asks for exactly that, and a certificate is installed only when it
states exactly that, for the member's own key, from the CA it trusts.

Every check raises :class:`Refused` with a stable ``code`` (for tests and reactions)
and a sentence for the logs and ``hepto status``.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import ExtendedKeyUsageOID

from hepto import config
from hepto.pki import keys, requests
from hepto.pki.errors import Refused
from hepto.pki.keys import PrivateKey, PublicKey
from hepto.pki.requests import subject_alternative_name, usage_oids
from hepto.pki.specs import (
    KUBE_PROXY,
    KUBELET_CLIENT,
    KUBELET_SERVING,
    CertificateSpec,
    kubelet_specs,
)

__all__ = ["Refused"]  # re-exported: raised by every check here

#: A P-256 CSR is about 500 bytes of PEM and a certificate about 800; anything far
#: larger is not ours, and parsing it would only cost time.
MAX_PEM_CHARACTERS: Final = 8192

#: What a member may obtain from the master through gossip, by role.  A ``master`` or
#: ``full`` member is a master itself and signs its own; asking another is a mistake.
REMOTE_GRANTS: Final[Mapping[str, tuple[str, ...]]] = {
    "node": (KUBELET_CLIENT, KUBELET_SERVING, KUBE_PROXY),
    "master": (),
    "full": (),
}

# Refusal codes.
MALFORMED: Final = "malformed"
TOO_LARGE: Final = "too-large"
BAD_NAME: Final = "name"
ROLE: Final = "role"
UNKNOWN_CERTIFICATE: Final = "unknown-certificate"
KEY_TYPE: Final = "key-type"
SIGNATURE: Final = "signature"
SUBJECT: Final = "subject"
SAN: Final = "san"
USAGE: Final = "usage"
CA_FLAG: Final = "ca"
EXTENSION: Final = "extension"
RETIRED_KEY: Final = "retired-key"
CHAIN: Final = "chain"
VALIDITY: Final = "validity"
KEY_MISMATCH: Final = "key-mismatch"
FOREIGN_CA: Final = "foreign-ca"
SECOND_CA: Final = "second-ca"
STALE_RECORD: Final = "stale-record"
UNPROVEN_MASTER: Final = "unproven-master"

_USAGE_NAMES: Final = {
    ExtendedKeyUsageOID.CLIENT_AUTH: "clientAuth",
    ExtendedKeyUsageOID.SERVER_AUTH: "serverAuth",
}
#: Key usages a leaf may carry: ECDSA keys sign, they never encipher.
_LEAF_KEY_USAGE: Final = frozenset({"digital_signature"})


def shorten(value: object, limit: int = 80) -> str:
    """A peer-supplied value, cut short enough for a log line."""
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _pem_bytes(pem: object, what: str) -> bytes:
    if not isinstance(pem, str):
        raise Refused(MALFORMED, f"the {what} is a {type(pem).__name__}, not PEM text")
    if len(pem) > MAX_PEM_CHARACTERS:
        raise Refused(TOO_LARGE, f"the {what} is {len(pem)} characters long")
    if pem.count("-----BEGIN ") != 1:
        raise Refused(MALFORMED, f"the {what} is not exactly one PEM block")
    try:
        return pem.encode("ascii")
    except UnicodeEncodeError:
        raise Refused(MALFORMED, f"the {what} is not ASCII") from None


def parse_csr(pem: object) -> x509.CertificateSigningRequest:
    data = _pem_bytes(pem, "CSR")
    try:
        return x509.load_pem_x509_csr(data)
    except ValueError as error:
        raise Refused(MALFORMED, f"unreadable CSR ({shorten(str(error))})") from None


def parse_certificate(pem: object) -> x509.Certificate:
    data = _pem_bytes(pem, "certificate")
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError as error:
        raise Refused(MALFORMED, f"unreadable certificate ({shorten(str(error))})") from None


def _name_items(name: x509.Name) -> list[tuple[str, object]]:
    return sorted((attribute.oid.dotted_string, attribute.value) for attribute in name)


def _extensions(item: x509.Certificate | x509.CertificateSigningRequest) -> x509.Extensions:
    try:
        return item.extensions
    except ValueError as error:
        raise Refused(MALFORMED, f"unreadable extensions ({shorten(str(error))})") from None


def _check_subject(subject: x509.Name, spec: CertificateSpec) -> None:
    if _name_items(subject) != _name_items(requests.subject(spec)):
        raise Refused(
            SUBJECT,
            f"subject {shorten(subject.rfc4514_string())!r} is not "
            f"{requests.subject(spec).rfc4514_string()!r}",
        )


def _check_alternative_names(extensions: x509.Extensions, spec: CertificateSpec) -> None:
    expected = subject_alternative_name(spec)
    try:
        found = extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        if expected is not None:
            raise Refused(SAN, f"lacks the alternative names {_describe_names(expected)}") from None
        return
    if expected is None:
        raise Refused(SAN, f"asks for alternative names {shorten(_describe_names(found))}")
    if set(found) != set(expected) or len(found) != len(expected):
        raise Refused(
            SAN,
            f"alternative names {shorten(_describe_names(found))} are not "
            f"{_describe_names(expected)}",
        )


def _describe_names(names: x509.SubjectAlternativeName) -> str:
    return ", ".join(
        str(name.value)
        if isinstance(name, x509.DNSName | x509.IPAddress)
        else f"{type(name).__name__}:{name.value!r}"
        for name in names
    )


def _check_leaf_extensions(extensions: x509.Extensions, spec: CertificateSpec) -> None:
    """No CA flag, no usage beyond the spec's, and nothing we do not know."""
    for extension in extensions:
        value = extension.value
        if isinstance(value, x509.SubjectAlternativeName | x509.SubjectKeyIdentifier):
            continue
        if isinstance(value, x509.AuthorityKeyIdentifier):
            continue
        if isinstance(value, x509.BasicConstraints):
            if value.ca:
                raise Refused(CA_FLAG, "asks to be a certificate authority")
            continue
        if isinstance(value, x509.ExtendedKeyUsage):
            found = frozenset(value)
            if found != usage_oids(spec):
                names = ", ".join(sorted(_usage_name(oid) for oid in found))
                wanted = ", ".join(sorted(_usage_name(oid) for oid in usage_oids(spec)))
                raise Refused(USAGE, f"extended key usages {shorten(names)} are not {wanted}")
            continue
        if isinstance(value, x509.KeyUsage):
            granted = {
                flag
                for flag in ("digital_signature", "key_encipherment", "key_cert_sign", "crl_sign")
                if getattr(value, flag)
            }
            if not granted <= _LEAF_KEY_USAGE:
                raise Refused(USAGE, f"key usages {', '.join(sorted(granted))} are not allowed")
            continue
        raise Refused(EXTENSION, f"unexpected extension {extension.oid.dotted_string}")


def _usage_name(oid: x509.ObjectIdentifier) -> str:
    return _USAGE_NAMES.get(oid, oid.dotted_string)


def check_request(csr: x509.CertificateSigningRequest, spec: CertificateSpec) -> PublicKey:
    """The CSR's key, when the CSR asks for exactly ``spec``; else :class:`Refused`."""
    key = csr.public_key()
    if not isinstance(key, keys.PublicKey) or not keys.is_p256(key):
        raise Refused(KEY_TYPE, f"a {type(key).__name__} key, not ECDSA P-256")
    if not csr.is_signature_valid:
        raise Refused(SIGNATURE, "the CSR is not signed by the key it carries")
    _check_subject(csr.subject, spec)
    extensions = _extensions(csr)
    _check_alternative_names(extensions, spec)
    _check_leaf_extensions(extensions, spec)
    return key


def remote_spec(cluster: str, member: str, role: object, name: object) -> CertificateSpec:
    """The only spec ``member`` of ``role`` may ask the master for under ``name``."""
    try:
        config.parse_name(member if isinstance(member, str) else None)
    except config.ConfigError:
        raise Refused(BAD_NAME, f"{shorten(member)} is not a valid node name") from None
    if not isinstance(role, str) or role not in REMOTE_GRANTS:
        raise Refused(ROLE, f"{member} announces no valid role ({shorten(role)})")
    granted = REMOTE_GRANTS[role]
    if not granted:
        raise Refused(ROLE, f"a member of role {role} is a master itself and gets nothing")
    if name not in granted:
        raise Refused(
            UNKNOWN_CERTIFICATE,
            f"{shorten(name)} is none of the certificates of role {role} ({', '.join(granted)})",
        )
    specs = {spec.name: spec for spec in kubelet_specs(cluster, member)}
    return specs[str(name)]


def check_remote_request(
    cluster: str, member: str, role: object, name: object, pem: object
) -> tuple[CertificateSpec, PublicKey]:
    """What the master signs for a CSR found in ``member``'s record, or :class:`Refused`."""
    spec = remote_spec(cluster, member, role, name)
    return spec, check_request(parse_csr(pem), spec)


def check_issued(
    certificate: x509.Certificate,
    spec: CertificateSpec,
    key: PrivateKey | PublicKey,
    authority: x509.Certificate,
    now: datetime.datetime,
) -> None:
    """Whether a member may install ``certificate`` for ``key``; else :class:`Refused`."""
    try:
        certificate.verify_directly_issued_by(authority)
    except (ValueError, TypeError, InvalidSignature):
        raise Refused(
            CHAIN, f"not issued by the trusted CA {authority.subject.rfc4514_string()}"
        ) from None
    if not certificate.not_valid_before_utc <= now < certificate.not_valid_after_utc:
        raise Refused(
            VALIDITY,
            f"valid from {certificate.not_valid_before_utc:%Y-%m-%d %H:%M} to "
            f"{certificate.not_valid_after_utc:%Y-%m-%d %H:%M}, not now",
        )
    if not keys.same_key(certificate.public_key(), key):  # type: ignore[arg-type]
        raise Refused(KEY_MISMATCH, "made for another key than this member's")
    _check_subject(certificate.subject, spec)
    extensions = _extensions(certificate)
    _check_alternative_names(extensions, spec)
    _check_leaf_extensions(extensions, spec)
