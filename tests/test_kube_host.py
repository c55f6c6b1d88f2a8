"""The host as a node's runtime needs it: planning from /proc texts, and the real thing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path, PurePosixPath
from unittest import mock

from twisted.trial.unittest import SynchronousTestCase

from hepto import cgroups
from hepto.cgroups import Hierarchy, Mount
from hepto.kube import host

# This machine's layout: every v1 controller apart, a named systemd one, cgroup2 beside.
HYBRID_CGROUP = """\
9:name=systemd:/
8:pids:/
4:memory:/process_api/eb0ae
3:cpuset:/
1:cpu:/
0::/
"""
HYBRID_MOUNTINFO = """\
22 27 0:21 / /proc rw,relatime - proc proc rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime shared:5 - cgroup cgroup rw,cpuset
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
ROOT = Path("/sys/fs/cgroup")


class PlanningTests(SynchronousTestCase):
    def test_hierarchies_from_mountinfo(self) -> None:
        self.assertEqual(
            cgroups.cgroup_hierarchies(HYBRID_MOUNTINFO),
            [
                Hierarchy(ROOT / "cpu", 1, ("cpu",)),
                Hierarchy(ROOT / "cpuset", 1, ("cpuset",)),
                Hierarchy(ROOT / "freezer", 1, ("freezer",)),
                Hierarchy(ROOT / "systemd", 1, ("name=systemd",)),
                Hierarchy(ROOT / "unified", 2),
            ],
        )

    def test_escaped_mount_points(self) -> None:
        line = "50 31 0:40 / /srv/with\\040space rw - cgroup cgroup rw,pids\n"
        [hierarchy] = cgroups.cgroup_hierarchies(line)
        self.assertEqual(hierarchy.path, Path("/srv/with space"))

    def test_mounts_for_a_namespace_without_cgroups(self) -> None:
        plan = cgroups.plan_cgroup_mounts(HYBRID_CGROUP)
        self.assertEqual(plan[0], Mount("tmpfs", ROOT, "tmpfs", "mode=755"))
        self.assertIn(Mount("cgroup", ROOT / "systemd", "cgroup", "none,name=systemd"), plan)
        self.assertIn(Mount("cgroup", ROOT / "memory", "cgroup", "memory"), plan)
        self.assertEqual(plan[-1], Mount("cgroup2", ROOT / "unified", "cgroup2"))
        self.assertEqual(len(plan), 7)

    def test_combined_controllers_mount_together(self) -> None:
        plan = cgroups.plan_cgroup_mounts("2:cpu,cpuacct:/\n")
        self.assertEqual(plan[1], Mount("cgroup", ROOT / "cpu,cpuacct", "cgroup", "cpu,cpuacct"))

    def test_cgroup_v2_alone(self) -> None:
        self.assertEqual(
            cgroups.plan_cgroup_mounts("0::/user.slice\n"), [Mount("cgroup2", ROOT, "cgroup2")]
        )

    def test_the_freezer_tracks_processes(self) -> None:
        hierarchies = cgroups.cgroup_hierarchies(HYBRID_MOUNTINFO)
        self.assertEqual(host.tracking_hierarchy(hierarchies).path, ROOT / "freezer")
        without = [h for h in hierarchies if not h.is_freezer]
        self.assertEqual(host.tracking_hierarchy(without).path, ROOT / "unified")
        self.assertRaises(host.HostError, host.tracking_hierarchy, [])

    def test_directories(self) -> None:
        hierarchies = cgroups.cgroup_hierarchies(HYBRID_MOUNTINFO)[:2]
        self.assertEqual(
            host.cgroup_directories(hierarchies, PurePosixPath("/hepto/c/n")),
            [ROOT / "cpu/hepto/c/n", ROOT / "cpuset/hepto/c/n"],
        )

    def test_capabilities(self) -> None:
        self.assertFalse(host.has_capability("CapBnd:\t000001fffeffffff\n", 24))
        self.assertTrue(host.has_capability("CapBnd:\t000001ffffffffff\n", 24))
        self.assertFalse(host.has_capability("Name: x\n", 24))


