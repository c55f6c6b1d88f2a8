"""The cluster network: pod to pod across nodes, a new node's first reach, idle memory.

A master (``--role master``, with CoreDNS) and two nodes (``node1``, ``node2``: ``--role
node --no-contain``, the bundle's programs) start in network namespaces on one bridge
(``tests/netlab.py``). Each node imports an image of iperf3 and busybox at its start
(``benchmarks/iperf_image.py``): pod ``p1`` on node1 waits, pod ``p2`` on node2 runs
``iperf3 -s``, and ``iperf3 -s`` runs in node2's namespace too. Figures are printed,
never asserted, each with its raw samples; three parts, in this order:

memory
    Once both pods run, the cluster is left idle ``--idle`` seconds; then ``--samples``
    readings of ``/proc/<pid>/smaps_rollup``, ``--sample-interval`` seconds apart, of
    kube-proxy on each node and CoreDNS on the master (found by process name in their
    hosts' namespaces): RSS, PSS and anonymous PSS, median of the samples.
throughput and round-trip time, three paths side by side
    ``pod``: from ``p1`` (``kubectl exec``) to ``p2``'s address, through node1's pod
    bridge, the WireGuard mesh (wireguard-go here) and node2's bridge; ``mesh``: node1's
    namespace to node2's mesh address (``hepto.plan.mesh_address``); ``bridge``: node1's
    namespace to node2's public address, the plain bridge. ``--repeat`` rounds, the paths
    in a rotating order so that noise from elsewhere falls on all alike; in each round
    and for each path ``ping -c --pings -i 0.2`` (busybox's in the pod, iputils' on the
    hosts) then ``iperf3 -c ADDR -t --seconds -J`` (TCP, one stream; the figure is
    ``end.sum_received.bits_per_second``). Reported: the median throughput of the
    rounds in Mbit/s, the median and p90 of every reply's time in ms, and what the pod
    path costs against the mesh path (and the mesh against the bridge).
a new node's first reach
    ``--runs`` times: a node ``node3-rN`` starts in a fresh namespace with busybox in its
    images folder, and right after spawning its agent the harness applies a pod pinned
    to it that prints ``started``, then pings ``p1`` (on node1) every 0.1 s. The figure
    is from just before the agent is spawned to the first reply, by the container log's
    own timestamp (``kubectl logs --timestamps``, the host's clock: no polling delay;
    resolution the 0.1 s between pings). Then the pod is deleted, the agent stopped
    (exit 0 expected) and its Node deleted.

Namespaces are named ``hp…`` and the cluster ``hpnet-…``; the end removes them, even on
failure, and prints what was left behind (namespaces, processes in the cluster's
cgroups, cgroup directories): "nothing" is expected. The data directory (agents' logs) is
removed after a run that succeeded, unless ``--keep-data``.

Run as root from the repository (under 3 minutes with the defaults)::

    .venv/bin/python benchmarks/pod_network.py --json /tmp/pod-network.json
    .venv/bin/python benchmarks/pod_network.py --repeat 1 --runs 1 --idle 10   # quick look
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import json
import os
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any, Final

import attrs

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from agent import KEY, Agent
from hepto import plan
from hepto.kube.layout import Layout
from hepto.kube.service import MASTER
from hepto.programs import BUNDLE_BIN_DIR
from images import BUSYBOX_IMAGE, write_busybox_archive
from iperf_image import IPERF_IMAGE, write_iperf_archive
from kubectl import IDLE as _IDLE
from kubectl import Kubectl, pinned_pod
from memory import Footprint
from netlab import Host, Lab, missing_requirements, wait_until
from nodes import STEPS, stop

PREFIX: Final = "hp"
PATHS: Final = ("pod", "mesh", "bridge")
PATH_DESCRIPTIONS: Final = {
    "pod": "pod on node1 to pod on node2 (bridge, mesh, bridge)",
    "mesh": "node1 to node2's mesh address (WireGuard)",
    "bridge": "node1 to node2's public address (plain bridge)",
}
#: What a process of a node is called, for the check that none is left behind.
NODE_PROGRAMS: Final = frozenset(
    {"twistd", "containerd", "containerd-shim", "kubelet", "kube-proxy", "pause", "iperf3"}
)
#: A reply's time, as busybox (``time=0.356 ms``) and iputils (``time=0.045 ms``) print it.
_REPLY_TIME: Final = re.compile(r"\btime=([0-9.]+) ms")
#: A line of ``kubectl logs --timestamps``: RFC 3339 with nanoseconds, then the line.
_LOG_LINE: Final = re.compile(
    r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d) (.*)$"
)


#: Serves iperf3 (it leaves at SIGTERM by itself).
_IPERF_SERVER: Final = "exec iperf3 -s"


def reach_script(address: str) -> str:
    """Says ``started``, then pings ``address`` every 0.1 s; a ping that fails to send
    (no route yet) is started again."""
    return (
        "trap 'kill $p 2>/dev/null; exit 0' TERM; echo started;"
        f" while true; do ping -i 0.1 {address} & p=$!; wait $p; usleep 100000; done"
    )


@attrs.frozen
class Ping:
    """One ``ping`` run: the replies' times in ms, and how many were sent."""

    path: str
    sent: int
    times: tuple[float, ...]


