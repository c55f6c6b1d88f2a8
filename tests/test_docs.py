"""Every reStructuredText page parses without a warning (broken tables hide content)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import docutils.core
import docutils.utils
from docutils import nodes
from docutils.parsers.rst import roles
from twisted.trial.unittest import SynchronousTestCase

ROOT = Path(__file__).resolve().parent.parent
# index.rst holds Sphinx's toctree, which plain docutils does not know.
PAGES = [
    ROOT / "README.rst",
    *sorted(p for p in (ROOT / "docs").glob("*.rst") if p.name != "index.rst"),
]


def _sphinx_role(name, rawtext, text, lineno, inliner, options=None, content=None):  # type: ignore[no-untyped-def]
    """Sphinx's cross-reference roles, read as literals: the target is Sphinx's concern."""
    return [nodes.literal(rawtext, text)], []


for _role in ("doc", "ref", "term", "program", "option", "file"):
    roles.register_local_role(_role, _sphinx_role)


class DocsTests(SynchronousTestCase):
    def test_pages_parse_cleanly(self) -> None:
        for page in PAGES:
            try:
                docutils.core.publish_doctree(
                    page.read_text(),
                    source_path=str(page),
                    settings_overrides={
                        "report_level": 2,
                        "halt_level": 2,
                        "warning_stream": False,
                    },
                )
            except docutils.utils.SystemMessage as error:
                self.fail(f"{page.relative_to(ROOT)}: {error}")

    def test_index_lists_every_page(self) -> None:
        index = (ROOT / "docs" / "index.rst").read_text()
        for page in PAGES[1:]:
            self.assertIn(f"   {page.stem}\n", index, f"{page.name} is missing from docs/index.rst")

    def test_the_site_builds_without_a_warning(self) -> None:
        """What ``README.rst`` says to run, warnings as errors (a broken :doc: link too)."""
        site = Path(self.mktemp())
        done = subprocess.run(
            [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
             str(ROOT / "docs"), str(site)],
            capture_output=True, text=True,
        )  # fmt: skip
        self.assertEqual(done.returncode, 0, done.stderr)
        for page in PAGES[1:]:
            self.assertTrue((site / f"{page.stem}.html").exists(), page.stem)
