"""``tools/build-bundle``'s progress, with a stand-in for ``go`` (a real cold build takes
tens of minutes): a terminal gets each step and a heartbeat, anything else one start
and one end line, and a failure Go's errors without the package names.

The stand-in answers as ``go`` does the commands the script gives (``env``, ``mod
download``, ``list -deps``, ``build -v -o``), slowly enough for a heartbeat of 1 s
(``HEPTO_BUNDLE_HEARTBEAT``); a terminal is ``script``'s pseudo-terminal.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

SCRIPT = Path(__file__).resolve().parent.parent / "tools" / "build-bundle"
PROGRAMS = (
    "etcd kube-apiserver kube-controller-manager kube-scheduler kube-proxy kubelet "
    "containerd kubectl etcdctl etcdutl ctr containerd-shim-runc-v2 pause coredns"
)
FAKE_GO = f"""#!/bin/sh
case "$1" in
env) echo go1.99-fake ;;
mod) sleep "$FAKE_GO_MOD_PAUSE" ;;
list) for i in 1 2 3 4 5 6 7 8 9 10; do echo "example.com/p$i"; done ;;
build)
    out=""; prev=""
    for a in "$@"; do [ "$prev" = "-o" ] && out=$a; prev=$a; done
    if [ -n "$FAKE_GO_FAIL" ]; then
        echo example.com/p1 >&2; echo "# example.com/p2" >&2
        echo "p2/main.go:3:1: syntax error" >&2; exit 1
    fi
    for i in 1 2 3 4 5; do echo "example.com/p$i" >&2; sleep "$FAKE_GO_PAUSE"; done
    printf '#!/bin/sh\\nprintf "%%s\\\\n" {PROGRAMS}\\n' > "$out"
    chmod +x "$out" ;;
esac
"""


class ProgressTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="ho-build-"))
        self.addCleanup(shutil.rmtree, self.directory, True)
        go = self.directory / "go"
        go.write_text(FAKE_GO)
        go.chmod(0o755)
        self.env = {
            **os.environ,
            "GO": str(go),
            "HEPTO_CACHE": str(self.directory / "cache"),
            "HEPTO_BUNDLE_HEARTBEAT": "1",
            "FAKE_GO_PAUSE": "0",
            "FAKE_GO_MOD_PAUSE": "0",
        }

    def build(self, tty: bool = False, **env: str) -> subprocess.CompletedProcess[str]:
        argv = [str(SCRIPT)]
        if tty:
            if shutil.which("script") is None:
                self.skipTest("no script (util-linux)")
            # stderr on the pseudo-terminal, stdout (the bin dir) to a file.
            argv = ["script", "-qec", f"{SCRIPT} > {self.directory / 'out'}", "/dev/null"]
        return subprocess.run(
            argv, env=self.env | env, capture_output=True, text=True, timeout=120, check=False
        )

    def lines(self, text: str) -> list[str]:
        return [line.strip() for line in text.splitlines() if line.strip()]

    def test_quiet_without_a_terminal(self) -> None:
        done = self.build()
        self.assertEqual(done.returncode, 0, done.stderr)
        lines = self.lines(done.stderr)
        self.assertEqual(len(lines), 2, lines)
        self.assertTrue(lines[0].startswith("build-bundle: building "), lines)
        self.assertTrue(lines[1].startswith("build-bundle: built in "), lines)
        self.assertTrue(done.stdout.strip().endswith("/bin"))

    def test_steps_and_heartbeat_on_a_terminal(self) -> None:
        done = self.build(tty=True, FAKE_GO_PAUSE="0.5", FAKE_GO_MOD_PAUSE="1.5")
        self.assertEqual(done.returncode, 0, done.stdout)
        lines = self.lines(done.stdout)  # the terminal's
        self.assertIn("build-bundle: [1/7] downloading modules", lines)
        self.assertIn("build-bundle: [2/7] compiling hepto-bundle (10 packages)", lines)
        beats = [line for line in lines if "compiling hepto-bundle:" in line]
        self.assertTrue(beats, lines)
        self.assertRegex(beats[0], r"\[2/7\] compiling hepto-bundle: \d+ of 10 packages "
                         r"compiled, 0m0\ds elapsed$")  # fmt: skip
        self.assertTrue(any(line.startswith("build-bundle: [1/7] downloading modules: 0m0")
                            for line in lines), lines)  # fmt: skip
        self.assertTrue(lines[-1].startswith("build-bundle: built in "), lines)

    def test_failure_shows_the_errors(self) -> None:
        done = self.build(FAKE_GO_FAIL="1")
        self.assertEqual(done.returncode, 1)
        lines = self.lines(done.stderr)
        self.assertEqual(lines[1:3], ["# example.com/p2", "p2/main.go:3:1: syntax error"])
        self.assertRegex(
            lines[3], r"^build-bundle: error: compiling hepto-bundle failed after 0m\d\ds"
        )
        self.assertEqual(len(lines), 4, lines)
