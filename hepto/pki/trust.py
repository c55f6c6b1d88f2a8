"""The one Kubernetes CA a member trusts: the master's, pinned on first sight.

Gossip already proves who announced a CA (records are signed by pinned identities); this
decides whether to believe it.  Only a member whose record says it is a master may
announce one, the first such CA is stored in ``pki/ca.crt``, and any different CA
afterwards is refused and reported, even from a master: a second master or a rebuilt
one must not silently take over the nodes.  Removing ``ca.crt`` by hand is the way to
accept a new CA.
"""

from __future__ import annotations

from pathlib import Path

import attrs
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization

from hepto.pki import keys, policy
from hepto.pki.errors import AuthorityError, Refused
from hepto.pki.specs import is_master_role


def _is_self_signed_ca(certificate: x509.Certificate) -> bool:
    try:
        constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints)
        certificate.verify_directly_issued_by(certificate)
    except (x509.ExtensionNotFound, ValueError, TypeError, InvalidSignature):
        return False
    return constraints.value.ca


@attrs.define
class Trust:
    """The pinned CA certificate, if any, and the file it is kept in."""

    path: Path
    certificate: x509.Certificate | None = None

    @classmethod
    def load(cls, path: Path) -> Trust:
        """The pin stored at ``path``; a damaged one is an error, never silently re-pinned."""
        if not path.exists():
            return cls(path)
        try:
            certificate = x509.load_pem_x509_certificate(path.read_bytes())
        except (OSError, ValueError) as error:
            raise AuthorityError(
                f"{path}: the pinned cluster CA is unreadable ({error}); remove it to trust "
                "the master's CA anew"
            ) from None
        if not _is_self_signed_ca(certificate):
            raise AuthorityError(
                f"{path}: the pinned cluster CA is not a self-signed CA certificate; remove "
                "it to trust the master's CA anew"
            )
        return cls(path, certificate)

    @property
    def pem(self) -> str | None:
        if self.certificate is None:
            return None
        return self.certificate.public_bytes(serialization.Encoding.PEM).decode("ascii")

    def pin(self, certificate: x509.Certificate) -> bool:
        """Trust ``certificate``; ``True`` when it is newly pinned."""
        if self.certificate is not None:
            if self.certificate == certificate:
                return False
            raise Refused(
                policy.SECOND_CA,
                f"a second cluster CA ({certificate.subject.rfc4514_string()}, "
                f"{_short_fingerprint(certificate)}) while trusting "
                f"{_short_fingerprint(self.certificate)}",
            )
        keys.write_public(self.path, certificate.public_bytes(serialization.Encoding.PEM))
        self.certificate = certificate
        return True

    def consider(self, member: str, role: object, pem: object) -> bool:
        """A CA announced in ``member``'s record; ``True`` when it is newly pinned."""
        if not is_master_role(role):
            raise Refused(
                policy.FOREIGN_CA,
                f"{member} announces a CA but is not a master (role {policy.shorten(role)})",
            )
        certificate = policy.parse_certificate(pem)
        if not _is_self_signed_ca(certificate):
            raise Refused(policy.CA_FLAG, "the announced CA is not a self-signed CA certificate")
        return self.pin(certificate)


def _short_fingerprint(certificate: x509.Certificate) -> str:
    return "sha256:" + certificate.fingerprint(hashes.SHA256()).hex()[:16]
