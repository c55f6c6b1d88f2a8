"""The ``hepto`` operator command."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from hepto import cli


def hepto(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    program = Path(sys.executable).with_name("hepto")
    clean = {k: v for k, v in os.environ.items() if not k.startswith("HEPTO_")}
    return subprocess.run(
        [str(program), *argv], capture_output=True, text=True, env=clean | (env or {}), timeout=60
    )


class InfoTests(SynchronousTestCase):
    def run_main(self, *argv: str) -> str:
        out = io.StringIO()
        cli.main(list(argv), out)
        return out.getvalue()

    def test_json(self) -> None:
        info = json.loads(
            self.run_main("info", "--cluster", "mycluster", "--name", "node1", "--json")
        )
        for key in (
            "cluster",
            "name",
            "mesh_prefix",
            "mesh_address",
            "apiserver_address",
            "pod_prefix",
            "service_prefix",
            "kubernetes_service_address",
            "dns_address",
        ):
            self.assertIn(key, info)
        self.assertEqual(info["apiserver_address"], "fdeb:e90d:a592:100:51eb:f48b:29e3:481d")

    def test_table(self) -> None:
        table = self.run_main("info", "--cluster", "mycluster", "--name", "node1")
        self.assertIn("mesh_address                fdeb:e90d:a592:100:484c:ec37:439b:f9c", table)
        self.assertIn("service_prefix              fdeb:e90d:a592:300::/112", table)

    def test_environment(self) -> None:
        result = hepto(
            "info", "--json", env={"HEPTO_CLUSTER": "mycluster", "HEPTO_NAME": "whatever"}
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(json.loads(result.stdout)["name"], "whatever")

    def test_errors_are_one_line_with_status_2(self) -> None:
        cases = [
            (("info",), "hepto: info: --cluster: missing"),
            (
                ("info", "--cluster", "Bad_Name"),
                "hepto: info: --cluster: 'Bad_Name' is not a valid",
            ),
            (("info", "--cluster", "c", "--name", "UPPER"), "hepto: info: --name: 'UPPER'"),
            (("info", "--nope"), "hepto: info: option --nope not recognized"),
            (("frobnicate",), "hepto: Unknown command: frobnicate"),
            ((), "hepto: missing command"),
            (("status", "--cluster", "c"), "hepto: status: --name: missing"),
            (("backup", "--cluster", "c", "--name", "m"), "hepto: backup: missing --out FILE"),
            (("restore", "--cluster", "c", "--name", "m", "f"), "hepto: restore: --key: missing"),
            (("restore", "--cluster", "c", "--name", "m", "--key", "00" * 32),
             "hepto: restore: name one backup FILE"),
            (("restore", "--cluster", "c", "--name", "m", "--key", "00" * 32, "a", "--from", "b"),
             "hepto: restore: name one backup FILE"),
        ]  # fmt: skip
        for argv, expected in cases:
            result = hepto(*argv)
            self.assertEqual(result.returncode, 2, argv)
            self.assertEqual(result.stdout, "")
            self.assertEqual(result.stderr.count("\n"), 1, result.stderr)
            self.assertTrue(result.stderr.startswith(expected), result.stderr)

    def test_backup_without_agent(self) -> None:
        result = hepto("backup", "--cluster", "c", "--name", "n", "--data-dir", tempfile.mkdtemp(),
                       "--out", "/nonexistent/backup")  # fmt: skip
        self.assertEqual(result.returncode, 1)
        self.assertIn("hepto: backup: no hepto agent is running for this node", result.stderr)

    def test_status_without_agent(self) -> None:
        result = hepto("status", "--cluster", "c", "--name", "n", "--data-dir", tempfile.mkdtemp())
        self.assertEqual(result.returncode, 1)
        self.assertNotIn("Traceback", result.stderr)
        self.assertIn("hepto: status:", result.stderr)


class RenderTests(SynchronousTestCase):
    def test_backup(self) -> None:
        text = cli.render_status(
            {"members": [],
             "backup": {"last": {"created": "2026-01-02T03:04:05Z", "size": 3 * 2**20,
                                 "path": "/d/20260102T030405Z.hepto-backup"},
                        "next": "2026-01-02T15:04:05Z", "kept": 5, "running": False,
                        "last_error": "cannot take etcd's snapshot"}}
        )  # fmt: skip
        self.assertIn(
            "backup: last 2026-01-02T03:04:05Z (3.0 MiB) /d/20260102T030405Z.hepto-backup, next "
            "2026-01-02T15:04:05Z, 5 kept; last attempt failed: cannot take etcd's snapshot",
            text,
        )
        self.assertNotIn('"backup"', text)
        none = cli.render_status({"members": [], "backup": {"next": None, "kept": 0}})
        self.assertIn("backup: none yet, next not scheduled, 0 kept", none)

    def test_status_table(self) -> None:
        text = cli.render_status(
            {
                "members": [
                    {
                        "name": "a",
                        "role": "master",
                        "address": "[2001:db8::1]:7946",
                        "state": "alive",
                        "incarnation": 1,
                        "version": 3,
                    },
                ],
                "health": 0,
            }
        )
        lines = text.splitlines()
        self.assertEqual(
            lines[0].split(), ["NAME", "ROLE", "ADDRESS", "STATE", "INCARNATION", "VERSION"]
        )
        self.assertEqual(lines[1].split(), ["a", "master", "[2001:db8::1]:7946", "alive", "1", "3"])
        self.assertIn("health: 0", text)

    def test_sections_of_other_services(self) -> None:
        text = cli.render_status(
            {
                "members": [],
                "pki": {"certificates": {"admin": {"subject": "CN=a", "state": "valid",
                                                   "not_after": "2027", "renew_at": "2026"}},
                        "refusals": [{"member": "x", "reason": "forbidden subject"}]},
                "mesh": {"interface": "hepto0", "backend": "userspace", "phase": "running",
                         "endpoint": "[2001:db8::1]:51820", "mtu": 1420, "addresses": ["fd00::1"],
                         "peers": [{"name": "b", "endpoint": "[2001:db8::2]:51820",
                                    "allowed_ips": ["fd00::2/128"], "rx_bytes": 1, "tx_bytes": 2,
                                    "persistent_keepalive": 25},
                                   {"name": "c", "endpoint": "[2001:db8::3]:51820",
                                    "allowed_ips": ["fd00::3/128"], "rx_bytes": 3, "tx_bytes": 4,
                                    "persistent_keepalive": 0}]},
                "kube": {"components": [{"name": "etcd", "state": "running", "ready": True,
                                         "pid": 7, "restarts": 0, "last_exit": None}],
                         "runtime": {"socket": "/run/hepto/x/containerd.sock",
                                     "cgroup": "/hepto/c/n", "oom_score_adj_lowered": False}},
            }
        )  # fmt: skip
        self.assertIn("admin        CN=a     valid  2027     2026", text)
        self.assertIn("forbidden subject", text)
        self.assertIn("mesh: hepto0 (userspace, running)", text)
        self.assertIn("b     [2001:db8::2]:51820  fd00::2/128  never      25 s       1   2", text)
        self.assertIn("c     [2001:db8::3]:51820  fd00::3/128  never      -          3   4", text)
        self.assertIn("etcd       running  True   7    0         None", text)
        self.assertIn(
            "runtime: containerd at /run/hepto/x/containerd.sock, cgroups /hepto/c/n, "
            "pods not yet, oom_score_adj lowered: False",
            text,
        )
