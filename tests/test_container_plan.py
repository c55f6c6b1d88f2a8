"""The container's plan: refusals before anything is made, its address, its mode, the
agent's command line, the commands inside, the cleanup script; all pure."""

from __future__ import annotations

import ipaddress
import os
import subprocess
from pathlib import Path
from typing import Any

import attrs
from twisted.trial.unittest import SynchronousTestCase

from hepto.container import cleanup, host
from hepto.container.outer import Outer
from hepto.container.plan import (
    IPVLAN,
    NAMESPACES,
    VETH,
    ContainerError,
    ContainerPlan,
    HostFacts,
    agent_argv,
    choose_mode,
    derived_address,
    make_plan,
    resolv_conf,
)

HOST = ipaddress.IPv6Interface("2001:db8:1::5/64")
GATEWAY = ipaddress.IPv6Address("fe80::1234")
FACTS = HostFacts(
    euid=0,
    interfaces=frozenset({"lo", "eth0"}),
    public=HOST,
    gateway=None,
    mtu=1400,
    namespaces=frozenset({*NAMESPACES, "time", "user"}),
)


def plan(facts: HostFacts = FACTS, **overrides: Any) -> ContainerPlan:
    arguments: dict[str, Any] = {
        "cluster": "c",
        "name": "n1",
        "iface": "eth0",
        "ip": None,
        "gw": None,
        "dns": (ipaddress.IPv6Address("2001:db8::53"),),
        "node_dir": Path("/var/lib/hepto/c/n1"),
        "kept": (Path("/var/lib/hepto"),),
        "routes": (),
    }
    return make_plan(facts, **(arguments | overrides))


class RefusalTests(SynchronousTestCase):
    def assertRefused(self, option: str, words: str, **changes: Any) -> None:
        facts = attrs.evolve(FACTS, **{k: v for k, v in changes.items() if hasattr(FACTS, k)})
        overrides = {k: v for k, v in changes.items() if not hasattr(FACTS, k)}
        with self.assertRaises(ContainerError) as caught:
            plan(facts, **overrides)
        self.assertEqual(caught.exception.option, option)
        self.assertIn(words, str(caught.exception))

    def test_not_root(self) -> None:
        self.assertRefused("no-contain", "must start as root", euid=1000)

    def test_a_kernel_without_namespaces(self) -> None:
        self.assertRefused(
            "no-contain", "no cgroup namespaces", namespaces=frozenset(NAMESPACES) - {"cgroup"}
        )

    def test_missing_programs(self) -> None:
        self.assertRefused("no-contain", "needs setpriv on the PATH", missing_programs=("setpriv",))

    def test_missing_or_unknown_interface(self) -> None:
        self.assertRefused("iface", "missing", iface=None)
        self.assertRefused("iface", "no interface 'eth1'", iface="eth1")

    def test_an_interface_without_an_address(self) -> None:
        self.assertRefused("iface", "no usable global IPv6 address", public=None)

    def test_a_prefix_too_long_to_derive_from(self) -> None:
        self.assertRefused(
            "ip", "longer than /64", public=ipaddress.IPv6Interface("2001:db8::5/120")
        )

    def test_the_hosts_own_address(self) -> None:
        self.assertRefused("ip", "the host's own address", ip=HOST)

    def test_root_comes_first(self) -> None:
        self.assertRefused("no-contain", "root", euid=1000, iface=None, public=None)


class AddressTests(SynchronousTestCase):
    def test_given(self) -> None:
        given = ipaddress.IPv6Interface("2001:db8:1::99/64")
        self.assertEqual(plan(ip=given).address, given)

    def test_derived_in_the_hosts_prefix_stable_and_per_node(self) -> None:
        first = plan().address
        self.assertEqual(first.network, HOST.network)
        self.assertNotEqual(first.ip, HOST.ip)
        self.assertEqual(plan().address, first)
        self.assertNotEqual(plan(name="n2").address, first)
        self.assertNotEqual(plan(cluster="d").address, first)
        # Set bits in the 64 of the interface identifier only.
        self.assertEqual(int(first.ip) >> 64, int(HOST.ip) >> 64)

    def test_derived_never_the_subnet_router_anycast(self) -> None:
        address = derived_address(HOST, "c", "n1")
        self.assertNotEqual(address.ip, HOST.network.network_address)


class ModeTests(SynchronousTestCase):
    def test_ipvlan_where_the_kernel_has_it_and_a_gateway_is_known(self) -> None:
        self.assertEqual(choose_mode(plan(gw=GATEWAY), has_ipvlan=True), IPVLAN)

    def test_veth_without_ipvlan(self) -> None:
        self.assertEqual(choose_mode(plan(gw=GATEWAY), has_ipvlan=False), VETH)

    def test_veth_without_a_gateway(self) -> None:
        self.assertEqual(choose_mode(plan(), has_ipvlan=True), VETH)

    def test_the_hosts_gateway_unless_given(self) -> None:
        learned = ipaddress.IPv6Address("fe80::99")
        self.assertEqual(plan(attrs.evolve(FACTS, gateway=learned)).gateway, learned)
        self.assertEqual(plan(attrs.evolve(FACTS, gateway=learned), gw=GATEWAY).gateway, GATEWAY)

    def test_default_gateway_from_ip_route(self) -> None:
        shown = "default via fe80::1 proto ra metric 1024 expires 1798sec hoplimit 64 pref medium\n"
        self.assertEqual(host.default_gateway(shown), ipaddress.IPv6Address("fe80::1"))
        self.assertIsNone(host.default_gateway("2001:db8::/64 proto kernel metric 256\n"))


