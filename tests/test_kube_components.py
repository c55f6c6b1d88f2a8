"""The master components' command lines: pure values from the plan and the PKI's paths."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from hepto import plan
from hepto.config import ConfigError, parse_node_config
from hepto.kube import apiserver, controller_manager, etcd, memory, scheduler
from hepto.kube.component import Component, Context, GoMemory, HTTPReadiness, flags
from hepto.kube.service import (
    MASTER,
    NODE,
    chosen_components,
    component_environment,
    required_programs,
)
from hepto.pki.paths import Paths

CLUSTER, NAME = "mycluster", "master1"
NODE_DIR = Path("/var/lib/hepto/mycluster/master1")
CONTEXT = Context(CLUSTER, NAME, NODE_DIR)
PLAN = plan.Plan(CLUSTER, NAME)
MESH = plan.mesh_address(CLUSTER, NAME)
APISERVER = plan.apiserver_address(CLUSTER)
PKI = Paths(NODE_DIR)


def node_config(  # type: ignore[no-untyped-def]
    role: str = "master", components: str | None = None, pod_network: str | None = None
):
    raw = {
        "pod-network": pod_network,
        "cluster": CLUSTER,
        "name": NAME,
        "key": "00" * 32,
        "role": role,
        "ip": "2001:db8::1/64",
        "data-dir": "/var/lib/hepto",
        "components": components,
    }
    return parse_node_config(raw, {}, {"no-contain": True})


def addresses(component: Component) -> set[str]:
    """Every IP literal in the command line: hepto is IPv6-only."""
    found = set()
    for arg in component.args:
        for text in re.findall(r"\[([0-9a-f:]+)\]|=([0-9a-f:.]+)(?:/\d+)?$", arg):
            literal = text[0] or text[1]
            try:
                found.add(str(ipaddress.ip_address(literal)))
            except ValueError:
                pass
    return found


class CommonTests(SynchronousTestCase):
    components = (
        etcd.etcd(CONTEXT),
        apiserver.apiserver(CONTEXT),
        controller_manager.controller_manager(CONTEXT),
        scheduler.scheduler(CONTEXT),
    )

    def test_ipv6_only(self) -> None:
        for component in self.components:
            for literal in addresses(component):
                self.assertEqual(ipaddress.ip_address(literal).version, 6, component.name)
            self.assertNotRegex(" ".join(component.args), r"\b\d+\.\d+\.\d+\.\d+\b")

    def test_every_pki_file_of_the_component_is_passed(self) -> None:
        """Each file of docs/pki.rst's layout reaches the flag that reads it."""
        expected = {
            "etcd": {
                "--cert-file": "pki/etcd-server.crt",
                "--key-file": "pki/etcd-server.key",
                "--peer-cert-file": "pki/etcd-peer.crt",
                "--peer-key-file": "pki/etcd-peer.key",
                "--peer-trusted-ca-file": "pki/ca/etcd.crt",
                "--trusted-ca-file": "pki/ca/etcd.crt",
            },
            "kube-apiserver": {
                "--client-ca-file": "pki/ca.crt",
                "--etcd-cafile": "pki/ca/etcd.crt",
                "--etcd-certfile": "pki/apiserver-etcd-client.crt",
                "--etcd-keyfile": "pki/apiserver-etcd-client.key",
                "--kubelet-certificate-authority": "pki/ca.crt",
                "--kubelet-client-certificate": "pki/apiserver-kubelet-client.crt",
                "--kubelet-client-key": "pki/apiserver-kubelet-client.key",
                "--proxy-client-cert-file": "pki/front-proxy-client.crt",
                "--proxy-client-key-file": "pki/front-proxy-client.key",
                "--requestheader-client-ca-file": "pki/ca/front-proxy.crt",
                "--service-account-key-file": "pki/ca/service-account.pub",
                "--service-account-signing-key-file": "pki/ca/service-account.key",
                "--tls-cert-file": "pki/apiserver.crt",
                "--tls-private-key-file": "pki/apiserver.key",
            },
            "kube-controller-manager": {
                "--cluster-signing-kubelet-serving-cert-file": "pki/ca/kubernetes.crt",
                "--cluster-signing-kubelet-serving-key-file": "pki/ca/kubernetes.key",
                "--authentication-kubeconfig": "pki/controller-manager.kubeconfig",
                "--authorization-kubeconfig": "pki/controller-manager.kubeconfig",
                "--client-ca-file": "pki/ca.crt",
                "--kubeconfig": "pki/controller-manager.kubeconfig",
                "--requestheader-client-ca-file": "pki/ca/front-proxy.crt",
                "--root-ca-file": "pki/ca.crt",
            },
            "kube-scheduler": {
                "--authentication-kubeconfig": "pki/scheduler.kubeconfig",
                "--authorization-kubeconfig": "pki/scheduler.kubeconfig",
                "--kubeconfig": "pki/scheduler.kubeconfig",
            },
        }
        passed = {
            component.name: {
                flag: str(Path(value).relative_to(NODE_DIR))
                for flag, value in (argument.split("=", 1) for argument in component.args)
                if value.startswith(f"{NODE_DIR}/pki/")
            }
            for component in self.components
        }
        self.assertEqual(passed, expected)

    def test_waits_for_its_certificates(self) -> None:
        self.assertEqual(
            {component.name: set(component.certificates) for component in self.components},
            {
                # And the client certificate its readiness probe shows.
                "etcd": {"etcd-server", "etcd-peer", "apiserver-etcd-client"},
                "kube-apiserver": {
                    "apiserver",
                    "apiserver-etcd-client",
                    "apiserver-kubelet-client",
                    "front-proxy-client",
                },
                "kube-controller-manager": {"controller-manager"},
                "kube-scheduler": {"scheduler"},
            },
        )

    def test_dependencies(self) -> None:
        self.assertEqual(
            {component.name: component.dependencies for component in self.components},
            {
                "etcd": (),
                "kube-apiserver": ("etcd",),
                "kube-controller-manager": ("kube-apiserver",),
                "kube-scheduler": ("kube-apiserver",),
            },
        )

    def test_no_flag_twice(self) -> None:
        for component in self.components:
            names = [arg.split("=", 1)[0] for arg in component.args]
            self.assertEqual(len(names), len(set(names)), component.name)
            self.assertTrue(all(name.startswith("--") for name in names))


