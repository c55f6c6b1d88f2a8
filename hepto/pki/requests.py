"""CSRs and the X.509 form of a :class:`~hepto.pki.specs.CertificateSpec`.

The specs themselves, and the certificate names, are plain data in
:mod:`hepto.pki.specs` (re-exported here): this module is for the code that runs in the
PKI worker, where ``cryptography`` is loaded.
"""

from __future__ import annotations

from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from hepto.pki.keys import PrivateKey
from hepto.pki.specs import (
    ADMIN,
    APISERVER,
    APISERVER_ETCD_CLIENT,
    APISERVER_KUBELET_CLIENT,
    AUTHORITIES,
    CERTIFICATES,
    CLIENT,
    CLUSTER_DOMAIN,
    CONTROLLER_MANAGER,
    ETCD_CA,
    ETCD_PEER,
    ETCD_SERVER,
    FRONT_PROXY_CA,
    FRONT_PROXY_CLIENT,
    KUBE_PROXY,
    KUBELET_CLIENT,
    KUBELET_SERVING,
    KUBERNETES_CA,
    LOOPBACK,
    MASTERS_GROUP,
    NODE_USER_PREFIX,
    NODES_GROUP,
    SCHEDULER,
    SERVER,
    CertificateSpec,
    is_master_role,
    kubelet_specs,
    master_specs,
    specs_for_role,
)

__all__ = [
    "ADMIN",
    "APISERVER",
    "APISERVER_ETCD_CLIENT",
    "APISERVER_KUBELET_CLIENT",
    "AUTHORITIES",
    "CERTIFICATES",
    "CLIENT",
    "CLUSTER_DOMAIN",
    "CONTROLLER_MANAGER",
    "ETCD_CA",
    "ETCD_PEER",
    "ETCD_SERVER",
    "FRONT_PROXY_CA",
    "FRONT_PROXY_CLIENT",
    "KUBELET_CLIENT",
    "KUBELET_SERVING",
    "KUBERNETES_CA",
    "KUBE_PROXY",
    "LOOPBACK",
    "MASTERS_GROUP",
    "NODES_GROUP",
    "NODE_USER_PREFIX",
    "SCHEDULER",
    "SERVER",
    "CertificateSpec",
    "build_csr",
    "extended_key_usage",
    "is_master_role",
    "kubelet_specs",
    "master_specs",
    "specs_for_role",
    "subject",
    "subject_alternative_name",
    "usage_oids",
]

_USAGE_OIDS: Final = {
    CLIENT: ExtendedKeyUsageOID.CLIENT_AUTH,
    SERVER: ExtendedKeyUsageOID.SERVER_AUTH,
}


def subject(spec: CertificateSpec) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in spec.organizations]
    attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, spec.common_name))
    return x509.Name(attributes)


def subject_alternative_name(spec: CertificateSpec) -> x509.SubjectAlternativeName | None:
    if not spec.dns_names and not spec.ip_addresses:
        return None
    names: list[x509.GeneralName] = [x509.DNSName(name) for name in spec.dns_names]
    names += [x509.IPAddress(address) for address in spec.ip_addresses]
    return x509.SubjectAlternativeName(names)


def extended_key_usage(spec: CertificateSpec) -> x509.ExtendedKeyUsage:
    return x509.ExtendedKeyUsage([_USAGE_OIDS[usage] for usage in spec.usages])


def usage_oids(spec: CertificateSpec) -> frozenset[x509.ObjectIdentifier]:
    return frozenset(_USAGE_OIDS[usage] for usage in spec.usages)


def build_csr(spec: CertificateSpec, key: PrivateKey) -> x509.CertificateSigningRequest:
    """A CSR stating all of ``spec`` except the issuer's choices (lifetime, CA flag)."""
    builder = x509.CertificateSigningRequestBuilder().subject_name(subject(spec))
    san = subject_alternative_name(spec)
    if san is not None:
        builder = builder.add_extension(san, critical=False)
    builder = builder.add_extension(extended_key_usage(spec), critical=False)
    return builder.sign(key, hashes.SHA256())