@attrs.frozen
class Transfer:
    """One iperf3 run, as its JSON says."""

    path: str
    received_bps: float
    sent_bps: float
    retransmits: int
    seconds: float
    load: float


@attrs.frozen
class Resident:
    """One process's memory: the median of the samples, in KiB."""

    pid: int
    median: Footprint
    samples: tuple[Footprint, ...]
    #: Processes on the whole machine running the same executable file, itself included.
    same_program: int


@attrs.frozen
class NodeRun:
    """A new node's start: seconds from just before its agent was spawned."""

    name: str
    applied: float
    container_started: float
    first_reply: float
    #: The sequence number of the first reply: how many pings went unanswered before.
    first_seq: int
    #: Seconds from the agent's start to each of ``nodes.STEPS``, by the agent's clock.
    steps: Mapping[str, float | None]
    exit_code: int
    left: tuple[str, ...]
    #: The pod's first lines, as ``kubectl logs --timestamps`` gave them.
    first_lines: tuple[str, ...]


def parse_log_time(stamp: str, fraction: str | None, zone: str) -> float:
    """Seconds since the epoch of a timestamp RFC 3339 with up to nanoseconds."""
    micro = (fraction or "0")[:6].ljust(6, "0")
    zone = "+00:00" if zone == "Z" else zone
    return datetime.datetime.fromisoformat(f"{stamp}.{micro}{zone}").timestamp()


def timed_lines(text: str) -> list[tuple[float, str]]:
    """The lines of ``kubectl logs --timestamps``, each with its time (epoch seconds)."""
    lines = []
    for line in text.splitlines():
        matched = _LOG_LINE.match(line)
        if matched:
            lines.append((parse_log_time(matched[1], matched[2], matched[3]), matched[4]))
    return lines


def reply_times(output: str) -> tuple[float, ...]:
    return tuple(float(found) for found in _REPLY_TIME.findall(output))


def transfer_of(path: str, output: str, load: float) -> Transfer:
    """The figures of ``iperf3 -J``'s output; an error iperf3 reported is raised."""
    report = json.loads(output)
    if "error" in report:
        raise RuntimeError(f"iperf3 on the {path} path: {report['error']}")
    end = report["end"]
    return Transfer(
        path=path,
        received_bps=float(end["sum_received"]["bits_per_second"]),
        sent_bps=float(end["sum_sent"]["bits_per_second"]),
        retransmits=int(end["sum_sent"].get("retransmits", 0)),
        seconds=float(end["sum_received"]["seconds"]),
        load=load,
    )


