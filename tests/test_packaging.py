"""The wheel, installed in a fresh virtual environment, gives a working ``twistd hepto``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

ROOT = Path(__file__).resolve().parent.parent


def run(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=600, **kwargs)  # type: ignore[call-overload]


class WheelTests(SynchronousTestCase):
    def test_twistd_hepto_from_a_wheel(self) -> None:
        work = Path(tempfile.mkdtemp(prefix="hepto-wheel-"))
        self.addCleanup(shutil.rmtree, work, True)
        built = run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(work / "dist"), str(ROOT)]
        )
        self.assertEqual(built.returncode, 0, built.stderr)
        [wheel] = (work / "dist").glob("hepto-*.whl")
        venv = work / "venv"
        self.assertEqual(run([sys.executable, "-m", "venv", str(venv)]).returncode, 0)
        installed = run([str(venv / "bin" / "pip"), "install", "-q", str(wheel)])
        self.assertEqual(installed.returncode, 0, installed.stderr)

        python = str(venv / "bin" / "python")
        where = run(
            [
                python,
                "-c",
                "import twisted.plugins, os; print(os.path.dirname(twisted.plugins.__file__))",
            ]
        )
        plugins = Path(where.stdout.strip())
        self.assertTrue((plugins / "hepto_plugin.py").exists(), sorted(os.listdir(plugins)))

        # As a site-wide install should: rebuild the dropin cache once, after installing.
        cache = run(
            [
                python,
                "-c",
                "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))",
            ]
        )
        self.assertEqual(cache.returncode, 0, cache.stderr)

        elsewhere = tempfile.mkdtemp(prefix="hepto-cwd-")
        self.addCleanup(shutil.rmtree, elsewhere, True)
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        helped = run([str(venv / "bin" / "twistd"), "hepto", "--help"], cwd=elsewhere, env=env)
        self.assertEqual(helped.returncode, 0, helped.stderr)
        self.assertIn("--cluster", helped.stdout)
        info = run([str(venv / "bin" / "hepto"), "info", "--cluster", "c"], cwd=elsewhere, env=env)
        self.assertEqual(info.returncode, 0, info.stderr)
        self.assertIn("apiserver_address", info.stdout)
        # Imported only when used: a package missing from setup.cfg fails only then.
        images = run(
            [python, "-c", "import hepto.images.importer, hepto.images.inspect"],
            cwd=elsewhere,
            env=env,
        )
        self.assertEqual(images.returncode, 0, images.stderr)
