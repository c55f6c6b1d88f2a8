"""kube-controller-manager: node IPAM over the pod prefix, kubelet serving certificates.

The rationale of every flag is in ``docs/kubernetes.rst``.
"""

from __future__ import annotations

from typing import Final

from hepto import plan
from hepto.kube import apiserver
from hepto.kube.component import LOOPBACK, Component, Context, HTTPReadiness, flags, url
from hepto.pki.paths import COMPONENT_CERTIFICATES

NAME: Final = "kube-controller-manager"
PORT: Final = 10257

# From the PKI's file flags: the generic signing pair becomes the kubelet-serving one,
# and the service-account key is left out (it would turn on legacy secret tokens).
_SIGNING_CERT: Final = "--cluster-signing-cert-file"
_SIGNING_KEY: Final = "--cluster-signing-key-file"
_LEGACY_TOKENS: Final = "--service-account-private-key-file"


def controller_manager(context: Context) -> Component:
    files = dict(context.pki.component_files(NAME))
    signing_cert = files.pop(_SIGNING_CERT)
    signing_key = files.pop(_SIGNING_KEY)
    files.pop(_LEGACY_TOKENS, None)
    return Component(
        name=NAME,
        program="kube-controller-manager",
        args=flags(
            ("--bind-address", LOOPBACK),
            ("--secure-port", PORT),
            ("--allocate-node-cidrs", True),
            ("--cluster-cidr", context.plan.pod_prefix),
            ("--node-cidr-mask-size-ipv6", plan.NODE_POD_PREFIX_LENGTH),
            ("--service-cluster-ip-range", context.plan.service_prefix),
            ("--use-service-account-credentials", True),
            ("--cluster-signing-kubelet-serving-cert-file", signing_cert),
            ("--cluster-signing-kubelet-serving-key-file", signing_key),
            ("--flex-volume-plugin-dir", context.volume_plugin_dir),
            files=files,
        ),
        # Its serving certificate is self-signed in memory: an unverified loopback probe.
        readiness=HTTPReadiness(url(LOOPBACK, PORT, "/healthz"), ca=None),
        dependencies=(apiserver.NAME,),
        certificates=COMPONENT_CERTIFICATES[NAME],
    )
