"""kube-proxy: Services on every node that runs pods, in nftables mode, IPv6 only.

:func:`kube_proxy` describes the process; :func:`config` is its
KubeProxyConfiguration, as JSON, from plain values.  Every field that departs from the
upstream default is explained in ``docs/nodes.rst``.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable
from typing import Any, Final

from hepto import plan
from hepto.kube import apiserver
from hepto.kube.component import LOOPBACK, Component, Context, HTTPReadiness, flags
from hepto.kube.layout import Layout
from hepto.pki.paths import COMPONENT_CERTIFICATES

NAME: Final = "kube-proxy"
HEALTHZ_PORT: Final = 10256
METRICS_PORT: Final = 10249


def kube_proxy(context: Context) -> Component:
    layout = Layout(context.node_dir, context.cluster, context.name)
    return Component(
        name=NAME,
        program="kube-proxy",
        args=flags(("--config", layout.kube_proxy_config)),
        # 200 once its rules are in place for what the apiserver said.
        readiness=HTTPReadiness(f"http://[{LOOPBACK}]:{HEALTHZ_PORT}/healthz", ca=None),
        dependencies=("kubelet", apiserver.NAME),
        certificates=COMPONENT_CERTIFICATES[NAME],
        in_runtime_cgroups=True,
    )


def config(
    context: Context,
    node_addresses: Iterable[ipaddress.IPv6Address],
    may_lower_oom_score: bool,
) -> dict[str, Any]:
    """The configuration file, as a JSON-able mapping.

    ``node_addresses`` are where NodePort Services answer: the mesh and public addresses.
    """
    files = context.pki.component_files(NAME)
    settings: dict[str, Any] = {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(files["clientConnection.kubeconfig"])},
        "hostnameOverride": context.name,
        "mode": "nftables",
        "clusterCIDR": str(plan.pod_prefix(context.cluster)),
        "healthzBindAddress": f"[{LOOPBACK}]:{HEALTHZ_PORT}",
        "metricsBindAddress": f"[{LOOPBACK}]:{METRICS_PORT}",
        "nodePortAddresses": [f"{address}/128" for address in node_addresses],
        # The host's conntrack limits and timeouts stay the host's.
        "conntrack": {
            "maxPerCore": 0,
            "min": 0,
            "tcpEstablishedTimeout": "0s",
            "tcpCloseWaitTimeout": "0s",
        },
    }
    if not may_lower_oom_score:
        settings["oomScoreAdj"] = 0
    return settings


def render(settings: dict[str, Any]) -> str:
    return json.dumps(settings, indent=2, sort_keys=True) + "\n"
