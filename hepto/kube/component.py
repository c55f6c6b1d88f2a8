"""What describes an upstream component: pure data, derived from names and paths alone.

Each component module (:mod:`hepto.kube.etcd`, ...) turns a :class:`Context` into a
:class:`Component`; :mod:`hepto.kube.service` gives those to the supervisor.  Nothing
here does I/O, so command lines are tested as plain values.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Final, Literal

import attrs

from hepto import plan
from hepto.config import NodeConfig
from hepto.pki.paths import Paths

LOOPBACK: Final = ipaddress.IPv6Address("::1")
#: Which hepto role a node has; outside ``kubernetes.io``, so a node may set it itself.
ROLE_LABEL: Final = "hepto/role"

BodyCheck = Callable[[bytes], str | None]


def url(address: ipaddress.IPv6Address, port: int, path: str = "") -> str:
    return f"https://[{address}]:{port}{path}"


@attrs.frozen
class Context:
    """What a component's description depends on."""

    cluster: str
    name: str
    node_dir: Path
    role: str = "master"
    #: The resolvers of ``--dns``: the pods' upstream resolvers.
    dns: tuple[ipaddress.IPv6Address, ...] = ()

    @classmethod
    def from_config(cls, config: NodeConfig) -> Context:
        return cls(config.cluster, config.name, config.node_dir, config.role, config.dns)

    @property
    def plan(self) -> plan.Plan:
        return plan.Plan(self.cluster, self.name)

    @property
    def mesh_address(self) -> ipaddress.IPv6Address:
        return plan.mesh_address(self.cluster, self.name)

    @property
    def pki(self) -> Paths:
        return Paths(self.node_dir)

    @property
    def volume_plugin_dir(self) -> Path:
        """FlexVolume drivers (none): in the node's directory, not in /usr/libexec."""
        return self.node_dir / "volume-plugins"


@attrs.frozen
class HTTPReadiness:
    """Ready when ``GET url`` answers 200, checked against ``ca`` (None: loopback only)."""

    url: str
    ca: Path | None
    certificate: Path | None = None
    key: Path | None = None
    body_check: BodyCheck | None = attrs.field(default=None, eq=False)


@attrs.frozen
class SocketReadiness:
    """Ready when the unix socket accepts a connection."""

    path: Path


@attrs.frozen
class StartedReadiness:
    """Ready once started: for programs with nothing to ask."""


Readiness = HTTPReadiness | SocketReadiness | StartedReadiness


#: What the Go runtime reads in GOMEMLIMIT: bytes, with an optional IEC unit.
_GO_LIMIT: Final = re.compile(r"[0-9]+(B|KiB|MiB|GiB|TiB)?")


def _check_limit(
    instance: object, attribute: attrs.Attribute[str | None], value: str | None
) -> None:
    if value is not None and not _GO_LIMIT.fullmatch(value):
        raise ValueError(f"GOMEMLIMIT {value!r}: bytes with an optional B, KiB, MiB, GiB or TiB")


def _check_gc_percent(
    instance: object, attribute: attrs.Attribute[int | str | None], value: int | str | None
) -> None:
    if value is None or value == "off":
        return
    # bool is an int: GOGC=True would reach the child as "True", which Go ignores.
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"GOGC {value!r}: a percentage of 1 or more, or 'off'")


@attrs.frozen
class GoMemory:
    """The Go runtime's memory settings for one component, through its environment.

    ``limit`` is GOMEMLIMIT (a soft limit the collector works harder to stay under,
    as ``300MiB``); ``gc_percent`` is GOGC (heap growth between collections, or
    ``"off"``).  None leaves Go's default.  Malformed values are refused here: Go dies at
    start on a bad GOMEMLIMIT and silently ignores a bad GOGC.
    """

    limit: str | None = attrs.field(default=None, validator=_check_limit)
    gc_percent: int | Literal["off"] | None = attrs.field(default=None, validator=_check_gc_percent)

    def environment(self) -> dict[str, str]:
        env = {}
        if self.limit is not None:
            env["GOMEMLIMIT"] = self.limit
        if self.gc_percent is not None:
            env["GOGC"] = str(self.gc_percent)
        return env


def _strings(items: Iterable[str]) -> tuple[str, ...]:
    return tuple(items)


def _paths(items: Iterable[Path]) -> tuple[Path, ...]:
    return tuple(items)


@attrs.frozen
class Component:
    """One upstream program as hepto runs it."""

    name: str
    #: The program's name, found by :mod:`hepto.programs`.
    program: str
    args: tuple[str, ...] = attrs.field(converter=_strings)
    readiness: Readiness
    dependencies: tuple[str, ...] = attrs.field(default=(), converter=_strings)
    #: PKI certificates (by name) it reads: it starts once they are installed, and is
    #: restarted when one is replaced.
    certificates: tuple[str, ...] = attrs.field(default=(), converter=_strings)
    #: Directories it owns, created 0700 before it starts.
    directories: tuple[Path, ...] = attrs.field(default=(), converter=_paths)
    #: Seconds between SIGTERM and SIGKILL.
    stop_timeout: float = 15.0
    #: What the kernel sends it when the agent dies (the supervisor's launcher asks).
    death_signal: str = "KILL"
    #: Run in the node runtime's cgroups, through the sweeper (containerd, the kubelet).
    in_runtime_cgroups: bool = False

    def flag(self, name: str) -> str | None:
        """The value given to ``--name`` (for tests and status pages)."""
        prefix = f"{name}="
        for arg in self.args:
            if arg.startswith(prefix):
                return arg[len(prefix) :]
        return None


FlagValue = str | int | bool | Path | ipaddress.IPv6Address | ipaddress.IPv6Network


def flags(
    *pairs: tuple[str, FlagValue], files: Mapping[str, Path] | None = None
) -> tuple[str, ...]:
    """``--flag=value`` arguments, in order, then the PKI's file flags sorted by name."""
    rendered = [f"{name}={_value(value)}" for name, value in pairs]
    rendered += [f"{name}={path}" for name, path in sorted((files or {}).items())]
    names = [argument.split("=", 1)[0] for argument in rendered]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"flags given twice: {', '.join(duplicates)}")
    return tuple(rendered)


def _value(value: FlagValue) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
