"""What the container of a node will be, decided before anything is created.

Everything here is pure: the facts about the host are read by
:func:`hepto.container.host.read_facts` and handed in, so that every refusal is
unit-tested and said before a link, a mount or a cgroup exists.  The rationale of each
choice is in ``docs/container.rst``.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import attrs

from hepto.config import ConfigError

#: The two ways the container gets its address on the host's link (docs/container.rst).
IPVLAN: Final = "ipvlan"
VETH: Final = "veth"
#: The namespaces a container needs, by their name in ``/proc/self/ns``.
NAMESPACES: Final = ("pid", "mnt", "net", "uts", "ipc", "cgroup")
#: Fixed link-local addresses on the two ends of the veth pair: each side's route names
#: the other's before either end exists.
HOST_LINK_LOCAL: Final = ipaddress.IPv6Address("fe80::1")
CONTAINER_LINK_LOCAL: Final = ipaddress.IPv6Address("fe80::2")
#: The container as its outer process records it for ``hepto status``, in its files.
STATUS_FILE: Final = "container.json"
#: The outer process's relay of systemd notifications lives here (docs/systemd.rst).
RELAY_DIR: Final = Path("/run/hepto")
#: The cgroup of every container, ``/hepto/<cluster>/<name>`` below it.
CGROUP_PARENT: Final = "/hepto"


class ContainerError(ConfigError):
    """The container cannot be made; ``option`` names what to change, or is empty when
    the cause is none of the operator's options."""

    def __str__(self) -> str:
        return super().__str__() if self.option else self.message


@attrs.frozen
class HostFacts:
    """What the plan needs to know of the host, read once (``host.read_facts``)."""

    euid: int
    #: Names of the network interfaces of the host.
    interfaces: frozenset[str]
    #: ``iface``'s public address with its prefix (``hepto.interfaces``), if any.
    public: ipaddress.IPv6Interface | None
    #: The gateway of ``iface``'s default route, if any.
    gateway: ipaddress.IPv6Address | None
    mtu: int
    #: The namespaces this kernel has (names of ``/proc/self/ns``).
    namespaces: frozenset[str]
    #: Of the programs the host's side runs (iproute2's ``ip``, ``setpriv``), those missing.
    missing_programs: tuple[str, ...] = ()


@attrs.frozen
class ContainerPlan:
    """One node's container: crosses from ``twistd`` to the outer process as JSON."""

    cluster: str
    name: str
    iface: str
    address: ipaddress.IPv6Interface
    gateway: ipaddress.IPv6Address | None
    mtu: int
    dns: tuple[ipaddress.IPv6Address, ...]
    node_dir: Path
    #: Paths that stay visible when ``/tmp`` and ``/run`` become the container's own.
    kept: tuple[Path, ...]
    #: Addresses inside the container that the host routes to it (a master's apiserver).
    routes: tuple[ipaddress.IPv6Address, ...]
    agent_argv: tuple[str, ...]

    @property
    def host_link(self) -> str:
        """The host's end of a veth pair: ``hp`` and a digest, 10 characters (IFNAMSIZ 16)."""
        return "hp" + _digest("link", self.cluster, self.name)[:8]

    @property
    def cgroup(self) -> str:
        return f"{CGROUP_PARENT}/{self.cluster}/{self.name}"

    @property
    def files(self) -> Path:
        """The container's own files: its record for ``hepto status``, resolv.conf, cleanup."""
        return self.node_dir / "container"

    @property
    def record(self) -> Path:
        return self.files / STATUS_FILE

    @property
    def notify_relay(self) -> Path:
        """Where the outer process takes the agent's notifications for systemd: in
        ``/run/hepto`` (kept in the container: ``hepto.tap`` keeps it for the runtime),
        whatever the length of the node's directory a short ``sun_path``."""
        return RELAY_DIR / f"{self.host_link}.notify"

    def to_json(self) -> str:
        return json.dumps(
            {
                "cluster": self.cluster,
                "name": self.name,
                "iface": self.iface,
                "address": str(self.address),
                "gateway": None if self.gateway is None else str(self.gateway),
                "mtu": self.mtu,
                "dns": [str(server) for server in self.dns],
                "node_dir": str(self.node_dir),
                "kept": [str(path) for path in self.kept],
                "routes": [str(route) for route in self.routes],
                "agent_argv": list(self.agent_argv),
            }
        )

    @classmethod
    def from_json(cls, text: str) -> ContainerPlan:
        data: dict[str, Any] = json.loads(text)
        gateway = data["gateway"]
        return cls(
            cluster=data["cluster"],
            name=data["name"],
            iface=data["iface"],
            address=ipaddress.IPv6Interface(data["address"]),
            gateway=None if gateway is None else ipaddress.IPv6Address(gateway),
            mtu=int(data["mtu"]),
            dns=tuple(ipaddress.IPv6Address(server) for server in data["dns"]),
            node_dir=Path(data["node_dir"]),
            kept=tuple(Path(path) for path in data["kept"]),
            routes=tuple(ipaddress.IPv6Address(route) for route in data["routes"]),
            agent_argv=tuple(data["agent_argv"]),
        )


