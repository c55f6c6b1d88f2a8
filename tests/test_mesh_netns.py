"""The mesh end to end: hosts as network namespaces on a bridge, each with a real
wireguard-go driven by MeshService (through MemoryCluster, in this process).

Checks that every host reaches every other's mesh address through the mesh, that a
dead member's peer goes and comes back, and that a capture on the bridge never shows
the payload in clear.  ``HEPTO_MESH_LAB_HOSTS=8`` runs it with 8 hosts;
``HEPTO_MESH_FIGURES=1`` also measures latency and throughput (see docs/mesh.rst).
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

from nacl.signing import SigningKey
from twisted.internet import defer, reactor, task, utils
from twisted.trial.unittest import TestCase

import netlab
from hepto import plan
from hepto.mesh.keys import KeyPair
from hepto.mesh.links import Links
from hepto.mesh.rtnetlink import RtNetlink
from hepto.mesh.service import MeshService, MeshSettings
from hepto.mesh.underlay import Underlay
from hepto.mesh.userspace import UserspaceBackend
from hepto.state import ALIVE, DEAD, MemoryCluster

CLUSTER = "meshlab"
HOSTS = int(os.environ.get("HEPTO_MESH_LAB_HOSTS", "3"))
MARKER = b"hepto-mesh-secret-0123456789"


async def run(argv: list[str]) -> tuple[str, int]:
    out, err, code = await utils.getProcessOutputAndValue(argv[0], argv[1:], env=os.environ)
    return (out + err).decode(errors="replace"), code


async def eventually(
    check: Callable[[], Awaitable[bool]], timeout: float, what: str, interval: float = 0.2
) -> float:
    """Seconds until ``check`` holds: polls an outside observable (ping, a capture)."""
    start = time.monotonic()
    while not await check():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await task.deferLater(reactor, interval)
    return time.monotonic() - start


class MeshLabTests(TestCase):
    timeout = 600

    def setUp(self) -> None:
        why = netlab.missing_requirements("wireguard-go", "setpriv", "unshare", "ping", "tcpdump")
        if why:
            raise self.skipTest(why)
        self.lab = netlab.Lab("hm")
        self.addCleanup(self.lab.close)
        self.cluster = MemoryCluster()
        self.hosts = [self.lab.add_host(f"n{i}") for i in range(HOSTS)]
        self.services: dict[str, MeshService] = {}
        base = Path(self.mktemp()).absolute()
        for host in self.hosts:
            state = self.cluster.join(host.name, role="master" if host.index == 1 else "node")
            rt = RtNetlink(
                netlab.netns_socket(
                    host.netns, socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE
                )
            )
            self.addCleanup(rt.close)
            node_dir = base / host.name
            service = MeshService(
                MeshSettings(CLUSTER, host.name, host.index == 1),
                state,
                reactor,
                keys=partial(KeyPair.from_identity, SigningKey.generate()),
                backends=[
                    partial(
                        UserspaceBackend,
                        reactor,
                        "hepto0",
                        node_dir / "wireguard",
                        wrapper=host.command([]),
                    )
                ],
                links=Links(rt, "hepto0"),
                underlay=partial(Underlay, host.address, 1500),
            )
            self.services[host.name] = service
            self.addCleanup(self.stop_service, service)

    def stop_service(self, service: MeshService) -> Any:
        return service.stopService() if service.running else None

    def mesh(self, name: str) -> ipaddress.IPv6Address:
        return plan.mesh_address(CLUSTER, name)

    async def pings(self, source: netlab.Host, target: ipaddress.IPv6Address) -> bool:
        _, code = await run(source.command(["ping", "-6", "-n", "-c", "1", "-W", "1", str(target)]))
        return code == 0

    async def all_pairs(self) -> bool:
        checks = [
            self.pings(source, self.mesh(target.name))
            for source in self.hosts
            for target in self.hosts
            if source is not target
        ]
        results = await defer.gatherResults([defer.ensureDeferred(c) for c in checks])
        return all(results)

    async def start_all(self) -> float:
        """Start every service; seconds from the last start to all-pairs connectivity."""
        for service in self.services.values():
            service.startService()
        last_start = time.monotonic()
        starting = [service._starting for service in self.services.values()]
        await defer.gatherResults([d for d in starting if d is not None])
        for service in self.services.values():
            self.assertEqual(service.phase, "running", service.error)
        await eventually(self.all_pairs, 120, "all-pairs mesh connectivity")
        return time.monotonic() - last_start

    async def peers_of(self, name: str) -> set[str]:
        service = self.services[name]
        assert service.backend is not None
        device = await service.backend.read()
        keys = {s.keys.public_key: n for n, s in self.services.items() if s.keys is not None}
        return {keys.get(key, key) for key in device.peers}

    async def _mesh(self) -> None:
        seconds = await self.start_all()
        print(f"\nmesh: {HOSTS} hosts, all pairs connected {seconds:.2f} s after start")
        first, last = self.hosts[0], self.hosts[-1]
        names = {host.name for host in self.hosts}
        self.assertEqual(await self.peers_of(first.name), names - {first.name})

        # The master's peer carries the apiserver address: it answers there too.
        self.assertTrue(await self.pings(last, plan.apiserver_address(CLUSTER)))

        # MTU and routes on the interface.
        out, _ = await run(first.command(["ip", "-j", "link", "show", "hepto0"]))
        self.assertEqual(json.loads(out)[0]["mtu"], 1420)
        out, _ = await run(first.command(["ip", "-6", "route", "show", "dev", "hepto0"]))
        self.assertIn(f"{plan.mesh_prefix(CLUSTER)} proto static", out)

        # A dead member loses its peer everywhere; alive again, it gets it back.
        self.cluster.set_status(last.name, DEAD)
        for host in self.hosts[:-1]:
            await eventually(partial(self._lacks, host.name, last.name), 30, "the dead peer to go")
        self.assertFalse(await self.pings(first, self.mesh(last.name)))
        self.cluster.set_status(last.name, ALIVE)
        await eventually(lambda: self.pings(first, self.mesh(last.name)), 60, "the peer's return")
        self.assertIn(last.name, await self.peers_of(first.name))

        # A crash of wireguard-go: restarted, reconfigured, reachable again.
        backend = self.services[last.name].backend
        assert isinstance(backend, UserspaceBackend) and backend.pid is not None
        os.kill(backend.pid, 9)
        await eventually(self.all_pairs, 120, "connectivity after a wireguard-go crash")
        self.assertEqual(backend.restarts, 1)

        await self._capture(first, last)

    async def _lacks(self, name: str, peer: str) -> bool:
        return peer not in await self.peers_of(name)

    async def _capture(self, source: netlab.Host, target: netlab.Host) -> None:
        """The payload never crosses the bridge in clear; over the bare bridge it does."""
        pcap = Path(self.mktemp()).absolute()
        capture = self.lab.switch
        tcpdump = await self._start_capture(capture, pcap)
        mesh_target = self.mesh(target.name)
        for destination in (mesh_target, target.address):
            await run(
                source.command(
                    [
                        "python3",
                        "-c",
                        "import socket,sys;"
                        "s=socket.socket(socket.AF_INET6,socket.SOCK_DGRAM);"
                        f"[s.sendto({MARKER!r}, ('{destination}', 9)) for _ in range(5)]",
                    ]
                )
            )
        await tcpdump.stop()
        datagrams = udp_payloads(pcap.read_bytes())
        clear = [d for d in datagrams if MARKER in d[2]]
        self.assertEqual(len(clear), 5, "the control: the bare-bridge datagrams show it")
        self.assertTrue(all(d[1] == 9 for d in clear), "and only those")
        # The mesh copies crossed as WireGuard data messages (type 4) big enough to hold
        # them: header 16 + inner IPv6 40 + UDP 8 + marker, padded, + tag 16.
        carried = [
            d
            for d in datagrams
            if d[0] == d[1] == 51820
            and d[2][:4] == b"\x04\0\0\0"
            and len(d[2]) >= 32 + 48 + len(MARKER)
        ]
        self.assertGreaterEqual(len(carried), 5)

    async def _start_capture(self, netns: str, pcap: Path) -> Capture:
        capture = Capture(netns, pcap)
        await capture.start()
        return capture

    def test_mesh(self) -> defer.Deferred[None]:
        return defer.Deferred.fromCoroutine(self._mesh())

    async def _figures(self) -> None:
        if not os.environ.get("HEPTO_MESH_FIGURES"):
            raise self.skipTest("set HEPTO_MESH_FIGURES=1 to measure latency and throughput")
        if shutil.which("iperf3") is None:
            raise self.skipTest("needs iperf3")
        await self.start_all()
        client, server = self.hosts[0], self.hosts[1]
        results: dict[str, float] = {"wireguard-go RSS idle kB": self._largest_rss()}
        for label, address in (("bridge", server.address), ("mesh", self.mesh(server.name))):
            out, _ = await run(
                client.command(["ping", "-6", "-n", "-q", "-c", "50", "-i", "0.02", str(address)])
            )
            found = re.search(r"= [\d.]+/([\d.]+)/", out)
            assert found, out
            results[f"{label} ping avg ms"] = float(found.group(1))
        for label, address in (("bridge", server.address), ("mesh", self.mesh(server.name))):
            iperf = server.spawn(["iperf3", "-s", "-1"], stdout=subprocess.DEVNULL)
            self.addCleanup(server.kill, iperf)
            await eventually(
                lambda: self._listening(server, 5201), 30, "iperf3 to listen", interval=0.05
            )
            out, code = await run(client.command(["iperf3", "-J", "-t", "5", "-c", str(address)]))
            self.assertEqual(code, 0, out)
            bits = json.loads(out)["end"]["sum_received"]["bits_per_second"]
            results[f"{label} iperf3 Mbit/s"] = round(bits / 1e6)
        results["wireguard-go RSS after iperf3 kB"] = self._largest_rss()
        print("\nmesh figures:", json.dumps(results))

    def _largest_rss(self) -> int:
        """The largest resident set (kB) among the hosts' wireguard-go."""
        sizes = []
        for service in self.services.values():
            backend = service.backend
            assert isinstance(backend, UserspaceBackend)
            status = Path(f"/proc/{backend.pid}/status").read_text()
            found = re.search(r"VmRSS:\s+(\d+)", status)
            assert found is not None
            sizes.append(int(found.group(1)))
        return max(sizes)

    async def _listening(self, host: netlab.Host, port: int) -> bool:
        out, _ = await run(host.command(["ss", "-Hltn", f"sport = :{port}"]))
        return bool(out.strip())

    def test_figures(self) -> defer.Deferred[None]:
        return defer.Deferred.fromCoroutine(self._figures())


