"""The node's configuration: parsing and validating what the operator typed.

Every parser raises :class:`ConfigError` naming the option, so that ``twistd hepto`` and
the ``hepto`` commands report a mistake in one sentence and never with a traceback.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Final

import attrs

from hepto import plan

ROLES: Final = ("master", "node", "full")
COMPONENTS: Final = (
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "coredns",
    "containerd",
    "kubelet",
    "kube-proxy",
)
MASTER_COMPONENTS: Final = COMPONENTS[:5]
NODE_COMPONENTS: Final = COMPONENTS[5:]
#: Cloudflare's public resolvers, as the original hepto: reachable over IPv6 from anywhere.
DEFAULT_DNS: Final = ("2606:4700:4700::1111", "2606:4700:4700::1001")
DEFAULT_PORT: Final = 7946
#: Prometheus metrics, on loopback: beside gossip's port (docs/metrics.rst).
DEFAULT_METRICS_PORT: Final = 7947
#: memberlist's LAN and WAN timings; docs/gossip.rst gives each value's rationale.
GOSSIP_PROFILES: Final = ("lan", "wan")
#: hepto's own pod network (bridge, routes over the mesh, NAT66, kube-proxy), or none:
#: room for another network plugin (Calico, Cilium); docs/nodes.rst.
POD_NETWORKS: Final = ("hepto", "none")
DEFAULT_DATA_DIR: Final = "/var/lib/hepto"
MIN_KEY_BYTES: Final = 24
#: A master's periodic backups (docs/backup.rst): how often, and how many are kept.
DEFAULT_BACKUP_INTERVAL_HOURS: Final = 12.0
DEFAULT_BACKUP_KEEP: Final = 5
ENV_PREFIX: Final = "HEPTO_"

# A Kubernetes node name is a DNS-1123 subdomain.
_LABEL = r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?"
_NODE_NAME = re.compile(rf"{_LABEL}(\.{_LABEL})*")
_IFACE = re.compile(r"[^/\s:]{1,15}")


class ConfigError(Exception):
    """A value the operator gave is unusable; ``str()`` names the option."""

    def __init__(self, option: str, message: str) -> None:
        super().__init__(option, message)
        self.option = option
        self.message = message

    def __str__(self) -> str:
        return f"--{self.option}: {self.message}"


def env_name(option: str) -> str:
    return ENV_PREFIX + option.upper().replace("-", "_")


def from_environment(option: str, environ: Mapping[str, str] | None = None) -> str | None:
    value = (os.environ if environ is None else environ).get(env_name(option))
    return value if value else None


def parse_cluster(text: str | None) -> str:
    if not text:
        raise ConfigError("cluster", f"missing (or set {env_name('cluster')})")
    if not _NODE_NAME.fullmatch(text) or len(text) > 63:
        raise ConfigError(
            "cluster",
            f"{text!r} is not a valid cluster name "
            "(lowercase letters, digits, '-' and '.', at most 63 characters)",
        )
    return text


def parse_name(text: str | None) -> str:
    if not text:
        raise ConfigError("name", f"missing (or set {env_name('name')})")
    if len(text) > 253 or not _NODE_NAME.fullmatch(text):
        raise ConfigError(
            "name",
            f"{text!r} is not a valid Kubernetes node name "
            "(lowercase letters, digits, '-' and '.', starting and ending with a letter or digit)",
        )
    return text


def parse_keyring(text: str | None) -> tuple[bytes, ...]:
    """Comma-separated hex keys: the first one sends, all are accepted."""
    if not text:
        raise ConfigError(
            "key", f"missing (or set {env_name('key')}); make one with: openssl rand -hex 32"
        )
    keys = []
    for position, item in enumerate(text.split(","), start=1):
        item = item.strip()
        where = f"key {position} of the keyring" if "," in text else "the key"
        try:
            key = bytes.fromhex(item)
        except ValueError:
            raise ConfigError("key", f"{where} is not hexadecimal") from None
        if len(key) < MIN_KEY_BYTES:
            raise ConfigError(
                "key",
                f"{where} is {len(key)} bytes long; at least {MIN_KEY_BYTES} are needed "
                "(openssl rand -hex 32)",
            )
        keys.append(key)
    return tuple(keys)


def parse_backup_interval(text: str | None) -> float:
    """Hours between a master's backups, as seconds; 0 turns them off."""
    if not text:
        return DEFAULT_BACKUP_INTERVAL_HOURS * 3600
    try:
        hours = float(text)
    except ValueError:
        hours = -1.0
    if not 0 <= hours <= 24 * 366:
        raise ConfigError(
            "backup-interval", f"{text!r} is not a number of hours from 0 (no backups) to 8784"
        )
    return hours * 3600


