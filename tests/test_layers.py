"""The layers of ``docs/design.rst``, checked on every import in ``hepto/``.

Each module imports only from its own layer and those below; among the reactions, the
Kubernetes service reads the PKI's and the mesh's data modules (file paths, certificate
specs, the record format), never their services.  A new module must be given a layer
here, and so in the design.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

PACKAGE = Path(__file__).resolve().parent.parent / "hepto"

#: docs/design.rst, "Layers": the top-level modules and packages of hepto, by layer.
LAYERS = {
    "ground": {
        "plan", "config", "state", "errors", "exitstatus", "files", "datadir", "unixpath", "watch",
        "once", "linux", "logs", "goarch", "programs", "interfaces", "https", "control",
        "manhole", "supervisor", "gossip", "images", "backoff", "observers", "waiters",
        "machine", "cgroups", "container", "shellguard", "metrics", "notify",
    },
    "reactions": {"pki", "mesh", "kube", "backup"},
    "composition": {"node", "cli"},
    "entry": {"tap"},
}  # fmt: skip
ORDER = list(LAYERS)
LAYER_OF = {name: layer for layer, names in LAYERS.items() for name in names}
#: Which reactions may read which others' data modules (never their ``service``).
READS = {"kube": {"pki", "mesh"}, "backup": {"pki", "kube"}}


def imports(path: Path) -> Iterator[tuple[str, int]]:
    """Every ``hepto.x...`` name that ``path`` imports (in functions too), with its line."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # ``from hepto.mesh import service`` imports hepto.mesh.service.
            names = [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            if name.startswith("hepto."):
                yield name, node.lineno


def owner(path: Path) -> str:
    """The top-level module or package of hepto that ``path`` belongs to."""
    return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


class LayersTests(SynchronousTestCase):
    def test_every_module_has_a_layer(self) -> None:
        found = {owner(path) for path in PACKAGE.rglob("*.py")} - {"__init__"}
        self.assertEqual(found - LAYER_OF.keys(), set(), "add it to LAYERS and docs/design.rst")

    def test_imports_go_down(self) -> None:
        wrong = []
        for path in sorted(PACKAGE.rglob("*.py")):
            importer = owner(path)
            if importer == "__init__":
                continue
            for name, line in imports(path):
                parts = name.split(".")
                imported = parts[1]
                if imported == importer:
                    continue
                where = f"{path.relative_to(PACKAGE.parent)}:{line} imports {name}"
                layer, imported_layer = LAYER_OF[importer], LAYER_OF[imported]
                if ORDER.index(imported_layer) > ORDER.index(layer):
                    wrong.append(f"{where}: {layer} reaches up into {imported_layer}")
                elif layer == imported_layer == "reactions":
                    if imported not in READS.get(importer, set()):
                        wrong.append(f"{where}: {importer} reads nothing of {imported}")
                    elif parts[2:3] == ["service"]:
                        wrong.append(f"{where}: a service is reached through a Protocol")
        self.assertEqual(wrong, [])