def percentile(values: Sequence[float], fraction: float) -> float:
    """The ``fraction`` quantile, by linear interpolation between the closest ranks."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    position = fraction * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


class Bench:
    """The cluster, the ways to ask it, and the three parts."""

    def __init__(self, lab: Lab, data_dir: Path, bin_dir: Path, cluster: str) -> None:
        self.lab = lab
        self.data_dir = data_dir
        self.bin_dir = bin_dir
        self.cluster = cluster
        self.master = lab.add_host("master")
        self.node1 = lab.add_host("node1")
        self.node2 = lab.add_host("node2")
        self.kubectl = Kubectl(self.master, data_dir / cluster / "master" / "kubeconfig", bin_dir)
        self.agents: dict[str, Agent] = {}
        self.busybox = data_dir / "busybox.tar"
        self.addresses: dict[str, str] = {}
        self.lab_hosts: list[str] = []

    # The cluster

    def start(self, host: Host, *argv: str) -> Agent:
        agent = Agent.start(
            ["--cluster", self.cluster, "--name", host.name, "--key", KEY, "--no-contain",
             "--ip", str(host.interface), "--bin-dir", str(self.bin_dir), *argv],
            self.data_dir,
            prefix=host.command([]),
        )  # fmt: skip
        self.agents[host.name] = agent
        return agent

    def start_node(self, host: Host) -> Agent:
        return self.start(host, "--role", "node", "--anchor", str(self.master.address))

    def images_folder(self, name: str) -> Path:
        folder = self.data_dir / self.cluster / name / "images"
        folder.mkdir(parents=True)
        return folder

    def check_alive(self) -> None:
        for name, agent in self.agents.items():
            if agent.process.poll() is not None:
                tail = "\n".join(str(e.get("log_text", "")) for e in agent.events()[-20:])
                raise RuntimeError(
                    f"{name}'s agent exited with {agent.process.returncode}:\n{tail}"
                )

    def node_ready(self, name: str) -> bool:
        self.check_alive()
        return self.kubectl.node_ready(name) == "True"

    def pod_running(self, name: str) -> bool:
        self.check_alive()
        return self.kubectl.pod_phase(name) == "Running"

    def up(self, timeout: float) -> None:
        """The master, both nodes Ready, ``p1`` and ``p2`` running, iperf3 on node2."""
        began = time.monotonic()
        write_busybox_archive(self.busybox)
        iperf = self.data_dir / "iperf3.tar"
        written = write_iperf_archive(iperf)
        print(f"iperf3 image: {written.size / 2**20:.1f} MiB archive", flush=True)
        for host in (self.node1, self.node2):
            shutil.copyfile(iperf, self.images_folder(host.name) / "iperf3.tar")
        master = self.start(self.master, "--role", "master")
        self.start_node(self.node1)
        self.start_node(self.node2)

        def components_ready() -> bool:
            self.check_alive()
            events = master.events()
            return all(
                any(
                    e.get("component") == name
                    and str(e.get("log_format", "")).startswith("{component} is ready")
                    for e in events
                )
                for name in MASTER
            )

        wait_until(components_ready, timeout, 0.5, "the master's components ready")
        wait_until(self.kubectl.answers, timeout, 0.5, "the apiserver answering kubectl")
        for host in (self.node1, self.node2):
            wait_until(partial(self.node_ready, host.name), timeout, 0.5, f"{host.name} Ready")
        print(f"master and two nodes Ready after {time.monotonic() - began:.1f} s", flush=True)
        self.kubectl.apply(pinned_pod("p1", "node1", IPERF_IMAGE, _IDLE))
        self.kubectl.apply(pinned_pod("p2", "node2", IPERF_IMAGE, _IPERF_SERVER))
        for name in ("p1", "p2"):
            wait_until(partial(self.pod_running, name), timeout, 0.5, f"{name} Running")
        p1 = self.kubectl("get", "pod", "p1", "-o", "jsonpath={.status.podIP}")
        p2 = self.kubectl("get", "pod", "p2", "-o", "jsonpath={.status.podIP}")
        self.node2.spawn(
            ["iperf3", "-s"],
            stdout=(self.data_dir / "iperf3-node2.log").open("wb"),
            stderr=subprocess.STDOUT,
        )
        self.addresses = {
            "p1": p1,
            "pod": p2,
            "mesh": str(plan.mesh_address(self.cluster, "node2")),
            "bridge": str(self.node2.address),
        }
        print(
            f"pods running after {time.monotonic() - began:.1f} s: p1 {p1} on node1, "
            f"p2 {p2} on node2; node2's mesh address {self.addresses['mesh']}, "
            f"public address {self.addresses['bridge']}",
            flush=True,
        )
        for name, address in (("p1", p1), ("p2", p2)):
            if not plan.pod_prefix(self.cluster).supernet_of(ipaddress.IPv6Network(address)):
                print(f"  check: {name}'s address {address} is outside the pod prefix!")

    # Asking a path

    def exec_in(
        self, pod: str, argv: Sequence[str], timeout: float
    ) -> subprocess.CompletedProcess[str]:
        """``kubectl exec`` into ``pod``, with no request timeout (iperf3 runs for long)."""
        command = [
            str(self.bin_dir / "kubectl"),
            f"--kubeconfig={self.kubectl.kubeconfig}",
            "--request-timeout=0",
            "exec",
            pod,
            "--",
            *argv,
        ]
        return subprocess.run(
            self.master.command(command), capture_output=True, text=True, timeout=timeout
        )

    def client(
        self, path: str, argv: Sequence[str], timeout: float
    ) -> subprocess.CompletedProcess[str]:
        """``argv`` run where the path starts: in ``p1`` or in node1's namespace."""
        if path == "pod":
            return self.exec_in("p1", argv, timeout)
        return subprocess.run(
            self.node1.command(argv), capture_output=True, text=True, timeout=timeout
        )

    def ping(self, path: str, count: int, interval: float = 0.2) -> Ping:
        argv = ["ping", "-c", str(count), "-i", str(interval), self.addresses[path]]
        done = self.client(path, argv, timeout=count * interval + 30)
        return Ping(path, count, reply_times(done.stdout))

    def reaches(self, path: str) -> bool:
        return bool(self.ping(path, 1).times)

    def iperf(self, path: str, seconds: float) -> Transfer:
        argv = ["iperf3", "-c", self.addresses[path], "-t", f"{seconds:g}", "-J",
                "--connect-timeout", "5000"]  # fmt: skip
        for attempt in range(3):
            done = self.client(path, argv, timeout=seconds + 60)
            try:
                return transfer_of(path, done.stdout, os.getloadavg()[0])
            except (ValueError, KeyError, RuntimeError) as error:
                # The server is busy with a run that has not ended yet, at worst.
                print(f"  iperf3 on the {path} path failed ({error}); again", flush=True)
                if attempt == 2:
                    raise RuntimeError(
                        f"iperf3 {path}: {done.stdout[-500:]} {done.stderr}"
                    ) from error
                time.sleep(2)
        raise AssertionError("unreachable")

    # The parts

    def network(self, repeat: int, seconds: float, pings: int) -> tuple[list[Ping], list[Transfer]]:
        for path in PATHS:
            wait_until(partial(self.reaches, path), 60, 0.5, f"the {path} path to answer a ping")
        all_pings: list[Ping] = []
        transfers: list[Transfer] = []
        for index in range(repeat):
            order = PATHS[index % len(PATHS) :] + PATHS[: index % len(PATHS)]
            for path in order:
                self.check_alive()
                ping = self.ping(path, pings)
                all_pings.append(ping)
                transfer = self.iperf(path, seconds)
                transfers.append(transfer)
                times = ping.times
                rtt = (
                    f"median {statistics.median(times):.3f} ms, min {min(times):.3f}, "
                    f"max {max(times):.3f}"
                    if times
                    else "no reply"
                )
                print(
                    f"  round {index + 1} {path:6s}: {transfer.received_bps / 1e6:8.1f} Mbit/s "
                    f"received ({transfer.sent_bps / 1e6:.1f} sent, {transfer.retransmits} "
                    f"retransmits, {transfer.seconds:.1f} s); ping {len(times)}/{ping.sent} "
                    f"replies, {rtt}; load {transfer.load:.2f}",
                    flush=True,
                )
        return all_pings, transfers

    def new_node(self, name: str, target: str, timeout: float, poll: float) -> NodeRun:
        host = self.lab.add_host(name)
        shutil.copyfile(self.busybox, self.images_folder(name) / "busybox.tar")
        pod = f"reach-{name}"
        manifest = pinned_pod(pod, name, BUSYBOX_IMAGE, reach_script(target))
        began_wall = time.time()
        began = time.monotonic()
        agent = self.start_node(host)
        self.kubectl.apply(manifest)
        applied = time.monotonic() - began
        started = reply = None
        seq = -1
        lines: list[str] = []
        while reply is None:
            self.check_alive()
            if time.monotonic() - began > timeout:
                raise AssertionError(f"{name}: no reply from p1 after {timeout:g} s")
            time.sleep(poll)
            done = self.kubectl.run("logs", "--timestamps", pod)
            lines = done.stdout.splitlines()[:4]
            for at, line in timed_lines(done.stdout):
                if started is None and line == "started":
                    started = at - began_wall
                if reply is None and " bytes from " in line:
                    reply = at - began_wall
                    found = re.search(r"seq=(\d+)", line)
                    seq = int(found[1]) if found else -1
        assert started is not None
        self.kubectl("delete", "pod", pod, "--wait=true", "--timeout=60s")
        exit_code = stop(agent)
        del self.agents[name]
        left = tuple(_node_processes(host))
        self.kubectl("delete", "node", name, "--wait=true", "--timeout=60s")
        return NodeRun(
            name=name,
            applied=applied,
            container_started=started,
            first_reply=reply,
            first_seq=seq,
            steps=_steps(agent.events(), began_wall),
            exit_code=exit_code,
            left=left,
            first_lines=tuple(lines),
        )

    def memory(self, samples: int, interval: float) -> dict[str, Resident]:
        where = {
            "kube-proxy node1": (self.node1, "kube-proxy"),
            "kube-proxy node2": (self.node2, "kube-proxy"),
            "coredns master": (self.master, "coredns"),
        }
        pids: dict[str, int] = {}
        for label, (host, program) in where.items():
            found = host.processes_named(program)
            if len(found) != 1:
                raise RuntimeError(f"{label}: {len(found)} processes named {program}: {found}")
            pids[label] = found.pop()
        taken: dict[str, list[Footprint]] = {label: [] for label in pids}
        for index in range(samples):
            if index:
                time.sleep(interval)
            for label, pid in pids.items():
                footprint = Footprint.of(pid)
                if footprint is None:
                    raise RuntimeError(f"{label} (pid {pid}) is gone")
                taken[label].append(footprint)
        return {
            label: Resident(
                pid=pids[label],
                median=Footprint.median(values),
                samples=tuple(values),
                same_program=_running_same_program(pids[label]),
            )
            for label, values in taken.items()
        }

    def close(self) -> None:
        """Stop the agents (nodes first), let each node's sweeper remove what a failure
        left, and remove the lab (its processes, iperf3 included, and namespaces)."""
        for name in sorted(self.agents, key=lambda name: name == "master"):
            agent = self.agents[name]
            try:
                code = stop(agent)
                if code != 0:
                    print(f"  {name}'s agent exited with {code}", flush=True)
            except subprocess.TimeoutExpired:
                print(f"  {name}'s agent did not stop in time: killed", flush=True)
                agent.kill()
        self.lab_hosts = [host.name for host in self.lab.hosts]
        for host in self.lab.hosts:
            script = self.data_dir / self.cluster / host.name / "runtime" / "sweeper.sh"
            if script.exists():
                subprocess.run(["sh", str(script), "sweep"], capture_output=True)
        self.lab.close()
        self.remove_run_dirs()

    def remove_run_dirs(self) -> None:
        """Each node's ``/run/hepto/<id>`` (containerd's state, sockets), which outlives
        its agent until the next boot; kept if anything is still mounted below it."""
        mounts = Path("/proc/self/mountinfo").read_text()
        for host in self.lab_hosts:
            node_dir = self.data_dir / self.cluster / host
            run_dir = Layout(node_dir, self.cluster, host).run_dir
            if run_dir.exists() and str(run_dir) not in mounts:
                shutil.rmtree(run_dir, ignore_errors=True)


