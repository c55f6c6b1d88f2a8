"""The PKI worker's client: jobs, answers, crashes, idle exits, stops, and a real worker.

The unit tests give the client a fake process reactor: each "worker" is a protocol the
test answers by hand, on a ``task.Clock``.  The last class starts the real worker.
"""

from __future__ import annotations

import datetime
import io
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import attrs
from twisted.internet import error, reactor, task
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.interfaces import IProcessProtocol
from twisted.logger import LogLevel, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from hepto.pki import client as client_module
from hepto.pki import joblog
from hepto.pki import worker as worker_module
from hepto.pki.client import WorkerClient, worker_command
from hepto.pki.errors import WorkerError
from hepto.pki.service import PKIService, emit_events
from hepto.pki.specs import KUBELET_CLIENT, KUBELET_SERVING, LEAF_LIFETIME
from hepto.state import MemoryCluster
from test_supervisor_fakes import LogCapture


@attrs.define
class FakeTransport:
    """What the client does to a worker's pipes."""

    written: list[bytes] = attrs.field(factory=list)
    stdin_closed: bool = False
    signals: list[str] = attrs.field(factory=list)
    pid: int = 4242

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def closeStdin(self) -> None:
        self.stdin_closed = True

    def signalProcess(self, signal: str) -> None:
        self.signals.append(signal)


@attrs.define
class FakeWorker:
    protocol: IProcessProtocol
    transport: FakeTransport
    args: list[str]

    def jobs(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in b"".join(self.transport.written).splitlines()]

    def answer(self, answer: object) -> None:
        self.protocol.childDataReceived(1, json.dumps(answer).encode() + b"\n")

    def end(self, code: int | None = 0, signal: int | None = None) -> None:
        reason = error.ProcessDone(0) if code == 0 else error.ProcessTerminated(code, signal)
        self.protocol.processEnded(Failure(reason))


@attrs.define
class FakeProcessReactor:
    workers: list[FakeWorker] = attrs.field(factory=list)
    refuse: bool = False

    def spawnProcess(
        self, protocol: IProcessProtocol, executable: str, args: list[str], env: Any = None
    ) -> FakeTransport:
        if self.refuse:
            raise OSError(2, "No such file or directory")
        transport = FakeTransport()
        protocol.makeConnection(transport)  # type: ignore[arg-type]
        self.workers.append(FakeWorker(protocol, transport, args))
        return transport


class ClientTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = FakeProcessReactor()
        self.clock = task.Clock()
        self.client = WorkerClient(
            self.reactor,  # type: ignore[arg-type]
            self.clock,
            command=["python", "-m", "hepto.pki.worker"],
            environment={},
            timeout=30,
        )
        self.log = LogCapture.install(self)

    def complaints(self) -> list[str]:
        return [
            event["log_format"] for event in self.log.events if event["log_level"] >= LogLevel.warn
        ]

    def test_spawns_on_demand_and_reuses_the_worker(self) -> None:
        self.assertEqual(self.reactor.workers, [])
        first = self.client.run({"job": 1})
        [worker] = self.reactor.workers
        self.assertEqual(worker.args, ["python", "-m", "hepto.pki.worker"])
        self.assertEqual(worker.jobs(), [{"job": 1}])
        self.assertNoResult(first)
        worker.answer({"answer": 1})
        self.assertEqual(self.successResultOf(first), {"answer": 1})
        second = self.client.run({"job": 2})
        worker.answer({"answer": 2})
        self.assertEqual(self.successResultOf(second), {"answer": 2})
        self.assertEqual(len(self.reactor.workers), 1)
        self.assertEqual(self.client.started, 1)

    def test_one_job_at_a_time(self) -> None:
        first = self.client.run({"job": 1})
        second = self.client.run({"job": 2})
        [worker] = self.reactor.workers
        self.assertEqual(worker.jobs(), [{"job": 1}])
        worker.answer({"answer": 1})
        self.assertEqual(worker.jobs(), [{"job": 1}, {"job": 2}])
        self.assertNoResult(second)
        worker.answer({"answer": 2})
        self.assertEqual(self.successResultOf(first), {"answer": 1})
        self.assertEqual(self.successResultOf(second), {"answer": 2})

    def test_an_answer_in_pieces(self) -> None:
        done = self.client.run({"job": 1})
        [worker] = self.reactor.workers
        line = json.dumps({"answer": "long"}).encode() + b"\n"
        worker.protocol.childDataReceived(1, line[:5])
        self.assertNoResult(done)
        worker.protocol.childDataReceived(1, line[5:])
        self.assertEqual(self.successResultOf(done), {"answer": "long"})

    def test_crash_fails_the_job_and_the_next_gets_a_new_worker(self) -> None:
        failed = self.client.run({"job": 1})
        self.reactor.workers[0].end(code=1)
        failure = self.failureResultOf(failed, WorkerError)
        self.assertIn("exited with status 1", str(failure.value))
        retried = self.client.run({"job": 1})
        self.assertEqual(len(self.reactor.workers), 2)
        self.reactor.workers[1].answer({"answer": 1})
        self.assertEqual(self.successResultOf(retried), {"answer": 1})

    def test_killed_worker(self) -> None:
        failed = self.client.run({"job": 1})
        self.reactor.workers[0].end(code=None, signal=9)
        self.assertIn("signal 9", str(self.failureResultOf(failed, WorkerError).value))

    def test_nonsense_kills_the_worker(self) -> None:
        for nonsense in (b"not json\n", b"[1, 2]\n"):
            failed = self.client.run({"job": 1})
            worker = self.reactor.workers[-1]
            worker.protocol.childDataReceived(1, nonsense)
            self.assertIn("nonsense", str(self.failureResultOf(failed, WorkerError).value))
            self.assertEqual(worker.transport.signals, ["KILL"])
            worker.end(code=None, signal=9)
        again = self.client.run({"job": 2})
        self.assertEqual(len(self.reactor.workers), 3)
        self.reactor.workers[-1].answer({"answer": 2})
        self.assertEqual(self.successResultOf(again), {"answer": 2})

    def test_idle_exit(self) -> None:
        done = self.client.run({"job": 1})
        self.reactor.workers[0].answer({})
        self.successResultOf(done)
        self.reactor.workers[0].end(code=0)
        self.assertEqual(self.complaints(), [])
        later = self.client.run({"job": 2})
        self.assertEqual(len(self.reactor.workers), 2)
        self.reactor.workers[1].answer({"answer": 2})
        self.assertEqual(self.successResultOf(later), {"answer": 2})

    def test_a_job_written_as_the_worker_exits_idle_goes_to_the_next(self) -> None:
        done = self.client.run({"job": 1})
        self.reactor.workers[0].end(code=0)
        second = self.reactor.workers[1]
        self.assertEqual(second.jobs(), [{"job": 1}])
        second.answer({"answer": 1})
        self.assertEqual(self.successResultOf(done), {"answer": 1})

    def test_a_worker_that_keeps_exiting_is_an_error(self) -> None:
        done = self.client.run({"job": 1})
        self.reactor.workers[0].end(code=0)
        self.reactor.workers[1].end(code=0)
        self.failureResultOf(done, WorkerError)
        self.assertEqual(len(self.reactor.workers), 2)

    def test_timeout_kills_the_worker(self) -> None:
        done = self.client.run({"job": 1})
        worker = self.reactor.workers[0]
        self.clock.advance(29)
        self.assertEqual(worker.transport.signals, [])
        self.clock.advance(1)
        self.assertEqual(worker.transport.signals, ["KILL"])
        worker.end(code=None, signal=9)
        self.assertIn("timed out", str(self.failureResultOf(done, WorkerError).value))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_answers_cancel_the_timeout(self) -> None:
        done = self.client.run({"job": 1})
        self.reactor.workers[0].answer({})
        self.successResultOf(done)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_cannot_start(self) -> None:
        self.reactor.refuse = True
        done = self.client.run({"job": 1})
        self.assertIn("cannot start", str(self.failureResultOf(done, WorkerError).value))

    def test_standard_error_is_logged(self) -> None:
        self.client.run({"job": 1})
        self.reactor.workers[0].protocol.childDataReceived(2, b"Traceback: oops\nmore")
        self.assertEqual(self.complaints(), ["PKI worker: {line}"])
        self.assertEqual(self.log.events[-1]["line"], "Traceback: oops")

    def test_stop_lets_the_job_finish(self) -> None:
        done = self.client.run({"job": 1})
        queued = self.client.run({"job": 2})
        worker = self.reactor.workers[0]
        stopped = self.client.stop()
        self.assertTrue(worker.transport.stdin_closed)
        self.failureResultOf(queued, WorkerError)
        worker.answer({"answer": 1})
        self.assertEqual(self.successResultOf(done), {"answer": 1})
        self.assertNoResult(stopped)
        worker.end(code=0)
        self.successResultOf(stopped)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stop_kills_a_worker_that_does_not_exit(self) -> None:
        self.client.run({"job": 1}).addErrback(lambda failure: None)
        worker = self.reactor.workers[0]
        stopped = self.client.stop()
        self.clock.advance(client_module.STOP_TIMEOUT)
        self.assertEqual(worker.transport.signals, ["KILL"])
        worker.end(code=None, signal=9)
        self.successResultOf(stopped)

    def test_stop_without_worker(self) -> None:
        self.assertIsNone(self.successResultOf(self.client.stop()))


