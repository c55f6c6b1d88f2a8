"""The built multi-call binaries: which programs each holds, and how each is called.

``hepto-bundle`` holds the programs a node runs for its whole life, ``hepto-tools`` the
client tools (kubectl, etcdctl, ctr), so that no component runs the tools' package
initialisers (docs/bundle.rst, docs/memory.rst).  The binaries come from
HEPTO_TEST_BIN_DIR or the bundle; without them the tests are skipped
(tools/build-bundle builds them).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from unittest import SkipTest

from twisted.trial.unittest import SynchronousTestCase

from hepto.programs import BUNDLE_BIN_DIR

BIN_DIR = Path(os.environ.get("HEPTO_TEST_BIN_DIR", BUNDLE_BIN_DIR))
#: Programs linked into hepto-bundle, each a symlink to it.
BUNDLED = (
    "containerd",
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-proxy",
    "kube-scheduler",
    "kubelet",
)
#: Programs linked into hepto-tools, each a symlink to it.
TOOLS = ("ctr", "etcdctl", "etcdutl", "kubectl")
#: Binaries of their own beside them.
SEPARATE = ("containerd-shim-runc-v2", "coredns", "pause")


def run(*argv: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(arg) for arg in argv],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd="/",
        check=False,
    )


class BundleTests(SynchronousTestCase):
    def setUp(self) -> None:
        for binary in ("hepto-bundle", "hepto-tools"):
            if not os.access(BIN_DIR / binary, os.X_OK):
                raise SkipTest(f"no {binary} in {BIN_DIR}: build it with tools/build-bundle")

    def test_symlinks(self) -> None:
        for names, target in ((BUNDLED, "hepto-bundle"), (TOOLS, "hepto-tools")):
            for name in names:
                self.assertEqual(os.readlink(BIN_DIR / name), target, name)

    def test_lists(self) -> None:
        bundle = run(BIN_DIR / "hepto-bundle", "--list")
        self.assertEqual(bundle.returncode, 0, bundle.stderr)
        self.assertEqual(bundle.stdout.split(), sorted((*BUNDLED, *TOOLS, *SEPARATE)))
        tools = run(BIN_DIR / "hepto-tools", "--list")
        self.assertEqual(tools.returncode, 0, tools.stderr)
        self.assertEqual(tools.stdout.split(), list(TOOLS))

    def test_tools_through_each_name(self) -> None:
        # The symlink, hepto-tools' first argument, and hepto-bundle's, which execs it.
        calls = {
            "kubectl": (("version", "--client"), "Client Version: v"),
            "etcdctl": (("version",), "etcdctl version: "),
            "etcdutl": (("version",), "etcdutl version: 3.7.0"),
            "ctr": (("--version",), "ctr github.com/containerd/"),
        }
        for tool, (arguments, expected) in calls.items():
            for command in (
                (BIN_DIR / tool,),
                (BIN_DIR / "hepto-tools", tool),
                (BIN_DIR / "hepto-bundle", tool),
            ):
                answer = run(*command, *arguments)
                self.assertEqual(answer.returncode, 0, f"{command}: {answer.stderr}")
                self.assertTrue(answer.stdout.startswith(expected), f"{command}: {answer.stdout}")

    def test_unknown_program(self) -> None:
        for binary in ("hepto-bundle", "hepto-tools"):
            answer = run(BIN_DIR / binary, "no-such-program")
            self.assertEqual(answer.returncode, 2)
            self.assertIn("usage:", answer.stderr)

    def test_components_do_not_initialise_the_tools(self) -> None:
        # Go prints one line per package initialiser run: none of the tools' own.
        env = {"PATH": "/usr/bin:/bin", "GODEBUG": "inittrace=1"}
        answer = run(BIN_DIR / "kube-scheduler", "--version", env=env)
        self.assertEqual(answer.returncode, 0, answer.stderr)
        initialised = {
            line.split()[1] for line in answer.stderr.splitlines() if line.startswith("init ")
        }
        self.assertIn("k8s.io/kubernetes/cmd/kube-scheduler/app", initialised)
        for package in (
            "k8s.io/kubectl/pkg/cmd",
            "k8s.io/kubectl/pkg/cmd/options",
            "go.etcd.io/etcd/etcdctl/v3/ctlv3/command",
            "go.etcd.io/etcd/etcdutl/v3/etcdutl",
            "github.com/containerd/containerd/v2/cmd/ctr/app",
        ):
            self.assertNotIn(package, initialised)
