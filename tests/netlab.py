"""Simulated hosts for integration tests: network namespaces on a private bridge.

Each :class:`Lab` owns a "switch" namespace holding a bridge, and one namespace per
host with an ``eth0`` veth into that bridge and an address of ``2001:db8:1::/64``.
Nothing is created in the root namespace, so labs running side by side never clash,
and :meth:`Lab.close` removes everything it made, processes included.
"""

from __future__ import annotations

import ctypes
import ipaddress
import os
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs

from hepto.mesh.backend import DeviceStatus
from hepto.mesh.uapi import GET_REQUEST, parse_get

SUBNET = ipaddress.IPv6Network("2001:db8:1::/64")
CLONE_NEWNET = 0x40000000
#: The kernel's IPv6 neighbour table is one for all network namespaces, 1,024 entries
#: at most by default: a lab of 100 hosts that all talk fills it, and from then on no
#: namespace on the machine resolves a new neighbour. Raised once, machine-wide.
#: Likewise every agent's mesh holds an inotify instance, 128 per user by default.
MACHINE_LIMITS = {
    "net/ipv6/neigh/default/gc_thresh1": 8192,
    "net/ipv6/neigh/default/gc_thresh2": 32768,
    "net/ipv6/neigh/default/gc_thresh3": 65536,
    "fs/inotify/max_user_instances": 8192,
}


def _raise_machine_limits() -> None:
    for name, wanted in MACHINE_LIMITS.items():
        path = Path("/proc/sys") / name
        if int(path.read_text()) < wanted:
            path.write_text(str(wanted))


def missing_requirements(*programs: str) -> str | None:
    """Why a lab cannot run here, or None: for ``skipTest``."""
    if os.geteuid() != 0:
        return "needs root for network namespaces"
    for program in ("ip", *programs):
        if shutil.which(program) is None:
            return f"needs {program}"
    return None


def _run(argv: Sequence[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), check=check, capture_output=True, text=True)