def _running_same_program(pid: int) -> int:
    """How many processes on the machine run the executable file ``pid`` runs (itself
    included): the ones its PSS shares the program's text with."""
    try:
        mine = os.stat(f"/proc/{pid}/exe")
    except OSError:
        return 0
    count = 0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                other = os.stat(entry / "exe")
            except OSError:
                continue
            count += (other.st_dev, other.st_ino) == (mine.st_dev, mine.st_ino)
    return count


def other_agents(cluster: str) -> int:
    """hepto agents on the machine that are not this cluster's: someone else's work."""
    count = 0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and _comm(int(entry.name)) == "twistd":
            try:
                command = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            count += cluster.encode() not in command
    return count


def _busy(cluster: str) -> str:
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    return f"load average {load}; {other_agents(cluster)} other hepto agents on the machine"


def _steps(events: Sequence[Mapping[str, Any]], began: float) -> dict[str, float | None]:
    found: dict[str, float | None] = {}
    for label, matches in STEPS:
        times = [float(e["log_time"]) for e in events if "log_time" in e and matches(e)]
        found[label] = min(times) - began if times else None
    return found


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _node_processes(host: Host) -> list[str]:
    """The node programs still running in ``host``'s network namespace."""
    done = host.run(["ip", "netns", "pids", host.netns], check=False)
    return sorted(
        name for name in (_comm(int(pid)) for pid in done.stdout.split()) if name in NODE_PROGRAMS
    )


