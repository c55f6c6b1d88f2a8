"""Memory of the hepto agent and of an idle master's components, printed, never asserted.

Parts, each with real processes in network namespaces on a private bridge
(``tests/netlab.py``), all named with the prefix ``hx``:

* ``imports``: one process importing what the agent imports, step by step (no agent);
* ``agent``: one idle agent with ``--components none`` as node and one as master;
* ``members``: N idle agents (100 by default) that all see each other;
* ``master``: an agent with the master's components (etcd, kube-apiserver,
  kube-controller-manager, kube-scheduler), once per Go memory setting of
  :data:`SETTINGS`, and per bin dir (the bundle; separate binaries when given);
* ``full``: an agent of role full (the master's components, containerd and the kubelet)
  running one busybox pod (``--no-pod``: none), against issue 11's 450 MB; with
  ``--variants``, once per variant of :data:`VARIANTS` (flags, environment, containerd
  plugins departing from hepto's), ``--rounds`` times, in one run;
* ``node``: an agent of role node joined to a master in another namespace, likewise.

Every figure is the median of several samples of ``/proc/<pid>/smaps_rollup`` taken
after an idle wait: RSS, PSS (shared pages divided among the processes that map them)
and anonymous memory (heaps and stacks: what the Go settings act on); for nodes also USS
(the pages no other process maps) and the union of a node's pages (each counted once,
from ``/proc/<pid>/pagemap``). ``docs/memory.rst`` says how to read them and holds the
results.

Run as root from the repository (about 45 minutes with the defaults; the full and node
parts, not among them, about 12 minutes with ``--idle 120``)::

    .venv/bin/python benchmarks/memory.py --json /tmp/memory.json
    .venv/bin/python benchmarks/memory.py --parts full,node --idle 120
    # settings side by side, each variant's Go runtime figures after a forced GC:
    .venv/bin/python benchmarks/memory.py --parts full --no-pod --idle 60 --samples 3 \\
        --interval 10 --variants hepto,apf-off,memprofilerate-0+containerd-lean \\
        --rounds 2 --go-metrics
"""

from __future__ import annotations

import argparse
import array
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import attrs

ROOT: Final = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from hepto import plan  # noqa: E402
from hepto.control import ControlError, query  # noqa: E402
from hepto.kube import memory as go_memory  # noqa: E402
from hepto.kube.component import GoMemory  # noqa: E402
from hepto.kube.service import MASTER  # noqa: E402
from hepto.programs import BUNDLE_BIN_DIR  # noqa: E402
from images import write_busybox_archive  # noqa: E402
from kubectl import Kubectl, busybox_pod  # noqa: E402
from netlab import Host, Lab, missing_requirements, wait_until  # noqa: E402

PREFIX: Final = "hx"
CLUSTER: Final = "hxmem"
KEY: Final = "5a" * 32
TWISTD: Final = Path(sys.executable).with_name("twistd")
#: Where a build of each program as its own binary may be, for the comparison.
SEPARATE_BIN_DIRS: Final = (
    Path("/var/cache/hepto/separate/current/bin"),
    Path("/var/cache/hepto/separate/bin"),
)

_ALL_COMPONENTS: Final = tuple(MASTER)
#: Issue 11's goal for a full node's processes together: 450 MB (not MiB).
FULL_NODE_GOAL_KIB: Final = 450e6 / 1024
#: The processes of a node's agent, in table order: its children by the name they were
#: started as (the sweeper's guard is a shell waiting on a sleep), then one pod's.
NODE_PROCESSES: Final = (
    "agent",
    "wireguard-go",
    *MASTER,
    "containerd",
    "kubelet",
    "kube-proxy",
    "sweeper sh",
    "sweeper sleep",
    "pod's containerd-shim",
    "pod's pause",
)
_SWEEPER_PROCESSES: Final = {"sh": "sweeper sh", "sleep": "sweeper sleep"}
#: What issue 11's goal covers: a full node's processes before kube-proxy and CoreDNS.
ISSUE_11_PROCESSES: Final = (
    "agent",
    "wireguard-go",
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "containerd",
    "kubelet",
    "sweeper sh",
    "sweeper sleep",
)


def _each(memory: GoMemory) -> dict[str, GoMemory]:
    return dict.fromkeys(_ALL_COMPONENTS, memory)


#: Go memory settings to compare, by name: the Go settings of each component.
SETTINGS: Final[dict[str, Mapping[str, GoMemory]]] = {
    "go-defaults": {},
    "gogc-50": _each(GoMemory(gc_percent=50)),
    "limits": {
        "etcd": GoMemory(limit="64MiB"),
        "kube-apiserver": GoMemory(limit="200MiB"),
        "kube-controller-manager": GoMemory(limit="48MiB"),
        "kube-scheduler": GoMemory(limit="48MiB"),
    },
    "limits-tight": {
        "etcd": GoMemory(limit="40MiB"),
        "kube-apiserver": GoMemory(limit="120MiB"),
        "kube-controller-manager": GoMemory(limit="24MiB"),
        "kube-scheduler": GoMemory(limit="24MiB"),
    },
    "gogc-25": _each(GoMemory(gc_percent=25)),
    "limits+gogc-50": {
        "etcd": GoMemory(limit="64MiB", gc_percent=50),
        "kube-apiserver": GoMemory(limit="200MiB", gc_percent=50),
        "kube-controller-manager": GoMemory(limit="48MiB", gc_percent=50),
        "kube-scheduler": GoMemory(limit="48MiB", gc_percent=50),
    },
    "hepto": go_memory.DEFAULTS,
}

#: What the HTTPS readiness probes imported before they moved to the standard library.
OLD_PROBE_IMPORTS: Final = ("twisted.internet.ssl", "twisted.web.client")

#: What the agent imports, step by step, for the ``imports`` part: (label, modules); the
#: pseudo-module ``!plugins`` is twistd's plugin scan.
IMPORT_STEPS: Final = (
    ("Python 3.11 interpreter", ()),
    ("Twisted reactor (defer, asyncio, logger)", ("twisted.internet.reactor",)),
    ("twistd and its plugin scan", ("twisted.scripts.twistd", "!plugins")),
    ("PyNaCl", ("nacl.bindings", "nacl.utils")),
    ("hepto.gossip", ("hepto.gossip.service",)),
    ("hepto.pki, hepto.kube, hepto.supervisor", ("hepto.pki.service", "hepto.kube.service")),
    (
        "hepto.mesh (rtnetlink, userspace), hepto.node",
        ("hepto.mesh.service", "hepto.mesh.userspace", "hepto.mesh.kernel", "hepto.node"),
    ),
)
#: What an idle agent no longer imports, each measured on top of all of IMPORT_STEPS.
IMPORT_EXTRAS: Final = (
    ("pyroute2: the kernel backend only", ("pyroute2",)),
    ("twisted.conch: the manhole only", ("hepto.manhole",)),
    (
        "cryptography, the desk: PKI worker only",
        ("cryptography.x509", "cryptography.hazmat.primitives.asymmetric.ec", "hepto.pki.worker"),
    ),
    ("hepto.images: pause image, imports (nodes)", ("hepto.images.pause", "hepto.images.importer")),
)

