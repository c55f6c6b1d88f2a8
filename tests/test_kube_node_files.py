"""The files a node's runtime reads, written from plain values: containerd, CNI, kubelet."""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import subprocess
import tomllib
from pathlib import Path

import attrs
from twisted.trial.unittest import SynchronousTestCase

from hepto import plan
from hepto.kube import containerd, egress, kube_proxy, kubelet, sweeper
from hepto.kube.component import Context
from hepto.kube.layout import RUN_DIR, Layout
from netlab import wait_until

NODE_DIR = Path("/var/lib/hepto/mycluster/node1")
CONTEXT = Context(
    "mycluster", "node1", NODE_DIR, "node", (ipaddress.IPv6Address("2001:4860:4860::8888"),)
)
LAYOUT = Layout(NODE_DIR, "mycluster", "node1")


def settings(may_lower_oom_score: bool = True) -> containerd.RuntimeSettings:
    return containerd.RuntimeSettings(
        layout=LAYOUT,
        runc=Path("/usr/sbin/runc"),
        shim=Path("/opt/hepto/bin/containerd-shim-runc-v2"),
        cni_dirs=(Path("/usr/lib/cni"),),
        sandbox_image="localhost/hepto/pause:1",
        may_lower_oom_score=may_lower_oom_score,
    )


class LayoutTests(SynchronousTestCase):
    def test_sockets_stay_short_whatever_the_names(self) -> None:
        long = Layout(Path("/var/lib/hepto") / ("c" * 63) / ("n" * 253), "c" * 63, "n" * 253)
        # containerd appends "/" and a 64-character hash to the shim directory.
        self.assertLessEqual(len(str(long.shim_sockets)) + 65, 107)
        self.assertLessEqual(len(str(long.containerd_socket) + ".ttrpc"), 107)
        self.assertEqual(long.shim_sockets.parent.parent, RUN_DIR)

    def test_two_nodes_never_share_a_runtime_directory(self) -> None:
        other = Layout(Path("/var/lib/hepto/mycluster/node2"), "mycluster", "node2")
        moved = Layout(Path("/srv/hepto/mycluster/node1"), "mycluster", "node1")
        self.assertEqual(len({LAYOUT.run_dir, other.run_dir, moved.run_dir}), 3)
        self.assertEqual(LAYOUT.run_dir, Layout(NODE_DIR, "mycluster", "node1").run_dir)

    def test_cgroups(self) -> None:
        self.assertEqual(str(LAYOUT.runtime_cgroup), "/hepto/mycluster/node1/runtime")
        self.assertEqual(str(LAYOUT.pods_cgroup), "/hepto/mycluster/node1/pods")


class ContainerdConfigTests(SynchronousTestCase):
    def test_it_is_toml_with_every_path_of_the_node(self) -> None:
        parsed = tomllib.loads(containerd.config(settings()))
        self.assertEqual(parsed["version"], 3)
        self.assertEqual(parsed["root"], str(NODE_DIR / "containerd"))
        self.assertEqual(parsed["state"], str(LAYOUT.containerd_state))
        self.assertEqual(parsed["grpc"]["address"], str(LAYOUT.containerd_socket))
        self.assertEqual(parsed["ttrpc"]["address"], f"{LAYOUT.containerd_socket}.ttrpc")
        plugins = parsed["plugins"]
        shim = plugins["io.containerd.shim.v1.manager"]
        self.assertEqual(shim["socket_dir"], str(LAYOUT.shim_sockets))
        images = plugins["io.containerd.cri.v1.images"]
        self.assertEqual(images["pinned_images"]["sandbox"], "localhost/hepto/pause:1")
        runtime = plugins["io.containerd.cri.v1.runtime"]
        self.assertIs(runtime["netns_mounts_under_state_dir"], True)
        runc = runtime["containerd"]["runtimes"]["runc"]
        self.assertEqual(runc["runtime_path"], "/opt/hepto/bin/containerd-shim-runc-v2")
        self.assertEqual(
            runc["options"],
            {"SystemdCgroup": False, "BinaryName": "/usr/sbin/runc", "Root": str(LAYOUT.runc_root)},
        )
        cni = runtime["cni"]
        self.assertEqual(cni["bin_dirs"], ["/usr/lib/cni"])
        self.assertEqual(cni["conf_dir"], str(LAYOUT.cni_config_dir))
        self.assertEqual(cni["conf_template"], str(LAYOUT.cni_template))
        self.assertEqual(cni["ip_pref"], "ipv6")
        self.assertEqual(plugins["io.containerd.grpc.v1.cri"]["stream_server_address"], "::1")

    def test_oom_scores_are_clamped_only_where_they_cannot_be_lowered(self) -> None:
        for may, restricted in ((True, False), (False, True)):
            parsed = tomllib.loads(containerd.config(settings(may)))
            runtime = parsed["plugins"]["io.containerd.cri.v1.runtime"]
            self.assertIs(runtime["restrict_oom_score_adj"], restricted)

    def test_another_network_plugin_configures_itself_where_they_all_do(self) -> None:
        cni = tomllib.loads(containerd.config(attrs.evolve(settings(), own_network=False)))[
            "plugins"
        ]["io.containerd.cri.v1.runtime"]["cni"]
        self.assertEqual(cni["conf_dir"], "/etc/cni/net.d")
        self.assertEqual(cni["bin_dirs"], ["/opt/cni/bin", "/usr/lib/cni"])
        self.assertNotIn("conf_template", cni)

    def test_odd_paths_are_quoted(self) -> None:
        odd = Layout(Path('/srv/a "b"\\c'), "mycluster", "node1")
        text = containerd.config(attrs.evolve(settings(), layout=odd))
        self.assertEqual(tomllib.loads(text)["root"], '/srv/a "b"\\c/containerd')