def leftovers(lab: Lab, cluster: str) -> list[str]:
    """What this run may have left: its namespaces, processes and cgroups."""
    prefix = f"{lab.prefix}{lab.token}-"
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    found = [f"netns {line.split()[0]}" for line in listed.splitlines() if line.startswith(prefix)]
    cgroup = f"/hepto/{cluster}/"
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if cgroup in (entry / "cgroup").read_text():
                    found.append(f"pid {entry.name} ({_comm(int(entry.name))})")
            except OSError:
                pass
    found += [f"cgroup {path}" for path in Path("/sys/fs/cgroup").glob(f"*/hepto/{cluster}")]
    return found


# Reporting


def _mbit(values: Sequence[float]) -> str:
    return ", ".join(f"{value / 1e6:.0f}" for value in values)


def network_figures(pings: Sequence[Ping], transfers: Sequence[Transfer]) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    for path in PATHS:
        received = [t.received_bps for t in transfers if t.path == path]
        times = [time for ping in pings if ping.path == path for time in ping.times]
        sent = sum(ping.sent for ping in pings if ping.path == path)
        figures[path] = {
            "throughput_mbit_s": statistics.median(received) / 1e6,
            "throughput_samples_mbit_s": [value / 1e6 for value in received],
            "retransmits": [t.retransmits for t in transfers if t.path == path],
            "rtt_median_ms": statistics.median(times) if times else None,
            "rtt_p90_ms": percentile(times, 0.9) if times else None,
            "rtt_min_ms": min(times) if times else None,
            "rtt_max_ms": max(times) if times else None,
            "pings_sent": sent,
            "pings_answered": len(times),
        }
    return figures


