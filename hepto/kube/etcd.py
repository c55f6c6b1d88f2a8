"""etcd: the cluster's store, on the master's mesh address, mutual TLS everywhere.

The rationale of every flag is in ``docs/kubernetes.rst``.
"""

from __future__ import annotations

import json
from typing import Final

from hepto.kube.component import LOOPBACK, Component, Context, HTTPReadiness, flags, url
from hepto.pki.paths import COMPONENT_CERTIFICATES
from hepto.pki.specs import APISERVER_ETCD_CLIENT

NAME: Final = "etcd"
CLIENT_PORT: Final = 2379
PEER_PORT: Final = 2380


def health(body: bytes) -> str | None:
    """etcd's ``/health`` answers 200 with ``{"health":"false"}`` in some failures."""
    try:
        answer = json.loads(body)
    except ValueError:
        return f"not JSON: {body[:80]!r}"
    if not isinstance(answer, dict) or answer.get("health") != "true":
        reason = answer.get("reason") if isinstance(answer, dict) else None
        return f"etcd is not healthy: {reason or repr(body[:80])}"
    return None


def local_client_url(context: Context) -> str:
    """Where the apiserver of the same master talks to etcd."""
    return url(LOOPBACK, CLIENT_PORT)


def etcd(context: Context) -> Component:
    mesh = context.mesh_address
    client = url(mesh, CLIENT_PORT)
    local = local_client_url(context)
    peer = url(mesh, PEER_PORT)
    data_dir = context.node_dir / "etcd"
    files = context.pki.component_files(NAME)
    # The probe authenticates as the apiserver does: ready means ready for it.
    apiserver_files = context.pki.component_files("kube-apiserver")
    return Component(
        name=NAME,
        program="etcd",
        args=flags(
            ("--name", context.name),
            ("--data-dir", data_dir),
            ("--listen-client-urls", f"{client},{local}"),
            ("--advertise-client-urls", client),
            ("--listen-peer-urls", peer),
            ("--initial-advertise-peer-urls", peer),
            ("--initial-cluster", f"{context.name}={peer}"),
            ("--initial-cluster-state", "new"),
            ("--initial-cluster-token", context.cluster),
            ("--client-cert-auth", True),
            ("--peer-client-cert-auth", True),
            files=files,
        ),
        readiness=HTTPReadiness(
            url=f"{local}/health",
            ca=files["--trusted-ca-file"],
            certificate=apiserver_files["--etcd-certfile"],
            key=apiserver_files["--etcd-keyfile"],
            body_check=health,
        ),
        certificates=(*COMPONENT_CERTIFICATES[NAME], APISERVER_ETCD_CLIENT),
        directories=(data_dir,),
        # etcd fsyncs its WAL and snapshot on the way out: give it time to finish.
        stop_timeout=30.0,
    )
