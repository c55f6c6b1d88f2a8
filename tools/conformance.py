"""Runs the upstream conformance suite against a hepto cluster (see tools/conformance).

Without ``--kubeconfig``: starts a local cluster (a master and two nodes, each a real agent
in a network namespace of its own, as tools/demo does), whose nodes import the suite's
images (made here: tests/e2e_images.py) at start, and runs the suite from the master's
host.  Everything is kept in the run directory: the suite's output (``e2e.log``), its
JUnit report (``report/``), and the agents' data with every agent's and component's log
(``data/``).  The last line printed is ``N passed, N failed, N skipped``; the exit status
is 0 only when no spec failed.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ElementTree
from collections.abc import Sequence
from pathlib import Path

import attrs

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from e2e_images import Sources, ensure_archives
from localcluster import LocalCluster
from netlab import missing_requirements

CONFORMANCE = r"\[Conformance\]"
#: Where the images' archives are kept between runs (writing agnhost's takes seconds).
IMAGE_CACHE = Path(os.environ.get("HEPTO_CACHE", "/var/cache/hepto")) / "e2e-images"


#: The suite's own setup and reports, listed beside the specs: only their failures count.
SUITE_NODE = re.compile(r"^\[(Synchronized|Report)?(Before|After)Suite\]")


@attrs.frozen
class Outcome:
    """The specs the run selected, by how they ended (from the JUnit report)."""

    passed: int
    failed: int
    skipped: int
    failures: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.passed} passed, {self.failed} failed, {self.skipped} skipped"


def read_report(report: Path) -> Outcome:
    """Count the specs of a JUnit report that ginkgo wrote.

    Ginkgo lists every spec of the suite; those the focus left out are "skipped" with
    no message of their own, and are not counted.  A spec skipped at run time (it calls
    Skip: a missing feature, a provider) says why, and is counted as skipped.
    """
    passed = failed = skipped = 0
    failures = []
    for case in ElementTree.parse(report).iter("testcase"):
        status = case.get("status", "")
        name = case.get("name", "")
        if SUITE_NODE.match(name):
            if status in ("failed", "panicked", "interrupted", "timedout"):
                failed += 1
                failures.append(name)
            continue
        if status == "passed":
            passed += 1
        elif status == "skipped":
            element = case.find("skipped")
            message = element.get("message", "") if element is not None else ""
            if message and message != "skipped":
                skipped += 1
        elif status:
            failed += 1
            failures.append(name)
    return Outcome(passed, failed, skipped, tuple(failures))


def suite_argv(args: argparse.Namespace, kubeconfig: Path, report: Path) -> list[str]:
    e2e = [
        f"--kubeconfig={kubeconfig}",
        "--provider=skeleton",
        f"--kubectl-path={Path(args.bin_dir) / 'kubectl'}",
        f"--report-dir={report}",
        # The log dump reaches nodes over ssh: there is none here.
        "--disable-log-dump",
        f"--ginkgo.focus={args.focus}",
        f"--ginkgo.timeout={args.timeout}",
        "--ginkgo.no-color",
    ]
    if args.skip:
        e2e.append(f"--ginkgo.skip={args.skip}")
    if args.dry_run:
        e2e.append("--ginkgo.dry-run")
    suite = str(Path(args.e2e_dir) / "e2e.test")
    if args.parallel > 1:
        ginkgo = str(Path(args.e2e_dir) / "ginkgo")
        return [ginkgo, f"--procs={args.parallel}", "--no-color", suite, "--", *e2e]
    return [suite, *e2e]


def summary(log: Path) -> str:
    """Ginkgo's closing summary: from its "Summarizing" or "Ran N of M" line to the end."""
    lines = log.read_text(errors="replace").splitlines()
    for index, line in enumerate(lines):
        if re.match(r"^(Summarizing \d+ Failure|Ran \d+ of \d+ Specs)", line):
            return "\n".join(lines[index:])
    return "\n".join(lines[-20:])


def run_suite(argv: Sequence[str], log: Path) -> int:
    print(f"conformance: running the suite; its output goes to {log}", flush=True)
    with log.open("wb") as output:
        return subprocess.run(argv, stdout=output, stderr=subprocess.STDOUT).returncode


def prune(data_dir: Path) -> None:
    """Drop the nodes' images, archived and unpacked: the logs stay, the bulk goes."""
    for bulk in (*data_dir.glob("*/*/containerd"), *data_dir.glob("*/*/images")):
        shutil.rmtree(bulk, ignore_errors=True)


def link_or_copy(source: Path, destination: Path) -> None:
    try:
        os.link(source, destination)
    except OSError:  # another file system
        shutil.copyfile(source, destination)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--focus", default=CONFORMANCE, help="specs to run (a regex)")
    parser.add_argument("--skip", default="", help="specs not to run (a regex)")
    parser.add_argument("--kubeconfig", help="an existing cluster's: start none")
    parser.add_argument("--nodes", type=int, default=2, help="nodes besides the master")
    parser.add_argument("--parallel", type=int, default=1, help="ginkgo processes")
    parser.add_argument("--timeout", default="6h", help="the whole suite's (ginkgo)")
    parser.add_argument("--run-dir", help="where to keep the report and logs")
    parser.add_argument("--dry-run", action="store_true", help="list the specs, run none")
    parser.add_argument("--bin-dir", required=True, help="upstream programs (build-bundle)")
    parser.add_argument("--e2e-dir", required=True, help="the suite (tools/build-e2e)")
    args = parser.parse_args()

    if args.run_dir:
        run_dir = Path(args.run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
    else:
        run_dir = Path(tempfile.mkdtemp(prefix="hepto-conformance-", dir="/var/tmp"))
    report, log = run_dir / "report", run_dir / "e2e.log"
    report.mkdir(exist_ok=True)
    print(f"conformance: report and logs in {run_dir}", flush=True)

    if args.kubeconfig:
        code = run_suite(suite_argv(args, Path(args.kubeconfig), report), log)
    else:
        if why := missing_requirements():
            sys.exit(f"conformance: {why}")
        sources = Sources(
            Path(args.e2e_dir), Path(args.bin_dir), Path(args.e2e_dir).parent / "images"
        )
        print("conformance: making the suite's images", flush=True)
        archives = ensure_archives(sources, IMAGE_CACHE)

        def stock(folder: Path) -> None:
            for archive in archives:
                link_or_copy(archive, folder / archive.name)

        data_dir = run_dir / "data"
        cluster = LocalCluster(
            Path(args.bin_dir),
            data_dir,
            "conformance",
            args.nodes,
            lab_prefix="hc",
            say="conformance",
        )
        try:
            cluster.start(stock)
            cluster.wait_ready()
            argv = cluster.master.command(suite_argv(args, cluster.kubeconfig, report))
            code = run_suite(argv, log)
        finally:
            cluster.close()
            prune(data_dir)
    print(summary(log))
    reports = sorted(report.glob("junit*.xml"))
    if not reports:
        print(f"conformance: the suite wrote no report (exit status {code}); see {log}")
        return code or 1
    outcome = read_report(reports[0])
    for failure in outcome.failures:
        print(f"conformance: FAILED {failure}")
    print(outcome)
    return 1 if outcome.failed or (code and not args.dry_run) else 0


if __name__ == "__main__":
    os.umask(0o022)
    sys.exit(main())
