"""Every flag hepto passes exists in the programs it will run (their own ``--help``).

Skipped without the programs: build them with tools/build-bundle, or set
HEPTO_TEST_BIN_DIR to a directory of official release binaries.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from hepto.kube.component import Component, Context
from hepto.kube.service import MASTER, NODE
from hepto.programs import BUNDLE_BIN_DIR, MissingProgram, find_program

CONTEXT = Context("mycluster", "master1", Path("/var/lib/hepto/mycluster/master1"))
BIN_DIR = Path(os.environ.get("HEPTO_TEST_BIN_DIR", BUNDLE_BIN_DIR))


def help_text(program: Path) -> str:
    done = subprocess.run(
        [str(program), "--help"], capture_output=True, text=True, timeout=120, check=False
    )
    return done.stdout + done.stderr


class FlagsExistTests(SynchronousTestCase):
    def check(self, component: Component, documented_at_least: int = 20) -> None:
        try:
            program = find_program(component.program, BIN_DIR, path="")
        except MissingProgram as error:
            self.skipTest(str(error))
        text = help_text(program)
        documented = set(re.findall(r"(--[a-z0-9][a-z0-9-]*)", text))
        self.assertGreater(
            len(documented), documented_at_least, f"{program} --help said: {text[:300]}"
        )
        used = {arg.split("=", 1)[0] for arg in component.args}
        self.assertEqual(used - documented, set(), f"unknown to {program}")

    def test_etcd(self) -> None:
        self.check(MASTER["etcd"](CONTEXT))

    def test_kube_apiserver(self) -> None:
        self.check(MASTER["kube-apiserver"](CONTEXT))

    def test_kube_controller_manager(self) -> None:
        self.check(MASTER["kube-controller-manager"](CONTEXT))

    def test_kube_scheduler(self) -> None:
        self.check(MASTER["kube-scheduler"](CONTEXT))

    def test_kubelet(self) -> None:
        self.check(NODE["kubelet"](CONTEXT))

    def test_containerd(self) -> None:
        # containerd's flags are few: its settings live in its configuration file.
        self.check(NODE["containerd"](CONTEXT), documented_at_least=5)

    def test_kube_proxy(self) -> None:
        self.check(NODE["kube-proxy"](CONTEXT))
