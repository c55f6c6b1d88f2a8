"""Options of ``twistd hepto``: the command line, the environment, and every mistake."""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from hepto import config
from hepto.kube.service import HELPERS
from hepto.tap import Options

KEY = "00" * 24
OTHER_KEY = "11" * 32


class ParseTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.data_dir = tempfile.mkdtemp()
        self.environ: dict[str, str] = {}
        self.patch(os, "environ", self.environ)
        # Components are checked for their programs before anything starts: stand-ins.
        self.bin_dir = Path(self.data_dir) / "bin"
        self.bin_dir.mkdir()
        for program in (*config.COMPONENTS, *HELPERS):
            stub = self.bin_dir / program
            stub.write_text("#!/bin/sh\n")
            stub.chmod(0o755)

    def parse(self, *argv: str) -> config.NodeConfig:
        options = Options()
        options.parseOptions(["--data-dir", self.data_dir, "--bin-dir", str(self.bin_dir), *argv])
        assert options.config is not None
        return options.config

    def minimal(self, *extra: str) -> list[str]:
        return [
            "--cluster",
            "c",
            "--key",
            KEY,
            "--name",
            "n1",
            "--no-contain",
            "--ip",
            "2001:db8::1/64",
            *extra,
        ]

    def assertRefused(self, argv: list[str], option: str, words: str) -> None:
        error = self.assertRaises(usage.UsageError, self.parse, *argv)
        message = str(error)
        self.assertTrue(message.startswith(f"--{option}: "), message)
        self.assertIn(words, message)

    def test_minimal(self) -> None:
        node = self.parse(*self.minimal())
        self.assertEqual((node.cluster, node.name, node.role), ("c", "n1", "node"))
        self.assertEqual(node.keyring, (bytes(24),))
        self.assertEqual(node.port, 7946)
        self.assertEqual(node.components, ("containerd", "kubelet", "kube-proxy"))
        self.assertEqual(node.pod_network, "hepto")
        self.assertEqual(node.dns, tuple(ipaddress.IPv6Address(a) for a in config.DEFAULT_DNS))
        self.assertEqual(node.node_dir, Path(self.data_dir) / "c" / "n1")
        # Options check what was typed and make nothing: the node does, as it starts.
        self.assertFalse((Path(self.data_dir) / "c").exists())

    def test_pod_network(self) -> None:
        self.assertEqual(self.parse(*self.minimal("--pod-network", "none")).pod_network, "none")
        self.assertRefused(
            self.minimal("--pod-network", "calico"),
            "pod-network",
            "'calico' is not one of hepto, none",
        )

    def test_everything(self) -> None:
        node = self.parse(
            *self.minimal(
                "--role",
                "full",
                "--key",
                f"{KEY},{OTHER_KEY}",
                "--port",
                "8000",
                "--anchor",
                "2001:db8::2",
                "--anchor",
                "[2001:db8::3]:9000",
                "--dns",
                "2001:db8::53",
                "--gw",
                "2001:db8::ffff",
                "--iface",
                "eth1",
                "--components",
                "kube-apiserver,etcd",
                "--log-format",
                "json",
                "--manhole",
                "unix",
            )
        )
        self.assertEqual(node.keyring, (bytes(24), bytes.fromhex(OTHER_KEY)))
        self.assertEqual(
            [str(a) for a in node.anchors], ["[2001:db8::2]:8000", "[2001:db8::3]:9000"]
        )
        self.assertEqual(node.components, ("etcd", "kube-apiserver"))
        self.assertEqual(node.gw, ipaddress.IPv6Address("2001:db8::ffff"))
        self.assertEqual(node.iface, "eth1")
        assert node.manhole is not None
        self.assertEqual(node.manhole.socket, node.node_dir / "manhole.sock")
        self.assertEqual(node.manhole.authorized_keys, node.node_dir / "authorized_keys")
        self.assertTrue(node.is_master and node.is_node)

    def test_missing_programs(self) -> None:
        empty = Path(self.data_dir) / "empty"
        empty.mkdir()
        self.environ["PATH"] = str(empty)
        error = self.assertRaises(
            usage.UsageError,
            Options().parseOptions,
            [
                "--data-dir",
                self.data_dir,
                "--bin-dir",
                str(empty),
                *self.minimal("--role", "master"),
            ],
        )
        self.assertIn("--bin-dir: etcd, kube-apiserver", str(error))
        self.assertIn("tools/build-bundle", str(error))

    def test_components_none(self) -> None:
        self.assertEqual(self.parse(*self.minimal("--components", "none")).components, ())

    def test_environment(self) -> None:
        self.environ.update(
            HEPTO_CLUSTER="envc",
            HEPTO_KEY=KEY,
            HEPTO_NAME="envn",
            HEPTO_NO_CONTAIN="1",
            HEPTO_IP="2001:db8::9/64",
            HEPTO_ANCHOR="2001:db8::2,[2001:db8::3]:1",
            HEPTO_ROLE="master",
            HEPTO_DNS="2001:db8::53",
        )
        node = self.parse()
        self.assertEqual((node.cluster, node.name, node.role), ("envc", "envn", "master"))
        self.assertEqual(len(node.anchors), 2)
        self.assertFalse(node.contain)
        self.assertEqual(node.dns, (ipaddress.IPv6Address("2001:db8::53"),))

    def test_command_line_wins(self) -> None:
        self.environ.update(
            HEPTO_CLUSTER="envc", HEPTO_ANCHOR="2001:db8::2,2001:db8::3", HEPTO_ROLE="bogus"
        )
        node = self.parse(*self.minimal("--anchor", "2001:db8::4", "--role", "master"))
        self.assertEqual(node.cluster, "c")
        self.assertEqual([str(a.host) for a in node.anchors], ["2001:db8::4"])

    def test_missing(self) -> None:
        self.assertRefused(
            ["--key", KEY, "--name", "n", "--no-contain", "--ip", "2001:db8::1/64"],
            "cluster",
            "missing",
        )
        self.assertRefused(
            ["--cluster", "c", "--name", "n", "--no-contain", "--ip", "2001:db8::1/64"],
            "key",
            "missing",
        )
        self.assertRefused(
            ["--cluster", "c", "--key", KEY, "--no-contain", "--ip", "2001:db8::1/64"],
            "name",
            "missing",
        )
        self.assertRefused(["--cluster", "c", "--key", KEY, "--name", "n"], "iface", "missing")
        self.assertRefused(
            ["--cluster", "c", "--key", KEY, "--name", "n", "--no-contain"], "ip", "--iface"
        )

    def test_bad_keys(self) -> None:
        self.assertRefused(self.minimal("--key", "zz" * 24), "key", "not hexadecimal")
        self.assertRefused(self.minimal("--key", "ab" * 23), "key", "23 bytes long; at least 24")
        self.assertRefused(
            self.minimal("--key", f"{KEY},abc"), "key", "key 2 of the keyring is not hexadecimal"
        )

    def test_ipv4_refused(self) -> None:
        self.assertRefused(self.minimal("--ip", "192.0.2.1/24"), "ip", "IPv4")
        self.assertRefused(self.minimal("--gw", "192.0.2.1"), "gw", "IPv4")
        self.assertRefused(self.minimal("--dns", "1.1.1.1"), "dns", "IPv4")
        self.assertRefused(self.minimal("--anchor", "192.0.2.1"), "anchor", "IPv4")

    def test_bad_prefix(self) -> None:
        self.assertRefused(self.minimal("--ip", "2001:db8::1/129"), "ip", "prefix length")
        self.assertRefused(self.minimal("--ip", "2001:db8::1/x"), "ip", "prefix length")
        self.assertRefused(self.minimal("--ip", "2001:db8::1"), "ip", "lacks its prefix length")

    def test_bad_values(self) -> None:
        self.assertRefused(
            self.minimal("--role", "boss"), "role", "'boss' is not one of master, node, full"
        )
        self.assertRefused(
            self.minimal("--name", "Node_1"), "name", "not a valid Kubernetes node name"
        )
        self.assertRefused(self.minimal("--name", "-a"), "name", "not a valid Kubernetes node name")
        self.assertRefused(
            self.minimal("--name", "a" * 254), "name", "not a valid Kubernetes node name"
        )
        self.assertRefused(
            self.minimal("--anchor", "not-an-address"), "anchor", "not an IPv6 address"
        )
        self.assertRefused(self.minimal("--anchor", "[2001:db8::1"), "anchor", "not an address")
        self.assertRefused(
            self.minimal("--anchor", "[2001:db8::1]:70000"), "anchor", "between 1 and 65535"
        )
        self.assertRefused(self.minimal("--port", "0"), "port", "between 1 and 65535")
        self.assertRefused(
            self.minimal("--log-format", "xml"), "log-format", "not one of text, json"
        )
        self.assertRefused(self.minimal("--components", "kubelet,etcdd"), "components", "'etcdd'")
        self.assertRefused(self.minimal("--iface", "a/b"), "iface", "not a network interface name")

    def test_backups(self) -> None:
        node = self.parse(*self.minimal())
        self.assertEqual((node.backup_interval, node.backup_keep), (12 * 3600.0, 5))
        node = self.parse(*self.minimal("--backup-interval", "0.5", "--backup-keep", "10"))
        self.assertEqual((node.backup_interval, node.backup_keep), (1800.0, 10))
        self.assertEqual(self.parse(*self.minimal("--backup-interval", "0")).backup_interval, 0)
        for interval in ("-1", "soon", "nan", "9000"):
            self.assertRefused(
                self.minimal("--backup-interval", interval), "backup-interval", "number of hours"
            )
        for keep in ("0", "-2", "many"):
            self.assertRefused(self.minimal("--backup-keep", keep), "backup-keep", "from 1 to 1000")

    def test_manhole(self) -> None:
        node = self.parse(*self.minimal("--manhole", "2222", "--manhole-keys", "/k"))
        assert node.manhole is not None and node.manhole.endpoint is not None
        self.assertEqual(str(node.manhole.endpoint), "[::1]:2222")
        self.assertEqual(node.manhole.authorized_keys, Path("/k"))
        self.assertRefused(
            self.minimal("--manhole", "[2001:db8::1]:22"), "manhole", "only loopback"
        )
        self.assertRefused(self.minimal("--manhole", "somewhere"), "manhole", "'unix', a port")

    def test_contained_nodes_check_the_host(self) -> None:
        contained = ["--cluster", "c", "--key", KEY, "--name", "n"]
        self.assertRefused([*contained, "--iface", "nosuch0"], "iface", "no interface 'nosuch0'")
        self.assertRefused(
            [*contained, "--iface", "lo"], "iface", "lo has no usable global IPv6 address"
        )
        if os.geteuid() == 0:
            self.patch(os, "geteuid", lambda: 1000)
            self.assertRefused([*contained, "--iface", "lo"], "no-contain", "as root")

    def test_a_contained_node_plans_its_container(self) -> None:
        options = Options()
        options.parseOptions(
            ["--data-dir", self.data_dir, "--bin-dir", str(self.bin_dir), "--cluster", "c",
             "--key", KEY, "--name", "n", "--iface", "lo", "--ip", "2001:db8::7/64"]
        )  # fmt: skip
        assert options.container is not None
        self.assertEqual(str(options.container.address), "2001:db8::7/64")
        self.assertEqual(options.container.node_dir, Path(self.data_dir) / "c" / "n")
        self.assertIn(Path(self.data_dir), options.container.kept)
        self.assertIsNone(self.options_without_container().container)

    def options_without_container(self) -> Options:
        options = Options()
        options.parseOptions(["--data-dir", self.data_dir, "--bin-dir", str(self.bin_dir),
                              *self.minimal()])  # fmt: skip
        return options


