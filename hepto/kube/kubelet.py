"""The kubelet: the node agent of Kubernetes, on the node's mesh address.

:func:`kubelet` describes the process; :func:`config` is its KubeletConfiguration, as
JSON (which the kubelet reads as YAML), from plain values.  Every field that departs
from the upstream default is explained in ``docs/nodes.rst``.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable
from typing import Any, Final

from hepto import plan
from hepto.kube import apiserver
from hepto.kube.component import (
    LOOPBACK,
    ROLE_LABEL,
    Component,
    Context,
    HTTPReadiness,
    flags,
)
from hepto.kube.layout import Layout
from hepto.pki.paths import COMPONENT_CERTIFICATES
from hepto.pki.specs import CLUSTER_DOMAIN

NAME: Final = "kubelet"
PORT: Final = 10250
HEALTHZ_PORT: Final = 10248


def kubelet(context: Context) -> Component:
    layout = Layout(context.node_dir, context.cluster, context.name)
    files = context.pki.component_files(NAME)
    return Component(
        name=NAME,
        program="kubelet",
        args=flags(
            ("--config", layout.kubelet_config),
            ("--kubeconfig", files["--kubeconfig"]),
            ("--root-dir", layout.kubelet_root),
            ("--node-ip", context.mesh_address),
            ("--hostname-override", context.name),
            ("--node-labels", f"{ROLE_LABEL}={context.role}"),
            # The agent sets the Node's addresses (ExternalIP among them) before the
            # kubelet starts; "external" keeps the kubelet from overwriting them.
            ("--cloud-provider", "external"),
        ),
        readiness=HTTPReadiness(f"http://[{LOOPBACK}]:{HEALTHZ_PORT}/healthz", ca=None),
        # A full node's kubelet waits for its own apiserver, and stops before it.
        dependencies=("containerd", apiserver.NAME),
        certificates=COMPONENT_CERTIFICATES[NAME],
        directories=(layout.kubelet_data, layout.pod_logs),
        in_runtime_cgroups=True,
    )


def config(
    context: Context,
    containerd_socket: str,
    may_lower_oom_score: bool,
) -> dict[str, Any]:
    """The kubelet's configuration file, as a JSON-able mapping."""
    layout = Layout(context.node_dir, context.cluster, context.name)
    files = context.pki.component_files(NAME)
    settings: dict[str, Any] = {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": str(context.mesh_address),
        "port": PORT,
        "readOnlyPort": 0,
        "healthzBindAddress": str(LOOPBACK),
        "healthzPort": HEALTHZ_PORT,
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(files["authentication.x509.clientCAFile"])},
        },
        "authorization": {"mode": "Webhook"},
        "tlsCertFile": str(files["tlsCertFile"]),
        "tlsPrivateKeyFile": str(files["tlsPrivateKeyFile"]),
        "rotateCertificates": False,
        "serverTLSBootstrap": False,
        "containerRuntimeEndpoint": f"unix://{containerd_socket}",
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": str(layout.pods_cgroup),
        "failCgroupV1": False,
        "failSwapOn": False,
        "clusterDNS": [str(plan.dns_address(context.cluster))],
        "clusterDomain": CLUSTER_DOMAIN,
        "resolvConf": str(layout.resolv_conf),
        "podLogsDir": str(layout.pod_logs),
        "volumePluginDir": str(context.volume_plugin_dir),
        "protectKernelDefaults": True,
        "makeIPTablesUtilChains": False,
        "evictionHard": {
            "memory.available": "100Mi",
            "nodefs.available": "1%",
            "nodefs.inodesFree": "1%",
            "imagefs.available": "1%",
        },
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "imagePullCredentialsVerificationPolicy": "NeverVerify",
        "serializeImagePulls": False,
    }
    if not may_lower_oom_score:
        settings["oomScoreAdj"] = 0
    return settings


def render(settings: dict[str, Any]) -> str:
    return json.dumps(settings, indent=2, sort_keys=True) + "\n"


def resolv_conf(resolvers: Iterable[ipaddress.IPv6Address]) -> str:
    """The kubelet's upstream resolvers: ``dnsPolicy: Default`` pods and cluster DNS use them."""
    lines = ["# Written by the hepto agent from --dns."]
    lines += [f"nameserver {address}" for address in resolvers]
    return "\n".join(lines) + "\n"