#: Imports the steps of :data:`IMPORT_STEPS` given as JSON; prints (RSS, anonymous) in
#: KiB after each.
_IMPORTER: Final = textwrap.dedent(
    """
    import importlib, json, sys
    def footprint():
        fields = {}
        for line in open("/proc/self/smaps_rollup").read().splitlines()[1:]:
            name, value, *_ = line.split()
            fields[name.rstrip(":")] = int(value)
        return fields["Rss"], fields["Anonymous"]
    taken = []
    for label, modules in json.loads(sys.argv[1]):
        for name in modules:
            if name == "!plugins":
                from twisted.application.service import IServiceMaker
                from twisted.plugin import getPlugins
                list(getPlugins(IServiceMaker))
            else:
                importlib.import_module(name)
        taken.append(footprint())
    print(json.dumps(taken))
    """
)

#: The real agent, after imports given and with KubeService's Go memory defaults replaced.
_LAUNCHER: Final = textwrap.dedent(
    """
    import importlib, json, sys
    launch = json.loads(sys.argv[1])
    for name in launch["preload"]:
        importlib.import_module(name)
    if launch["go"] is not None:
        from hepto.kube import component, memory
        memory.DEFAULTS = {
            name: component.GoMemory(**value) for name, value in launch["go"].items()
        }
    if launch["variant"] is not None:
        import attrs
        from hepto.kube import containerd, service
        variant = launch["variant"]
        def with_flags(describe, extra):
            def described(context):
                component = describe(context)
                names = {flag.split("=", 1)[0] for flag in extra}
                kept = [arg for arg in component.args if arg.split("=", 1)[0] not in names]
                return attrs.evolve(component, args=[*kept, *extra])
            return described
        for name, extra in variant["flags"].items():
            service.DESCRIPTIONS[name] = with_flags(service.DESCRIPTIONS[name], extra)
        containerd.DISABLED_PLUGINS = (
            *containerd.DISABLED_PLUGINS, *variant["disabled_plugins"]
        )
        make_spec = service.KubeService._spec
        def spec(self, component, present):
            made = make_spec(self, component, present)
            extra = variant["env"].get(component.name)
            return attrs.evolve(made, env={**made.env, **extra}) if extra else made
        service.KubeService._spec = spec
    sys.argv = ["twistd", *sys.argv[2:]]
    from twisted.scripts.twistd import run
    run()
    """
)


@attrs.frozen
class Variant:
    """Departures from hepto's settings, for comparing full nodes (``--variants``)."""

    #: Flags by component (``--name=value``): each replaces the component's own flag of
    #: the same name, or is added after its flags.
    flags: Mapping[str, tuple[str, ...]] = attrs.field(factory=dict)
    #: Environment variables by component, on top of what hepto gives it (GODEBUG...).
    env: Mapping[str, Mapping[str, str]] = attrs.field(factory=dict)
    #: Go memory settings by component, in place of hepto's defaults (None: hepto's).
    go: Mapping[str, GoMemory] | None = None
    #: containerd plugins disabled on top of ``hepto.kube.containerd.DISABLED_PLUGINS``.
    disabled_plugins: tuple[str, ...] = ()
    #: The bin dir to run the node from, in place of ``--bin-dir`` (``--variant-bin-dir``:
    #: another build of the bundle).
    bin_dir: Path | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "flags": {name: list(flags) for name, flags in self.flags.items()},
            "env": {name: dict(env) for name, env in self.env.items()},
            "disabled_plugins": list(self.disabled_plugins),
        }


#: The Go programs of a full node, for settings given to each.
GO_COMPONENTS: Final = (
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "coredns",
    "containerd",
    "kubelet",
    "kube-proxy",
)
#: containerd plugins that a node's CRI never calls on (beside hepto's own list).
UNUSED_CONTAINERD_PLUGINS: Final = (
    "io.containerd.snapshotter.v1.native",
    "io.containerd.snapshotter.v1.blockfile",
    "io.containerd.mount-handler.v1.erofs",
    "io.containerd.image-verifier.v1.bindir",
    "io.containerd.monitor.container.v1.restart",
    "io.containerd.tracing.processor.v1.otlp",
    "io.containerd.internal.v1.tracing",
    "io.containerd.ttrpc.v1.otelttrpc",
    "io.containerd.metrics.v1.grpc-otel",
    "io.containerd.http.v1.pprof",
)
_NO_MEMORY_PROFILE: Final = {name: {"GODEBUG": "memprofilerate=0"} for name in GO_COMPONENTS}
_APISERVER_GOGC_25: Final = {
    **go_memory.DEFAULTS,
    "kube-apiserver": GoMemory(gc_percent=25),
}

#: Full-node variants to compare, by name (``--variants``); "hepto" is hepto as it is.
VARIANTS: Final[dict[str, Variant]] = {
    "hepto": Variant(),
    "apf-off": Variant(flags={"kube-apiserver": ("--enable-priority-and-fairness=false",)}),
    "profiling-off": Variant(
        flags={
            name: ("--profiling=false",)
            for name in ("kube-apiserver", "kube-controller-manager", "kube-scheduler")
        }
    ),
    "memprofilerate-0": Variant(env=_NO_MEMORY_PROFILE),
    "sched-no-contention": Variant(flags={"kube-scheduler": ("--contention-profiling=false",)}),
    "etcd-snapshots": Variant(
        flags={"etcd": ("--snapshot-count=1000", "--snapshot-catchup-entries=1000")}
    ),
    "etcd-no-gateway": Variant(flags={"etcd": ("--enable-grpc-gateway=false",)}),
    "kcm-lean": Variant(
        flags={
            "kube-controller-manager": (
                "--controllers=*,-ttl-controller,-legacy-serviceaccount-token-cleaner-controller",
            )
        }
    ),
    "kcm-no-vap-status": Variant(
        flags={
            "kube-controller-manager": (
                "--controllers=*,-validatingadmissionpolicy-status-controller",
            )
        }
    ),
    "containerd-lean": Variant(disabled_plugins=UNUSED_CONTAINERD_PLUGINS),
    "apiserver-gogc-25": Variant(go=_APISERVER_GOGC_25),
    "watch-cache-off": Variant(flags={"kube-apiserver": ("--watch-cache=false",)}),
}


def combined_variant(names: str) -> Variant:
    """The variants of :data:`VARIANTS` named in ``names``, joined by ``+``, as one.

    Flags and disabled plugins add up; GODEBUG values are joined with commas; the last
    Go settings and bin dir given win.
    """
    flags: dict[str, tuple[str, ...]] = {}
    env: dict[str, dict[str, str]] = {}
    go: Mapping[str, GoMemory] | None = None
    plugins: tuple[str, ...] = ()
    bin_dir: Path | None = None
    for name in names.split("+"):
        variant = VARIANTS[name]
        for component, more in variant.flags.items():
            flags[component] = (*flags.get(component, ()), *more)
        for component, values in variant.env.items():
            mine = env.setdefault(component, {})
            for key, value in values.items():
                joined = key == "GODEBUG" and key in mine
                mine[key] = f"{mine[key]},{value}" if joined else value
        go = variant.go if variant.go is not None else go
        plugins = (*plugins, *variant.disabled_plugins)
        bin_dir = variant.bin_dir if variant.bin_dir is not None else bin_dir
    return Variant(flags, env, go, plugins, bin_dir)


@attrs.frozen
class Launch:
    """How an agent is started: plain ``twistd``, or through :data:`_LAUNCHER`."""

    go_settings: Mapping[str, GoMemory] | None = None
    preload: tuple[str, ...] = ()
    #: Put first on the agent's PYTHONPATH (packages installed with ``pip --target``).
    python_path: Path | None = None
    variant: Variant | None = None

    def argv(self, options: Sequence[str]) -> list[str]:
        if self == Launch():
            return [str(TWISTD), *options]
        go = None
        if self.go_settings is not None:
            go = {key: attrs.asdict(value) for key, value in self.go_settings.items()}
        variant = self.variant.as_json() if self.variant is not None else None
        launch = json.dumps({"go": go, "preload": list(self.preload), "variant": variant})
        return [sys.executable, "-c", _LAUNCHER, launch, *options]

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("HEPTO_")}
        if self.python_path is not None:
            env["PYTHONPATH"] = str(self.python_path)
        return env