class Capture:
    """tcpdump on the lab's bridge, writing a pcap; started once it says it listens."""

    def __init__(self, netns: str, pcap: Path) -> None:
        self.netns = netns
        self.pcap = pcap

    async def start(self) -> None:
        from twisted.internet.protocol import ProcessProtocol

        listening: defer.Deferred[None] = defer.Deferred()
        self.ended: defer.Deferred[None] = defer.Deferred()
        capture = self

        class Watch(ProcessProtocol):
            def errReceived(self, data: bytes) -> None:
                if b"listening on" in data and not listening.called:
                    listening.callback(None)

            def processEnded(self, reason: Any) -> None:
                if not listening.called:
                    listening.errback(reason)
                capture.ended.callback(None)

        argv = [
            "ip",
            "netns",
            "exec",
            self.netns,
            "tcpdump",
            "-i",
            "br0",
            "-U",
            "-n",
            "-w",
            str(self.pcap),
            "udp",
        ]
        self.process = reactor.spawnProcess(Watch(), argv[0], argv, env=os.environ)
        await listening

    async def stop(self) -> None:
        # Let the last datagrams reach the capture before stopping it.
        await task.deferLater(reactor, 1)
        self.process.signalProcess("INT")
        await self.ended


def udp_payloads(pcap: bytes) -> list[tuple[int, int, bytes]]:
    """(source port, destination port, payload) of each IPv6 UDP datagram of a pcap."""
    found = []
    offset = 24  # the global header; Ethernet frames follow (tcpdump on a bridge)
    while offset + 16 <= len(pcap):
        length = int.from_bytes(pcap[offset + 8 : offset + 12], "little")
        frame = pcap[offset + 16 : offset + 16 + length]
        offset += 16 + length
        if frame[12:14] != b"\x86\xdd" or frame[14 + 6] != 17:
            continue
        udp = frame[14 + 40 :]
        ports = int.from_bytes(udp[0:2], "big"), int.from_bytes(udp[2:4], "big")
        found.append((*ports, udp[8:]))
    return found
