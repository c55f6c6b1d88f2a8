"""What the mesh reads from and writes into member records.

A member's ``wireguard`` key is ``{"public_key": "<base64>", "endpoint": "[addr]:port"}``;
its ``pod_prefix`` key (published by whoever allocates pod prefixes) is a string such as
``fd12:3456:789a:205::/64``.  Records come from other machines: everything here
validates, and a value that does not fit raises :class:`RecordError` saying why.
"""

from __future__ import annotations

import functools
import ipaddress
from typing import Any, Final

from hepto import plan
from hepto.config import Endpoint
from hepto.mesh.keys import InvalidKey, decode_key, encode_key

WIREGUARD: Final = "wireguard"
POD_PREFIX: Final = "pod_prefix"
ROLE: Final = "role"
MASTER_ROLES: Final = ("master", "full")


class RecordError(Exception):
    """A record value the mesh cannot use; ``str()`` is a short reason for logs and status."""


def wireguard_value(public_key: str, endpoint: Endpoint) -> dict[str, str]:
    return {"public_key": public_key, "endpoint": str(endpoint)}


def parse_endpoint(text: Any) -> Endpoint:
    """``[addr]:port`` with a unicast IPv6 address that needs no scope."""
    if not isinstance(text, str):
        raise RecordError(f"endpoint is a {type(text).__name__}, not a string")
    if not text.startswith("["):
        raise RecordError(f"endpoint {text!r} is not [address]:port")
    host, bracket, port = text[1:].partition("]:")
    if not bracket or not port.isdigit() or not 0 < int(port) < 65536:
        raise RecordError(f"endpoint {text!r} is not [address]:port")
    try:
        address = ipaddress.IPv6Address(host)
    except ValueError:
        raise RecordError(f"endpoint {text!r} has no IPv6 address") from None
    if address.is_unspecified or address.is_multicast or address.is_link_local:
        raise RecordError(f"endpoint {text!r} is not a routable unicast address")
    return Endpoint(address, int(port))


def parse_wireguard(value: Any) -> tuple[str, Endpoint]:
    """The public key (canonical base64) and endpoint of a ``wireguard`` value."""
    if not isinstance(value, dict):
        raise RecordError(f"wireguard is a {type(value).__name__}, not an object")
    public_key = value.get("public_key")
    if not isinstance(public_key, str):
        raise RecordError("wireguard has no public_key string")
    endpoint = value.get("endpoint")
    if not isinstance(endpoint, str):
        raise RecordError(f"endpoint is a {type(endpoint).__name__}, not a string")
    return _parse_wireguard(public_key, endpoint)


@functools.lru_cache(maxsize=plan.ADDRESS_CACHE)
def _parse_wireguard(public_key: str, endpoint: str) -> tuple[str, Endpoint]:
    """Remembered: every mesh pass reads every member's (a failure is not)."""
    try:
        canonical = encode_key(decode_key(public_key))
    except InvalidKey as error:
        raise RecordError(f"public_key is {error}") from None
    return canonical, parse_endpoint(endpoint)


def parse_pod_prefix(cluster: str, value: Any) -> ipaddress.IPv6Network:
    """A node's pod prefix, which must lie inside the cluster's pod prefix.

    Anything wider would let one member attract traffic for addresses it does not own.
    """
    if not isinstance(value, str):
        raise RecordError(f"pod_prefix is a {type(value).__name__}, not a string")
    return _parse_pod_prefix(cluster, value)


@functools.lru_cache(maxsize=plan.ADDRESS_CACHE)
def _parse_pod_prefix(cluster: str, value: str) -> ipaddress.IPv6Network:
    try:
        prefix = ipaddress.IPv6Network(value)
    except ValueError:
        raise RecordError(f"pod_prefix {value!r} is not an IPv6 prefix") from None
    cluster_pods = plan.pod_prefix(cluster)
    if not prefix.subnet_of(cluster_pods):
        raise RecordError(f"pod_prefix {prefix} is outside the cluster's {cluster_pods}")
    return prefix