LOAD_LISTS: Final = 20
#: A fixed amount of work for the apiserver and etcd, run in the master's namespace with
#: the admin kubeconfig: create ConfigMaps of 2 KiB, list them all repeatedly, delete
#: them.  The standard library only, over one kept-alive connection.
_LOAD: Final = textwrap.dedent(
    """
    import base64, http.client, json, os, re, ssl, sys, tempfile, time
    kubeconfig, count, lists = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    text = open(kubeconfig).read()
    def field(name):
        return json.loads(re.search(name + r": (\\S+)", text).group(1))
    with tempfile.TemporaryDirectory() as directory:
        def pem(name):
            path = os.path.join(directory, name)
            with open(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600), "wb") as file:
                file.write(base64.b64decode(field(name)))
            return path
        context = ssl.create_default_context(cafile=pem("certificate-authority-data"))
        context.load_cert_chain(pem("client-certificate-data"), pem("client-key-data"))
    host = re.match(r"https://\\[(.*)\\]:(\\d+)", field("server"))
    connection = http.client.HTTPSConnection(host[1], int(host[2]), context=context)
    base = "/api/v1/namespaces/default/configmaps"
    def call(method, path, body=None, expect=200):
        payload = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if payload else {}
        connection.request(method, path, payload, headers)
        answer = connection.getresponse()
        data = answer.read()
        if answer.status != expect:
            raise SystemExit(f"{method} {path}: {answer.status} {data[:200]!r}")
        return data
    began = time.monotonic()
    for index in range(count):
        body = {"metadata": {"name": f"load-{index}"}, "data": {"blob": "x" * 2048}}
        call("POST", base, body, 201)
    listed = 0
    for _ in range(lists):
        listed += len(json.loads(call("GET", base))["items"])
    for index in range(count):
        call("DELETE", f"{base}/load-{index}")
    print(json.dumps({"seconds": time.monotonic() - began, "listed": listed}))
    """
)


#: The Go runtime's own figures, from the components that serve ``/metrics``: run in the
#: node's namespace with JSON arguments (the endpoints and the TLS files for each). A GC
#: is forced first where profiling is served (``/debug/pprof/heap?gc=1``), so that the
#: heap in use right after is the live heap, whatever the phase of the GC cycle.
_GO_METRICS: Final = textwrap.dedent(
    """
    import base64, json, os, re, ssl, sys, tempfile, urllib.request
    targets, kubeconfig = json.loads(sys.argv[1]), sys.argv[2]
    text = open(kubeconfig).read()
    def field(name):
        return json.loads(re.search(name + r": (\\S+)", text).group(1))
    contexts = {}
    # The admin's key is on disk only while the contexts load it.
    with tempfile.TemporaryDirectory() as directory:
        def pem(name):
            path = os.path.join(directory, name)
            with open(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600), "wb") as file:
                file.write(base64.b64decode(field(name)))
            return path
        admin = (pem("client-certificate-data"), pem("client-key-data"))
        for name, target in targets.items():
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            context.load_cert_chain(*(target.get("cert") or admin))
            contexts[name] = context
    wanted = re.compile(r"^(go_memstats_[a-z_]+_bytes|go_goroutines) ([0-9.e+-]+)$")
    found = {}
    for name, target in targets.items():
        handler = urllib.request.HTTPSHandler(context=contexts[name])
        opener = urllib.request.build_opener(handler)
        figures = {}
        try:
            if target.get("gc"):
                opener.open(target["url"] + "/debug/pprof/heap?gc=1", timeout=60).read()
                figures["gc_forced"] = 1
            body = opener.open(target["url"] + "/metrics", timeout=60).read().decode()
        except OSError as error:
            found[name] = {"error": str(error)}
            continue
        for line in body.splitlines():
            match = wanted.match(line)
            if match:
                figures[match[1]] = float(match[2])
        found[name] = figures
    print(json.dumps(found))
    """
)


# Measuring


@attrs.frozen
class Footprint:
    """Memory of one process, in KiB, from ``/proc/<pid>/smaps_rollup``."""

    rss: float
    pss: float
    anon: float
    #: The unique set (USS): pages this process alone maps, whatever else runs.
    uss: float = 0.0

    @classmethod
    def of(cls, pid: int) -> Footprint | None:
        try:
            text = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:
            return None
        fields = {}
        for line in text.splitlines()[1:]:
            name, value, *_ = line.split()
            fields[name.rstrip(":")] = float(value)
        unique = fields["Private_Clean"] + fields["Private_Dirty"]
        return cls(fields["Rss"], fields["Pss"], fields["Pss_Anon"], unique)

    @classmethod
    def median(cls, samples: Sequence[Footprint]) -> Footprint:
        return cls(
            **{name: statistics.median(getattr(s, name) for s in samples) for name in _FIELDS}
        )

    def __add__(self, other: Footprint) -> Footprint:
        return Footprint(**{name: getattr(self, name) + getattr(other, name) for name in _FIELDS})

    def as_dict(self) -> dict[str, float]:
        return {f"{name}_kib": value for name, value in attrs.asdict(self).items()}


_FIELDS: Final = tuple(attrs.fields_dict(Footprint))

#: /proc/<pid>/pagemap: one 64-bit entry per virtual page (``Documentation/admin-guide/
#: mm/pagemap.rst``): bit 63 says the page is present, bits 0-54 give its frame number
#: (zero unless the reader has CAP_SYS_ADMIN).
_PAGE_PRESENT: Final = 1 << 63
_FRAME_NUMBER: Final = (1 << 55) - 1
PAGE_KIB: Final = os.sysconf("SC_PAGE_SIZE") // 1024


