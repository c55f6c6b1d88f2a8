"""kube-apiserver: on the cluster's apiserver address, Node and RBAC authorization.

The rationale of every flag is in ``docs/kubernetes.rst``.
"""

from __future__ import annotations

from typing import Final

from hepto.kube import etcd
from hepto.kube.component import Component, Context, HTTPReadiness, flags, url
from hepto.pki.kubeconfig import APISERVER_PORT
from hepto.pki.paths import COMPONENT_CERTIFICATES
from hepto.pki.specs import CLUSTER_DOMAIN, FRONT_PROXY_CLIENT, master_specs

NAME: Final = "kube-apiserver"
PORT: Final = APISERVER_PORT
#: kubeadm's issuer: the in-cluster name of this very apiserver, the same in every cluster.
SERVICE_ACCOUNT_ISSUER: Final = f"https://kubernetes.default.svc.{CLUSTER_DOMAIN}"


def front_proxy_name(context: Context) -> str:
    """The common name of the front-proxy client certificate the PKI issues."""
    specs = {spec.name: spec for spec in master_specs(context.cluster, context.name)}
    return specs[FRONT_PROXY_CLIENT].common_name


def apiserver(context: Context) -> Component:
    address = context.plan.apiserver_address
    files = context.pki.component_files(NAME)
    return Component(
        name=NAME,
        program="kube-apiserver",
        args=flags(
            ("--advertise-address", address),
            ("--bind-address", address),
            ("--secure-port", PORT),
            ("--etcd-servers", etcd.local_client_url(context)),
            ("--service-cluster-ip-range", context.plan.service_prefix),
            ("--service-account-issuer", SERVICE_ACCOUNT_ISSUER),
            ("--authorization-mode", "Node,RBAC"),
            ("--enable-admission-plugins", "NodeRestriction"),
            ("--allow-privileged", True),
            ("--kubelet-preferred-address-types", "InternalIP,Hostname"),
            # Webhooks, conversion webhooks and aggregated APIs are dialled at their
            # endpoints' pod addresses, which the mesh routes to every member: a master
            # runs no kube-proxy to turn a Service's address into one.
            ("--enable-aggregator-routing", True),
            ("--requestheader-allowed-names", front_proxy_name(context)),
            ("--requestheader-username-headers", "X-Remote-User"),
            ("--requestheader-group-headers", "X-Remote-Group"),
            ("--requestheader-extra-headers-prefix", "X-Remote-Extra-"),
            files=files,
        ),
        readiness=HTTPReadiness(url(address, PORT, "/readyz"), ca=files["--client-ca-file"]),
        dependencies=(etcd.NAME,),
        certificates=COMPONENT_CERTIFICATES[NAME],
        # Graceful termination drains requests (--shutdown-delay-duration is 0 by default).
        stop_timeout=30.0,
    )
