"""The API objects of the cluster's DNS, which each master keeps in place.

CoreDNS runs on the masters as a supervised process (:mod:`hepto.kube.coredns`), not
as pods, so no controller makes its endpoints: the master says where it answers.
Before CoreDNS starts, the master applies the role that lets CoreDNS read Services,
EndpointSlices and Namespaces, its binding to CoreDNS's user (``hepto:coredns``, a
certificate of the master's PKI), and the ``kube-dns`` Service at the plan's DNS
address, which has no selector.  Once CoreDNS answers, the master applies an
EndpointSlice of its own (``kube-dns-<name>``) with its mesh address; kube-proxy on
every node turns the Service's address into it.  ``docs/dns.rst`` has the rationale.

Each object is sent whole by server-side apply, so that one request creates it or
brings it back to what hepto wants, whatever an operator changed in the fields hepto
owns.  :func:`role`, :func:`binding`, :func:`service` and :func:`endpoints` are pure.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any, Final, Protocol
from urllib.parse import quote

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from hepto.kube import retry
from hepto.kube.api import JSON
from hepto.kube.coredns import PORT
from hepto.pki.specs import COREDNS_USER

NAMESPACE: Final = "kube-system"
SERVICE: Final = "kube-dns"
ROLE: Final = "hepto:coredns"
#: The labels every cluster DNS Service carries (kubeadm's, CoreDNS's manifests').
SERVICE_LABELS: Final = {"k8s-app": "kube-dns", "kubernetes.io/name": "CoreDNS"}
MANAGER: Final = "hepto"
MANAGED_BY: Final = "endpointslice.kubernetes.io/managed-by"
SERVICE_NAME_LABEL: Final = "kubernetes.io/service-name"
#: ``discovery.k8s.io/v1`` EndpointSlices with this value are left alone by the
#: controllers that make the others.
SLICE_MANAGER: Final = "cluster-dns.hepto.dev"

APPLY_TYPE: Final = "application/apply-patch+yaml"

log = Logger()


@attrs.frozen
class Manifest:
    """One object and where it lives in the API."""

    path: str
    body: JSON

    @property
    def what(self) -> str:
        return f"{self.body['kind']} {self.body['metadata']['name']}"


def _ports(protocol_names: bool) -> list[dict[str, Any]]:
    ports = [("dns", "UDP"), ("dns-tcp", "TCP")]
    if protocol_names:
        return [
            {"name": name, "port": PORT, "protocol": protocol, "targetPort": PORT}
            for name, protocol in ports
        ]
    return [{"name": name, "port": PORT, "protocol": protocol} for name, protocol in ports]


def role() -> Manifest:
    """What CoreDNS's kubernetes plugin lists and watches, and nothing more."""
    body = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": ROLE},
        "rules": [
            {
                "apiGroups": [""],
                "resources": ["services", "namespaces"],
                "verbs": ["list", "watch"],
            },
            {
                "apiGroups": ["discovery.k8s.io"],
                "resources": ["endpointslices"],
                "verbs": ["list", "watch"],
            },
        ],
    }
    return Manifest(f"/apis/rbac.authorization.k8s.io/v1/clusterroles/{quote(ROLE)}", body)


def binding() -> Manifest:
    body = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": ROLE},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": ROLE},
        "subjects": [
            {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": COREDNS_USER}
        ],
    }
    return Manifest(f"/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/{quote(ROLE)}", body)


def service(address: ipaddress.IPv6Address) -> Manifest:
    """``kube-dns`` at ``address``, without a selector: its endpoints are the masters'."""
    body = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": SERVICE, "namespace": NAMESPACE, "labels": dict(SERVICE_LABELS)},
        "spec": {
            "clusterIP": str(address),
            "clusterIPs": [str(address)],
            "ipFamilies": ["IPv6"],
            "ipFamilyPolicy": "SingleStack",
            "ports": _ports(protocol_names=True),
        },
    }
    return Manifest(f"/api/v1/namespaces/{NAMESPACE}/services/{SERVICE}", body)


def slice_name(master: str) -> str:
    return f"{SERVICE}-{master}"


def endpoints(master: str, address: ipaddress.IPv6Address) -> Manifest:
    """The master ``master``'s CoreDNS, at its mesh ``address``, as ready."""
    name = slice_name(master)
    body = {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "namespace": NAMESPACE,
            "labels": {SERVICE_NAME_LABEL: SERVICE, MANAGED_BY: SLICE_MANAGER},
        },
        "addressType": "IPv6",
        "endpoints": [{"addresses": [str(address)], "conditions": {"ready": True}}],
        "ports": _ports(protocol_names=False),
    }
    return Manifest(f"/apis/discovery.k8s.io/v1/namespaces/{NAMESPACE}/endpointslices/{name}", body)


class ApplyingAPI(Protocol):
    def request(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None = None,
        content_type: str = ...,
    ) -> Deferred[JSON]: ...


def apply(client: ApplyingAPI, manifest: Manifest) -> Deferred[JSON]:
    """Server-side apply of ``manifest``, taking over fields another manager set."""
    path = f"{manifest.path}?fieldManager={MANAGER}&force=true"
    return client.request("PATCH", path, manifest.body, APPLY_TYPE)


def apply_all(
    client: ApplyingAPI, manifests: list[Manifest], *, clock: IReactorTime
) -> Deferred[None]:
    """Applies ``manifests`` in order, asking again while the apiserver cannot answer.

    Fails with the :class:`~hepto.kube.api.APIError` of a refusal that asking again
    cannot change.
    """

    async def each() -> None:
        for manifest in manifests:
            await retry.until_done(
                lambda: apply(client, manifest),  # noqa: B023 - awaited before the next
                what=f"{manifest.what} not applied yet",
                clock=clock,
            )
            log.info("applied {what}", what=manifest.what)

    return Deferred.fromCoroutine(each())
