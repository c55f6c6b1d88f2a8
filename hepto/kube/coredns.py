"""CoreDNS: the cluster's DNS server, a supervised process on every master.

:func:`coredns` describes the process; :func:`corefile` is its configuration, from
plain values.  It answers on the master's mesh address, port 53, behind the ``kube-dns``
Service whose address is the kubelets' ``clusterDNS`` (:mod:`hepto.kube.cluster_dns`
publishes both).  Why a process on the masters and not pods, and every line of the
Corefile, are explained in ``docs/dns.rst``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Final

from hepto.kube import apiserver
from hepto.kube.component import LOOPBACK, Component, Context, HTTPReadiness, flags
from hepto.kube.layout import Layout
from hepto.pki.paths import COMPONENT_CERTIFICATES
from hepto.pki.specs import CLUSTER_DOMAIN

NAME: Final = "coredns"
PORT: Final = 53
#: CoreDNS's own default for its ``ready`` plugin, on loopback only.
READY_PORT: Final = 8181
#: Seconds that answers stay in CoreDNS's cache and in the clients': kubeadm's value.
TTL: Final = 30


def coredns(context: Context) -> Component:
    layout = Layout(context.node_dir, context.cluster, context.name)
    return Component(
        name=NAME,
        program="coredns",
        # Go's flag package: one dash, as CoreDNS documents it.
        args=flags(("-conf", layout.corefile)),
        # 200 once the kubernetes plugin has listed Services, EndpointSlices, Namespaces.
        readiness=HTTPReadiness(f"http://[{LOOPBACK}]:{READY_PORT}/ready", ca=None),
        dependencies=(apiserver.NAME,),
        certificates=COMPONENT_CERTIFICATES[NAME],
        stop_timeout=5.0,
    )


def corefile(
    listen: ipaddress.IPv6Address,
    kubeconfig: str,
    upstream: Iterable[ipaddress.IPv6Address],
) -> str:
    """The Corefile: cluster names from the apiserver, others from ``upstream``.

    Every A query gets an empty answer (NOERROR, no record): the cluster is IPv6 only,
    and an IPv4 address that no pod can reach is worse than none.
    """
    servers = " ".join(f"[{address}]:53" for address in upstream)
    lines = [
        f".:{PORT} {{",
        f"    bind {listen}",
        "    errors",
        f"    ready [{LOOPBACK}]:{READY_PORT}",
        f"    cache {TTL}",
        "    template IN A {",
        "        rcode NOERROR",
        "    }",
        f"    kubernetes {CLUSTER_DOMAIN} ip6.arpa {{",
        f"        kubeconfig {kubeconfig}",
        "        fallthrough ip6.arpa",
        f"        ttl {TTL}",
        "    }",
        "    loop",
    ]
    if servers:
        lines.append(f"    forward . {servers}")
    lines.append("}")
    return "\n".join(lines) + "\n"