def resident_frames(pid: int) -> set[int]:
    """The physical pages ``pid`` maps now, by frame number (empty once it is gone)."""
    frames: set[int] = set()
    page = PAGE_KIB * 1024
    try:
        with (
            open(f"/proc/{pid}/maps") as maps,
            open(f"/proc/{pid}/pagemap", "rb", buffering=0) as pagemap,
        ):
            for line in maps:
                bounds, permissions, *rest = line.split()
                # Reserved address space (Go's arenas) is never resident; the vsyscall
                # page is outside what pagemap answers for.
                if permissions.startswith("---") or rest[-1:] == ["[vsyscall]"]:
                    continue
                start, end = (int(bound, 16) for bound in bounds.split("-"))
                pagemap.seek(start // page * 8)
                entries = array.array("Q", pagemap.read((end - start) // page * 8))
                frames.update(entry & _FRAME_NUMBER for entry in entries if entry & _PAGE_PRESENT)
    except (OSError, ValueError):
        return set()
    return frames


def union_kib(pids: Iterable[int]) -> float:
    """Memory of a set of processes, each page counted once: what they hold together
    whatever else maps the same pages (unlike a sum of PSS, which other processes lower)."""
    frames: set[int] = set()
    for pid in pids:
        frames |= resident_frames(pid)
    return float(len(frames) * PAGE_KIB)


def cpu_seconds(pid: int) -> float | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The fields after the command name, which is in parentheses and may hold spaces.
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def sample(
    pids: Mapping[str, int],
    count: int,
    interval: float,
    still: Callable[[], None],
    alongside: Callable[[], None] = lambda: None,
) -> dict[str, Footprint]:
    """The median footprint of each process over ``count`` samples, ``interval`` apart.

    ``still`` raises if the processes are no longer the ones measured (a restart);
    ``alongside`` takes whatever else is sampled, once per sample.
    """
    taken: dict[str, list[Footprint]] = {name: [] for name in pids}
    for index in range(count):
        if index:
            time.sleep(interval)
        still()
        for name, pid in pids.items():
            footprint = Footprint.of(pid)
            if footprint is None:
                raise RuntimeError(f"{name} (pid {pid}) is gone")
            taken[name].append(footprint)
        alongside()
    return {name: Footprint.median(samples) for name, samples in taken.items()}


def measure(
    pids: Mapping[str, int],
    count: int,
    interval: float,
    still: Callable[[], None],
    alongside: Callable[[], None] = lambda: None,
) -> tuple[dict[str, Footprint], dict[str, float]]:
    """:func:`sample`, and the CPU share (percent of one core) of each process meanwhile."""
    before = {name: cpu_seconds(pid) or 0.0 for name, pid in pids.items()}
    began = time.monotonic()
    footprints = sample(pids, count, interval, still, alongside)
    elapsed = time.monotonic() - began
    cpu = {
        name: 100 * ((cpu_seconds(pid) or before[name]) - before[name]) / elapsed
        for name, pid in pids.items()
    }
    return footprints, cpu


def _file_id(path: Path) -> tuple[int, int] | None:
    try:
        status = path.stat()
    except OSError:
        return None
    return status.st_dev, status.st_ino


def neighbours(mine: Iterable[int]) -> dict[str, int]:
    """Other processes sharing files with ours, which lowers our PSS: per kind.

    ``hepto-bundle``: every other process of a ``hepto-bundle``; ``same bundle``: those
    of them running the very file ours run (another build, or a copy, shares no page).
    """
    ours = set(mine)
    our_files = {_file_id(Path(f"/proc/{pid}/exe")) for pid in ours} - {None}
    counts = {"python": 0, "hepto-bundle": 0, "same bundle": 0}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in ours:
            continue
        try:
            exe = os.readlink(entry / "exe")
        except OSError:
            continue
        if "python" in Path(exe).name:
            counts["python"] += 1
        elif Path(exe).name == "hepto-bundle":
            counts["hepto-bundle"] += 1
            counts["same bundle"] += _file_id(entry / "exe") in our_files
    return counts


def descendants(root: int) -> dict[str, int]:
    """The processes under ``root``, by the name they were started as (argv[0])."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat[stat.rindex(")") + 2 :].split()[1])
    found: dict[str, int] = {}
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        for pid, ppid in parents.items():
            if ppid == parent:
                frontier.append(pid)
                try:
                    argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
                except OSError:
                    continue
                found[Path(argv0.decode()).name] = pid
    return found


def cgroup_members(prefix: str) -> dict[int, str]:
    """Processes in any cgroup under ``prefix`` (in any hierarchy), with their command."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                paths = [line.split(":", 2)[2] for line in (entry / "cgroup").read_text().split()]
                command = (entry / "comm").read_text().strip()
            except (OSError, IndexError):
                continue
            if any(path.startswith(prefix) for path in paths):
                found[int(entry.name)] = command
    return found


# Agents


@attrs.define
class Agent:
    """A ``twistd -n hepto`` process in a lab host, with its JSON log in a file."""

    host: Host
    name: str
    data_dir: Path
    process: subprocess.Popen[bytes]

    @classmethod
    def start(
        cls,
        host: Host,
        name: str,
        role: str,
        directory: Path,
        extra: Sequence[str] = (),
        launch: Launch = Launch(),
        images: Sequence[Path] = (),
    ) -> Agent:
        """``images``: archives for the node's images folder, imported at its start."""
        data_dir = directory / name
        data_dir.mkdir(parents=True)
        if images:
            folder = data_dir / CLUSTER / name / "images"
            folder.mkdir(parents=True)
            for archive in images:
                (folder / archive.name).write_bytes(archive.read_bytes())
        options = [
            "-n",
            "--pidfile=",
            "hepto",
            f"--cluster={CLUSTER}",
            f"--key={KEY}",
            f"--name={name}",
            f"--role={role}",
            "--no-contain",
            f"--ip={host.interface}",
            f"--data-dir={data_dir}",
            "--log-format=json",
            *extra,
        ]
        with (data_dir / "agent.log").open("wb") as log:
            process = host.spawn(
                launch.argv(options),
                stdout=log,
                stderr=subprocess.STDOUT,
                env=launch.environment(),
            )
        return cls(host, name, data_dir, process)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def node_dir(self) -> Path:
        return self.data_dir / CLUSTER / self.name

    def events(self) -> list[dict[str, Any]]:
        events = []
        for line in (self.data_dir / "agent.log").read_text(errors="replace").splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict):
                events.append(event)
        return events

    def texts(self) -> list[str]:
        return [str(event.get("log_text", "")) for event in self.events()]

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            tail = "\n".join(self.texts()[-20:])
            raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{tail}")

    def running(self) -> bool:
        self.check_alive()
        return any(text.endswith(" running") for text in self.texts())

    def children(self) -> dict[str, int]:
        """The latest pid of each component, from the supervisor's log."""
        pids = {}
        for event in self.events():
            if str(event.get("log_format", "")).startswith("{component} started as pid"):
                pids[event["component"]] = int(event["pid"])
        return pids

    def ready(self) -> set[str]:
        self.check_alive()
        return {
            str(event["component"])
            for event in self.events()
            if str(event.get("log_format", "")).startswith("{component} is ready")
        }

    def status(self) -> dict[str, Any] | None:
        socket = self.data_dir / CLUSTER / self.name / "control.sock"
        try:
            return query(socket, "status", timeout=10)
        except ControlError:
            return None

    def alive_members(self) -> int:
        status = self.status() or {}
        return sum(1 for row in status.get("members", []) if row.get("state") == "alive")

    def stop(self, timeout: float = 120) -> int | None:
        """Its exit status; None when it had to be killed."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.host.kill(self.process)
            return None

    def processes(self) -> dict[str, int]:
        """Its own and its node's processes, by the names of :data:`NODE_PROCESSES`.

        The shim and the pause of a pod are not its descendants (the shim leaves
        containerd's session and is adopted by init): they are found in the node's
        cgroups.  Anything else (a PKI worker at work) is left out, and said.
        """
        found = {"agent": self.pid}
        for name, pid in descendants(self.pid).items():
            found[_SWEEPER_PROCESSES.get(name, name)] = pid
        for pid, command in cgroup_members(f"/hepto/{CLUSTER}/{self.name}/").items():
            if command.startswith("containerd-shim"):
                found["pod's containerd-shim"] = pid
            elif command == "pause":
                found["pod's pause"] = pid
        others = set(found) - set(NODE_PROCESSES)
        if others:
            print(f"  not measured: {', '.join(sorted(others))}", flush=True)
        return {name: found[name] for name in NODE_PROCESSES if name in found}

    def same_children(self) -> Callable[[], None]:
        """A check that raises once a component was restarted (for :func:`sample`)."""
        components = self.children()

        def check() -> None:
            self.check_alive()
            if self.children() != components:
                raise RuntimeError(f"a component restarted: {self.children()}")

        return check


# The parts

#: What :meth:`Bench.measure_node` takes: footprints and CPU shares by process, the
#: union of their pages (KiB), and the other processes sharing their files.
NodeSamples = tuple[dict[str, Footprint], dict[str, float], dict[str, float], dict[str, int]]


@attrs.define
class Bench:
    lab: Lab
    directory: Path
    idle: float
    samples: int
    interval: float
    #: ConfigMaps of the load phase of the master part; 0 for none.
    load_size: int = 0
    #: Scrape the Go runtime's figures of each full node's components (``--go-metrics``).
    go_runtime: bool = False
    results: dict[str, Any] = attrs.field(factory=dict)

    def host(self, name: str) -> Host:
        return self.lab.add_host(name)

    def settle(self, what: str) -> None:
        print(f"  {what}: idle for {self.idle:g} s, then {self.samples} samples", flush=True)
        time.sleep(self.idle)

    def idle_agents(self) -> None:
        print("Idle agents with --components none", flush=True)
        agents = [
            Agent.start(
                self.host(f"a{role[0]}"),
                f"idle-{role}",
                role,
                self.directory,
                ["--components=none"],
            )
            for role in ("node", "master")
        ]
        try:
            for agent in agents:
                wait_until(agent.running, 300, 0.5, f"{agent.name} running")
            self.settle("both running")
            pids = {agent.name: agent.pid for agent in agents}
            for agent in agents:
                for child, pid in descendants(agent.pid).items():
                    pids[f"{agent.name}/{child}"] = pid
            figures = sample(pids, self.samples, self.interval, lambda: None)
        finally:
            for agent in agents:
                agent.stop()
        self.results["agent"] = {name: f.as_dict() for name, f in figures.items()}
        self.results["agent_neighbours"] = neighbours(pids.values())
        table(["agent", "rss", "pss", "anon"], [(n, *_row(f)) for n, f in figures.items()])

    def imports(self, runs: int = 5) -> None:
        """RSS of one process importing what the agent imports, step by step (no agent)."""
        print(f"What the agent imports, cumulative (MiB, median of {runs} runs)", flush=True)

        def medians(steps: Sequence[tuple[str, Sequence[str]]]) -> list[tuple[float, float]]:
            taken = [
                json.loads(
                    subprocess.run(
                        [sys.executable, "-c", _IMPORTER, json.dumps(steps)],
                        capture_output=True,
                        text=True,
                        check=True,
                        env=Launch().environment(),
                    ).stdout
                )
                for _ in range(runs)
            ]
            return [
                (
                    statistics.median(run[index][0] for run in taken) / 1024,
                    statistics.median(run[index][1] for run in taken) / 1024,
                )
                for index in range(len(steps))
            ]

        figures = medians(IMPORT_STEPS)
        labels = [label for label, _ in IMPORT_STEPS]
        rows = list(zip(labels, figures, [None, *figures[:-1]], strict=True))
        for extra in IMPORT_EXTRAS:
            rows.append((f"({extra[0]})", medians([*IMPORT_STEPS, extra])[-1], figures[-1]))
        self.results["imports"] = []
        for label, (rss, anon), previous in rows:
            self.results["imports"].append({"step": label, "rss_mib": rss, "anon_mib": anon})
            grown = ""
            if previous is not None:
                grown = f"(+{rss - previous[0]:.1f}, of which {anon - previous[1]:.1f} anonymous)"
            print(f"    {label:48s} {rss:5.1f}  {grown}", flush=True)

    def pyopenssl(self, target: Path) -> None:
        """The idle agent as it is, and as it was with pyOpenSSL and the old probes' imports.

        ``target`` holds pyOpenSSL and service-identity (``pip install --target``); on the
        agent's PYTHONPATH, Twisted's TCP support imports them, as it did when installed.
        Both agents start through the launcher, so that only that differs.
        """
        print("The idle agent without and with pyOpenSSL", flush=True)
        launches = {
            "without-pyopenssl": Launch(preload=("twisted.internet.reactor",)),
            "with-pyopenssl": Launch(preload=OLD_PROBE_IMPORTS, python_path=target),
        }
        check = "import sys, twisted.internet.reactor; print('OpenSSL' in sys.modules)"
        loaded = {
            name: subprocess.run(
                [sys.executable, "-c", check],
                env=launch.environment(),
                capture_output=True,
                text=True,
            ).stdout.strip()
            for name, launch in launches.items()
        }
        agents = [
            Agent.start(
                self.host(f"t{index}"), name, "node", self.directory, ["--components=none"], launch
            )
            for index, (name, launch) in enumerate(launches.items())
        ]
        try:
            for agent in agents:
                wait_until(agent.running, 300, 0.5, f"{agent.name} running")
            self.settle("both running")
            pids = {agent.name: agent.pid for agent in agents}
            figures = sample(pids, self.samples, self.interval, lambda: None)
        finally:
            for agent in agents:
                agent.stop()
        self.results["pyopenssl"] = {name: f.as_dict() for name, f in figures.items()}
        table(["agent", "rss", "pss", "anon"], [(n, *_row(f)) for n, f in figures.items()])
        print(f"  pyOpenSSL imported by the reactor: {loaded}", flush=True)

    def members(self, count: int, converge: float, batch: int = 10) -> None:
        print(f"{count} agents that see each other", flush=True)
        agents: list[Agent] = []
        try:
            for first in range(0, count, batch):
                started = []
                for index in range(first, min(first + batch, count)):
                    extra = ["--components=none"]
                    # The first agent and an earlier one, as an operator gives several
                    # anchors: joins do not all queue at one member.
                    if agents:
                        anchors = {agents[0].host.address, agents[index // 2].host.address}
                        extra += [f"--anchor={address}" for address in sorted(anchors)]
                    host = self.host(f"m{index}")
                    agent = Agent.start(host, f"member{index}", "node", self.directory, extra)
                    started.append(agent)
                    agents.append(agent)
                # A batch at a time: a hundred Python starts at once would starve two cores.
                for agent in started:
                    wait_until(agent.running, 600, 0.5, f"{agent.name} running")
                print(f"  {len(agents)} running", flush=True)
            began = time.monotonic()
            try:
                wait_until(
                    lambda: all(a.alive_members() == count for a in agents),
                    converge,
                    5,
                    f"every agent sees {count} alive",
                )
                print(f"  all see {count} alive after {time.monotonic() - began:.0f} s")
            except AssertionError as error:
                # Measured anyway, with the counts reported: memory is the question here.
                print(f"  {error}; measuring them as they are", flush=True)
            self.settle("joined")
            pids = {agent.name: agent.pid for agent in agents}
            helpers = {}
            for agent in agents:
                for child, pid in descendants(agent.pid).items():
                    helpers[f"{agent.name}/{child}"] = pid
            figures, cpu = measure(pids | helpers, self.samples, self.interval, lambda: None)
            alive = sorted(agent.alive_members() for agent in agents)
        finally:
            for agent in agents:
                if agent.process.poll() is None:
                    agent.process.send_signal(signal.SIGTERM)
            for agent in agents:
                agent.stop()
        summary: dict[str, Any] = {
            "members": count,
            "alive_seen": {"min": alive[0], "median": statistics.median(alive), "max": alive[-1]},
            "cpu_percent_median": statistics.median(cpu[name] for name in pids),
        }
        kinds = {"agent": [figures[name] for name in pids]}
        for name, footprint in figures.items():
            if "/" in name:
                kinds.setdefault(name.split("/", 1)[1], []).append(footprint)
        for kind, footprints in kinds.items():
            summary[kind] = {"count": len(footprints)}
            for field in ("rss", "pss", "anon"):
                values = sorted(getattr(f, field) for f in footprints)
                summary[kind][field] = {
                    "median_kib": statistics.median(values),
                    "min_kib": values[0],
                    "max_kib": values[-1],
                }
        self.results["members"] = summary
        print(json.dumps(summary, indent=2), flush=True)

    def master(self, label: str, bin_dir: Path, setting: str) -> None:
        go_settings = SETTINGS[setting]
        name = f"{label}-{setting}".replace("+", "-")
        print(f"Master from {label} ({bin_dir}), Go settings {setting}", flush=True)
        # The agent's mesh gives the interface its mesh and apiserver addresses.
        host = self.host(f"c{len(self.lab.hosts)}")
        node = "hxmaster"
        directory = self.directory / name
        directory.mkdir()
        extra = [f"--bin-dir={bin_dir}"]
        agent = Agent.start(host, node, "master", directory, extra, Launch(go_settings))
        try:
            began = time.monotonic()
            wait_until(lambda: agent.ready() >= set(MASTER), 600, 1, "every component ready")
            ready_after = time.monotonic() - began
            self.settle(f"ready after {ready_after:.1f} s")
            components = agent.children()
            found = {"agent": agent.pid, **descendants(agent.pid)}
            order = ["agent", "wireguard-go", *MASTER]
            pids = dict(sorted(found.items(), key=lambda item: _rank(order, item[0])))
            if not set(components.items()) <= set(pids.items()):
                raise RuntimeError(f"components restarted: {components}, running {pids}")

            def same_processes() -> None:
                agent.check_alive()
                if agent.children() != components:
                    raise RuntimeError(f"a component restarted: {agent.children()}")

            figures, cpu = measure(pids, self.samples, self.interval, same_processes)
            sharing = neighbours(pids.values())
            load = self.load(agent, pids) if self.load_size else None
        finally:
            agent.stop()
        total = sum(figures.values(), Footprint(0, 0, 0))
        self.results.setdefault("master", {})[name] = {
            "bin_dir": str(bin_dir),
            "setting": {k: attrs.asdict(v) for k, v in go_settings.items()},
            "ready_after_s": ready_after,
            "processes": {n: f.as_dict() | {"cpu_percent": cpu[n]} for n, f in figures.items()},
            "sum": total.as_dict(),
            "neighbours": sharing,
            "load": load,
        }
        rows = [(n, *_row(f), f"{cpu[n]:.1f}") for n, f in figures.items()]
        total_cpu = f"{sum(cpu.values()):.1f}"
        table(["process", "rss", "pss", "anon", "cpu%"], [*rows, ("sum", *_row(total), total_cpu)])
        print(f"  other processes mapping the same files: {sharing}", flush=True)
        if load is not None:
            seconds = ", ".join(f"{n} {v:.1f}" for n, v in load["cpu_seconds"].items())
            after = ", ".join(f"{n} {v / 1024:.1f}" for n, v in load["pss_after_kib"].items())
            print(f"  load: {load['seconds']:.1f} s; CPU seconds: {seconds}", flush=True)
            print(f"  PSS (MiB) right after the load: {after}", flush=True)

    def full_node(
        self, bin_dir: Path, with_pod: bool, variant: str | None = None, run: int = 0
    ) -> None:
        """One agent of role full: the master's components and the node's, idle.

        ``variant``: a name of :data:`VARIANTS` (or several joined by ``+``), the agent
        started through the launcher; None: plain ``twistd``, hepto as it is.
        """
        label = "" if variant is None else f", variant {variant} (run {run + 1})"
        directory = self.directory / ("full" if variant is None else f"full-{variant}-{run}")
        launch = Launch()
        if variant is not None:
            chosen = combined_variant(variant)
            launch = Launch(go_settings=chosen.go, variant=chosen)
            bin_dir = chosen.bin_dir or bin_dir
        print(f"A full node from {bin_dir}, {_pod_words(with_pod)}{label}", flush=True)
        agent = Agent.start(
            self.host(f"f{len(self.lab.hosts)}"), "hxfull", "full", directory,
            [f"--bin-dir={bin_dir}"], launch, images=[self.busybox_archive(directory)],
        )  # fmt: skip
        try:
            kubectl = Kubectl(agent.host, agent.node_dir / "kubeconfig", bin_dir)
            ready_after = self.bring_up(
                agent, {*MASTER, "containerd", "kubelet", "kube-proxy"}, kubectl
            )
            if with_pod:
                self.run_pod(kubectl, agent.name)
            self.settle(f"ready after {ready_after:.1f} s")
            measured = self.measure_node(agent)
            go_runtime = self.go_metrics(agent) if self.go_runtime else None
        finally:
            exit_code = agent.stop()
        figures = node_figures(*measured, with_pod, ready_after, exit_code)
        figures["bin_dir"] = str(bin_dir)
        if go_runtime is not None:
            figures["go_runtime"] = go_runtime
        self.results["full"] = figures
        if variant is not None:
            self.results.setdefault("full_variants", {}).setdefault(variant, []).append(figures)
        total = figures["issue_11"]["pss_kib"]
        goal = "met" if total <= FULL_NODE_GOAL_KIB else "not met"
        print(
            f"  issue 11's goal, its processes (no kube-proxy, CoreDNS, pod) together at most "
            f"450 MB ({FULL_NODE_GOAL_KIB / 1024:.1f} MiB) of PSS: {goal} "
            f"({total / 1024:.1f} MiB)",
            flush=True,
        )

    def node_beside_master(self, bin_dir: Path, with_pod: bool) -> None:
        """An agent of role node, idle, joined to a master in another namespace."""
        print(f"A node beside a master, from {bin_dir}, {_pod_words(with_pod)}", flush=True)
        directory = self.directory / "node"
        extra = [f"--bin-dir={bin_dir}"]
        master = Agent.start(self.host("nm"), "hxmaster", "master", directory, extra)
        node = None
        try:
            wait_until(lambda: master.ready() >= set(MASTER), 600, 1, "the master's components")
            node = Agent.start(
                self.host("nn"), "hxnode", "node", directory,
                [*extra, f"--anchor={master.host.address}"],
                images=[self.busybox_archive(directory)],
            )  # fmt: skip
            kubectl = Kubectl(master.host, master.node_dir / "kubeconfig", bin_dir)
            ready_after = self.bring_up(node, {"containerd", "kubelet", "kube-proxy"}, kubectl)
            if with_pod:
                self.run_pod(kubectl, node.name)
            self.settle(f"ready after {ready_after:.1f} s")
            measured = self.measure_node(node)
        finally:
            # The node first, so that its kubelet and agent never lose their apiserver.
            exit_code = node.stop() if node is not None else None
            master.stop()
        self.results["node"] = node_figures(*measured, with_pod, ready_after, exit_code)
        print(
            "  PSS shares the bundle's pages with the master's components on this machine, "
            "and libpython with every Python process: the union of pages, and USS, do not",
            flush=True,
        )

    def measure_node(self, agent: Agent) -> NodeSamples:
        """:func:`measure` of the node's processes, the union of their pages, neighbours."""
        pids = agent.processes()
        issue_11 = [pid for name, pid in pids.items() if name in ISSUE_11_PROCESSES]
        unions: dict[str, list[float]] = {"all": [], "issue_11": []}

        def take_unions() -> None:
            unions["all"].append(union_kib(pids.values()))
            unions["issue_11"].append(union_kib(issue_11))

        figures, cpu = measure(
            pids, self.samples, self.interval, agent.same_children(), take_unions
        )
        union = {kind: statistics.median(values) for kind, values in unions.items()}
        return figures, cpu, union, neighbours(pids.values())

    def go_metrics(self, agent: Agent) -> dict[str, Any]:
        """The Go runtime's figures of a full node's components that serve metrics.

        Taken after the samples (the forced GCs must not disturb them): the live heap
        (``go_memstats_heap_alloc_bytes`` right after a GC), stacks, the memory profiler's
        buckets (``buck_hash_sys``), goroutines.  etcd has no profiling endpoint: its heap
        is as it happens to be.  containerd serves no metrics in hepto's configuration.
        """
        pki = agent.node_dir / "pki"
        mesh = plan.mesh_address(CLUSTER, agent.name)
        apiserver = plan.apiserver_address(CLUSTER)
        etcd_client = [
            str(pki / "apiserver-etcd-client.crt"),
            str(pki / "apiserver-etcd-client.key"),
        ]
        targets = {
            "etcd": {"url": "https://[::1]:2379", "cert": etcd_client},
            "kube-apiserver": {"url": f"https://[{apiserver}]:6443", "gc": True},
            "kube-controller-manager": {"url": "https://[::1]:10257", "gc": True},
            "kube-scheduler": {"url": "https://[::1]:10259", "gc": True},
            "kubelet": {"url": f"https://[{mesh}]:10250", "gc": True},
        }
        done = agent.host.run(
            [
                sys.executable,
                "-c",
                _GO_METRICS,
                json.dumps(targets),
                str(agent.node_dir / "kubeconfig"),
            ]
        )
        found: dict[str, Any] = json.loads(done.stdout)
        rows = []
        for name, figures in found.items():
            if "error" in figures:
                rows.append((name, figures["error"][:60], "", "", "", ""))
                continue
            mib = {key: value / 2**20 for key, value in figures.items() if key.endswith("_bytes")}
            rows.append(
                (
                    name,
                    f"{mib.get('go_memstats_heap_alloc_bytes', 0):.1f}",
                    f"{mib.get('go_memstats_heap_inuse_bytes', 0):.1f}",
                    f"{mib.get('go_memstats_stack_inuse_bytes', 0):.1f}",
                    f"{mib.get('go_memstats_buck_hash_sys_bytes', 0):.2f}",
                    f"{figures.get('go_goroutines', 0):.0f}",
                )
            )
        print("  Go runtime, MiB (heap alloc is the live heap where a GC was forced):")
        table(["component", "heap alloc", "heap inuse", "stacks", "buckhash", "goroutines"], rows)
        return found

    def busybox_archive(self, directory: Path) -> Path:
        archive = directory / "busybox.tar"
        if not archive.exists():
            directory.mkdir(parents=True, exist_ok=True)
            write_busybox_archive(archive)
        return archive

    def bring_up(self, agent: Agent, components: set[str], kubectl: Kubectl) -> float:
        """Seconds from now until the components are ready and the agent's Node is Ready."""
        began = time.monotonic()
        wait_until(lambda: agent.ready() >= components, 600, 1, f"{agent.name}'s components")
        wait_until(lambda: kubectl.node_ready(agent.name) == "True", 300, 1, f"{agent.name} Ready")
        return time.monotonic() - began

    def run_pod(self, kubectl: Kubectl, node: str) -> None:
        pod = f"idle-{node}"
        kubectl.apply(busybox_pod(pod, node))
        wait_until(lambda: kubectl.pod_phase(pod) == "Running", 300, 1, f"{pod} Running")

    def load(self, agent: Agent, pids: Mapping[str, int]) -> dict[str, Any]:
        """Runs :data:`_LOAD` against the master: CPU seconds spent on it, PSS after it."""
        kubeconfig = agent.data_dir / CLUSTER / agent.name / "kubeconfig"
        before = {name: cpu_seconds(pid) or 0.0 for name, pid in pids.items()}
        done = agent.host.run(
            [sys.executable, "-c", _LOAD, str(kubeconfig), str(self.load_size), str(LOAD_LISTS)]
        )
        spent = {name: (cpu_seconds(pid) or 0.0) - before[name] for name, pid in pids.items()}
        after = {name: (Footprint.of(pid) or Footprint(0, 0, 0)).pss for name, pid in pids.items()}
        report = json.loads(done.stdout)
        return {
            "configmaps": self.load_size,
            "lists": LOAD_LISTS,
            "seconds": report["seconds"],
            "cpu_seconds": spent,
            "pss_after_kib": after,
        }


def node_figures(
    figures: Mapping[str, Footprint],
    cpu: Mapping[str, float],
    union: Mapping[str, float],
    sharing: Mapping[str, int],
    with_pod: bool,
    ready_after: float,
    exit_code: int | None,
) -> dict[str, Any]:
    """Prints a node's table and returns its figures: each process, sums, the union."""
    fields = ("rss", "pss", "anon", "uss")
    pod = {"pod's containerd-shim", "pod's pause"}
    total = sum(figures.values(), Footprint(0, 0, 0))
    without_pod = sum((f for n, f in figures.items() if n not in pod), Footprint(0, 0, 0))
    issue_11 = sum((f for n, f in figures.items() if n in ISSUE_11_PROCESSES), Footprint(0, 0, 0))
    issue_11_cpu = sum(c for n, c in cpu.items() if n in ISSUE_11_PROCESSES)
    rows = [(name, *_row(f, fields), f"{cpu[name]:.1f}") for name, f in figures.items()]
    rows.append(("sum", *_row(total, fields), f"{sum(cpu.values()):.1f}"))
    if with_pod:
        rows.append(("sum without the pod", *_row(without_pod, fields), ""))
    rows.append(("sum of issue 11's", *_row(issue_11, fields), f"{issue_11_cpu:.1f}"))
    table(["process", *fields, "cpu%"], rows)
    print(
        f"  union of their pages, each counted once: {union['all'] / 1024:.1f} MiB "
        f"(issue 11's processes: {union['issue_11'] / 1024:.1f} MiB)",
        flush=True,
    )
    print(f"  other processes mapping the same files: {sharing}", flush=True)
    print(f"  agent's exit status at its stop: {exit_code}", flush=True)
    return {
        "with_pod": with_pod,
        "ready_after_s": ready_after,
        "processes": {n: f.as_dict() | {"cpu_percent": cpu[n]} for n, f in figures.items()},
        "sum": total.as_dict(),
        "sum_without_pod": without_pod.as_dict(),
        "issue_11": issue_11.as_dict() | {"cpu_percent": issue_11_cpu},
        "union_kib": union["all"],
        "issue_11_union_kib": union["issue_11"],
        "neighbours": dict(sharing),
        "exit_code": exit_code,
    }


def _pod_words(with_pod: bool) -> str:
    return "running one busybox pod" if with_pod else "running no pod"


def _rank(order: Sequence[str], name: str) -> tuple[int, str]:
    return (order.index(name) if name in order else len(order), name)


def _row(footprint: Footprint, fields: Sequence[str] = ("rss", "pss", "anon")) -> tuple[str, ...]:
    return tuple(f"{getattr(footprint, field) / 1024:.1f}" for field in fields)


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        cells = (str(cell).rjust(width) for cell, width in zip(row, widths, strict=True))
        print("  " + "  ".join(cells), flush=True)


def summary_table(results: Mapping[str, Any]) -> None:
    """One line per master run: PSS (MiB) of each process and their sum."""
    runs = results.get("master", {})
    if not runs:
        return
    print("\nPSS in MiB (RSS, anonymous in parentheses for the sum); CPU in % of one core")
    names = ["agent", "wireguard-go", *MASTER]
    rows = []
    for run, figures in runs.items():
        processes = figures["processes"]
        cells = [f"{processes[n]['pss_kib'] / 1024:.1f}" if n in processes else "-" for n in names]
        total = figures["sum"]
        cells.append(
            f"{total['pss_kib'] / 1024:.1f} ({total['rss_kib'] / 1024:.0f}, "
            f"{total['anon_kib'] / 1024:.0f})"
        )
        cells.append(f"{sum(p['cpu_percent'] for p in processes.values()):.1f}")
        rows.append((run, *cells))
    table(["run", *names, "sum", "cpu"], rows)


def variants_table(results: Mapping[str, Any]) -> None:
    """One line per full node of ``--variants``: PSS (MiB) of issue 11's processes."""
    runs = results.get("full_variants", {})
    if not runs:
        return
    print(
        "\nFull nodes: PSS in MiB of issue 11's processes, their sum, its anonymous part "
        "and the union of their pages; their CPU and the apiserver's, % of one core"
    )
    short = {
        "wireguard-go": "wg",
        "kube-apiserver": "apiserver",
        "kube-controller-manager": "ctrl-mgr",
        "kube-scheduler": "sched",
    }
    names = [name for name in ISSUE_11_PROCESSES if not name.startswith("sweeper")]
    rows = []
    for variant, figures_list in runs.items():
        for index, figures in enumerate(figures_list):
            processes = figures["processes"]
            cells = [
                f"{processes[n]['pss_kib'] / 1024:.1f}" if n in processes else "-" for n in names
            ]
            total = figures["issue_11"]
            cells += [
                f"{total['pss_kib'] / 1024:.1f}",
                f"{total['anon_kib'] / 1024:.1f}",
                f"{figures['issue_11_union_kib'] / 1024:.1f}",
                f"{total['cpu_percent']:.1f}",
                f"{processes.get('kube-apiserver', {}).get('cpu_percent', 0.0):.1f}",
                f"{figures['neighbours'].get('same bundle', '?')}/"
                f"{figures['neighbours'].get('hepto-bundle', 0)}",
            ]
            rows.append((f"{variant} #{index + 1}", *cells))
    header = [short.get(name, name) for name in names]
    table(["variant", *header, "sum", "anon", "union", "cpu", "api cpu", "others"], rows)
    print(
        "  others: processes of hepto-bundle outside the node running the same file as the "
        "node's / any; each of the former lowers the node's PSS (not its anonymous memory nor "
        "the union): compare PSS between runs with none",
        flush=True,
    )


def separate_bin_dir(given: str | None) -> Path | None:
    candidates = [Path(given)] if given else list(SEPARATE_BIN_DIRS)
    for candidate in candidates:
        if all((candidate / program).exists() for program in MASTER):
            return candidate
    if given:
        raise SystemExit(f"{given}: no etcd, kube-apiserver, ... there")
    return None


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", default="agent,members,master")
    parser.add_argument("--members", type=int, default=100)
    parser.add_argument(
        "--converge", type=float, default=900.0, help="seconds to wait for the members to join"
    )
    parser.add_argument("--idle", type=float, default=180.0, help="seconds before sampling")
    parser.add_argument("--samples", type=int, default=5)
    parser.add_argument("--interval", type=float, default=20.0, help="seconds between samples")
    parser.add_argument(
        "--settings",
        default=",".join(SETTINGS),
        help=f"Go memory settings to compare: {', '.join(SETTINGS)}",
    )
    parser.add_argument("--bin-dir", default=str(BUNDLE_BIN_DIR), help="the bundle's bin dir")
    parser.add_argument("--separate", help="bin dir of separately built programs, if any")
    parser.add_argument(
        "--separate-settings",
        default="go-defaults,hepto",
        help="the settings run with the separate programs too",
    )
    parser.add_argument(
        "--pyopenssl",
        help="a directory holding pyOpenSSL and service-identity (pip install --target), "
        "for the pyopenssl part",
    )
    parser.add_argument(
        "--load",
        type=int,
        default=2000,
        help=f"ConfigMaps created, listed {LOAD_LISTS} times and deleted after each master's idle "
        "samples (0: no load)",
    )
    parser.add_argument(
        "--pod",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run one busybox pod on the nodes of the full and node parts, and measure its "
        "shim and pause with them",
    )
    parser.add_argument(
        "--variants",
        help="the full part once per variant, in this order (names joined by + combine): "
        f"{', '.join(VARIANTS)}; every agent through the same launcher",
    )
    parser.add_argument(
        "--variant-bin-dir",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="add to --variants' choices a variant NAME: hepto as it is, run from the bin dir "
        "DIR (another build of the bundle) instead of --bin-dir; repeatable",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="with --variants: run them this many times, every other round in reverse order",
    )
    parser.add_argument(
        "--go-metrics",
        action="store_true",
        help="after each full node's samples, force a GC in each component that serves "
        "profiling and read its Go runtime figures (live heap, stacks, goroutines)",
    )
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    for given in args.variant_bin_dir:
        name, _, directory = given.partition("=")
        if not name or not directory or "+" in name or "," in name:
            parser.error(f"--variant-bin-dir {given}: not NAME=DIR")
        if name in VARIANTS:
            parser.error(f"--variant-bin-dir {given}: {name} is a variant already")
        if not (Path(directory) / "hepto-bundle").exists():
            parser.error(f"--variant-bin-dir {given}: no hepto-bundle in {directory}")
        VARIANTS[name] = Variant(bin_dir=Path(directory))
    unknown = set(args.settings.split(",")) - set(SETTINGS)
    if unknown:
        parser.error(f"unknown settings: {', '.join(sorted(unknown))}")
    if args.variants:
        names = {name for group in args.variants.split(",") for name in group.split("+")}
        if names - set(VARIANTS):
            parser.error(f"unknown variants: {', '.join(sorted(names - set(VARIANTS)))}")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    missing = missing_requirements("nft")
    if missing:
        raise SystemExit(f"memory.py {missing}")
    parts = set(args.parts.split(","))
    directory = Path(tempfile.mkdtemp(prefix="hx-memory-"))
    lab = Lab(PREFIX)
    bench = Bench(
        lab, directory, args.idle, args.samples, args.interval, args.load, args.go_metrics
    )
    print(f"Logs and data in {directory}", flush=True)
    try:
        if "agent" in parts:
            bench.idle_agents()
        if "imports" in parts:
            bench.imports()
        if "pyopenssl" in parts:
            if not args.pyopenssl:
                raise SystemExit("the pyopenssl part needs --pyopenssl DIR")
            bench.pyopenssl(Path(args.pyopenssl))
        if "members" in parts and args.members:
            bench.members(args.members, args.converge)
        if "full" in parts and args.variants:
            variants = args.variants.split(",")
            for run in range(args.rounds):
                for variant in variants if run % 2 == 0 else variants[::-1]:
                    bench.full_node(Path(args.bin_dir), args.pod, variant, run)
        elif "full" in parts:
            bench.full_node(Path(args.bin_dir), args.pod)
        if "node" in parts:
            bench.node_beside_master(Path(args.bin_dir), args.pod)
        if "master" in parts:
            for setting in args.settings.split(","):
                bench.master("bundle", Path(args.bin_dir), setting)
            separate = separate_bin_dir(args.separate)
            if separate is None:
                print("No separately built programs: the bundle comparison is left out.")
            else:
                for setting in args.separate_settings.split(","):
                    bench.master("separate", separate, setting)
    finally:
        lab.close()
        summary_table(bench.results)
        variants_table(bench.results)
        if args.json:
            Path(args.json).write_text(json.dumps(bench.results, indent=2))


if __name__ == "__main__":
    main()
