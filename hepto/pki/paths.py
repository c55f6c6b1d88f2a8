"""Where the PKI keeps its files, and which files each Kubernetes component reads.

Layout under the node's directory (``<data-dir>/<cluster>/<name>``, 0700)::

    kubeconfig                      admin kubeconfig (master), as the original README says
    pki/                            0700
      ca.crt                        the Kubernetes CA this member trusts (pinned)
      <certificate>.crt / .key      each certificate and its key (keys 0600)
      <certificate>.next.key        a key waiting for its certificate (first issue, renewal)
      <component>.kubeconfig        kubelet, kube-proxy, controller-manager, scheduler, coredns
      signed-keys.json              master: keys signed per member (replay ledger)
      ca/                           master only: the three CAs and the service-account keys
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

import attrs

from hepto.pki.specs import (
    ADMIN,
    APISERVER,
    APISERVER_ETCD_CLIENT,
    APISERVER_KUBELET_CLIENT,
    CONTROLLER_MANAGER,
    COREDNS,
    ETCD_CA,
    ETCD_PEER,
    ETCD_SERVER,
    FRONT_PROXY_CA,
    FRONT_PROXY_CLIENT,
    KUBE_PROXY,
    KUBELET_CLIENT,
    KUBELET_SERVING,
    KUBERNETES_CA,
    SCHEDULER,
)

#: Kubeconfig users and the certificate each one embeds.
KUBECONFIGS: Final = {
    "admin": ADMIN,
    "kubelet": KUBELET_CLIENT,
    "kube-proxy": KUBE_PROXY,
    "controller-manager": CONTROLLER_MANAGER,
    "scheduler": SCHEDULER,
    "coredns": COREDNS,
}

#: The certificates each component uses: when one changes, restart the component.
COMPONENT_CERTIFICATES: Final[dict[str, tuple[str, ...]]] = {
    "etcd": (ETCD_SERVER, ETCD_PEER),
    "kube-apiserver": (
        APISERVER,
        APISERVER_ETCD_CLIENT,
        APISERVER_KUBELET_CLIENT,
        FRONT_PROXY_CLIENT,
    ),
    "kube-controller-manager": (CONTROLLER_MANAGER,),
    "kube-scheduler": (SCHEDULER,),
    "kubelet": (KUBELET_CLIENT, KUBELET_SERVING),
    "kube-proxy": (KUBE_PROXY,),
    "coredns": (COREDNS,),
}

#: The service-account key pair's file names, beside the CAs.
SERVICE_ACCOUNT: Final = "service-account"


def certificate_path(directory: Path, name: str) -> Path:
    return directory / f"{name}.crt"


def key_path(directory: Path, name: str) -> Path:
    return directory / f"{name}.key"


def service_account_key_path(directory: Path) -> Path:
    return directory / f"{SERVICE_ACCOUNT}.key"


def service_account_public_path(directory: Path) -> Path:
    return directory / f"{SERVICE_ACCOUNT}.pub"


@attrs.frozen
class Paths:
    """Every PKI file of one node, from its directory."""

    node_dir: Path

    @property
    def pki_dir(self) -> Path:
        return self.node_dir / "pki"

    @property
    def authority_dir(self) -> Path:
        return self.pki_dir / "ca"

    @property
    def trusted_ca(self) -> Path:
        return self.pki_dir / "ca.crt"

    @property
    def ledger(self) -> Path:
        return self.pki_dir / "signed-keys.json"

    def certificate(self, name: str) -> Path:
        return self.pki_dir / f"{name}.crt"

    def key(self, name: str) -> Path:
        return self.pki_dir / f"{name}.key"

    def pending_key(self, name: str) -> Path:
        return self.pki_dir / f"{name}.next.key"

    def authority_certificate(self, authority: str) -> Path:
        return certificate_path(self.authority_dir, authority)

    def authority_key(self, authority: str) -> Path:
        return key_path(self.authority_dir, authority)

    @property
    def service_account_key(self) -> Path:
        return service_account_key_path(self.authority_dir)

    @property
    def service_account_public(self) -> Path:
        return service_account_public_path(self.authority_dir)

    def kubeconfig(self, user: str) -> Path:
        if user == "admin":
            return self.node_dir / "kubeconfig"
        return self.pki_dir / f"{user}.kubeconfig"

    def component_files(self, component: str) -> dict[str, Path]:
        """The upstream flag (or kubelet config field) for each file ``component`` reads."""
        cert, key = self.certificate, self.key
        kubernetes_ca = self.trusted_ca
        if component == "etcd":
            etcd_ca = self.authority_certificate(ETCD_CA)
            return {
                "--trusted-ca-file": etcd_ca,
                "--cert-file": cert(ETCD_SERVER),
                "--key-file": key(ETCD_SERVER),
                "--peer-trusted-ca-file": etcd_ca,
                "--peer-cert-file": cert(ETCD_PEER),
                "--peer-key-file": key(ETCD_PEER),
            }
        if component == "kube-apiserver":
            return {
                "--client-ca-file": kubernetes_ca,
                "--tls-cert-file": cert(APISERVER),
                "--tls-private-key-file": key(APISERVER),
                "--etcd-cafile": self.authority_certificate(ETCD_CA),
                "--etcd-certfile": cert(APISERVER_ETCD_CLIENT),
                "--etcd-keyfile": key(APISERVER_ETCD_CLIENT),
                "--kubelet-certificate-authority": kubernetes_ca,
                "--kubelet-client-certificate": cert(APISERVER_KUBELET_CLIENT),
                "--kubelet-client-key": key(APISERVER_KUBELET_CLIENT),
                "--requestheader-client-ca-file": self.authority_certificate(FRONT_PROXY_CA),
                "--proxy-client-cert-file": cert(FRONT_PROXY_CLIENT),
                "--proxy-client-key-file": key(FRONT_PROXY_CLIENT),
                "--service-account-key-file": self.service_account_public,
                "--service-account-signing-key-file": self.service_account_key,
            }
        if component == "kube-controller-manager":
            kubeconfig = self.kubeconfig("controller-manager")
            return {
                "--kubeconfig": kubeconfig,
                "--authentication-kubeconfig": kubeconfig,
                "--authorization-kubeconfig": kubeconfig,
                "--client-ca-file": kubernetes_ca,
                "--requestheader-client-ca-file": self.authority_certificate(FRONT_PROXY_CA),
                "--root-ca-file": kubernetes_ca,
                "--service-account-private-key-file": self.service_account_key,
                "--cluster-signing-cert-file": self.authority_certificate(KUBERNETES_CA),
                "--cluster-signing-key-file": self.authority_key(KUBERNETES_CA),
            }
        if component == "kube-scheduler":
            kubeconfig = self.kubeconfig("scheduler")
            return {
                "--kubeconfig": kubeconfig,
                "--authentication-kubeconfig": kubeconfig,
                "--authorization-kubeconfig": kubeconfig,
            }
        if component == "kubelet":
            return {
                "--kubeconfig": self.kubeconfig("kubelet"),
                "authentication.x509.clientCAFile": kubernetes_ca,
                "tlsCertFile": cert(KUBELET_SERVING),
                "tlsPrivateKeyFile": key(KUBELET_SERVING),
            }
        if component == "kube-proxy":
            return {"clientConnection.kubeconfig": self.kubeconfig("kube-proxy")}
        if component == "coredns":
            return {"kubeconfig": self.kubeconfig("coredns")}
        if component == "admin":
            return {"KUBECONFIG": self.kubeconfig("admin")}
        raise ValueError(f"{component!r} is not a component with PKI files")
