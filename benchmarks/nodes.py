"""How long a node takes from its agent's start to Ready and to a running pod.

A master (``--role master``) starts in a network namespace of its own and, once its
components are ready, is left alone for ``--quiet`` seconds. Then, ``--runs`` times, a
node agent (``--role node --no-contain``, or contained with ``--contain yes``, or each
in turn with ``--contain both``; the bundle's programs) starts in a fresh
namespace under a new name, so that each run is a fresh registration, with the busybox
image of ``tests/images.py`` in its images folder. The harness polls the apiserver with
the bundle's kubectl and the master's admin kubeconfig every ``--poll`` seconds, as
``tests/test_node_agent.py`` does, and takes three figures:

ready
    from the agent's start (just before ``twistd`` is spawned) to its Node Ready;
pod running
    from the agent's start to a busybox pod pinned to the node (``nodeName``,
    ``imagePullPolicy: IfNotPresent``) Running; the pod is applied once the Node is
    Ready (``--apply-when ready``, the default) or once the Node exists (``exists``);
apply to running
    from ``kubectl apply`` returning to the pod Running.

The agent's JSON log gives when its own steps happened, from the same start. After each
run the pod is deleted, the agent stopped (it must exit 0) and its Node deleted, so that
the master is as quiet for the next run. Figures are printed, never asserted: each
sample, and the median. Namespaces are named ``hs…`` and removed at the end, even on
failure.

Run as root from the repository (about two minutes with the defaults)::

    .venv/bin/python benchmarks/nodes.py --runs 5 --json /tmp/nodes.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, TypeVar

import attrs

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from agent import KEY, Agent
from hepto.kube.service import MASTER
from hepto.programs import BUNDLE_BIN_DIR
from images import BUSYBOX_IMAGE, write_busybox_archive
from kubectl import Kubectl, busybox_pod
from netlab import Host, Lab, missing_requirements, wait_until

PREFIX: Final = "hs"
CLUSTER: Final = "hsnodes"
#: What a process of a node is called, for the check that none is left behind.
NODE_PROGRAMS: Final = frozenset({"twistd", "containerd", "containerd-shim", "kubelet", "pause"})

Event = Mapping[str, Any]
T = TypeVar("T")


def _started(component: str) -> Callable[[Event], bool]:
    return lambda event: (
        event.get("component") == component
        and str(event.get("log_format", "")).startswith("{component} started as pid")
    )


def _ready(component: str) -> Callable[[Event], bool]:
    return lambda event: (
        event.get("component") == component
        and str(event.get("log_format", "")).startswith("{component} is ready")
    )


def _format(prefix: str) -> Callable[[Event], bool]:
    return lambda event: str(event.get("log_format", "")).startswith(prefix)


#: A node agent's steps, in the order they happen, each the first log line it matches.
STEPS: Final[tuple[tuple[str, Callable[[Event], bool]], ...]] = (
    ("first log line", lambda event: True),
    ("mesh up", _format("Mesh up on")),
    ("containerd started", _started("containerd")),
    ("kubelet's certificates", lambda event: event.get("certificate") == "kubelet-client"),
    ("containerd ready", _ready("containerd")),
    # The pause image's import is not logged: the folder's follows it at once.
    ("pause imported", _format("Importing {count} image archives")),
    ("busybox imported", lambda event: event.get("image") == BUSYBOX_IMAGE),
    ("Node registered", _format("Node {node} registered")),
    ("kubelet started", _started("kubelet")),
    ("kubelet ready", _ready("kubelet")),
)


@attrs.frozen
class Run:
    """One node's start: seconds from the agent's start, and what it logged."""

    name: str
    node_exists: float
    ready: float
    applied: float
    running: float
    #: Seconds from the agent's start to each of :data:`STEPS`, by the agent's clock.
    steps: Mapping[str, float | None]
    #: kubectl calls made while polling, and how long each took (the polls' resolution).
    polls: int
    poll_seconds: float
    #: CPU seconds the harness's kubectl calls spent while polling (two shared cores).
    poll_cpu: float
    exit_code: int
    #: Contained (the default of ``twistd hepto``) or ``--no-contain``.
    contained: bool = False
    #: KiB resident (Rss) and proportional (Pss) of the outer process and of the
    #: container's PID 1 once the node is Ready, contained runs only.
    outer_rss: int | None = None
    outer_pss: int | None = None
    init_rss: int | None = None
    init_pss: int | None = None

    @property
    def apply_to_running(self) -> float:
        return self.running - self.applied


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@attrs.define
class Stopwatch:
    """Times answers from one origin (now), and keeps what the asking cost."""

    began: float = attrs.field(factory=time.monotonic)
    #: CPU seconds of this process's children so far: the kubectl calls, once waited for.
    children_cpu: float = attrs.field(factory=_children_cpu)
    calls: int = 0
    asking: float = 0.0

    def elapsed(self) -> float:
        return time.monotonic() - self.began

    def ask(self, question: Callable[[], T]) -> tuple[T, float]:
        """The answer, and when it came: when the harness knew, not when kubectl started
        (the apiserver answered in between, near the end: kubectl's own start comes first)."""
        asked = time.monotonic()
        answer = question()
        answered = time.monotonic()
        self.calls += 1
        self.asking += answered - asked
        return answer, answered - self.began

    def cpu(self) -> float:
        """CPU seconds spent by the children waited for since the start (kubectl)."""
        return _children_cpu() - self.children_cpu


class Bench:
    """The master, its kubectl, and the node runs one after the other."""

    def __init__(self, lab: Lab, data_dir: Path, bin_dir: Path, apply_when: str, poll: float):
        self.lab = lab
        self.data_dir = data_dir
        self.bin_dir = bin_dir
        self.apply_when = apply_when
        self.poll = poll
        self.master_host = lab.add_host("master")
        self.kubectl = Kubectl(
            self.master_host, data_dir / CLUSTER / "master" / "kubeconfig", bin_dir
        )
        self.archive = data_dir / "busybox.tar"
        self.agents: dict[str, Agent] = {}

    def start(self, host: Host, *argv: str, contained: bool = False) -> Agent:
        where = ["--iface", "eth0"] if contained else ["--no-contain", "--ip", str(host.interface)]
        agent = Agent.start(
            ["--cluster", CLUSTER, "--name", host.name, "--key", KEY, *where,
             "--bin-dir", str(self.bin_dir), *argv],
            self.data_dir,
            prefix=host.command([]),
        )  # fmt: skip
        self.agents[host.name] = agent
        return agent

    def start_master(self, timeout: float) -> None:
        began = time.monotonic()
        master = self.start(self.master_host, "--role", "master")

        def components_ready() -> bool:
            _check_alive(master)
            events = master.events()
            return all(any(map(_ready(name), events)) for name in MASTER)

        wait_until(components_ready, timeout, 0.5, "the master's components ready")
        wait_until(self.kubectl.answers, timeout, 0.5, "the apiserver answering kubectl")
        print(f"master ready after {time.monotonic() - began:.1f} s", flush=True)

    def run(self, name: str, timeout: float, contained: bool = False) -> Run:
        host = self.lab.add_host(name)
        images = self.data_dir / CLUSTER / name / "images"
        images.mkdir(parents=True)
        shutil.copyfile(self.archive, images / "busybox.tar")
        pod = f"bb-{name}"
        node_exists = ready = applied = running = None
        began_wall = time.time()
        watch = Stopwatch()
        agent = self.start(
            host, "--role", "node", "--anchor", str(self.master_host.address), contained=contained
        )
        memory: dict[str, int | None] = {}
        while running is None or ready is None:
            _check_alive(agent)
            if watch.elapsed() > timeout:
                raise AssertionError(f"{name}: not Ready and running after {timeout:g} s")
            if ready is None:
                status, at = watch.ask(lambda: self.kubectl.node_ready(name))
                if status is not None and node_exists is None:
                    node_exists = at
                if status == "True":
                    ready = at
                    if contained:
                        memory = container_memory(agent, self.data_dir / CLUSTER / name)
            if applied is None:
                if (ready if self.apply_when == "ready" else node_exists) is not None:
                    self.kubectl.apply(busybox_pod(pod, name))
                    applied = watch.elapsed()
                    continue  # straight to the first look at the pod
            elif running is None:
                phase, at = watch.ask(lambda: self.kubectl.pod_phase(pod))
                if phase == "Running":
                    running = at
            time.sleep(self.poll)
        poll_cpu = watch.cpu()
        assert node_exists is not None and applied is not None
        self.kubectl("delete", "pod", pod, "--wait=true", "--timeout=60s")
        exit_code = stop(agent)
        left = _node_processes(host)
        if left:
            print(f"  {name} left processes behind: {left}", flush=True)
        self.kubectl("delete", "node", name, "--wait=true", "--timeout=60s")
        return Run(
            name=name,
            node_exists=node_exists,
            ready=ready,
            applied=applied,
            running=running,
            steps=_steps(agent.events(), began_wall),
            polls=watch.calls,
            poll_seconds=watch.asking / max(watch.calls, 1),
            poll_cpu=poll_cpu,
            exit_code=exit_code,
            contained=contained,
            **memory,
        )

    def close(self) -> None:
        """Stop what runs, let each node's sweeper remove what a failure left, and the lab."""
        for agent in self.agents.values():
            try:
                stop(agent)
            except subprocess.TimeoutExpired:
                agent.kill()
        for name in self.agents:
            for script in ("container/cleanup.sh", "runtime/sweeper.sh"):
                path = self.data_dir / CLUSTER / name / script
                if path.exists():
                    subprocess.run(["sh", str(path), "sweep"], capture_output=True)
        self.lab.close()


def stop(agent: Agent, timeout: float = 120) -> int:
    """SIGTERM to the agent alone, as ``kill PID`` sends it; its exit status.

    ``tests/agent.py`` signals the agent's whole process group, which holds its
    wireguard-go too: the mesh would restart it in the middle of the agent's stop.
    """
    if agent.process.poll() is None:
        agent.process.send_signal(signal.SIGTERM)
    return agent.process.wait(timeout=timeout)


def _memory(pid: int) -> tuple[int | None, int | None]:
    """KiB resident and proportional (shared pages divided among their users) of ``pid``."""
    found: dict[str, int] = {}
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("Rss", "Pss"):
                found[key] = int(value.split()[0])
    except (OSError, ValueError):
        pass
    return found.get("Rss"), found.get("Pss")


def container_memory(agent: Agent, node_dir: Path) -> dict[str, int | None]:
    """The outer process's memory (the agent's process: it became the outer one) and
    that of the container's PID 1 (its pid on the host is in the container's record)."""
    outer_rss, outer_pss = _memory(agent.process.pid)
    record = json.loads((node_dir / "container" / "container.json").read_text())
    init_rss, init_pss = _memory(int(record["pid"]))
    return {
        "outer_rss": outer_rss,
        "outer_pss": outer_pss,
        "init_rss": init_rss,
        "init_pss": init_pss,
    }


def _check_alive(agent: Agent) -> None:
    if agent.process.poll() is not None:
        tail = "\n".join(str(e.get("log_text", "")) for e in agent.events()[-20:])
        raise RuntimeError(f"an agent exited with {agent.process.returncode}:\n{tail}")


def _steps(events: Sequence[Event], began: float) -> dict[str, float | None]:
    found: dict[str, float | None] = {}
    for label, matches in STEPS:
        times = [float(e["log_time"]) for e in events if "log_time" in e and matches(e)]
        found[label] = min(times) - began if times else None
    return found


def _node_processes(host: Host) -> list[str]:
    """The node programs still running in ``host``'s network namespace."""
    done = host.run(["ip", "netns", "pids", host.netns], check=False)
    return sorted(
        name for name in (_comm(int(pid)) for pid in done.stdout.split()) if name in NODE_PROGRAMS
    )


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def leftovers(lab: Lab) -> list[str]:
    """What this benchmark may have left on the machine: namespaces, node processes."""
    prefix = f"{lab.prefix}{lab.token}-"
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    found = [f"netns {line.split()[0]}" for line in listed.splitlines() if line.startswith(prefix)]
    cgroup = f"/hepto/{CLUSTER}/"
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if cgroup in (entry / "cgroup").read_text():
                    found.append(f"pid {entry.name} ({_comm(int(entry.name))})")
            except OSError:
                pass
    return found


def _median_line(label: str, values: Sequence[float]) -> str:
    samples = ", ".join(f"{value:.1f}" for value in values)
    return f"  {label:34s} {statistics.median(values):6.1f} s   ({samples})"


def report(runs: Sequence[Run], apply_when: str) -> None:
    for contained in (False, True):
        chosen = [run for run in runs if run.contained == contained]
        if chosen:
            print("\n" + ("contained" if contained else "--no-contain") + " nodes:", end="")
            report_mode(chosen, apply_when)
    memory = [run for run in runs if run.outer_rss is not None]
    if memory:
        print("Contained nodes' own processes once Ready, KiB, medians (samples):")
        for label in ("outer_rss", "outer_pss", "init_rss", "init_pss"):
            values = [getattr(run, label) for run in memory]
            print(f"  {label:10s} {statistics.median(values):8.0f}   {values}")


def report_mode(runs: Sequence[Run], apply_when: str) -> None:
    when = "is Ready" if apply_when == "ready" else "exists"
    print(f"\n{len(runs)} runs, pod applied once the Node {when}; medians (samples):")
    print(_median_line("agent start to Node exists", [r.node_exists for r in runs]))
    print(_median_line("agent start to Node Ready", [r.ready for r in runs]))
    print(_median_line("agent start to pod applied", [r.applied for r in runs]))
    print(_median_line("agent start to pod Running", [r.running for r in runs]))
    print(_median_line("kubectl apply to pod Running", [r.apply_to_running for r in runs]))
    print("From the agent's start to each step, by the agent's own log:")
    for label, _ in STEPS:
        values = [r.steps[label] for r in runs]
        if all(value is not None for value in values):
            print(_median_line(label, [v for v in values if v is not None]))
        else:
            print(f"  {label:34s} not logged in every run: {values}")
    print(
        f"Polling: {statistics.median(r.polls for r in runs):.0f} kubectl calls a run, "
        f"{statistics.median(r.poll_seconds for r in runs):.2f} s each, "
        f"{statistics.median(r.poll_cpu for r in runs):.1f} CPU seconds a run (medians)"
    )
    print(f"Agents' exit codes: {[r.exit_code for r in runs]}", flush=True)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument(
        "--apply-when",
        choices=("ready", "exists"),
        default="ready",
        help="apply the pod once the Node is Ready, or once it exists",
    )
    parser.add_argument("--poll", type=float, default=0.1, help="seconds between kubectl calls")
    parser.add_argument(
        "--quiet", type=float, default=30.0, help="seconds the master idles before the first node"
    )
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds a run may take")
    parser.add_argument("--bin-dir", type=Path, default=BUNDLE_BIN_DIR, help="the bundle")
    parser.add_argument("--json", type=Path, help="also write every figure to this file")
    parser.add_argument(
        "--contain",
        choices=("no", "yes", "both"),
        default="no",
        help="nodes --no-contain, contained, or both in turn (side by side, same master)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    missing = missing_requirements("wireguard-go", "runc")
    if missing:
        raise SystemExit(f"nodes.py {missing}")
    if not (args.bin_dir / "kubelet").exists():
        raise SystemExit(f"nodes.py needs the bundle in {args.bin_dir} (tools/build-bundle)")
    data_dir = Path(tempfile.mkdtemp(prefix="hepto-nodes-bench-"))
    print(f"Logs and data in {data_dir}; load average {os.getloadavg()}", flush=True)
    lab = Lab(PREFIX)
    bench = Bench(lab, data_dir, args.bin_dir, args.apply_when, args.poll)
    runs: list[Run] = []
    try:
        write_busybox_archive(bench.archive)
        bench.start_master(args.timeout)
        print(f"master quiet for {args.quiet:g} s", flush=True)
        time.sleep(args.quiet)
        modes = {"no": [False], "yes": [True], "both": [False, True]}[args.contain]
        for index in range(1, args.runs * len(modes) + 1):
            contained = modes[(index - 1) % len(modes)]
            run = bench.run(f"node{index}", args.timeout, contained)
            runs.append(run)
            steps = ", ".join(
                f"{label} {value:.1f}" for label, value in run.steps.items() if value is not None
            )
            print(
                f"{run.name}{' (contained)' if contained else ''}: "
                f"exists {run.node_exists:.1f} s, Ready {run.ready:.1f} s, "
                f"applied {run.applied:.1f} s, Running {run.running:.1f} s "
                f"(apply to Running {run.apply_to_running:.1f} s), exit {run.exit_code}; "
                f"logged: {steps}; load {os.getloadavg()[0]:.2f}",
                flush=True,
            )
    finally:
        bench.close()
        left = leftovers(lab)
        print(f"Left behind: {', '.join(left) if left else 'nothing'}", flush=True)
    report(runs, args.apply_when)
    if args.json:
        figures = [attrs.asdict(run) | {"apply_to_running": run.apply_to_running} for run in runs]
        args.json.write_text(json.dumps({"apply_when": args.apply_when, "runs": figures}, indent=2))


if __name__ == "__main__":
    main()
