"""Which certificates each role needs, and exactly what each one states, as plain data.

A :class:`CertificateSpec` is the single description of a certificate: members build
their CSRs from it, the signing policy compares a CSR against it, the signer issues
from it (never from what a CSR asks for), and members check what they receive against
it.  Everything in it derives from the cluster and node names, so the master can work
out, for any member, the only CSR it will accept.

This module imports no cryptography: the resident agent and ``hepto.kube`` read the
names and specs; :mod:`hepto.pki.requests` renders them as X.509 in the PKI worker.
"""

from __future__ import annotations

import datetime
import ipaddress
from typing import Final

import attrs

from hepto import plan

#: The key of a member's gossip record that the PKI owns.
RECORD_KEY: Final = "pki"
#: The keys of a record's ``pki`` entry (``hepto.pki.service`` describes the protocol):
#: a member's requests; a master's CA, proof of mastership, answers and refusals.
CSR_KEY: Final = "csr"
CA_KEY: Final = "ca"
MASTERSHIP_KEY: Final = "master"
SIGNED_KEY: Final = "signed"
REFUSED_KEY: Final = "refused"

# The three certificate authorities of a cluster.
KUBERNETES_CA: Final = "kubernetes"
ETCD_CA: Final = "etcd"
FRONT_PROXY_CA: Final = "front-proxy"
AUTHORITIES: Final = (KUBERNETES_CA, ETCD_CA, FRONT_PROXY_CA)

# Certificate names: file names, record keys and the words of ``hepto status``.
KUBELET_CLIENT: Final = "kubelet-client"
KUBELET_SERVING: Final = "kubelet-serving"
KUBE_PROXY: Final = "kube-proxy"
ETCD_SERVER: Final = "etcd-server"
ETCD_PEER: Final = "etcd-peer"
APISERVER: Final = "apiserver"
APISERVER_ETCD_CLIENT: Final = "apiserver-etcd-client"
APISERVER_KUBELET_CLIENT: Final = "apiserver-kubelet-client"
FRONT_PROXY_CLIENT: Final = "front-proxy-client"
CONTROLLER_MANAGER: Final = "controller-manager"
SCHEDULER: Final = "scheduler"
COREDNS: Final = "coredns"
ADMIN: Final = "admin"
CERTIFICATES: Final = (
    KUBELET_CLIENT,
    KUBELET_SERVING,
    KUBE_PROXY,
    ETCD_SERVER,
    ETCD_PEER,
    APISERVER,
    APISERVER_ETCD_CLIENT,
    APISERVER_KUBELET_CLIENT,
    FRONT_PROXY_CLIENT,
    CONTROLLER_MANAGER,
    SCHEDULER,
    COREDNS,
    ADMIN,
)

#: Extended key usages, by the words specs use.
CLIENT: Final = "client"
SERVER: Final = "server"

#: One year, as kubeadm and k3s: short enough that a leaked key expires on its own,
#: long enough that a member offline for months still holds valid certificates.
LEAF_LIFETIME: Final = datetime.timedelta(days=365)

#: Kubernetes' groups and users that the certificates name.
MASTERS_GROUP: Final = "system:masters"
NODES_GROUP: Final = "system:nodes"
NODE_USER_PREFIX: Final = "system:node:"
KUBE_PROXY_USER: Final = "system:kube-proxy"
#: The cluster DNS server's user, which the master binds to a role of its own.
COREDNS_USER: Final = "hepto:coredns"
CLUSTER_DOMAIN: Final = "cluster.local"
LOOPBACK: Final = ipaddress.IPv6Address("::1")


@attrs.frozen
class CertificateSpec:
    """Everything a certificate states: who, for which names, for what use, by which CA."""

    name: str
    authority: str
    common_name: str
    organizations: tuple[str, ...] = ()
    dns_names: tuple[str, ...] = ()
    ip_addresses: tuple[ipaddress.IPv6Address, ...] = ()
    usages: tuple[str, ...] = (CLIENT,)