@attrs.define
class Host:
    lab: Lab
    name: str
    netns: str
    index: int
    processes: list[subprocess.Popen[bytes]] = attrs.field(factory=list)

    @property
    def address(self) -> ipaddress.IPv6Address:
        return SUBNET.network_address + self.index

    @property
    def interface(self) -> ipaddress.IPv6Interface:
        return ipaddress.IPv6Interface(f"{self.address}/{SUBNET.prefixlen}")

    def command(self, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.netns, *argv]

    def run(self, argv: Sequence[str], check: bool = True) -> subprocess.CompletedProcess[str]:
        return _run(self.command(argv), check=check)

    def processes_named(self, name: str) -> set[int]:
        """The pids of this host's processes whose command is ``name``."""
        found = set()
        for pid in self.run(["ip", "netns", "pids", self.netns], check=False).stdout.split():
            try:
                if Path(f"/proc/{pid}/comm").read_text().strip() == name:
                    found.add(int(pid))
            except OSError:
                pass
        return found

    def spawn(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        """Start a process in this host, in a session of its own so it can be killed whole."""
        process = subprocess.Popen(self.command(argv), start_new_session=True, **kwargs)
        self.processes.append(process)
        return process

    def kill(self, process: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
        if process.poll() is None:
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                pass
        process.wait(timeout=30)

    def drop_from(self, *others: Host) -> None:
        """Drop every packet from ``others`` (one side of a partition)."""
        self._ensure_table()
        for other in others:
            self.run(
                [
                    "nft",
                    "add",
                    "rule",
                    "inet",
                    "lab",
                    "input",
                    "ip6",
                    "saddr",
                    str(other.address),
                    "drop",
                ]
            )

    def set_loss(self, percent: int) -> None:
        """Drop that share of incoming packets at random (this kernel has no netem)."""
        self._ensure_table()
        chance = [] if percent >= 100 else ["numgen", "random", "mod", "100", "<", str(percent)]
        self.run(["nft", "add", "rule", "inet", "lab", "input", *chance, "drop"])

    def heal(self) -> None:
        self.run(["nft", "delete", "table", "inet", "lab"], check=False)

    def _ensure_table(self) -> None:
        self.run(["nft", "add", "table", "inet", "lab"])
        self.run(
            [
                "nft",
                "add",
                "chain",
                "inet",
                "lab",
                "input",
                "{ type filter hook input priority 0 ; policy accept ; }",
            ]
        )


@attrs.define
class Lab:
    """A bridge and the hosts on it; ``prefix`` names everything this lab makes."""

    prefix: str
    token: str = attrs.field(factory=lambda: secrets.token_hex(2))
    hosts: list[Host] = attrs.field(factory=list)
    _switch: str | None = None

    @property
    def switch(self) -> str:
        if self._switch is None:
            _raise_machine_limits()
            self._switch = f"{self.prefix}{self.token}-sw"
            _run(["ip", "netns", "add", self._switch])
            self._in_switch(["ip", "link", "add", "br0", "type", "bridge"])
            self._in_switch(["ip", "link", "set", "br0", "up"])
        return self._switch

    def _in_switch(self, argv: Sequence[str]) -> None:
        _run(["ip", "netns", "exec", self.switch, *argv])

    def add_host(self, name: str) -> Host:
        index = len(self.hosts) + 1
        netns = f"{self.prefix}{self.token}-{name}"
        switch = self.switch
        _run(["ip", "netns", "add", netns])
        host = Host(self, name, netns, index)
        self.hosts.append(host)
        port = f"p{index}"
        _run(
            [
                "ip",
                "link",
                "add",
                "eth0",
                "netns",
                netns,
                "type",
                "veth",
                "peer",
                "name",
                port,
                "netns",
                switch,
            ]
        )
        self._in_switch(["ip", "link", "set", port, "master", "br0", "up"])
        # No duplicate address detection: the address is usable at once.
        host.run(
            [
                "sysctl",
                "-q",
                "-w",
                "net.ipv6.conf.all.accept_dad=0",
                "net.ipv6.conf.default.accept_dad=0",
                "net.ipv6.conf.eth0.accept_dad=0",
            ]
        )
        host.run(["ip", "link", "set", "lo", "up"])
        host.run(["ip", "addr", "add", str(host.interface), "dev", "eth0", "nodad"])
        host.run(["ip", "link", "set", "eth0", "up"])
        return host

    def close(self) -> None:
        for host in self.hosts:
            for process in host.processes:
                try:
                    host.kill(process)
                except (subprocess.TimeoutExpired, OSError):
                    pass
            self._kill_leftovers(host.netns)
            _run(["ip", "netns", "del", host.netns], check=False)
        if self._switch is not None:
            _run(["ip", "netns", "del", self._switch], check=False)
        self.hosts.clear()

    @staticmethod
    def _kill_leftovers(netns: str) -> None:
        pids = _run(["ip", "netns", "pids", netns], check=False).stdout.split()
        for pid in pids:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass


def wait_until(
    predicate: Callable[[], Any], timeout: float, interval: float = 0.1, what: str = "condition"
) -> Any:
    """Poll an external process's observable state; the only place tests wait by polling."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def holds_for(
    predicate: Callable[[], Any], duration: float, interval: float = 0.1, what: str = "condition"
) -> None:
    """Poll, like :func:`wait_until`, that ``predicate`` stays true for ``duration`` s."""
    deadline = time.monotonic() + duration
    while time.monotonic() < deadline:
        if not predicate():
            raise AssertionError(f"{what} stopped holding")
        time.sleep(interval)


def netns_socket(netns: str, family: int, kind: int, protocol: int = 0) -> socket.socket:
    """A socket in the network namespace ``netns``, for in-process clients of that host.

    A socket stays in the namespace it was made in; a short-lived thread enters ``netns``
    to make it, so this process's own threads never move.
    """
    made: list[socket.socket | BaseException] = []

    def make() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            with open(f"/run/netns/{netns}", "rb") as handle:
                if libc.setns(handle.fileno(), CLONE_NEWNET) != 0:
                    error = ctypes.get_errno()
                    raise OSError(error, f"setns {netns}: {os.strerror(error)}")
            made.append(socket.socket(family, kind, protocol))
        except BaseException as error:  # handed to the caller
            made.append(error)

    thread = threading.Thread(target=make, name=f"netns {netns}")
    thread.start()
    thread.join()
    (result,) = made
    if isinstance(result, BaseException):
        raise result
    return result


def uapi_get(path: Path) -> DeviceStatus:
    """What a wireguard-go device says of itself, through its UAPI socket."""
    with socket.socket(socket.AF_UNIX) as connection:
        connection.settimeout(10)
        connection.connect(str(path))
        connection.sendall(GET_REQUEST)
        reply = b""
        while not reply.endswith(b"\n\n"):
            chunk = connection.recv(65536)
            if not chunk:
                break
            reply += chunk
    return parse_get(reply[:-1])
