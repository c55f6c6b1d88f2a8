"""What the pause image costs the agent: memory for the import, time for the write.

Each run is a fresh interpreter that first imports what ``twistd hepto`` imports (the
reactor, ``hepto.tap``, ``hepto.node``), then ``hepto.images.pause`` and
``hepto.images.importer`` (the modules a node's agent uses), then writes the pause
image's archive from the bundle's ``pause`` program, and checks it again (up to date).
Prints the growth of RSS and anonymous memory after each step (``/proc/self/status``)
and the times, as medians over the runs.  Asserts nothing.

    .venv/bin/python benchmarks/images.py [--pause PATH] [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import textwrap
from pathlib import Path

from hepto.programs import BUNDLE_BIN_DIR

_RUN = textwrap.dedent(
    """
    import gc, json, sys, tempfile, time
    from pathlib import Path

    def memory():
        fields = dict(line.split(":", 1) for line in open("/proc/self/status"))
        return {key: int(fields[key].split()[0]) / 1024 for key in ("VmRSS", "RssAnon")}

    from twisted.internet import reactor
    import hepto.tap, hepto.node
    gc.collect()
    base = memory()
    began = time.perf_counter()
    from hepto.images.pause import ensure_pause_archive
    import hepto.images.importer
    imported = time.perf_counter() - began
    gc.collect()
    after_import = memory()
    archive = Path(tempfile.mkdtemp()) / "pause.tar"
    began = time.perf_counter()
    written = ensure_pause_archive(Path(sys.argv[1]), archive)
    wrote = time.perf_counter() - began
    gc.collect()
    after_write = memory()
    began = time.perf_counter()
    again = ensure_pause_archive(Path(sys.argv[1]), archive)
    checked = time.perf_counter() - began
    assert written is not None and again is None
    print(json.dumps({
        "import_ms": imported * 1000, "write_ms": wrote * 1000, "check_ms": checked * 1000,
        "archive_bytes": written.size,
        **{f"import_{k}": after_import[k] - base[k] for k in base},
        **{f"write_{k}": after_write[k] - base[k] for k in base},
    }))
    """
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pause", type=Path, default=BUNDLE_BIN_DIR / "pause")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    runs = [
        json.loads(
            subprocess.run(
                [sys.executable, "-c", _RUN, str(args.pause)],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        )
        for _ in range(args.runs)
    ]
    median = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
    print(f"pause program {args.pause}: {args.pause.stat().st_size:,} bytes")
    print(f"pause archive: {int(median['archive_bytes']):,} bytes")
    print(f"medians of {args.runs} runs, on top of what twistd hepto imports:")
    print(
        f"  import hepto.images.pause and .importer: {median['import_ms']:.0f} ms, "
        f"RSS +{median['import_VmRSS']:.2f} MiB (anonymous +{median['import_RssAnon']:.2f})"
    )
    print(
        f"  then write the archive: {median['write_ms']:.0f} ms, "
        f"RSS +{median['write_VmRSS']:.2f} MiB (anonymous +{median['write_RssAnon']:.2f})"
    )
    print(f"  then find it up to date: {median['check_ms']:.1f} ms")


if __name__ == "__main__":
    main()