def _cost(figures: Mapping[str, Any], path: str, base: str) -> str:
    mine, theirs = figures[path], figures[base]
    change = 100 * (mine["throughput_mbit_s"] / theirs["throughput_mbit_s"] - 1)
    words = f"throughput {change:+.0f} %"
    if mine["rtt_median_ms"] is not None and theirs["rtt_median_ms"] is not None:
        added = mine["rtt_median_ms"] - theirs["rtt_median_ms"]
        added90 = mine["rtt_p90_ms"] - theirs["rtt_p90_ms"]
        words += f", {added * 1000:+.0f} µs round trip at the median ({added90 * 1000:+.0f} at p90)"
    return words


def report_network(figures: Mapping[str, Any], rounds: int) -> None:
    print(f"\nThroughput and round trip, {rounds} rounds (medians; samples in Mbit/s):")
    for path in PATHS:
        path_figures = figures[path]
        rtt = "no reply"
        if path_figures["rtt_median_ms"] is not None:
            rtt = (
                f"{path_figures['rtt_median_ms']:.3f} / {path_figures['rtt_p90_ms']:.3f} ms "
                f"(median / p90 of {path_figures['pings_answered']} of "
                f"{path_figures['pings_sent']} replies)"
            )
        samples = _mbit([v * 1e6 for v in path_figures["throughput_samples_mbit_s"]])
        print(
            f"  {path:6s} {path_figures['throughput_mbit_s']:8.1f} Mbit/s ({samples}); "
            f"rtt {rtt}\n         {PATH_DESCRIPTIONS[path]}"
        )
    print(f"  pod against mesh:    {_cost(figures, 'pod', 'mesh')}")
    print(f"  mesh against bridge: {_cost(figures, 'mesh', 'bridge')}")
    checks = []
    if figures["bridge"]["throughput_mbit_s"] < figures["mesh"]["throughput_mbit_s"]:
        checks.append("the plain bridge was slower than the mesh")
    if figures["pod"]["throughput_mbit_s"] > 1.2 * figures["mesh"]["throughput_mbit_s"]:
        checks.append("the pod path was much faster than the mesh path it goes through")
    for path in PATHS:
        if figures[path]["pings_answered"] < figures[path]["pings_sent"]:
            checks.append(f"{path}: pings were lost")
    print(f"  plausibility: {'; '.join(checks) if checks else 'nothing odd'}", flush=True)