class CNITemplateTests(SynchronousTestCase):
    def test_a_bridge_with_the_nodes_prefix_and_the_mesh_mtu(self) -> None:
        network = json.loads(containerd.cni_template(LAYOUT, 1420))
        self.assertEqual(network["cniVersion"], "1.0.0")
        bridge, portmap = network["plugins"]
        self.assertEqual(bridge["type"], "bridge")
        self.assertEqual(bridge["mtu"], 1420)
        self.assertIs(bridge["ipMasq"], False)
        self.assertEqual(bridge["ipam"]["ranges"], [[{"subnet": "{{.PodCIDR}}"}]])
        self.assertEqual(bridge["ipam"]["dataDir"], str(LAYOUT.cni_ipam_dir))
        self.assertEqual(portmap["type"], "portmap")
        self.assertLessEqual(len(bridge["bridge"]), 15, "an interface name")


class KubeletTests(SynchronousTestCase):
    def test_command_line(self) -> None:
        component = kubelet.kubelet(CONTEXT)
        self.assertEqual(component.flag("--node-ip"), str(plan.mesh_address("mycluster", "node1")))
        self.assertEqual(component.flag("--hostname-override"), "node1")
        self.assertEqual(component.flag("--node-labels"), "hepto/role=node")
        self.assertEqual(component.flag("--cloud-provider"), "external")
        self.assertEqual(component.flag("--config"), str(LAYOUT.kubelet_config))
        self.assertEqual(component.flag("--kubeconfig"), str(NODE_DIR / "pki/kubelet.kubeconfig"))
        self.assertEqual(component.certificates, ("kubelet-client", "kubelet-serving"))
        self.assertTrue(component.in_runtime_cgroups)
        self.assertEqual(component.dependencies, ("containerd", "kube-apiserver"))

    def test_configuration(self) -> None:
        config = kubelet.config(CONTEXT, "/run/hepto/x/containerd.sock", True)
        self.assertEqual(config["kind"], "KubeletConfiguration")
        self.assertEqual(config["address"], str(plan.mesh_address("mycluster", "node1")))
        self.assertEqual(config["readOnlyPort"], 0)
        self.assertEqual(config["healthzBindAddress"], "::1")
        self.assertIs(config["authentication"]["anonymous"]["enabled"], False)
        self.assertIs(config["authentication"]["webhook"]["enabled"], True)
        self.assertEqual(
            config["authentication"]["x509"]["clientCAFile"], str(NODE_DIR / "pki/ca.crt")
        )
        self.assertEqual(config["authorization"], {"mode": "Webhook"})
        self.assertEqual(config["tlsCertFile"], str(NODE_DIR / "pki/kubelet-serving.crt"))
        self.assertEqual(config["containerRuntimeEndpoint"], "unix:///run/hepto/x/containerd.sock")
        self.assertEqual(config["cgroupRoot"], "/hepto/mycluster/node1/pods")
        self.assertIs(config["failCgroupV1"], False)
        self.assertEqual(config["clusterDNS"], [str(plan.dns_address("mycluster"))])
        self.assertEqual(config["clusterDomain"], "cluster.local")
        self.assertEqual(config["resolvConf"], str(LAYOUT.resolv_conf))
        self.assertIs(config["protectKernelDefaults"], True)
        self.assertEqual(config["imageGCHighThresholdPercent"], 100)
        self.assertEqual(config["imagePullCredentialsVerificationPolicy"], "NeverVerify")
        self.assertIs(config["serializeImagePulls"], False)
        self.assertNotIn("oomScoreAdj", config)
        self.assertEqual(kubelet.config(CONTEXT, "/s", False)["oomScoreAdj"], 0)
        self.assertEqual(json.loads(kubelet.render(config)), config)

    def test_resolv_conf_from_dns(self) -> None:
        self.assertEqual(
            kubelet.resolv_conf(CONTEXT.dns),
            "# Written by the hepto agent from --dns.\nnameserver 2001:4860:4860::8888\n",
        )