class RealWorkerTests(TestCase):
    """The worker itself, started by the client on the real reactor."""

    def job(self, node_dir: Path, **changes: Any) -> dict[str, Any]:
        job = {
            "config": {
                "cluster": "worker",
                "name": "master",
                "role": "master",
                "node_dir": str(node_dir),
                "lifetime": LEAF_LIFETIME.total_seconds(),
            },
            "now": datetime.datetime.now(datetime.UTC).timestamp(),
            "memory": None,
            "start": True,
            "renew": [],
            "members": {},
        }
        job.update(changes)
        return job

    @inlineCallbacks
    def test_a_start_then_a_renewal_in_one_worker_that_then_exits(self) -> Any:
        base = Path(tempfile.mkdtemp(prefix="hepto-worker-"))
        self.addCleanup(shutil.rmtree, base, True)
        client = WorkerClient(reactor, reactor, command=worker_command(idle=0.5))
        started = yield client.run(self.job(base / "master"))
        self.assertNotIn("error", started)
        self.assertIn("apiserver", started["installed"])
        self.assertTrue((base / "master" / "pki" / "apiserver.crt").exists())
        self.assertIn("ca", started["section"])
        self.assertTrue(any("Created" in str(event["fields"]) for event in started["log"]))
        renewed = yield client.run(
            self.job(base / "master", start=False, memory=started["memory"], renew=["apiserver"])
        )
        self.assertEqual([change["name"] for change in renewed["changes"]], ["apiserver"])
        self.assertEqual(client.started, 1)
        # Idle, it exits by itself; the next job starts another.
        protocol = client._protocol
        assert protocol is not None
        ended: Deferred[None] = Deferred()
        processEnded = protocol.processEnded

        def tell(reason: Failure) -> None:
            processEnded(reason)
            ended.callback(None)

        protocol.processEnded = tell  # type: ignore[method-assign]
        yield ended
        self.assertIsNone(client._protocol)
        bad = yield client.run({"config": {}})
        self.assertEqual(bad["error"]["kind"], "failed")
        self.assertEqual(client.started, 2)
        yield client.stop()

    @inlineCallbacks
    def test_damaged_ca_files_are_an_answer(self) -> Any:
        base = Path(tempfile.mkdtemp(prefix="hepto-worker-"))
        self.addCleanup(shutil.rmtree, base, True)
        (base / "master" / "pki" / "ca").mkdir(parents=True)
        client = WorkerClient(reactor, reactor, command=worker_command(idle=0.5))
        answer = yield client.run(self.job(base / "master"))
        self.assertEqual(answer["error"]["kind"], "authority")
        self.assertIn("lacks", answer["error"]["message"])
        yield client.stop()
        # A worker that answers nonsense: ClientTests.test_nonsense_kills_the_worker.


