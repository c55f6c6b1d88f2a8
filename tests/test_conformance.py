"""The upstream conformance suite against hepto, through tools/conformance.

:class:`SubsetTests` is the CI subset (docs/conformance.rst): the ``[Conformance]`` specs
of what every user of a cluster relies on first (pods, exec, logs, Services, DNS,
ConfigMaps, Secrets, service account tokens), run against a local cluster of a master and
two nodes; a regression of any of them fails the test command.  The whole suite is
``tools/conformance`` without a focus: its figures are in the docs, not here.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from twisted.trial.unittest import SynchronousTestCase

from hepto.programs import BUNDLE_BIN_DIR

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

from conformance import Outcome, read_report  # noqa: E402  (tools/ is not a package)

BIN_DIR = Path(os.environ.get("HEPTO_TEST_BIN_DIR", BUNDLE_BIN_DIR))
E2E_DIR = Path(os.environ.get("HEPTO_TEST_E2E_DIR", "/var/cache/hepto/e2e/current/bin"))

#: One regex a spec, each matching exactly one ``[Conformance]`` spec of the suite.
SUBSET = (
    r"\[sig-node\] Pods should be submitted and removed",
    r"\[sig-node\] Pods should get a host IP",
    r"\[sig-node\] Pods should support remote command execution over websockets",
    r"\[sig-node\] Pods should support retrieving logs from the container over websockets",
    r"\[sig-cli\] Kubectl logs logs should be able to retrieve and filter logs",
    r"\[sig-network\] DNS should provide DNS for services \[Conformance\]",
    r"\[sig-network\] DNS should provide DNS for the cluster \[Conformance\]",
    r"\[sig-network\] Services should serve a basic endpoint from pods",
    r"\[sig-network\] Services should serve multiport endpoints from pods",
    r"\[sig-network\] Services should be able to create a functioning NodePort service",
    r"\[sig-node\] ConfigMap should be consumable via environment variable",
    r"\[sig-storage\] ConfigMap should be consumable from pods in volume \[Conformance\]",
    r"\[sig-node\] Secrets should be consumable from pods in env vars",
    r"\[sig-storage\] Secrets should be consumable from pods in volume \[Conformance\]",
    r"\[sig-auth\] ServiceAccounts should mount an API token into pods",
)

_REPORT = """\
<?xml version="1.0" encoding="UTF-8"?>
<testsuites tests="7" disabled="5" errors="0" failures="1" time="12.5">
  <testsuite name="Kubernetes e2e suite" package="/" tests="7" skipped="5" failures="1">
    <testcase name="[SynchronizedBeforeSuite]" classname="Kubernetes e2e suite"
      status="passed" time="1"></testcase>
    <testcase name="[It] [sig-node] Pods should get a host IP [Conformance]"
      classname="Kubernetes e2e suite" status="passed" time="5"></testcase>
    <testcase name="[It] [sig-network] Services should serve a basic endpoint [Conformance]"
      classname="Kubernetes e2e suite" status="failed" time="120">
      <failure message="service is not reachable" type="failed">...</failure></testcase>
    <testcase name="[It] [sig-network] DNS should provide DNS [Provider:gce]"
      classname="Kubernetes e2e suite" status="skipped" time="0">
      <skipped message="skipped - Only supported for providers [gce]"></skipped></testcase>
    <testcase name="[It] [sig-apps] Deployment not selected" classname="Kubernetes e2e suite"
      status="skipped" time="0"><skipped message="skipped"></skipped></testcase>
    <testcase name="[It] [sig-node] timed out" classname="Kubernetes e2e suite"
      status="timedout" time="0"></testcase>
    <testcase name="[ReportAfterSuite] Kubernetes e2e suite report"
      classname="Kubernetes e2e suite" status="passed" time="0"></testcase>
  </testsuite>
</testsuites>
"""


class ReportTests(SynchronousTestCase):
    def read(self, text: str) -> Outcome:
        report = Path(tempfile.mkdtemp(prefix="hepto-junit-")) / "junit_01.xml"
        self.addCleanup(report.unlink)
        report.write_text(text)
        return read_report(report)

    def test_counts(self) -> None:
        outcome = self.read(_REPORT)
        self.assertEqual((outcome.passed, outcome.failed, outcome.skipped), (1, 2, 1))
        self.assertEqual(
            outcome.failures,
            (
                "[It] [sig-network] Services should serve a basic endpoint [Conformance]",
                "[It] [sig-node] timed out",
            ),
        )
        self.assertEqual(str(outcome), "1 passed, 2 failed, 1 skipped")

    def test_a_failed_suite_setup_counts(self) -> None:
        outcome = self.read(
            _REPORT.replace('"[SynchronizedBeforeSuite]" classname="Kubernetes e2e suite"\n'
                            '      status="passed"', '"[SynchronizedBeforeSuite]" '
                            'classname="Kubernetes e2e suite"\n      status="failed"')
        )  # fmt: skip
        self.assertEqual(outcome.failed, 3)
        self.assertIn("[SynchronizedBeforeSuite]", outcome.failures)


class SubsetTests(SynchronousTestCase):
    @pytest.mark.timeout(1200)
    def test_the_ci_subset_passes(self) -> None:
        if os.geteuid() != 0:
            raise self.skipTest("needs root: network namespaces")
        for program in (E2E_DIR / "e2e.test", BIN_DIR / "kubelet"):
            if not os.access(program, os.X_OK):
                raise self.skipTest(f"no {program}: tools/build-e2e, tools/build-bundle")
        run_dir = Path(tempfile.mkdtemp(prefix="hepto-conformance-", dir="/var/tmp"))
        argv = [sys.executable, str(ROOT / "tools" / "conformance.py"), "--parallel", "2"]
        argv += ["--bin-dir", str(BIN_DIR), "--e2e-dir", str(E2E_DIR), "--run-dir", str(run_dir)]
        done = subprocess.run(
            [*argv, "--focus", "|".join(SUBSET)],
            capture_output=True,
            text=True,
            timeout=1100,
        )
        output = done.stdout + done.stderr
        last = output.strip().splitlines()[-1] if output.strip() else ""
        counts = re.fullmatch(r"(\d+) passed, (\d+) failed, (\d+) skipped", last)
        self.assertIsNotNone(counts, f"no summary line; see {run_dir}:\n{output[-5000:]}")
        assert counts is not None
        # Each spec of the subset passed (one that skips itself would be one fewer).
        passed, failed = counts.group(1, 2)
        self.assertEqual(
            (passed, failed), (str(len(SUBSET)), "0"), f"see {run_dir}:\n{output[-5000:]}"
        )
        self.assertEqual(done.returncode, 0, output[-2000:])
        # Kept on failure to read; the report and logs of a passing run are not needed.
        subprocess.run(["rm", "-rf", str(run_dir)], check=False)
