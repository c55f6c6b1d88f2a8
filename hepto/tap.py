"""``twistd hepto``: the node's options and its service."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import attrs
from twisted.application.service import IService
from twisted.internet.interfaces import IReactorCore
from twisted.python import usage

from hepto import config
from hepto.config import ConfigError, NodeConfig, env_name

if TYPE_CHECKING:
    from hepto.container.plan import ContainerPlan

_REPEATABLE = ("anchor", "dns")
_TRUE = ("1", "true", "yes", "on")


def _doc(option: str, text: str) -> str:
    return f"{text} [{env_name(option)}]"


class Options(usage.Options):
    synopsis = "--cluster NAME --key HEX --name NAME [--role ROLE] [--anchor ADDR] [options]"
    longdesc = (
        "Run one hepto node. Nodes find each other through the anchors, build their own "
        "PKI, wire a WireGuard mesh and start upstream Kubernetes. Every option can also "
        "be given in the environment variable named after it; the command line wins."
    )

    optParameters: list[list[Any]] = [
        [
            "cluster",
            None,
            None,
            _doc("cluster", "Cluster name; the addressing plan derives from it."),
        ],
        [
            "key",
            None,
            None,
            _doc(
                "key",
                "Cluster key: hex, 24 bytes or more (openssl rand -hex 32). "
                "Comma-separated keys form a keyring: the first sends, all are accepted.",
            ),
        ],
        ["name", None, None, _doc("name", "This node's name: a valid Kubernetes node name.")],
        [
            "role",
            None,
            None,
            _doc("role", "master, node, or full (master and node in one). Default: node."),
        ],
        ["iface", None, None, _doc("iface", "The host's public network interface, as eth0.")],
        [
            "ip",
            None,
            None,
            _doc(
                "ip",
                "This node's public IPv6 address with prefix, as 2a00::2/64. "
                "Default: router advertisements.",
            ),
        ],
        ["gw", None, None, _doc("gw", "IPv6 gateway. Default: router advertisements.")],
        [
            "port",
            None,
            None,
            _doc("port", f"Gossip UDP and TCP port. Default: {config.DEFAULT_PORT}."),
        ],
        [
            "data-dir",
            None,
            None,
            _doc(
                "data-dir",
                "Where nodes keep their data, under <cluster>/<name>/. "
                f"Default: {config.DEFAULT_DATA_DIR}.",
            ),
        ],
        [
            "bin-dir",
            None,
            None,
            _doc("bin-dir", "Where upstream programs are looked for before PATH."),
        ],
        [
            "log-format",
            None,
            None,
            _doc("log-format", "text or json (one object per line). Default: text."),
        ],
        [
            "manhole",
            None,
            None,
            _doc(
                "manhole",
                "Open an SSH manhole: 'unix' (a socket in the node's "
                "directory), a loopback port, or [::1]:PORT.",
            ),
        ],
        [
            "manhole-keys",
            None,
            None,
            _doc(
                "manhole-keys",
                "authorized_keys file of the manhole. Default: <node directory>/authorized_keys.",
            ),
        ],
        [
            "metrics",
            None,
            None,
            _doc(
                "metrics",
                "Where Prometheus scrapes the agent (/metrics): a loopback port, "
                f"[ADDRESS]:PORT, or none. Default: [::1]:{config.DEFAULT_METRICS_PORT}.",
            ),
        ],
        [
            "gossip-profile",
            None,
            None,
            _doc(
                "gossip-profile",
                "Gossip timings: lan (probe every second) or wan (every 5 s, more patient). "
                "Default: lan.",
            ),
        ],
        [
            "pod-network",
            None,
            None,
            _doc(
                "pod-network",
                "hepto (default: pods routed over the mesh, Services by kube-proxy) or "
                "none, to install another network plugin such as Calico or Cilium.",
            ),
        ],
        [
            "backup-interval",
            None,
            None,
            _doc(
                "backup-interval",
                "Hours between a master's backups into <node directory>/backups; 0 for "
                f"none. Default: {config.DEFAULT_BACKUP_INTERVAL_HOURS:g}.",
            ),
        ],
        [
            "backup-keep",
            None,
            None,
            _doc(
                "backup-keep",
                f"How many of those backups a master keeps. Default: {config.DEFAULT_BACKUP_KEEP}.",
            ),
        ],
        [
            "components",
            None,
            None,
            _doc(
                "components",
                "Kubernetes components to run: none, or a comma "
                "list. Default: those of the role. For development and tests.",
            ),
        ],
    ]
    optFlags: list[list[Any]] = [
        [
            "no-contain",
            None,
            _doc(
                "no-contain",
                "Run in the current namespaces, on the address of "
                "--ip or --iface. For development and tests.",
            ),
        ],
    ]

    def __init__(self) -> None:
        super().__init__()
        for option in _REPEATABLE:
            self[option] = []
        self.config: NodeConfig | None = None
        self.container: ContainerPlan | None = None

    def opt_anchor(self, value: str) -> None:
        """An IPv6 address, or [address]:port, of a member to join through (repeatable)
        [HEPTO_ANCHOR, comma-separated]."""
        self["anchor"].append(value)

    def opt_dns(self, value: str) -> None:
        """An IPv6 DNS resolver (repeatable). Default: Cloudflare's public resolvers
        [HEPTO_DNS, comma-separated]."""
        self["dns"].append(value)

    def postOptions(self) -> None:
        self.config = options_to_config(self)
        self.container = container_plan(self.config) if self.config.contain else None


def options_to_config(options: usage.Options, environ: dict[str, str] | None = None) -> NodeConfig:
    """Merge the command line over the environment and validate the result."""
    env = os.environ if environ is None else environ
    raw = {
        name: options[name] if options[name] is not None else config.from_environment(name, env)
        for name, *_ in Options.optParameters
    }
    lists = {
        name: options[name] or [item for item in (env.get(env_name(name)) or "").split(",") if item]
        for name in _REPEATABLE
    }
    switches = {
        name: bool(options[name]) or env.get(env_name(name), "").lower() in _TRUE
        for name, *_ in Options.optFlags
    }
    try:
        node_config = config.parse_node_config(raw, lists, switches)
        from hepto.kube.service import check_programs

        check_programs(node_config)
    except ConfigError as error:
        raise usage.UsageError(str(error)) from None
    return node_config


def container_plan(node: NodeConfig) -> ContainerPlan:
    """The node's container on this host, checked before anything is made."""
    import hepto
    from hepto.container.host import read_facts
    from hepto.container.plan import ContainerError, make_plan
    from hepto.kube.layout import RUN_DIR

    try:
        return make_plan(
            read_facts(node.iface),
            cluster=node.cluster,
            name=node.name,
            iface=node.iface,
            ip=node.ip,
            gw=node.gw,
            dns=node.dns,
            node_dir=node.node_dir,
            # What the agent reads and runs, should it live in /tmp or /run.
            kept=(
                node.data_dir,
                *([node.bin_dir] if node.bin_dir else []),
                Path(sys.prefix),
                Path(hepto.__file__).parent.parent,
                RUN_DIR,
            ),
            routes=(node.plan.apiserver_address,) if node.is_master else (),
        )
    except ContainerError as error:
        raise usage.UsageError(str(error)) from None


def run_contained(options: Options) -> NoReturn:
    """Become the outer process of the node's container (:mod:`hepto.container.outer`)."""
    from hepto.container.plan import ContainerError, agent_argv

    assert options.container is not None and options.config is not None
    parent = getattr(options, "parent", None)
    if parent is not None and not parent["nodaemon"]:
        raise usage.UsageError(
            "a contained node stays in the foreground: twistd -n hepto (or --no-contain)"
        )
    try:
        argv = agent_argv([sys.executable, *sys.argv], options.container.iface)
    except ContainerError as error:
        raise usage.UsageError(str(error)) from None
    plan = attrs.evolve(options.container, agent_argv=argv)
    sys.stdout.flush()
    sys.stderr.flush()
    # Before twistd writes a pid file or starts logging: the outer process owns the output.
    os.execv(sys.executable, [sys.executable, "-m", "hepto.container", plan.to_json()])


def makeService(options: Options, reactor: IReactorCore | None = None) -> IService:
    from hepto.node import NodeService

    if options.container is not None:
        run_contained(options)

    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    assert options.config is not None
    assert reactor is not None
    # Nothing read or made yet: the node does its I/O when it starts.
    return NodeService(options.config, reactor, owns_process=True)