class RealServiceTests(TestCase):
    """A master and a node over an in-memory cluster, their batches in real workers."""

    @inlineCallbacks
    def test_a_node_gets_its_certificates_through_workers(self) -> Any:
        base = Path(tempfile.mkdtemp(prefix="hepto-worker-"))
        self.addCleanup(shutil.rmtree, base, True)
        cluster = MemoryCluster()
        services = {
            name: PKIService(
                "worker", name, name, base / name, cluster.join(name, role=name), reactor
            )
            for name in ("master", "node")
        }
        for service in services.values():
            service.startService()
            self.addCleanup(service.stopService)
        node = services["node"]
        paths = yield node.when_installed([KUBELET_CLIENT, KUBELET_SERVING])
        self.assertTrue(paths.kubeconfig("kubelet").exists())
        self.assertEqual(node.status()["certificates"][KUBELET_CLIENT]["state"], "valid")
        self.assertEqual(node.refusals.as_json(), [])
        for service in services.values():
            yield service.stopService()
            self.assertIsNone(service.runner._protocol)  # type: ignore[attr-defined]


class WorkerLoopTests(SynchronousTestCase):
    """The worker's side of the pipes, in this process."""

    def test_lines_end_with_their_input_or_after_idle_time(self) -> None:
        read, write = os.pipe()
        self.addCleanup(os.close, read)
        os.write(write, b'{"a": 1}\n{"b"')
        os.write(write, b": 2}\npartial")
        lines = worker_module._lines(read, idle=0.05)
        self.assertEqual(next(lines), b'{"a": 1}')
        self.assertEqual(next(lines), b'{"b": 2}')
        # Silent for longer than the idle time: no more lines (a half line is no job).
        self.assertEqual(list(lines), [])
        os.close(write)
        self.assertEqual(list(worker_module._lines(read, idle=5)), [])

    def test_each_job_gets_its_answer_and_its_log(self) -> None:
        out = io.StringIO()
        joblog.take()
        joblog.Logger("hepto.pki").info("seen {thing}", thing=1)
        worker_module.serve([b"not json", b'{"config": {}}'], out)
        first, second = (json.loads(line) for line in out.getvalue().splitlines())
        self.assertIn("not a job", first["error"]["message"])
        self.assertEqual(first["log"][0]["format"], "seen {thing}")
        self.assertEqual(first["log"][0]["fields"], {"thing": 1})
        self.assertEqual(second["error"]["kind"], "failed")
        self.assertEqual(second["log"], [])

    def test_events_cross_the_pipe_and_are_logged_here(self) -> None:
        joblog.take()
        log = joblog.Logger("hepto.pki.desk")
        log.warn("Refused {subject}: {reason}", subject="ca", reason="why", thing=object())
        try:
            raise ZeroDivisionError("a bug")
        except ZeroDivisionError:
            log.failure("Reviewing {member} failed", member="m")
        answer = {"log": joblog.take()}
        capture = LogCapture.install(self)
        emit_events(json.loads(json.dumps(answer)))
        warned, failed = capture.events
        self.assertEqual(warned["log_namespace"], "hepto.pki.desk")
        self.assertEqual(warned["log_level"], LogLevel.warn)
        self.assertEqual(formatEvent(warned), "Refused ca: why")
        self.assertNotIn("thing", warned)
        self.assertEqual(failed["log_level"], LogLevel.critical)
        self.assertIn("ZeroDivisionError", formatEvent(failed))
