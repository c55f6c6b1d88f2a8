"""kube-scheduler: nothing to say but where it listens and who it is.

The rationale of every flag is in ``docs/kubernetes.rst``.
"""

from __future__ import annotations

from typing import Final

from hepto.kube import apiserver
from hepto.kube.component import LOOPBACK, Component, Context, HTTPReadiness, flags, url
from hepto.pki.paths import COMPONENT_CERTIFICATES

NAME: Final = "kube-scheduler"
PORT: Final = 10259


def scheduler(context: Context) -> Component:
    return Component(
        name=NAME,
        program="kube-scheduler",
        args=flags(
            ("--bind-address", LOOPBACK),
            ("--secure-port", PORT),
            files=context.pki.component_files(NAME),
        ),
        readiness=HTTPReadiness(url(LOOPBACK, PORT, "/healthz"), ca=None),
        dependencies=(apiserver.NAME,),
        certificates=COMPONENT_CERTIFICATES[NAME],
    )