def parse_backup_keep(text: str | None) -> int:
    if not text:
        return DEFAULT_BACKUP_KEEP
    if not text.isdigit() or not 1 <= int(text) <= 1000:
        raise ConfigError("backup-keep", f"{text!r} is not a number of backups from 1 to 1000")
    return int(text)


def parse_role(text: str | None) -> str:
    role = text or "node"
    if role not in ROLES:
        raise ConfigError("role", f"{role!r} is not one of {', '.join(ROLES)}")
    return role


def parse_ipv6_address(option: str, text: str) -> ipaddress.IPv6Address:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise ConfigError(option, f"{text!r} is not an IPv6 address") from None
    if not isinstance(address, ipaddress.IPv6Address):
        raise ConfigError(option, f"{text} is an IPv4 address; hepto is IPv6-only")
    return address


def parse_interface_address(option: str, text: str) -> ipaddress.IPv6Interface:
    """An address with its prefix length, as ``2a00::dead:beef/64``."""
    address, slash, length = text.partition("/")
    parse_ipv6_address(option, address)
    if not slash:
        raise ConfigError(option, f"{text!r} lacks its prefix length (as in {address}/64)")
    if not length.isdigit() or not 0 < int(length) <= 128:
        raise ConfigError(option, f"{length!r} is not a prefix length between 1 and 128")
    return ipaddress.IPv6Interface(text)


def parse_port(option: str, text: str | int) -> int:
    try:
        port = int(text)
    except ValueError:
        raise ConfigError(option, f"{text!r} is not a port number") from None
    if not 0 < port < 65536:
        raise ConfigError(option, f"{port} is not a port number between 1 and 65535")
    return port


@attrs.frozen(cache_hash=True)
class Endpoint:
    """An IPv6 address and UDP/TCP port."""

    host: ipaddress.IPv6Address
    port: int

    def __str__(self) -> str:
        return _endpoint_text(self)


@functools.lru_cache(maxsize=plan.ADDRESS_CACHE)
def _endpoint_text(endpoint: Endpoint) -> str:
    # Remembered like the transport's socket addresses: formatting an IPv6 address costs
    # 7 µs, and the gossip state file and the status write every member's each time.
    return f"[{endpoint.host}]:{endpoint.port}"


def parse_endpoint(option: str, text: str, default_port: int) -> Endpoint:
    """``addr``, ``[addr]`` or ``[addr]:port``."""
    text = text.strip()
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ConfigError(option, f"{text!r} is not an address or [address]:port")
        port = parse_port(option, rest[1:]) if rest else default_port
    else:
        host, port = text, default_port
    return Endpoint(parse_ipv6_address(option, host), port)


def parse_components(text: str | None, role: str) -> tuple[str, ...]:
    if not text:
        return default_components(role)
    if text == "none":
        return ()
    chosen = tuple(item.strip() for item in text.split(","))
    for item in chosen:
        if item not in COMPONENTS:
            raise ConfigError("components", f"{item!r} is not one of none, {', '.join(COMPONENTS)}")
    return tuple(component for component in COMPONENTS if component in chosen)


def default_components(role: str) -> tuple[str, ...]:
    return {
        "master": MASTER_COMPONENTS,
        "node": NODE_COMPONENTS,
        "full": COMPONENTS,
    }[role]


def parse_interface(text: str | None) -> str | None:
    if text is not None and not _IFACE.fullmatch(text):
        raise ConfigError("iface", f"{text!r} is not a network interface name")
    return text


@attrs.frozen
class ManholeConfig:
    """Where the manhole listens: a unix socket path or a loopback endpoint."""

    socket: Path | None
    endpoint: Endpoint | None
    authorized_keys: Path


def parse_manhole(text: str | None, keys: str | None, node_dir: Path) -> ManholeConfig | None:
    """``unix`` (a socket in the node's directory), a port, or ``[::1]:port``."""
    if not text:
        return None
    authorized = Path(keys) if keys else node_dir / "authorized_keys"
    if text == "unix":
        return ManholeConfig(node_dir / "manhole.sock", None, authorized)
    endpoint = parse_listening("manhole", text, "'unix', a port or [::1]:port")
    if not endpoint.host.is_loopback:
        raise ConfigError(
            "manhole", f"refusing to listen on {endpoint.host}: only loopback or 'unix'"
        )
    return ManholeConfig(None, endpoint, authorized)


def parse_listening(option: str, text: str, expected: str) -> Endpoint:
    """Where a local service listens: a port (on ``::1``) or ``[address]:port``."""
    if text.isdigit():
        return Endpoint(ipaddress.IPv6Address("::1"), parse_port(option, text))
    try:
        endpoint = parse_endpoint(option, text, 0)
    except ConfigError:
        raise ConfigError(option, f"{text!r} is not {expected}") from None
    if endpoint.port == 0:
        raise ConfigError(option, f"{text!r} lacks a port")
    return endpoint


