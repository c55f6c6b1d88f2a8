"""What an idle agent imports: the heavy modules it must not load unless it uses them.

The PKI's cryptography runs in worker processes (``hepto.pki.worker``): the agent
itself, its PKI started and a batch done, must not have imported ``cryptography``.

Each of these was made lazy for a measured saving of resident memory (``docs/memory.rst``);
this test fails if a change brings one back into every agent.  The agent is built as
``twistd hepto`` builds it, in a fresh interpreter, and its mesh tries the kernel's
WireGuard first, as at start: on a kernel without it (and so with the userspace
backend) pyroute2 must stay out.  That part runs in a network namespace of its own
(``unshare --net``), so a kernel that has WireGuard makes its link there, not here.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

#: Modules an idle agent with the userspace backend must not have imported, and why.
LAZY = {
    "pyroute2": "the kernel's WireGuard only (about 8 MiB)",
    "twisted.conch": "the manhole only, when enabled (about 3.6 MiB)",
    "cryptography": "the PKI worker only, a process of its own (about 9.8 MiB)",
    "bcrypt": "cryptography's SSH keys, in the PKI worker only",
}

#: A node's runtime, its images and its registration: only for agents that run pods.
NODE_RUNTIME = (
    "hepto.kube.runtime",
    "hepto.kube.host",
    "hepto.kube.registration",
    "hepto.kube.api",
    "hepto.images",
)

_AGENT = textwrap.dedent(
    """
    import json, sys
    from twisted.internet import reactor
    from hepto.mesh.backend import BackendUnavailable
    from hepto.tap import Options, makeService

    role, data_dir = sys.argv[1:]
    options = Options()
    options.parseOptions([
        "--cluster=imports", "--key=" + "5a" * 32, "--name=n1", "--role=" + role,
        "--no-contain", "--ip=2001:db8::1/64", "--data-dir=" + data_dir,
        "--components=none",
    ])
    node = makeService(options, reactor)
    node.privilegedStartService()  # as twistd does: the node makes its services
    # The mesh's first choice, as its start tries it: the kernel's WireGuard.
    kernel = node.mesh._backend_factories[0]()
    failures = []
    kernel.start(lambda: None).addErrback(failures.append)
    # The PKI starts (its first batch, in a worker started through the reactor), then
    # does one batch as it does on every change, in the same worker.
    node.pki.startService()
    answers = []

    def batch(_):
        job = node.pki._job(start=False)
        done = node.pki.runner.run(job.to_json())
        done.addCallback(answers.append)
        return done

    started = node.pki.when_started().addCallback(batch)
    started.addBoth(lambda _: node.pki.stopService())
    started.addBoth(lambda _: reactor.stop())
    reactor.run()
    print(json.dumps({
        "installed": sorted(name for name in node.pki.specs if node.pki.installed(name)),
        "answered": [sorted(answer) for answer in answers],
        "kernel": kernel.kind,
        "unavailable": bool(failures) and failures[0].check(BackendUnavailable) is not None,
        "modules": sorted(sys.modules),
    }))
    """
)


class IdleAgentImportsTests(SynchronousTestCase):
    def agent(self, role: str) -> dict[str, Any]:
        if os.geteuid() != 0 or shutil.which("unshare") is None:
            raise self.skipTest("needs root and unshare for a network namespace")
        data_dir = tempfile.mkdtemp(prefix="hepto-imports-")
        self.addCleanup(shutil.rmtree, data_dir, True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("HEPTO_")}
        done = subprocess.run(
            ["unshare", "--net", sys.executable, "-c", _AGENT, role, data_dir],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        self.assertEqual(done.returncode, 0, done.stderr)
        result: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
        return result

    def check(self, role: str) -> None:
        result = self.agent(role)
        self.assertEqual(result["kernel"], "kernel")
        if not result["unavailable"]:
            raise self.skipTest("this kernel has WireGuard: pyroute2 is needed")
        modules = set(result["modules"])
        self.assertIn("hepto.mesh.rtnetlink", modules)
        self.assertIn("hepto.pki.service", modules)
        [answer] = result["answered"]
        self.assertIn("memory", answer)
        if role == "master":
            self.assertIn("apiserver", result["installed"])
        for name, why in LAZY.items():
            loaded = sorted(m for m in modules if m == name or m.startswith(name + "."))
            self.assertEqual(loaded, [], f"{name} is for {why}, yet an idle agent imports it")
        # The agents here run no Kubernetes component (--components none).
        for name in NODE_RUNTIME:
            self.assertNotIn(name, modules, f"{name} is for a node's runtime only")

    def test_node(self) -> None:
        self.check("node")

    def test_master(self) -> None:
        self.check("master")


class WorkerImportsTests(SynchronousTestCase):
    """The PKI worker starts at every join (and for each burst of a master's work): what
    it imports is paid in CPU each time. Twisted is not needed there (hepto.pki.joblog)."""

    def test_the_worker_imports_no_twisted(self) -> None:
        done = subprocess.run(
            [
                sys.executable,
                "-c",
                "import json, sys, hepto.pki.worker; print(json.dumps(sorted(sys.modules)))",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        self.assertEqual(done.returncode, 0, done.stderr)
        modules = json.loads(done.stdout)
        self.assertIn("cryptography.x509", modules)
        self.assertEqual(
            [name for name in modules if name.split(".")[0] in ("twisted", "zope")], []
        )
