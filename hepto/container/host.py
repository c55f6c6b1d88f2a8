"""The host's side of a container: facts, the link, duplicate address detection.

The outer process must stay small while it waits for the container, so it speaks to
the kernel through iproute2's ``ip``, as present on every Linux host as ``setpriv``,
instead of pyroute2 (24 MiB more resident; ``docs/container.rst``).
"""

from __future__ import annotations

import ipaddress
import os
import select
import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from hepto import interfaces
from hepto.container.plan import (
    CONTAINER_LINK_LOCAL,
    HOST_LINK_LOCAL,
    IPVLAN,
    ContainerError,
    ContainerPlan,
    HostFacts,
)

#: How long duplicate address detection may take: one probe and its one-second wait
#: by default (``dad_transmits``, ``retrans_time``), with room to spare.
DAD_TIMEOUT: Final = 5.0


#: What the host's side and the cleanup script run.
PROGRAMS: Final = ("ip", "setpriv")


class LinkError(Exception):
    """An ``ip`` command failed; the message is the command and what it said."""


def ip(*argv: str, check: bool = True) -> str:
    done = subprocess.run(["ip", *argv], capture_output=True, text=True)
    if check and done.returncode != 0:
        raise LinkError(f"ip {' '.join(argv)}: {done.stderr.strip()}")
    return done.stdout


def read_facts(iface: str | None, sys_class_net: Path = Path("/sys/class/net")) -> HostFacts:
    names = frozenset(entry.name for entry in sys_class_net.iterdir())
    public, gateway, mtu = None, None, 1500
    if iface in names:
        public = interfaces.public_interface(interfaces.read_addresses(), iface)
        gateway = default_gateway(ip("-6", "route", "show", "default", "dev", iface, check=False))
        mtu = int((sys_class_net / iface / "mtu").read_text())
    return HostFacts(
        euid=os.geteuid(),
        interfaces=names,
        public=public,
        gateway=gateway,
        mtu=mtu,
        namespaces=frozenset(os.listdir("/proc/self/ns")),
        missing_programs=tuple(name for name in PROGRAMS if shutil.which(name) is None),
    )


def default_gateway(routes: str) -> ipaddress.IPv6Address | None:
    """The gateway of the first ``default via ADDR`` in ``ip -6 route show`` output."""
    for line in routes.splitlines():
        words = line.split()
        if words[:2] == ["default", "via"] and len(words) > 2:
            return ipaddress.IPv6Address(words[2])
    return None


def has_ipvlan(iface: str, trial: str) -> bool:
    """Whether this kernel makes ipvlan links: try one on ``iface``, then remove it."""
    try:
        ip("link", "add", trial, "link", iface, "type", "ipvlan", "mode", "l2")
    except LinkError:
        return False
    ip("link", "delete", trial, check=False)
    return True


def check_unique(plan: ContainerPlan, timeout: float = DAD_TIMEOUT) -> None:
    """Duplicate address detection for the container's address, by the kernel.

    The address goes on ``--iface`` for as long as the kernel's detection takes (its
    neighbours answer if one of them holds it), then away: no link or address is left
    whichever way it ends.  ``ip monitor`` says when detection ends.
    """
    address = str(plan.address.ip)
    monitor = subprocess.Popen(
        ["ip", "-6", "monitor", "address", "dev", plan.iface],
        stdout=subprocess.PIPE,
        text=True,
    )
    added = False
    try:
        ip("-6", "address", "add", f"{address}/128", "dev", plan.iface, "noprefixroute")
        added = True
        verdict = _dad_verdict(plan.iface, address)
        deadline = time.monotonic() + timeout
        assert monitor.stdout is not None
        while verdict is None:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([monitor.stdout], [], [], left)[0]:
                raise ContainerError(
                    "ip", f"duplicate address detection of {address} did not end in {timeout} s"
                )
            monitor.stdout.readline()
            verdict = _dad_verdict(plan.iface, address)
        if verdict == "dadfailed":
            raise ContainerError(
                "ip", f"{address} is already in use on the link of {plan.iface}: give another"
            )
    except LinkError as error:
        raise ContainerError("ip", f"cannot check that {address} is free: {error}") from None
    finally:
        monitor.kill()
        monitor.wait()
        if added:
            ip("-6", "address", "delete", f"{address}/128", "dev", plan.iface, check=False)