class EtcdTests(SynchronousTestCase):
    component = etcd.etcd(CONTEXT)

    def test_listens_on_the_mesh_address_and_loopback(self) -> None:
        flag = self.component.flag
        self.assertEqual(flag("--listen-client-urls"), f"https://[{MESH}]:2379,https://[::1]:2379")
        self.assertEqual(flag("--advertise-client-urls"), f"https://[{MESH}]:2379")
        self.assertEqual(flag("--listen-peer-urls"), f"https://[{MESH}]:2380")
        self.assertEqual(flag("--initial-cluster"), f"master1=https://[{MESH}]:2380")
        self.assertEqual(flag("--initial-cluster-token"), CLUSTER)
        self.assertEqual(flag("--name"), NAME)

    def test_mutual_tls(self) -> None:
        self.assertEqual(self.component.flag("--client-cert-auth"), "true")
        self.assertEqual(self.component.flag("--peer-client-cert-auth"), "true")
        self.assertEqual(
            self.component.flag("--trusted-ca-file"), str(NODE_DIR / "pki/ca/etcd.crt")
        )

    def test_data_directory(self) -> None:
        self.assertEqual(self.component.flag("--data-dir"), str(NODE_DIR / "etcd"))
        self.assertEqual(self.component.directories, (NODE_DIR / "etcd",))

    def test_probed_as_the_apiserver(self) -> None:
        readiness = self.component.readiness
        assert isinstance(readiness, HTTPReadiness)
        self.assertEqual(readiness.url, "https://[::1]:2379/health")
        self.assertEqual(readiness.certificate, PKI.certificate("apiserver-etcd-client"))
        self.assertIn("apiserver-etcd-client", self.component.certificates)

    def test_health_body(self) -> None:
        self.assertIsNone(etcd.health(b'{"health":"true","reason":""}'))
        self.assertEqual(
            etcd.health(b'{"health":"false","reason":"RAFT NO LEADER"}'),
            "etcd is not healthy: RAFT NO LEADER",
        )
        self.assertIn("not JSON", etcd.health(b"<html>") or "")
        self.assertIsNotNone(etcd.health(b"[1]"))