class CgroupTreeTests(SynchronousTestCase):
    """The node's cgroups in plain directories standing for hierarchies."""

    def test_cpuset_values_are_copied_down(self) -> None:
        root = Path(tempfile.mkdtemp())
        self.addCleanup(subprocess.run, ["rm", "-rf", str(root)])
        cpuset = Hierarchy(root / "cpuset", 1, ("cpuset",))
        memory = Hierarchy(root / "memory", 1, ("memory",))
        for hierarchy in (cpuset, memory):
            hierarchy.path.mkdir()
        (cpuset.path / "cpuset.cpus").write_text("0-1\n")
        (cpuset.path / "cpuset.mems").write_text("0\n")
        real_mkdir = Path.mkdir

        def mkdir_like_a_cgroup(path: Path, *args: object, **kwargs: object) -> None:
            real_mkdir(path)
            if str(path).startswith(str(cpuset.path)):
                for name in cgroups.CPUSET_FILES:
                    (path / name).write_text("\n")

        setup = host.HostSetup(root / "sysctl", (PurePosixPath("/hepto/c/n/runtime"),))
        from unittest import mock

        with mock.patch.object(Path, "mkdir", mkdir_like_a_cgroup):
            setup.make_cgroups([cpuset, memory, Hierarchy(root / "unified", 2)])
        self.assertEqual((cpuset.path / "hepto/c/n/runtime/cpuset.cpus").read_text(), "0-1\n")
        self.assertEqual((cpuset.path / "hepto/c/n/cpuset.mems").read_text(), "0\n")
        self.assertTrue((memory.path / "hepto/c/n/runtime").is_dir())
        self.assertFalse((root / "unified").exists(), "runc makes the cgroup2 ones")

    def test_cgroups_made_meanwhile_by_another_node(self) -> None:
        # Another agent on this host makes the same parents between a look and a mkdir.
        root = Path(tempfile.mkdtemp(prefix="hepto-cgroups-"))
        self.addCleanup(subprocess.run, ["rm", "-rf", str(root)])
        memory = Hierarchy(root / "memory", 1, ("memory",))
        (memory.path / "hepto" / "c").mkdir(parents=True)
        with mock.patch.object(Path, "is_dir", lambda path: False):
            made = cgroups.make_cgroup(memory, PurePosixPath("/hepto/c/n"))
        self.assertEqual(made, memory.path / "hepto/c/n")
        self.assertTrue(made.is_dir())


_IN_NAMESPACE = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path, PurePosixPath
    from hepto.kube import host
    work = Path(sys.argv[1])
    host.enter_private_mount_namespace()
    setup = host.HostSetup(
        work / "sysctl",
        (PurePosixPath("/hepto/hosttest/n/runtime"),),
        binds=((work / "private", work / "visible"),),
    )
    hierarchies = setup.prepare()
    setup.prepare()  # a second time changes nothing
    setup.create_cgroups([h for h in hierarchies if h.version == 1])
    (work / "private" / "written").write_text("inside")
    print(json.dumps({
        "hierarchies": [str(h.path) for h in hierarchies],
        "sysctls": {n: Path("/proc/sys", n).read_text().strip() for n in host.KUBELET_SYSCTLS},
        "bound": (work / "visible" / "written").read_text(),
    }))
    """
)


class RealHostTests(SynchronousTestCase):
    """In a network namespace of its own, as the tests' agents run: its own sysfs, no cgroups."""

    def setUp(self) -> None:
        from netlab import Lab, missing_requirements

        why = missing_requirements()
        if why is None and not Path("/sys/fs/cgroup/freezer").is_dir():
            why = "needs the cgroup v1 hierarchies of this kind of machine"
        if why:
            self.skipTest(why)
        self.lab = Lab("hh")
        self.addCleanup(self.lab.close)
        self.host = self.lab.add_host("h")
        self.work = Path(tempfile.mkdtemp(prefix="hepto-host-"))
        self.addCleanup(subprocess.run, ["rm", "-rf", str(self.work)])

    def remove_cgroups(self) -> None:
        for directory in sorted(Path("/sys/fs/cgroup").glob("*/hepto/hosttest/**/"), reverse=True):
            directory.rmdir()
        for directory in Path("/sys/fs/cgroup").glob("*/hepto"):
            try:
                directory.rmdir()
            except OSError:
                pass  # another node's, in use

    def test_mounts_stay_inside_and_the_host_keeps_its_sysctls(self) -> None:
        before = {name: Path("/proc/sys", name).read_text() for name in host.KUBELET_SYSCTLS}
        mounts_before = Path("/proc/self/mountinfo").read_text()
        done = self.host.run([sys.executable, "-c", _IN_NAMESPACE, str(self.work)], check=False)
        self.addCleanup(self.remove_cgroups)
        self.assertEqual(done.returncode, 0, done.stderr)
        seen = json.loads(done.stdout)
        self.assertIn("/sys/fs/cgroup/freezer", seen["hierarchies"])
        self.assertIn("/sys/fs/cgroup/unified", seen["hierarchies"])
        self.assertEqual(seen["sysctls"], dict(host.KUBELET_SYSCTLS))
        self.assertEqual(seen["bound"], "inside")
        # Outside: the host's values, no new mount, an empty mount point.
        after = {name: Path("/proc/sys", name).read_text() for name in host.KUBELET_SYSCTLS}
        self.assertEqual(after, before)
        self.assertEqual(Path("/proc/self/mountinfo").read_text(), mounts_before)
        self.assertEqual(list((self.work / "visible").iterdir()), [])
        self.assertTrue(Path("/sys/fs/cgroup/cpu/hepto/hosttest/n/runtime").is_dir())
        self.assertEqual(os.listdir(self.work / "private"), ["written"])