def _dad_verdict(iface: str, address: str) -> str | None:
    """``ok``, ``dadfailed``, or None while the address is still tentative."""
    shown = ip("-6", "address", "show", "dev", iface, "to", f"{address}/128")
    if "dadfailed" in shown:
        return "dadfailed"
    if "tentative" in shown:
        return None
    return "ok" if address in shown else "dadfailed"


def connect(plan: ContainerPlan, mode: str, pid: int) -> None:
    """Give the network namespace of ``pid`` its link on the host's interface."""
    if mode == IPVLAN:
        # Created on the host (its parent is there), then moved in under the iface's name.
        ip("link", "add", plan.host_link, "link", plan.iface, "type", "ipvlan", "mode", "l2")
        ip("link", "set", plan.host_link, "netns", str(pid))
        return
    host_link, address = plan.host_link, str(plan.address.ip)
    ip("link", "add", host_link, "mtu", str(plan.mtu), "type", "veth",
       "peer", "name", plan.iface, "mtu", str(plan.mtu), "netns", str(pid))  # fmt: skip
    ip("-6", "address", "add", f"{HOST_LINK_LOCAL}/64", "dev", host_link, "nodad")
    ip("link", "set", host_link, "up")
    for route in (address, *map(str, plan.routes)):
        via = () if route == address else ("via", str(CONTAINER_LINK_LOCAL))
        ip("-6", "route", "replace", f"{route}/128", *via, "dev", host_link)
    _sysctl("net/ipv6/conf/all/forwarding", "1")
    _sysctl(f"net/ipv6/conf/{plan.iface}/proxy_ndp", "1")
    # The kernel answers a solicitation for a proxied address after a random wait of up to
    # proxy_delay (0.8 s by default), so that a real owner on the link would answer first:
    # the container's address has no other owner, and a first contact (a gossip probe
    # gives up after 0.5 s) waited for nothing.
    _sysctl(f"net/ipv6/neigh/{plan.iface}/proxy_delay", "0")
    # With forwarding on, the kernel ignores router advertisements where accept_ra is 1.
    accept_ra = Path("/proc/sys/net/ipv6/conf", plan.iface, "accept_ra")
    if accept_ra.read_text().strip() == "1":
        accept_ra.write_text("2\n")
    ip("-6", "neighbour", "replace", "proxy", address, "dev", plan.iface)


def inside_commands(plan: ContainerPlan, mode: str) -> list[Sequence[str]]:
    """What the container's PID 1 runs to bring its link up (``ip`` arguments)."""
    link, address = plan.iface, plan.address
    commands: list[Sequence[str]] = [("link", "set", "lo", "up")]
    if mode == IPVLAN:
        commands.append(("link", "set", plan.host_link, "name", link))
    commands.append(("link", "set", link, "up"))
    if mode == IPVLAN:
        commands.append(("-6", "address", "add", str(address), "dev", link, "nodad"))
        commands.append(("-6", "route", "add", "default", "via", str(plan.gateway), "dev", link))
    else:
        commands.append(
            ("-6", "address", "add", f"{CONTAINER_LINK_LOCAL}/64", "dev", link, "nodad")
        )
        commands.append(("-6", "address", "add", f"{address.ip}/128", "dev", link, "nodad"))
        commands.append(("-6", "route", "add", "default", "via", str(HOST_LINK_LOCAL), "dev", link))
    return commands


def _sysctl(name: str, value: str) -> None:
    Path("/proc/sys", name).write_text(f"{value}\n")
