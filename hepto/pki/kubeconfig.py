"""Kubeconfig files, written as YAML by hand.

A kubeconfig is a small fixed shape, so it is rendered from a template rather than
pulling in a YAML library.  Every scalar is written as a JSON string, which is also a
valid YAML double-quoted scalar: names such as ``system:node:x`` and the bracketed
IPv6 server URL need quoting, and this way nothing can break the structure.

Everything is embedded (CA, client certificate and key) so that the admin kubeconfig can
be copied to a workstation as is; the files are rewritten whenever the certificate is.
"""

from __future__ import annotations

import base64
import ipaddress
import json
from typing import Final

#: The apiserver's secure port, the upstream default.
APISERVER_PORT: Final = 6443


def server_url(address: ipaddress.IPv6Address, port: int = APISERVER_PORT) -> str:
    return f"https://[{address}]:{port}"


def _quote(text: str) -> str:
    return json.dumps(text)


def _data(pem: bytes | str) -> str:
    raw = pem.encode("ascii") if isinstance(pem, str) else pem
    return _quote(base64.b64encode(raw).decode("ascii"))


def render(
    cluster: str,
    server: str,
    authority_pem: bytes | str,
    user: str,
    certificate_pem: bytes | str,
    key_pem: bytes | str,
) -> str:
    """A kubeconfig with one cluster, one user and the context joining them."""
    context = f"{user}@{cluster}"
    return (
        "apiVersion: v1\n"
        "kind: Config\n"
        "clusters:\n"
        f"- name: {_quote(cluster)}\n"
        "  cluster:\n"
        f"    server: {_quote(server)}\n"
        f"    certificate-authority-data: {_data(authority_pem)}\n"
        "users:\n"
        f"- name: {_quote(user)}\n"
        "  user:\n"
        f"    client-certificate-data: {_data(certificate_pem)}\n"
        f"    client-key-data: {_data(key_pem)}\n"
        "contexts:\n"
        f"- name: {_quote(context)}\n"
        "  context:\n"
        f"    cluster: {_quote(cluster)}\n"
        f"    user: {_quote(user)}\n"
        f"current-context: {_quote(context)}\n"
        "preferences: {}\n"
    )
