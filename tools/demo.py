"""Runs a local hepto cluster in network namespaces until interrupted (see tools/demo).

A master and nodes, each a real agent in a network namespace of its own; each node gets
a busybox image (made here: there is no registry) in its images folder, which its agent
imports at start, and runs one pod of it. The pods reach each other across the mesh, a
Service in front of them, and an address outside the cluster.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from agent import program
from images import BUSYBOX_IMAGE, write_busybox_archive
from localcluster import LocalCluster, wait_for
from netlab import missing_requirements, wait_until

#: A pod that says hello, then answers on port 8080 with its name; SIGTERM ends it.
POD = """\
apiVersion: v1
kind: Pod
metadata:
  name: hello-{node}
  labels:
    app: hello
spec:
  nodeName: {node}
  terminationGracePeriodSeconds: 5
  containers:
  - name: hello
    image: {image}
    command:
    - sh
    - -c
    - trap 'exit 0' TERM; echo hello from $(hostname) on {node}; ip -6 addr show eth0;
      while true; do nc -l -p 8080 -e echo hello from $(hostname) on {node}; done
"""
#: Port 80 of the pods above, on a ClusterIP that kube-proxy serves on every node.
SERVICE = """\
apiVersion: v1
kind: Service
metadata:
  name: hello
spec:
  selector:
    app: hello
  ports:
  - port: 80
    targetPort: 8080
"""


class DemoFailed(Exception):
    """Something the demo shows did not work; ``str()`` says what."""


def show_the_network(kubectl: list[str], nodes: list[str], outside: object) -> None:
    """A pod reaches a pod on another node, a Service, and an address outside the cluster.

    Each at its first try, as a user's pods would: no step waits for the network but the
    Service's, whose rules kube-proxy writes once the Service exists.
    """
    first, last = f"hello-{nodes[0]}", f"hello-{nodes[-1]}"

    def run(*argv: str) -> str:
        done = subprocess.run([*kubectl, *argv], capture_output=True, text=True)
        return (done.stdout + done.stderr).strip()

    def show(what: str, expected: str, *argv: str) -> None:
        print(f"demo: {first} {what}:")
        answer = run("exec", first, "--", *argv)
        print(answer)
        if expected not in answer:
            raise DemoFailed(f"{first} {what}: no {expected!r} in its answer")

    subprocess.run([*kubectl, "apply", "-f", "-"], input=SERVICE, text=True, check=True)
    far = run("get", "pod", last, "-o", "jsonpath={.status.podIP}")
    show(f"pings {last} ({far}) across the mesh", " 0% packet loss", "ping", "-c", "2", far)
    cluster_ip = run("get", "service", "hello", "-o", "jsonpath={.spec.clusterIP}")
    name = "hello.default.svc.cluster.local"
    show(
        "looks the Service up by name, through the cluster DNS on the master",
        f"Address: {cluster_ip}",
        *("nslookup", "-type=aaaa", name),
    )
    print(f"demo: {first} asks the Service by its name, hello ([{cluster_ip}]:80), three times:")

    def answered() -> str:
        return run("exec", first, "--", "nc", "-w", "3", "hello", "80")

    wait_until(lambda: "hello from" in answered(), 60, 0.5, "the Service")
    for _ in range(3):
        print("  ", answered())
    show(
        f"pings {outside}, outside the cluster, from its node's address",
        " 0% packet loss",
        *("ping", "-c", "2", str(outside)),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--nodes", type=int, default=2, help="nodes besides the master")
    parser.add_argument("--cluster", default="demo")
    parser.add_argument("--bin-dir", required=True, help="upstream programs (tools/build-bundle)")
    parser.add_argument("--duration", type=float, default=0, help="stop after this many seconds")
    parser.add_argument(
        "--no-contain", action="store_true", help="agents in their hosts' namespaces"
    )
    args = parser.parse_args()
    if why := missing_requirements():
        sys.exit(f"demo: {why}")

    data_dir = Path(tempfile.mkdtemp(prefix="hepto-demo-"))
    cluster = LocalCluster(
        Path(args.bin_dir), data_dir, args.cluster, args.nodes, contain=not args.no_contain
    )
    try:
        cluster.start(lambda folder: write_busybox_archive(folder / "busybox.tar"))
        print(f"demo: {len(cluster.agents)} agents running; data and logs in {data_dir}")
        cluster.wait_ready()
        print(f"demo: {args.nodes} nodes Ready")
        kubectl = cluster.kubectl("--request-timeout=5s")
        names = cluster.names
        subprocess.run([*kubectl, "get", "nodes", "-o", "wide"])
        for name in names[1:]:
            manifest = POD.format(node=name, image=BUSYBOX_IMAGE)
            subprocess.run([*kubectl, "apply", "-f", "-"], input=manifest, text=True, check=True)

        def all_running() -> bool:
            answer = subprocess.run(
                [*kubectl, "get", "pods", "-o", "jsonpath={.items[*].status.phase}"],
                capture_output=True,
                text=True,
            )
            return answer.stdout.split() == ["Running"] * args.nodes

        wait_for("every pod Running (image import, sandbox, network)", all_running, 120, "demo")
        subprocess.run([*kubectl, "get", "pods", "-o", "wide"])
        subprocess.run([*kubectl, "logs", f"hello-{names[-1]}"])
        show_the_network(kubectl, names[1:], cluster.master.address)
        status = subprocess.run(
            [
                program("hepto"),
                "status",
                "--cluster",
                args.cluster,
                "--name",
                "master",
                "--data-dir",
                str(data_dir),
            ],
            capture_output=True,
            text=True,
        )
        print(status.stdout or status.stderr)
        info = subprocess.run(
            [program("hepto"), "info", "--cluster", args.cluster, "--json"],
            capture_output=True,
            text=True,
        )
        print("demo: addressing plan", json.dumps(json.loads(info.stdout), indent=2))
        print(
            "demo: inspect with: hepto status --cluster",
            args.cluster,
            "--name master",
            "--data-dir",
            data_dir,
        )
        print(
            "demo: a shell in a pod:",
            " ".join(cluster.kubectl("exec", "-it", f"hello-{names[-1]}", "--", "sh")),
        )
        print("demo: stop with Ctrl-C")
        deadline = time.monotonic() + args.duration if args.duration else None
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        while deadline is None or time.monotonic() < deadline:
            time.sleep(0.5)
            if exited := cluster.exited():
                sys.exit(f"demo: {exited}")
    except KeyboardInterrupt:
        pass
    except DemoFailed as failure:
        sys.exit(f"demo: failed: {failure}")
    finally:
        cluster.close()
        print("demo: stopped; everything removed but", data_dir)


if __name__ == "__main__":
    os.umask(0o077)
    main()
