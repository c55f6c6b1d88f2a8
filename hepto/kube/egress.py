"""Pods reach the world from their node's public address: NAT66 for what leaves the cluster.

Pod addresses are ULA: no router beyond the cluster carries them back.  Traffic from
this node's pods to an address outside the cluster's ``/48`` is masqueraded to the
address of the interface it leaves by (the node's public address); traffic to pods,
Services and mesh addresses, all inside the ``/48``, keeps its source.  One nftables
table of hepto's own, in the node's network namespace, replaced whole (``nft -f`` is
atomic) and deleted by the sweeper with the rest of the node.  See ``docs/nodes.rst``.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any, Final

from twisted.internet.defer import Deferred
from twisted.internet.utils import getProcessOutputAndValue

#: The table hepto owns; nothing else writes to it.
TABLE: Final = "hepto"


class EgressError(Exception):
    """nft refused the rules; ``str()`` carries its reason."""


def rules(pods: ipaddress.IPv6Network, cluster: ipaddress.IPv6Network) -> str:
    """The table, as an nft script: created if absent, emptied, then filled, at once."""
    return f"""\
table ip6 {TABLE}
delete table ip6 {TABLE}
table ip6 {TABLE} {{
    chain egress {{
        type nat hook postrouting priority srcnat; policy accept;
        ip6 saddr {pods} ip6 daddr != {cluster} masquerade
    }}
}}
"""


def delete_command(nft: Path) -> str:
    """The shell command that removes the table, quietly when it is absent."""
    return f"{nft} delete table ip6 {TABLE} 2>/dev/null"


def apply(reactor: Any, nft: Path, script: str, environ: dict[str, str]) -> Deferred[None]:
    """Load ``script`` with ``nft -f -``; fails with EgressError carrying nft's reason."""
    done = getProcessOutputAndValue(
        str(nft), ("-f", "/dev/stdin"), env=environ, reactor=reactor, stdinBytes=script.encode()
    )

    def check(result: tuple[bytes, bytes, int]) -> None:
        out, err, code = result
        if code != 0:
            reason = (err or out).decode(errors="replace").strip()
            raise EgressError(f"nft refused the egress rules (status {code}): {reason}")

    return done.addCallback(check)