class KubeProxyTests(SynchronousTestCase):
    def test_configuration(self) -> None:
        public = ipaddress.IPv6Address("2001:db8::2")
        mesh = plan.mesh_address("mycluster", "node1")
        config = kube_proxy.config(CONTEXT, [mesh, public], False)
        self.assertEqual(config["kind"], "KubeProxyConfiguration")
        self.assertEqual(config["mode"], "nftables")
        self.assertEqual(config["hostnameOverride"], "node1")
        self.assertEqual(config["clusterCIDR"], str(plan.pod_prefix("mycluster")))
        self.assertEqual(config["nodePortAddresses"], [f"{mesh}/128", "2001:db8::2/128"])
        self.assertEqual(config["healthzBindAddress"], "[::1]:10256")
        self.assertEqual(
            config["clientConnection"]["kubeconfig"], str(NODE_DIR / "pki/kube-proxy.kubeconfig")
        )
        self.assertEqual(config["conntrack"]["maxPerCore"], 0)
        self.assertEqual(config["oomScoreAdj"], 0)
        self.assertNotIn("oomScoreAdj", kube_proxy.config(CONTEXT, [mesh], True))
        component = kube_proxy.kube_proxy(CONTEXT)
        self.assertEqual(component.flag("--config"), str(LAYOUT.kube_proxy_config))
        self.assertEqual(component.certificates, ("kube-proxy",))


class EgressTests(SynchronousTestCase):
    def test_only_what_leaves_the_cluster_is_masqueraded(self) -> None:
        pods = ipaddress.IPv6Network("fd12:3456:789a:8001::/64")
        script = egress.rules(pods, ipaddress.IPv6Network("fd12:3456:789a::/48"))
        self.assertIn(
            "ip6 saddr fd12:3456:789a:8001::/64 ip6 daddr != fd12:3456:789a::/48 masquerade",
            script,
        )
        # Replaced whole: created if absent, deleted, then made anew, in one transaction.
        self.assertTrue(script.startswith("table ip6 hepto\ndelete table ip6 hepto\n"))


class SweeperScriptTests(SynchronousTestCase):
    def test_paths_with_spaces_are_quoted(self) -> None:
        text = sweeper.script(
            "node1",
            "/hepto/c/node1",
            "pods",
            Path("/sys/fs/cgroup/freezer/hepto/c/node1"),
            [Path("/sys/fs/cgroup/cpu/hepto/c/node1"), Path("/a b/hepto/c/node1")],
            [Path("/x y/cgroup.procs")],
            grace=3,
            cleanup=("nft delete table ip6 hepto 2>/dev/null",),
        )
        self.assertIn("grace=3\n", text)
        self.assertIn("remove_cgroups /sys/fs/cgroup/cpu/hepto/c/node1 '/a b/hepto/c/node1'", text)
        self.assertIn("for procs in '/x y/cgroup.procs'", text)
        self.assertTrue(text.startswith("#!/bin/sh\n"))
        self.assertIn("    nft delete table ip6 hepto 2>/dev/null\n    true\n", text)

    def test_the_guard_sweeps_when_the_agent_dies(self) -> None:
        component = sweeper.sweeper(CONTEXT)
        self.assertEqual(component.death_signal, "TERM")
        self.assertEqual(component.args, (str(LAYOUT.sweeper_script), "guard"))
        self.assertGreater(component.stop_timeout, sweeper.GRACE)


class GuardTests(SynchronousTestCase):
    """The sweeper's guard, run for real on a node made of plain directories."""

    def setUp(self) -> None:
        if os.geteuid() != 0:
            self.skipTest("mounts a tmpfs: needs root")
        self.root = Path(self.mktemp()).absolute()
        self.cgroup = self.root / "cgroup" / "hepto" / "c" / "n"
        (self.cgroup / "pods").mkdir(parents=True)
        (self.cgroup / "cgroup.procs").write_text("")
        self.run_dir = self.root / "run" / "0123456789ab"
        (self.run_dir / "containerd").mkdir(parents=True)
        (self.run_dir / "containerd.sock").write_text("")
        self.volume = self.run_dir / "kubelet" / "pods" / "p" / "volume"
        self.volume.mkdir(parents=True)
        subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(self.volume)], check=True)
        self.addCleanup(subprocess.run, ["umount", str(self.volume)], capture_output=True)
        (self.volume / "secret").write_text("a pod's")
        self.script = self.root / "sweeper.sh"
        self.script.write_text(
            sweeper.script(
                "n", "/hepto/c/n", "pods", self.cgroup, [self.cgroup], [], run_dir=self.run_dir
            )
        )

    def test_at_its_end_the_runtime_directory_goes_and_what_was_mounted_first(self) -> None:
        guard = subprocess.Popen(["sh", str(self.script), "guard"])
        self.addCleanup(guard.kill)
        # Once it waits: its sleep is its child.
        wait_until(lambda: Path(f"/proc/{guard.pid}/task/{guard.pid}/children").read_text(), 10)
        guard.send_signal(signal.SIGTERM)
        self.assertEqual(guard.wait(timeout=30), 0)
        self.assertFalse(self.run_dir.exists())
        self.assertFalse(self.run_dir.parent.exists(), "its parent, once empty, too")
        self.assertNotIn(str(self.volume), Path("/proc/self/mountinfo").read_text())

    def test_a_sweep_at_a_start_leaves_it(self) -> None:
        subprocess.run(["sh", str(self.script), "sweep"], check=True, capture_output=True)
        self.assertTrue((self.volume / "secret").exists())
        self.assertTrue((self.run_dir / "containerd.sock").exists())
