"""Images for tests and the demo, written with hepto's own archive writer, and a fake ctr.

``localhost/hepto/busybox:1`` is Debian's busybox-static (tools/install-deps installs it)
with one symlink per applet: a shell and the usual tools, about 1 MiB compressed, built
in a fraction of a second and never pulled.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Final

from hepto.images.layout import (
    Directory,
    Entry,
    File,
    ImageConfig,
    Recipe,
    Symlink,
    Written,
    write_archive,
)

BUSYBOX_IMAGE: Final = "localhost/hepto/busybox:1"
BUSYBOX: Final = Path("/bin/busybox")

_PASSWD: Final = b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n"
_GROUP: Final = b"root:x:0:\nnogroup:x:65534:\n"


def busybox_recipe(busybox: Path = BUSYBOX) -> Recipe:
    """busybox and its applets in /bin, a root and a nobody, ``sh`` as the command."""
    applets = subprocess.run(
        [str(busybox), "--list"], capture_output=True, text=True, check=True, timeout=30
    ).stdout.split()
    entries: list[Entry] = [File.copy("/bin/busybox", busybox, 0o755)]
    entries += [Symlink(f"/bin/{applet}", "busybox") for applet in applets if applet != "busybox"]
    entries += [Directory(path) for path in ("/etc", "/proc", "/sys", "/dev", "/var")]
    entries += [Directory("/tmp", 0o1777), Directory("/root", 0o700)]
    entries += [File("/etc/passwd", _PASSWD), File("/etc/group", _GROUP)]
    return Recipe(BUSYBOX_IMAGE, entries, ImageConfig(cmd=("sh",), env=("PATH=/bin",)))


def write_busybox_archive(destination: Path, busybox: Path = BUSYBOX) -> Written:
    """Write the busybox image's archive to ``destination``; what it holds, by digest."""
    return write_archive(busybox_recipe(busybox), destination)


_FAKE_CTR = '''#!{python}
"""A stand-in for ctr images import and ls: what it does for each archive (by file name)
is in ctr.json beside it; every call is logged to ctr.log."""
import json, os, sys, time
from pathlib import Path

here = Path(__file__).parent
plan = json.loads((here / "ctr.json").read_text())
state = here / "ctr-state.json"
labelled = json.loads(state.read_text()) if state.exists() else {{}}
with open(here / "ctr.log", "a") as log:
    call = {{"pid": os.getpid(), "argv": sys.argv[1:], "environ": dict(os.environ)}}
    log.write(json.dumps(call) + "\\n")
command = sys.argv[5:]  # after --address SOCKET --namespace NAMESPACE
print('time="2026-12-02T09:00:00Z" level=warning msg="DEPRECATION: cgroup v1"', file=sys.stderr)
if command[:2] == ["images", "import"]:
    token, archive = command[3].split("=", 1)[1], Path(command[4]).name
    behaviour = plan.get(archive, {{"fail": "unexpected EOF"}})
    time.sleep(behaviour.get("sleep", 0))
    if "fail" in behaviour:
        print("ctr: " + behaviour["fail"], file=sys.stderr)
        sys.exit(1)
    labelled[token] = behaviour.get("images", [])
    state.write_text(json.dumps(labelled))
    print("Importing\\telapsed: 0.0 s\\ttotal:   0.0 B\\t(0.0 B/s)\\t")
elif command[:2] == ["images", "ls"]:
    token = command[2].rsplit("==", 1)[1]
    rows = [["REF", "TYPE", "DIGEST", "SIZE", "PLATFORMS", "LABELS"]]
    for image in labelled.get(token, []):
        rows.append([image["name"], "application/vnd.oci.image.manifest.v1+json",
                     image["digest"], "625.8 KiB", image.get("platforms", "linux/amd64"),
                     "hepto.images.import=" + token])
    widths = [max(len(row[i]) for row in rows) for i in range(6)]
    for row in rows:  # as Go's tabwriter pads, a space after each cell
        print("".join(cell.ljust(width) + " " for cell, width in zip(row, widths)))
else:
    print("ctr: unexpected command " + " ".join(command), file=sys.stderr)
    sys.exit(2)
'''


def fake_ctr(directory: Path, plan: dict[str, Any]) -> Path:
    """A fake ctr in ``directory``: ``plan`` maps archive file names to what it does.

    ``{"images": [{"name": ..., "digest": ..., "platforms": "linux/amd64"}]}`` imports
    those, ``{"fail": reason}`` fails with ``ctr: reason``, ``"sleep"`` waits first;
    archives not in the plan fail.  ``ctr.log`` beside it has one JSON line per call.
    """
    ctr = directory / "ctr"
    ctr.write_text(_FAKE_CTR.format(python=sys.executable))
    ctr.chmod(0o755)
    (directory / "ctr.json").write_text(json.dumps(plan))
    return ctr


def fake_ctr_calls(ctr: Path) -> list[dict[str, Any]]:
    log = ctr.with_name("ctr.log")
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines()]