def kubelet_specs(cluster: str, name: str) -> tuple[CertificateSpec, ...]:
    """What node ``name``'s kubelet and kube-proxy need: all a remote member may obtain."""
    return (
        CertificateSpec(
            name=KUBELET_CLIENT,
            authority=KUBERNETES_CA,
            common_name=NODE_USER_PREFIX + name,
            organizations=(NODES_GROUP,),
        ),
        CertificateSpec(
            name=KUBELET_SERVING,
            authority=KUBERNETES_CA,
            common_name=NODE_USER_PREFIX + name,
            organizations=(NODES_GROUP,),
            dns_names=(name,),
            ip_addresses=(plan.mesh_address(cluster, name),),
            usages=(SERVER,),
        ),
        # Every node's kube-proxy is the same user, which Kubernetes' bootstrap policy
        # binds to the system:node-proxier role, as kubeadm's shared account is.
        CertificateSpec(
            name=KUBE_PROXY,
            authority=KUBERNETES_CA,
            common_name=KUBE_PROXY_USER,
        ),
    )


def master_specs(cluster: str, name: str) -> tuple[CertificateSpec, ...]:
    """The control plane's certificates, which the master signs for itself."""
    mesh = plan.mesh_address(cluster, name)
    # etcd members dial each other by mesh address and are probed on loopback; etcd wants
    # serverAuth and clientAuth on both, since its server also dials peers and itself.
    etcd_names = (name, "localhost")
    etcd_addresses = (mesh, LOOPBACK)
    service_names = (
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        f"kubernetes.default.svc.{CLUSTER_DOMAIN}",
        "localhost",
    )
    return (
        CertificateSpec(
            name=ETCD_SERVER,
            authority=ETCD_CA,
            common_name=name,
            dns_names=etcd_names,
            ip_addresses=etcd_addresses,
            usages=(SERVER, CLIENT),
        ),
        CertificateSpec(
            name=ETCD_PEER,
            authority=ETCD_CA,
            common_name=name,
            dns_names=etcd_names,
            ip_addresses=etcd_addresses,
            usages=(SERVER, CLIENT),
        ),
        CertificateSpec(
            name=APISERVER,
            authority=KUBERNETES_CA,
            common_name="kube-apiserver",
            dns_names=service_names,
            ip_addresses=(
                mesh,
                plan.apiserver_address(cluster),
                plan.kubernetes_service_address(cluster),
                LOOPBACK,
            ),
            usages=(SERVER,),
        ),
        CertificateSpec(
            name=APISERVER_ETCD_CLIENT,
            authority=ETCD_CA,
            common_name="kube-apiserver-etcd-client",
        ),
        # system:masters because the kubelet asks the apiserver (webhook authorization)
        # whether this user may use its API, before any RBAC binding could exist.
        CertificateSpec(
            name=APISERVER_KUBELET_CLIENT,
            authority=KUBERNETES_CA,
            common_name="kube-apiserver-kubelet-client",
            organizations=(MASTERS_GROUP,),
        ),
        CertificateSpec(
            name=FRONT_PROXY_CLIENT,
            authority=FRONT_PROXY_CA,
            common_name="front-proxy-client",
        ),
        CertificateSpec(
            name=CONTROLLER_MANAGER,
            authority=KUBERNETES_CA,
            common_name="system:kube-controller-manager",
        ),
        CertificateSpec(
            name=SCHEDULER,
            authority=KUBERNETES_CA,
            common_name="system:kube-scheduler",
        ),
        CertificateSpec(
            name=COREDNS,
            authority=KUBERNETES_CA,
            common_name=COREDNS_USER,
        ),
        CertificateSpec(
            name=ADMIN,
            authority=KUBERNETES_CA,
            common_name="hepto-admin",
            organizations=(MASTERS_GROUP,),
        ),
    )


def specs_for_role(role: str, cluster: str, name: str) -> tuple[CertificateSpec, ...]:
    """Every certificate a member of ``role`` holds."""
    specs: tuple[CertificateSpec, ...] = ()
    if role in ("master", "full"):
        specs += master_specs(cluster, name)
    if role in ("node", "full"):
        specs += kubelet_specs(cluster, name)
    return specs


def is_master_role(role: object) -> bool:
    return role in ("master", "full")