class RouterAdvertisementTests(SynchronousTestCase):
    def test_one_becomes_two_others_stay(self) -> None:
        proc = Path(tempfile.mkdtemp())
        self.addCleanup(subprocess.run, ["rm", "-rf", str(proc)])
        for interface, value in (("eth0", "1"), ("eth1", "0"), ("eth2", "2")):
            setting = proc / "sys/net/ipv6/conf" / interface / "accept_ra"
            setting.parent.mkdir(parents=True)
            setting.write_text(f"{value}\n")
        self.assertTrue(host.keep_router_advertisements("eth0", proc))
        self.assertFalse(host.keep_router_advertisements("eth1", proc))
        self.assertFalse(host.keep_router_advertisements("eth2", proc))
        values = {
            interface: (proc / "sys/net/ipv6/conf" / interface / "accept_ra").read_text()
            for interface in ("eth0", "eth1", "eth2")
        }
        self.assertEqual(values, {"eth0": "2\n", "eth1": "0\n", "eth2": "2\n"})


_PREPARE = """\
import sys
from hepto.kube import host
try:
    print(host.prepare_pod_bridge(sys.argv[1], int(sys.argv[2])))
except host.HostError as error:
    sys.exit(f"HostError: {error}")
"""


class PodBridgeTests(SynchronousTestCase):
    """The pods' bridge, in a fresh network namespace: the kernel's defaults, DAD on."""

    BRIDGE = "hepto-pods"

    def setUp(self) -> None:
        from netlab import missing_requirements

        if why := missing_requirements():
            self.skipTest(why)
        self.netns = f"hpb{os.getpid()}"
        self.ip("netns", "add", self.netns, netns=False)
        self.addCleanup(self.ip, "netns", "del", self.netns, netns=False)

    def ip(self, *argv: str, netns: bool = True) -> str:
        where = ["-n", self.netns] if netns else []
        return subprocess.run(
            ["ip", *where, *argv], check=True, capture_output=True, text=True
        ).stdout

    def prepare(self, mtu: int) -> subprocess.CompletedProcess[str]:
        argv = ["ip", "netns", "exec", self.netns, sys.executable, "-c", _PREPARE]
        root = str(Path(__file__).resolve().parent.parent)
        environ = {**os.environ, "PYTHONPATH": root}
        return subprocess.run(
            [*argv, self.BRIDGE, str(mtu)], capture_output=True, text=True, env=environ
        )

    def first_pod_plugged(self) -> str:
        """What the bridge plugin does at the first pod: a port up, the bridge up, the
        gateway address; then the bridge's addresses, as ``ip`` shows them at once."""
        self.ip("link", "add", "vpod", "type", "veth", "peer", "name", "eth0")
        self.ip("link", "set", "vpod", "master", self.BRIDGE, "up")
        self.ip("link", "set", "eth0", "up")
        self.ip("link", "set", self.BRIDGE, "up")
        self.ip("address", "add", "fd00:9::1/64", "dev", self.BRIDGE)
        return self.ip("-6", "address", "show", "dev", self.BRIDGE)

    def accept_dad(self) -> str:
        done = self.ip("netns", "exec", self.netns, "sysctl", "-n",
                       f"net.ipv6.conf.{self.BRIDGE}.accept_dad", netns=False)  # fmt: skip
        return done.strip()

    def test_the_gateway_is_usable_at_once(self) -> None:
        done = self.prepare(1420)
        self.assertEqual((done.returncode, done.stdout.strip()), (0, "True"), done.stderr)
        self.assertEqual(self.accept_dad(), "0")
        self.assertIn("mtu 1420", self.ip("link", "show", self.BRIDGE))
        addresses = self.first_pod_plugged()
        self.assertIn("fd00:9::1/64", addresses)
        self.assertNotIn("tentative", addresses)

    def test_a_bridge_the_plugin_makes_is_tentative(self) -> None:
        """Why hepto makes it: the kernel's default, which cost the demo its first ping."""
        self.ip("link", "add", self.BRIDGE, "type", "bridge")
        self.assertEqual(self.accept_dad(), "1")
        self.assertIn("tentative", self.first_pod_plugged())

    def test_an_existing_bridge_keeps_its_mtu(self) -> None:
        self.ip("link", "add", self.BRIDGE, "mtu", "1300", "type", "bridge")
        done = self.prepare(1420)
        self.assertEqual((done.returncode, done.stdout.strip()), (0, "False"), done.stderr)
        self.assertIn("mtu 1300", self.ip("link", "show", self.BRIDGE))
        self.assertEqual(self.accept_dad(), "0")
        self.assertNotIn("tentative", self.first_pod_plugged())

    def test_a_link_of_another_kind_is_refused(self) -> None:
        self.ip("link", "add", self.BRIDGE, "type", "veth", "peer", "name", "other")
        done = self.prepare(1420)
        self.assertEqual(done.returncode, 1)
        self.assertIn(f"HostError: {self.BRIDGE} is not a bridge", done.stderr)