class APIServerTests(SynchronousTestCase):
    component = apiserver.apiserver(CONTEXT)

    def test_addresses_and_ranges(self) -> None:
        flag = self.component.flag
        self.assertEqual(flag("--advertise-address"), str(APISERVER))
        self.assertEqual(flag("--bind-address"), str(APISERVER))
        self.assertEqual(flag("--secure-port"), "6443")
        self.assertEqual(flag("--service-cluster-ip-range"), str(PLAN.service_prefix))
        self.assertEqual(flag("--etcd-servers"), "https://[::1]:2379")

    def test_authorization_and_admission(self) -> None:
        self.assertEqual(self.component.flag("--authorization-mode"), "Node,RBAC")
        self.assertEqual(self.component.flag("--enable-admission-plugins"), "NodeRestriction")

    def test_service_accounts(self) -> None:
        flag = self.component.flag
        self.assertEqual(
            flag("--service-account-issuer"), "https://kubernetes.default.svc.cluster.local"
        )
        self.assertEqual(flag("--service-account-signing-key-file"), str(PKI.service_account_key))
        self.assertEqual(flag("--service-account-key-file"), str(PKI.service_account_public))

    def test_front_proxy(self) -> None:
        self.assertEqual(self.component.flag("--requestheader-allowed-names"), "front-proxy-client")
        self.assertEqual(
            self.component.flag("--proxy-client-cert-file"),
            str(PKI.certificate("front-proxy-client")),
        )

    def test_probe_is_verified(self) -> None:
        readiness = self.component.readiness
        assert isinstance(readiness, HTTPReadiness)
        self.assertEqual(readiness.url, f"https://[{APISERVER}]:6443/readyz")
        self.assertEqual(readiness.ca, PKI.trusted_ca)


class ControllerManagerTests(SynchronousTestCase):
    component = controller_manager.controller_manager(CONTEXT)

    def test_node_ipam(self) -> None:
        flag = self.component.flag
        self.assertEqual(flag("--allocate-node-cidrs"), "true")
        self.assertEqual(flag("--cluster-cidr"), str(PLAN.pod_prefix))
        self.assertEqual(flag("--node-cidr-mask-size-ipv6"), "64")
        self.assertEqual(flag("--service-cluster-ip-range"), str(PLAN.service_prefix))

    def test_signs_only_kubelet_serving_certificates(self) -> None:
        flag = self.component.flag
        self.assertIsNone(flag("--cluster-signing-cert-file"))
        self.assertIsNone(flag("--cluster-signing-key-file"))
        self.assertEqual(
            flag("--cluster-signing-kubelet-serving-cert-file"),
            str(PKI.authority_certificate("kubernetes")),
        )
        self.assertEqual(
            flag("--cluster-signing-kubelet-serving-key-file"),
            str(PKI.authority_key("kubernetes")),
        )

    def test_flexvolume_stays_in_the_node_directory(self) -> None:
        self.assertEqual(
            self.component.flag("--flex-volume-plugin-dir"), str(NODE_DIR / "volume-plugins")
        )

    def test_no_legacy_service_account_tokens(self) -> None:
        self.assertIsNone(self.component.flag("--service-account-private-key-file"))
        self.assertEqual(self.component.flag("--use-service-account-credentials"), "true")

    def test_loopback_only(self) -> None:
        self.assertEqual(self.component.flag("--bind-address"), "::1")
        readiness = self.component.readiness
        assert isinstance(readiness, HTTPReadiness)
        self.assertEqual(readiness.url, "https://[::1]:10257/healthz")
        self.assertIsNone(readiness.ca)


class SchedulerTests(SynchronousTestCase):
    def test_command_line(self) -> None:
        component = scheduler.scheduler(CONTEXT)
        self.assertEqual(
            component.args,
            (
                "--bind-address=::1",
                "--secure-port=10259",
                f"--authentication-kubeconfig={NODE_DIR}/pki/scheduler.kubeconfig",
                f"--authorization-kubeconfig={NODE_DIR}/pki/scheduler.kubeconfig",
                f"--kubeconfig={NODE_DIR}/pki/scheduler.kubeconfig",
            ),
        )


class FlagsTests(SynchronousTestCase):
    def test_rendering(self) -> None:
        self.assertEqual(
            flags(("--a", True), ("--b", 3), files={"--z": Path("/z"), "--c": Path("/c")}),
            ("--a=true", "--b=3", "--c=/c", "--z=/z"),
        )

    def test_twice_is_an_error(self) -> None:
        self.assertRaises(ValueError, flags, ("--a", 1), files={"--a": Path("/a")})