class CommandLineTests(SynchronousTestCase):
    """``twistd hepto`` as an operator runs it: a non-zero exit, the error last, no traceback."""

    def twistd(self, *argv: str) -> subprocess.CompletedProcess[str]:
        twistd = Path(sys.executable).with_name("twistd")
        env = {k: v for k, v in os.environ.items() if not k.startswith("HEPTO_")}
        return subprocess.run(
            [str(twistd), "-n", "hepto", *argv],
            capture_output=True,
            text=True,
            env=env,
            cwd=tempfile.mkdtemp(),
            timeout=60,
        )

    def test_errors_name_the_option(self) -> None:
        cases = {
            ("--name", "n", "--key", KEY): "--cluster: missing",
            ("--cluster", "c", "--name", "n", "--key", "xyz"): "--key: the key is not hexadecimal",
            (
                "--cluster",
                "c",
                "--name",
                "n",
                "--key",
                KEY,
                "--no-contain",
                "--ip",
                "10.1.1.1/8",
            ): "--ip: 10.1.1.1 is an IPv4",
            (
                "--cluster",
                "c",
                "--name",
                "n",
                "--key",
                KEY,
                "--role",
                "x",
                "--iface",
                "e",
            ): "--role:",
        }
        for argv, expected in cases.items():
            result = self.twistd(*argv)
            self.assertNotEqual(result.returncode, 0)
            output = result.stdout + result.stderr
            self.assertNotIn("Traceback", output)
            self.assertIn(expected, output.strip().splitlines()[-1])

    def test_help(self) -> None:
        result = self.twistd("--help")
        self.assertEqual(result.returncode, 0)
        for option in ("--cluster", "--key", "--anchor", "HEPTO_KEY", "--no-contain", "--manhole"):
            self.assertIn(option, result.stdout)