def _digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(("hepto-container", *parts)).encode()).hexdigest()


def derived_address(
    public: ipaddress.IPv6Interface, cluster: str, name: str
) -> ipaddress.IPv6Interface:
    """The container's address in the prefix of the host's: the same at every start.

    As SLAAC would make one, from the node's name instead of a MAC address: its
    interface identifier is 64 bits of a digest of cluster and name.
    """
    network = public.network
    if network.prefixlen > 64:
        raise ContainerError(
            "ip",
            f"the host's prefix {network} is longer than /64: give the container's address "
            "with --ip",
        )
    identifier = int(_digest("address", cluster, name)[:16], 16) or 1
    return ipaddress.IPv6Interface(f"{network.network_address + identifier}/{network.prefixlen}")


def check_host(facts: HostFacts, iface: str | None) -> str:
    """Refuse, before anything is made, a host where no container can be; the interface."""
    if facts.euid != 0:
        raise ContainerError(
            "no-contain", "a contained node must start as root (or run with --no-contain)"
        )
    missing = [name for name in NAMESPACES if name not in facts.namespaces]
    if missing:
        raise ContainerError(
            "no-contain",
            f"this kernel has no {', '.join(missing)} namespaces: run with --no-contain",
        )
    if facts.missing_programs:
        raise ContainerError(
            "no-contain",
            f"a contained node needs {' and '.join(facts.missing_programs)} on the PATH "
            "(packages iproute2 and util-linux)",
        )
    if iface is None:
        raise ContainerError("iface", "missing: the host's public interface, as --iface eth0")
    if iface not in facts.interfaces:
        raise ContainerError("iface", f"this host has no interface {iface!r}")
    return iface


def make_plan(
    facts: HostFacts,
    *,
    cluster: str,
    name: str,
    iface: str | None,
    ip: ipaddress.IPv6Interface | None,
    gw: ipaddress.IPv6Address | None,
    dns: Sequence[ipaddress.IPv6Address],
    node_dir: Path,
    kept: Sequence[Path],
    routes: Sequence[ipaddress.IPv6Address],
    agent_argv: Sequence[str] = (),
) -> ContainerPlan:
    """The container of a node on this host, or a :class:`ContainerError` saying why not."""
    iface = check_host(facts, iface)
    if ip is None:
        if facts.public is None:
            raise ContainerError(
                "iface",
                f"{iface} has no usable global IPv6 address to take the container's from: "
                "give one with --ip",
            )
        ip = derived_address(facts.public, cluster, name)
    elif facts.public is not None and ip.ip == facts.public.ip:
        raise ContainerError("ip", f"{ip.ip} is the host's own address on {iface}")
    return ContainerPlan(
        cluster=cluster,
        name=name,
        iface=iface,
        address=ip,
        gateway=gw or facts.gateway,
        mtu=facts.mtu,
        dns=tuple(dns),
        node_dir=node_dir,
        kept=tuple(kept),
        routes=tuple(routes),
        agent_argv=tuple(agent_argv),
    )


def choose_mode(plan: ContainerPlan, has_ipvlan: bool) -> str:
    """ipvlan where the kernel has it (the link's own neighbour; the original hepto's way),
    else a routed veth pair; ipvlan needs a gateway, since the host routes nothing for it."""
    if has_ipvlan and plan.gateway is not None:
        return IPVLAN
    return VETH


def agent_argv(argv: Sequence[str], iface: str) -> tuple[str, ...]:
    """The command line of the agent inside: ``twistd``'s own, made to stay in the
    foreground without a pid file, then hepto's, uncontained on the container's link.

    Later options win in both parsers, so appending is enough.
    """
    argv = list(argv)
    try:
        at = argv.index("hepto", 1)
    except ValueError:
        raise ContainerError("", f"cannot find the hepto command in {argv!r}") from None
    return (
        *argv[:at],
        "--nodaemon",
        "--pidfile=",
        *argv[at:],
        "--no-contain",
        "--iface",
        iface,
    )


def resolv_conf(dns: Sequence[ipaddress.IPv6Address]) -> str:
    return "".join(f"nameserver {server}\n" for server in dns)