class CommandTests(SynchronousTestCase):
    def test_agent_argv(self) -> None:
        argv = ["/v/bin/python", "/v/bin/twistd", "-n", "hepto", "--name", "n1", "--iface", "x"]
        self.assertEqual(
            agent_argv(argv, "eth0"),
            ("/v/bin/python", "/v/bin/twistd", "-n", "--nodaemon", "--pidfile=", "hepto",
             "--name", "n1", "--iface", "x", "--no-contain", "--iface", "eth0"),
        )  # fmt: skip

    def test_agent_argv_without_hepto(self) -> None:
        self.assertRaises(ContainerError, agent_argv, ["/v/bin/python", "-m", "other"], "eth0")

    def test_json_round_trip(self) -> None:
        made = attrs.evolve(
            plan(gw=GATEWAY, routes=(ipaddress.IPv6Address("fd00::1"),)),
            agent_argv=("a", "b"),
        )
        self.assertEqual(ContainerPlan.from_json(made.to_json()), made)

    def test_names(self) -> None:
        made = plan()
        self.assertRegex(made.host_link, r"^hp[0-9a-f]{8}$")
        self.assertNotEqual(plan(name="n2").host_link, made.host_link)
        self.assertEqual(made.cgroup, "/hepto/c/n1")
        self.assertEqual(resolv_conf(made.dns), "nameserver 2001:db8::53\n")

    def test_inside_veth(self) -> None:
        made = plan()
        commands = [" ".join(argv) for argv in host.inside_commands(made, VETH)]
        self.assertIn(f"-6 address add {made.address.ip}/128 dev eth0 nodad", commands)
        self.assertIn("-6 route add default via fe80::1 dev eth0", commands)
        self.assertIn("-6 address add fe80::2/64 dev eth0 nodad", commands)

    def test_inside_ipvlan(self) -> None:
        made = plan(gw=GATEWAY)
        commands = [" ".join(argv) for argv in host.inside_commands(made, IPVLAN)]
        self.assertIn(f"link set {made.host_link} name eth0", commands)
        self.assertIn(f"-6 address add {made.address} dev eth0 nodad", commands)
        self.assertIn(f"-6 route add default via {GATEWAY} dev eth0", commands)


class CleanupScriptTests(SynchronousTestCase):
    def test_the_script_is_shell_and_names_what_it_removes(self) -> None:
        made = plan(routes=(ipaddress.IPv6Address("fd00::1"),))
        directories = [Path("/sys/fs/cgroup/freezer/hepto/c/n1"), Path("/sys/fs/cgroup/x y")]
        text = cleanup.script(made, directories, directories[0])
        path = Path(self.mktemp())
        path.write_text(text)
        checked = subprocess.run(["sh", "-n", str(path)], capture_output=True, text=True)
        self.assertEqual(checked.returncode, 0, checked.stderr)
        self.assertIn(f"ip link delete {made.host_link}", text)
        self.assertIn(f"ip -6 neighbour delete proxy {made.address.ip} dev eth0", text)
        self.assertIn("ip -6 route delete fd00::1/128", text)
        self.assertIn("'/sys/fs/cgroup/x y'", text)
        self.assertIn(str(made.record), text)

    def test_sweep_removes_the_cgroups_and_the_record(self) -> None:
        root = Path(self.mktemp())
        cgroup = root / "freezer" / "hepto" / "c" / "n1"
        (cgroup / "hepto" / "c" / "n1" / "pods").mkdir(parents=True)
        made = attrs.evolve(plan(), node_dir=root / "node")
        made.files.mkdir(parents=True)
        made.record.write_text("{}")
        script = root / "cleanup.sh"
        script.write_text(cleanup.script(made, [cgroup], cgroup))
        # An ip that fails, as on a host where the link is gone: the rest is still done.
        stub = root / "bin"
        stub.mkdir()
        (stub / "ip").write_text("#!/bin/sh\nexit 1\n")
        (stub / "ip").chmod(0o755)
        done = subprocess.run(
            ["sh", str(script), "sweep"], capture_output=True, text=True,
            env={"PATH": f"{stub}:/usr/bin:/bin"},
        )  # fmt: skip
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertFalse(cgroup.exists())
        self.assertFalse((root / "freezer" / "hepto").exists())
        self.assertFalse(made.record.exists())


class LockTests(SynchronousTestCase):
    """One container per node and host: a second outer process refuses, touching nothing."""

    def test_a_second_container_of_the_node_is_refused(self) -> None:
        made = attrs.evolve(plan(), node_dir=Path(self.mktemp()))
        first = Outer(made)
        first.take_lock()
        second = Outer(made)
        with self.assertRaises(ContainerError) as caught:
            second.take_lock()
        self.assertEqual(str(caught.exception), "--name: n1 of cluster c already runs on this host")
        second.finish()  # refused: nothing of the first's is swept
        assert first.lock is not None
        os.close(first.lock)
        third = Outer(made)
        third.take_lock()
        assert third.lock is not None
        os.close(third.lock)