def parse_metrics(text: str | None) -> Endpoint | None:
    """``none``, a port (on ``::1``), or ``[addr]:port``; by default ``[::1]:7947``."""
    if not text:
        return Endpoint(ipaddress.IPv6Address("::1"), DEFAULT_METRICS_PORT)
    if text == "none":
        return None
    return parse_listening("metrics", text, "'none', a port or [address]:port")


@attrs.frozen
class NodeConfig:
    """Everything a node needs to start, validated."""

    cluster: str
    name: str
    keyring: tuple[bytes, ...]
    role: str
    iface: str | None
    ip: ipaddress.IPv6Interface | None
    gw: ipaddress.IPv6Address | None
    dns: tuple[ipaddress.IPv6Address, ...]
    anchors: tuple[Endpoint, ...]
    port: int
    data_dir: Path
    bin_dir: Path | None
    log_format: str
    manhole: ManholeConfig | None
    gossip_profile: str
    contain: bool
    pod_network: str
    components: tuple[str, ...]
    backup_interval: float = DEFAULT_BACKUP_INTERVAL_HOURS * 3600
    backup_keep: int = DEFAULT_BACKUP_KEEP
    #: Where Prometheus scrapes the agent; None: nowhere.
    metrics: Endpoint | None = Endpoint(ipaddress.IPv6Address("::1"), DEFAULT_METRICS_PORT)

    @property
    def plan(self) -> plan.Plan:
        return plan.Plan(self.cluster, self.name)

    @property
    def node_dir(self) -> Path:
        return node_dir(self.data_dir, self.cluster, self.name)

    @property
    def is_master(self) -> bool:
        return self.role in ("master", "full")

    @property
    def is_node(self) -> bool:
        return self.role in ("node", "full")


def node_dir(data_dir: Path, cluster: str, name: str) -> Path:
    return data_dir / cluster / name


def parse_node_config(
    raw: Mapping[str, str | None], lists: Mapping[str, Sequence[str]], switches: Mapping[str, bool]
) -> NodeConfig:
    """Build a :class:`NodeConfig` from the raw strings of the command line or environment."""
    cluster = parse_cluster(raw.get("cluster"))
    name = parse_name(raw.get("name"))
    keyring = parse_keyring(raw.get("key"))
    role = parse_role(raw.get("role"))
    ip_text, gw_text = raw.get("ip"), raw.get("gw")
    ip = parse_interface_address("ip", ip_text) if ip_text else None
    gw = parse_ipv6_address("gw", gw_text) if gw_text else None
    port = parse_port("port", raw.get("port") or DEFAULT_PORT)
    dns = tuple(parse_ipv6_address("dns", item) for item in lists.get("dns") or DEFAULT_DNS)
    anchors = tuple(parse_endpoint("anchor", item, port) for item in lists.get("anchor", ()))
    data_dir = Path(raw.get("data-dir") or DEFAULT_DATA_DIR)
    if not data_dir.is_absolute():
        data_dir = data_dir.absolute()
    bin_text = raw.get("bin-dir")
    log_format = raw.get("log-format") or "text"
    if log_format not in ("text", "json"):
        raise ConfigError("log-format", f"{log_format!r} is not one of text, json")
    gossip_profile = raw.get("gossip-profile") or "lan"
    if gossip_profile not in GOSSIP_PROFILES:
        raise ConfigError("gossip-profile", f"{gossip_profile!r} is not one of lan, wan")
    pod_network = raw.get("pod-network") or "hepto"
    if pod_network not in POD_NETWORKS:
        raise ConfigError("pod-network", f"{pod_network!r} is not one of hepto, none")
    iface = parse_interface(raw.get("iface"))
    contain = not switches.get("no-contain", False)
    if contain and iface is None:
        raise ConfigError("iface", "missing: the host's public interface, as --iface eth0")
    if not contain and iface is None and ip is None:
        raise ConfigError("ip", "with --no-contain, give --ip or --iface for the node's address")
    return NodeConfig(
        cluster=cluster,
        name=name,
        keyring=keyring,
        role=role,
        iface=iface,
        ip=ip,
        gw=gw,
        dns=dns,
        anchors=anchors,
        port=port,
        data_dir=data_dir,
        bin_dir=Path(bin_text).absolute() if bin_text else None,
        log_format=log_format,
        manhole=parse_manhole(
            raw.get("manhole"), raw.get("manhole-keys"), node_dir(data_dir, cluster, name)
        ),
        gossip_profile=gossip_profile,
        contain=contain,
        pod_network=pod_network,
        components=parse_components(raw.get("components"), role),
        backup_interval=parse_backup_interval(raw.get("backup-interval")),
        backup_keep=parse_backup_keep(raw.get("backup-keep")),
        metrics=parse_metrics(raw.get("metrics")),
    )
