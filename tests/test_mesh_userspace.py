"""wireguard-go supervised by the userspace backend: real processes in a network namespace."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any, cast

from twisted.internet import defer, reactor
from twisted.logger import ILogObserver, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

import netlab
from hepto.backoff import BackoffPolicy
from hepto.mesh.backend import BackendUnavailable
from hepto.mesh.userspace import MOUNT_SCRIPT, UserspaceBackend, command


class CommandTests(SynchronousTestCase):
    def test_every_step_execs_and_the_socket_dir_is_an_argument(self) -> None:
        argv = command(Path("/data/n1/wireguard"), "hepto0", wrapper=["ip", "netns", "exec", "x"])
        self.assertEqual(argv[:4], ["ip", "netns", "exec", "x"])
        # A session of its own: a signal to the agent's process group misses it.
        self.assertEqual(argv[4:9], ["setsid", "setpriv", "--pdeathsig", "KILL", "--"])
        self.assertEqual(argv[-4:], ["sh", "/data/n1/wireguard", "wireguard-go", "hepto0"])
        self.assertEqual(argv[-5], MOUNT_SCRIPT)
        # Paths are never spliced into the script: no quoting to get wrong.
        self.assertNotIn("/data", MOUNT_SCRIPT)
        self.assertIn("exec", MOUNT_SCRIPT)


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


class SupervisionTests(TestCase):
    timeout = 120

    def setUp(self) -> None:
        why = netlab.missing_requirements("wireguard-go", "setpriv", "unshare")
        if why:
            raise self.skipTest(why)
        lab = netlab.Lab("hm")
        self.addCleanup(lab.close)
        self.host = lab.add_host("sup")
        self.socket_dir = Path(tempfile.mkdtemp(prefix="hm-sup-")) / "wireguard"
        self.addCleanup(shutil.rmtree, self.socket_dir.parent, ignore_errors=True)
        self.recreations: list[defer.Deferred[None]] = [defer.Deferred()]

    def backend(self, **kwargs: object) -> UserspaceBackend:
        backend = UserspaceBackend(
            reactor,
            "hepto0",
            self.socket_dir,
            wrapper=self.host.command([]),
            restart=BackoffPolicy(initial=0.1, maximum=0.2),
            **kwargs,  # type: ignore[arg-type]
        )
        self.addCleanup(backend.stop)
        return backend

    def recreated(self) -> None:
        self.recreations[-1].callback(None)
        self.recreations.append(defer.Deferred())

    def link_exists(self) -> bool:
        return self.host.run(["ip", "link", "show", "hepto0"], check=False).returncode == 0

    async def _restart_after_a_crash(self) -> None:
        backend = self.backend()
        await backend.start(self.recreated)
        first = backend.pid
        assert first is not None
        self.assertTrue(self.link_exists())
        os.kill(first, signal.SIGKILL)
        await self.recreations[0]
        self.assertNotEqual(backend.pid, first)
        self.assertEqual(backend.restarts, 1)
        self.assertTrue(backend.running)
        device = await backend.read()
        self.assertEqual(device.peers, {}, "a new, empty device")
        self.assertEqual(backend.client.connections, 2, "one per process, kept")

    def test_restart_after_a_crash(self) -> defer.Deferred[None]:
        return defer.Deferred.fromCoroutine(self._restart_after_a_crash())

    async def _stop(self) -> None:
        backend = self.backend()
        await backend.start(self.recreated)
        pid = backend.pid
        assert pid is not None
        await backend.stop()
        self.assertFalse(pid_alive(pid))
        self.assertFalse((self.socket_dir / "hepto0.sock").exists())
        self.assertFalse(self.link_exists())
        self.assertEqual(backend.restarts, 0, "a stop is not a crash")
        with self.assertRaises(BackendUnavailable):
            await backend.read()

    def test_stop_terminates_and_cleans_up(self) -> defer.Deferred[None]:
        return defer.Deferred.fromCoroutine(self._stop())

    async def _silent(self) -> None:
        program = Path(self.mktemp()).absolute()
        program.write_text("#!/bin/sh\nexec sleep 600\n")
        program.chmod(0o755)
        backend = self.backend(program=str(program), ready_timeout=0.5)
        restarted = logged("restarting in", 2)
        started = backend.start(self.recreated)
        events = await restarted
        self.assertNoResult(started)
        self.assertTrue(any("did not answer" in formatEvent(e) for e in events))
        self.flushLoggedErrors(defer.TimeoutError)
        await backend.stop()
        self.failureResultOf(started, BackendUnavailable)

    def test_a_silent_program_is_killed_and_restarted(self) -> defer.Deferred[None]:
        return defer.Deferred.fromCoroutine(self._silent())

    async def _missing(self) -> None:
        backend = self.backend(program="/nonexistent/wireguard-go")
        restarted = logged("restarting in", 2)
        started = backend.start(self.recreated)
        events = await restarted
        warnings = [formatEvent(e) for e in events if "restarting in" in formatEvent(e)]
        self.assertIn("exit code 127", warnings[0])
        self.assertIn("restarting in 0.1 s", warnings[0])
        self.assertIn("restarting in 0.2 s", warnings[1])
        await backend.stop()
        self.failureResultOf(started, BackendUnavailable)

    def test_a_missing_program_is_retried_with_backoff(self) -> defer.Deferred[None]:
        return defer.Deferred.fromCoroutine(self._missing())

    def test_wireguard_go_dies_with_its_agent(self) -> None:
        """A SIGKILLed agent takes its wireguard-go along (parent-death signal)."""
        script = textwrap.dedent(
            f"""
            import sys
            from pathlib import Path
            from twisted.internet import reactor
            from hepto.mesh.userspace import UserspaceBackend
            backend = UserspaceBackend(
                reactor, "hepto0", Path({str(self.socket_dir)!r}), wrapper={self.host.command([])!r}
            )
            backend.start(lambda: None).addCallback(lambda _: print(backend.pid, flush=True))
            reactor.run()
            """
        )
        agent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
        self.addCleanup(agent.kill)
        assert agent.stdout is not None
        pid = int(agent.stdout.readline())
        self.assertTrue(pid_alive(pid))
        agent.kill()
        agent.wait()
        netlab.wait_until(lambda: not pid_alive(pid), 30, what="wireguard-go to die")
        netlab.wait_until(lambda: not self.link_exists(), 30, what="hepto0 to go")


def logged(words: str, count: int) -> defer.Deferred[list[dict[str, Any]]]:
    """Fires with every event seen so far once ``count`` of them contain ``words``."""
    events: list[dict[str, Any]] = []
    done: defer.Deferred[list[dict[str, Any]]] = defer.Deferred()

    def observe(event: dict[str, Any]) -> None:
        events.append(event)
        if not done.called and sum(words in formatEvent(e) for e in events) >= count:
            globalLogPublisher.removeObserver(cast(ILogObserver, observe))
            done.callback(events)

    globalLogPublisher.addObserver(cast(ILogObserver, observe))
    return done


class FileWatchFallbackTests(SynchronousTestCase):
    """Without an inotify instance to be had, the socket is still noticed."""

    def test_looks_when_inotify_is_spent(self) -> None:
        from twisted.internet import inotify, task

        from hepto.mesh import userspace
        from hepto.watch import FileWatch

        def spent(reactor: Any) -> None:
            raise inotify.INotifyError("INotify initialization error.")

        self.patch(inotify, "INotify", spent)
        clock = task.Clock()
        directory = Path(self.mktemp())
        directory.mkdir(parents=True)
        watch = FileWatch(clock, directory, userspace.FALLBACK_INTERVAL)
        appeared = watch.appeared("hepto0.sock")
        clock.advance(1)
        self.assertNoResult(appeared)
        (directory / "hepto0.sock").touch()
        clock.advance(userspace.FALLBACK_INTERVAL)
        self.successResultOf(appeared)
        watch.close()
        self.assertEqual(clock.getDelayedCalls(), [])