class EnvironmentTests(SynchronousTestCase):
    def test_only_allowed_variables_pass(self) -> None:
        environ = {
            "PATH": "/usr/bin",
            "LC_ALL": "C.UTF-8",
            "HTTPS_PROXY": "http://[2001:db8::8]:3128",
            "HEPTO_KEY": "secret",
            "NOTIFY_SOCKET": "/run/systemd/notify",
            "ETCD_NAME": "other",
            "KUBECONFIG": "/root/.kube/config",
        }
        self.assertEqual(
            component_environment(environ, GoMemory(limit="300MiB", gc_percent=50)),
            {
                "PATH": "/usr/bin",
                "LC_ALL": "C.UTF-8",
                "HTTPS_PROXY": "http://[2001:db8::8]:3128",
                "GOMEMLIMIT": "300MiB",
                "GOGC": "50",
            },
        )

    def test_go_memory(self) -> None:
        self.assertEqual(GoMemory().environment(), {})
        self.assertEqual(GoMemory(gc_percent="off").environment(), {"GOGC": "off"})
        self.assertEqual(GoMemory(limit="1073741824").environment(), {"GOMEMLIMIT": "1073741824"})

    def test_go_memory_refuses_what_go_would_ignore(self) -> None:
        # Go dies at start on a malformed GOMEMLIMIT (a crash loop) and silently ignores a
        # malformed GOGC: both are refused here.  No limit is None, not "off".
        for limit in ("300M", "300mib", "1.5GiB", "", "300 MiB", "-1", "off"):
            error = self.assertRaises(ValueError, GoMemory, limit=limit)
            self.assertIn("GOMEMLIMIT", str(error))
        for percent in (0, -5, True, "50", "OFF"):
            error = self.assertRaises(ValueError, GoMemory, gc_percent=percent)
            self.assertIn("GOGC", str(error))

    def test_default_go_memory_names_components(self) -> None:
        self.assertLessEqual(set(memory.DEFAULTS), set(MASTER) | set(NODE))
        for name, settings in memory.DEFAULTS.items():
            self.assertIsInstance(settings, GoMemory, name)


class ChoiceTests(SynchronousTestCase):
    def test_master_runs_the_control_plane(self) -> None:
        control_plane = [
            "etcd",
            "kube-apiserver",
            "kube-controller-manager",
            "kube-scheduler",
            "coredns",
        ]
        self.assertEqual(chosen_components(node_config()), control_plane)
        self.assertEqual(required_programs(node_config()), control_plane)

    def test_a_node_runs_its_runtime(self) -> None:
        runtime = ["sweeper", "containerd", "kubelet", "kube-proxy"]
        self.assertEqual(chosen_components(node_config("node")), runtime)
        self.assertEqual(
            required_programs(node_config("node")),
            [
                "sh",
                "containerd",
                "kubelet",
                "kube-proxy",
                "containerd-shim-runc-v2",
                "runc",
                "ctr",
                "pause",
                "nft",
                "ip",
            ],
        )
        self.assertEqual(chosen_components(node_config("master", "none")), [])
        self.assertEqual(len(chosen_components(node_config("full"))), 9)

    def test_another_network_plugin_brings_its_own_proxy(self) -> None:
        chosen = chosen_components(node_config("node", pod_network="none"))
        self.assertEqual(chosen, ["sweeper", "containerd", "kubelet"])
        chosen = chosen_components(node_config("full", pod_network="none"))
        self.assertNotIn("coredns", chosen)

    def test_node_components_need_a_node_and_the_kubelet_containerd(self) -> None:
        error = self.assertRaises(
            ConfigError, chosen_components, node_config("master", "containerd")
        )
        self.assertEqual(
            str(error),
            "--components: containerd: only a node runs these; use --role node or full",
        )
        error = self.assertRaises(ConfigError, chosen_components, node_config("node", "kubelet"))
        self.assertEqual(str(error), "--components: kubelet: needs containerd beside it")

    def test_master_components_need_a_master(self) -> None:
        error = self.assertRaises(
            ConfigError, chosen_components, node_config("node", "etcd,kubelet")
        )
        self.assertEqual(
            str(error), "--components: etcd: only a master runs these; use --role master or full"
        )