def report_nodes(runs: Sequence[NodeRun]) -> None:
    def line(label: str, values: Sequence[float]) -> str:
        samples = ", ".join(f"{value:.2f}" for value in values)
        return f"  {label:38s} {statistics.median(values):6.2f} s   ({samples})"

    print(f"\nA new node's pod reaching p1 on node1, {len(runs)} runs, medians (samples):")
    print(line("agent start to pod applied", [r.applied for r in runs]))
    print(line("agent start to container started", [r.container_started for r in runs]))
    print(line("agent start to first reply from p1", [r.first_reply for r in runs]))
    print(
        line(
            "container started to first reply", [r.first_reply - r.container_started for r in runs]
        )
    )
    print(f"  pings unanswered before the first reply: {[r.first_seq for r in runs]}")
    for label, _ in STEPS:
        values = [r.steps[label] for r in runs]
        if all(value is not None for value in values):
            print(line(f"(agent's log) {label}", [v for v in values if v is not None]))
    print(f"  agents' exit codes: {[r.exit_code for r in runs]}", flush=True)


def report_memory(figures: Mapping[str, Resident], idle: float) -> None:
    count = len(next(iter(figures.values())).samples)
    print(f"\nIdle memory after {idle:g} s, MiB, median of {count} samples:")
    print(f"  {'process':18s} {'rss':>7s} {'pss':>7s} {'anon':>7s}  sharing  pss samples")
    for label, resident in figures.items():
        median = resident.median
        raw = ", ".join(f"{s.pss / 1024:.1f}" for s in resident.samples)
        print(
            f"  {label:18s} {median.rss / 1024:7.1f} {median.pss / 1024:7.1f} "
            f"{median.anon / 1024:7.1f}  {resident.same_program:7d}  ({raw})"
        )
    print(
        "  sharing: processes on the machine running the same executable file (the bundle "
        "for kube-proxy),\n  among which PSS divides its text; anon (anonymous PSS) does "
        "not depend on them",
        flush=True,
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="rounds of the three paths")
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds of each iperf3 run")
    parser.add_argument("--pings", type=int, default=20, help="pings per path and round")
    parser.add_argument("--runs", type=int, default=3, help="new nodes started, one by one")
    parser.add_argument("--idle", type=float, default=30.0, help="seconds idle before memory")
    parser.add_argument("--samples", type=int, default=5, help="memory samples")
    parser.add_argument("--sample-interval", type=float, default=2.0)
    parser.add_argument("--poll", type=float, default=0.5, help="seconds between log reads")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds a step may take")
    parser.add_argument("--bin-dir", type=Path, default=BUNDLE_BIN_DIR, help="the bundle")
    parser.add_argument("--keep-data", action="store_true", help="keep the agents' data")
    parser.add_argument("--json", type=Path, help="also write every figure to this file")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    missing = missing_requirements("wireguard-go", "runc", "iperf3", "ping", "ldd")
    if missing:
        raise SystemExit(f"pod_network.py {missing}")
    if not (args.bin_dir / "kubelet").exists():
        raise SystemExit(f"pod_network.py needs the bundle in {args.bin_dir} (tools/build-bundle)")
    data_dir = Path(tempfile.mkdtemp(prefix="hepto-pod-network-"))
    cluster = f"hpnet-{secrets.token_hex(2)}"
    print(f"Cluster {cluster}; logs and data in {data_dir}; {_busy(cluster)}", flush=True)
    lab = Lab(PREFIX)
    bench = Bench(lab, data_dir, args.bin_dir, cluster)
    results: dict[str, Any] = {"cluster": cluster, "arguments": {
        key: str(value) for key, value in vars(args).items()}}  # fmt: skip
    succeeded = False
    try:
        bench.up(args.timeout)
        print(f"idle for {args.idle:g} s", flush=True)
        time.sleep(args.idle)
        results["load_before_memory"] = os.getloadavg()
        results["other_agents_before_memory"] = other_agents(cluster)
        print(_busy(cluster), flush=True)
        memory = bench.memory(args.samples, args.sample_interval)
        report_memory(memory, args.idle)
        results["memory_kib"] = {
            label: {
                "pid": resident.pid,
                "median": resident.median.as_dict(),
                "samples": [s.as_dict() for s in resident.samples],
                "processes_running_the_same_program": resident.same_program,
            }
            for label, resident in memory.items()
        }
        print(f"\n{args.repeat} rounds over the three paths ({_busy(cluster)}):", flush=True)
        pings, transfers = bench.network(args.repeat, args.seconds, args.pings)
        figures = network_figures(pings, transfers)
        report_network(figures, args.repeat)
        results["network"] = figures
        results["transfers"] = [attrs.asdict(t) for t in transfers]
        results["pings"] = [attrs.asdict(p) for p in pings]
        runs: list[NodeRun] = []
        print(
            f"\n{args.runs} new nodes, each pinging p1 ({bench.addresses['p1']}; "
            f"{_busy(cluster)}):",
            flush=True,
        )
        for index in range(1, args.runs + 1):
            run = bench.new_node(f"node3-r{index}", bench.addresses["p1"], args.timeout, args.poll)
            runs.append(run)
            steps = ", ".join(f"{k} {v:.1f}" for k, v in run.steps.items() if v is not None)
            print(
                f"  {run.name}: applied {run.applied:.2f} s, container started "
                f"{run.container_started:.2f} s, first reply {run.first_reply:.2f} s "
                f"(seq {run.first_seq}), exit {run.exit_code}, left "
                f"{list(run.left) or 'nothing'}; logged: {steps}; load {os.getloadavg()[0]:.2f}",
                flush=True,
            )
            for line in run.first_lines:
                print(f"    | {line}")
        report_nodes(runs)
        results["new_nodes"] = [attrs.asdict(run) for run in runs]
        succeeded = True
    finally:
        bench.close()
        left = leftovers(lab, cluster)
        print(f"Left behind: {', '.join(left) if left else 'nothing'}", flush=True)
        if succeeded and not args.keep_data:
            shutil.rmtree(data_dir, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
