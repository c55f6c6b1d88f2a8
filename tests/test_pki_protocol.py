"""The PKI worker's protocol: jobs, answers and the desk's memory, typed, and as JSON.

Each class reads back what it wrote, through JSON as over the pipes; whatever else comes
over them is refused as a :class:`MalformedMessage` naming the field out of place, and
never crashes the worker or the service (both fuzzed).
"""

from __future__ import annotations

import copy
import datetime
import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from hepto.pki import worker
from hepto.pki.errors import AuthorityError, Refused, WorkerError
from hepto.pki.protocol import (
    Answer,
    CertificateChange,
    DeskConfig,
    DeskMemory,
    Job,
    JobFailed,
    MalformedMessage,
    MemberEntry,
    read_answer,
)
from hepto.pki.refusals import RefusalLog
from hepto.pki.service import _read
from hepto.pki.specs import LEAF_LIFETIME

NOW = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
CONFIG = DeskConfig("protocol", "master", "master", Path("/nowhere"), LEAF_LIFETIME, b"\x01" * 32)


def a_memory() -> DeskMemory:
    """A memory with something in every field."""
    refusals = RefusalLog()
    refusals.add("node-a", "kubelet-client", Refused("subject", "not its name"), NOW)
    refusals.evicted = 3
    return DeskMemory(
        reviewed={("node-a", "kubelet-client"): ("node", "CSR PEM"), ("node-b", "x"): (7, None)},
        signed={"node-a": {"kubelet-client": "CERTIFICATE PEM"}},
        refused={"node-a": {"kubelet-serving": {"code": "san", "reason": "no", "key": None}}},
        offers_seen={("master", "kubelet-client"): "CERTIFICATE PEM"},
        announcements_seen={"master": ("master", "CA PEM")},
        refused_by_master={"kubelet-serving": {"code": "san", "reason": "no"}},
        versions={"node-a": 4, "master": 12},
        waiting={"node-c"},
        masters={"master"},
        refusals=refusals,
        dropped={"stale-record": 2},
        requests={"kubelet-client": ("fingerprint", "CSR PEM")},
        ignored={"apiserver": "fingerprint"},
        installed={"kubelet-serving": "fingerprint"},
    )


def a_job() -> Job:
    return Job(
        CONFIG,
        now=NOW.timestamp(),
        start=False,
        memory=a_memory(),
        renew=("apiserver",),
        members={
            "gone": None,
            "node-a": MemberEntry(4, "node", {"csr": {"kubelet-client": "PEM"}}, b"\x02" * 32),
            "odd": MemberEntry(1, ["not", "a", "role"], "not a mapping"),
        },
    )


def an_answer() -> Answer:
    return Answer(
        memory=a_memory(),
        section={"ca": "CA PEM"},
        changes=(
            CertificateChange(
                "admin",
                Path("/nowhere/pki/admin.crt"),
                Path("/nowhere/pki/admin.key"),
                Path("/nowhere/kubeconfig"),
                NOW,
                "fingerprint",
            ),
            CertificateChange(
                "apiserver", Path("/a.crt"), Path("/a.key"), None, NOW, "fingerprint"
            ),
        ),
        installed=frozenset({"admin", "apiserver"}),
        renewals={"admin": NOW.timestamp() + 1000.0},
        revisits={"node-a": NOW.timestamp() + 1.5},
        marks=frozenset({"node-c"}),
        masters=frozenset({"master"}),
        status={"role": "master", "certificates": {}, "dropped": {"stale-record": 2}},
    )


def over_the_pipe(value: dict[str, Any]) -> Any:
    return json.loads(json.dumps(value))


class RoundTripTests(SynchronousTestCase):
    def test_a_job_reads_back_as_it_was_written(self) -> None:
        job = a_job()
        self.assertEqual(Job.from_json(over_the_pipe(job.to_json())), job)

    def test_a_start_needs_no_memory(self) -> None:
        job = Job(CONFIG, now=NOW.timestamp(), start=True)
        self.assertEqual(Job.from_json(over_the_pipe(job.to_json())), job)

    def test_an_answer_reads_back_as_it_was_written(self) -> None:
        answer = an_answer()
        self.assertEqual(read_answer(over_the_pipe(answer.to_json())), answer)
        self.assertEqual(answer.refusals.get("node-a", "kubelet-client").count, 1)  # type: ignore[union-attr]

    def test_a_failed_job_is_raised_as_what_it_was(self) -> None:
        authority = over_the_pipe(JobFailed("authority", "ca.key lacks a key").to_json())
        with self.assertRaisesRegex(AuthorityError, "ca.key lacks a key"):
            read_answer(authority)
        failed = over_the_pipe(JobFailed("failed", "Traceback ...").to_json())
        with self.assertRaisesRegex(WorkerError, "the PKI worker failed: Traceback"):
            read_answer(failed)

    def test_a_real_desks_answer_and_memory_read_back(self) -> None:
        """A master's start, done by the worker's code: its answer is an Answer, whose
        memory the next batch takes up again."""
        base = Path(tempfile.mkdtemp(prefix="hepto-protocol-"))
        self.addCleanup(shutil.rmtree, base, True)
        config = DeskConfig("protocol", "master", "master", base / "master", LEAF_LIFETIME)
        now = datetime.datetime.now(datetime.UTC).timestamp()
        started = over_the_pipe(worker.handle(Job(config, now, start=True).to_json()))
        answer = read_answer(started)
        self.assertIn("apiserver", answer.installed)
        self.assertEqual(answer.to_json(), started)
        again = Job(config, now + 1, start=False, memory=answer.memory, renew=("admin",))
        renewed = read_answer(over_the_pipe(worker.handle(again.to_json())))
        self.assertEqual([change.name for change in renewed.changes], ["admin"])


#: Each a change to a valid job, and what the refusal must name.
MALFORMED_JOBS: list[tuple[str, Callable[[dict[str, Any]], object], str]] = [
    ("no object", lambda job: ["a", "list"], "the job is a list, not an object"),
    ("no config", lambda job: job.pop("config"), "the job lacks 'config'"),
    ("no start", lambda job: job.pop("start"), "the job lacks 'start'"),
    ("a string for now", lambda job: job.update(now="noon"), "now is a string, not a number"),
    ("NaN for now", lambda job: job.update(now=float("nan")), "now is nan, not a finite number"),
    (
        "a lifetime out of range",
        lambda job: job["config"].update(lifetime=1e300),
        "config.lifetime is out of range",
    ),
    (
        "an identity that is no hex",
        lambda job: job["config"].update(identity="zz"),
        "config.identity is not hexadecimal",
    ),
    (
        "a resumption without memory",
        lambda job: job.update(memory=None),
        "a batch other than the start needs the desk's memory",
    ),
    (
        "a boolean for a version",
        lambda job: job["members"]["node-a"].update(version=True),
        "members['node-a'].version is a boolean, not an integer",
    ),
    (
        "a member entry that is a list",
        lambda job: job["members"].update(x=[]),
        "members['x'] is a list, not an object",
    ),
    (
        "a string among the certificates to renew",
        lambda job: job.update(renew=["admin", 3]),
        "renew[1] is an integer, not a string",
    ),
    (
        "a memory without versions",
        lambda job: job["memory"].pop("versions"),
        "memory lacks 'versions'",
    ),
    (
        "a version remembered as a string",
        lambda job: job["memory"]["versions"].update({"node-a": "4"}),
        "memory.versions['node-a'] is a string, not an integer",
    ),
    (
        "a short row of reviewed requests",
        lambda job: job["memory"]["reviewed"].append(["node-a", "x"]),
        "memory.reviewed[2] has 2 items, not 4",
    ),
    (
        "a refusal with a time that is none",
        lambda job: job["memory"]["refusals"][0].update(first="yesterday"),
        "memory.refusals[0].first is not an ISO 8601 time",
    ),
    (
        "a request that is no pair",
        lambda job: job["memory"]["requests"].update(admin="PEM"),
        "memory.requests['admin'] is a string, not a list",
    ),
]


class MalformedJobTests(SynchronousTestCase):
    """A job out of shape gets ``failed`` with ``not a job: <what>``, from the worker."""

    def test_each_malformed_job_is_refused_naming_what_is_wrong(self) -> None:
        for what, change, message in MALFORMED_JOBS:
            with self.subTest(what):
                job = over_the_pipe(a_job().to_json())
                changed = change(job)
                if isinstance(changed, list):
                    job = changed
                with self.assertRaises(MalformedMessage) as caught:
                    Job.from_json(job)
                self.assertEqual(str(caught.exception), message)
                self.assertEqual(
                    worker.handle(job),
                    {"error": {"kind": "failed", "message": f"not a job: {message}"}},
                )

    def test_a_line_that_is_no_json_is_no_job(self) -> None:
        answers: list[str] = []

        class Lines:
            def write(self, text: str) -> None:
                answers.append(text)

            def flush(self) -> None:
                pass

        worker.serve([b"{", b"[]"], Lines())  # type: ignore[arg-type]
        first, second = (json.loads(line) for line in answers)
        self.assertTrue(first["error"]["message"].startswith("not a job: Expecting"))
        self.assertEqual(second["error"]["message"], "not a job: the job is a list, not an object")


class MalformedAnswerTests(SynchronousTestCase):
    """An answer out of shape is a :class:`MalformedMessage` (for the service, a
    :class:`WorkerError`: a failed batch, tried again later)."""

    def check(self, change: Callable[[dict[str, Any]], object], message: str) -> None:
        answer = over_the_pipe(an_answer().to_json())
        change(answer)
        with self.assertRaises(MalformedMessage) as caught:
            read_answer(answer)
        self.assertEqual(str(caught.exception), message)

    def test_fields_out_of_shape_are_named(self) -> None:
        self.check(lambda answer: answer.pop("masters"), "the answer lacks 'masters'")
        self.check(lambda answer: answer.update(memory=5), "memory is an integer, not an object")
        self.check(
            lambda answer: answer["changes"][1].update(not_after="soon"),
            "changes[1].not_after is not an ISO 8601 time",
        )
        self.check(
            lambda answer: answer["renewals"].update(admin="later"),
            "renewals['admin'] is a string, not a number",
        )
        self.check(
            lambda answer: answer["status"]["certificates"].update(admin={"not_after": 3}),
            "status.certificates['admin'].not_after is an integer, not a string",
        )
        self.check(
            lambda answer: answer.update(error="no object"),
            "error is a string, not an object",
        )

    def test_the_service_counts_it_as_a_failed_batch(self) -> None:
        with self.assertRaisesRegex(
            WorkerError, r"the PKI worker's answer is malformed: memory lacks 'signed'"
        ):
            answer = over_the_pipe(an_answer().to_json())
            del answer["memory"]["signed"]
            _read(answer)


#: Any JSON value, as json.loads makes them.
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=8)
    | st.sampled_from(["2026-01-02T03:04:05+00:00", "00", "node-a", "admin"]),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


def _paths(value: object, path: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    """The path to every value inside ``value``, itself included."""
    found: list[tuple[object, ...]] = [path]
    if isinstance(value, dict):
        for key, item in value.items():
            found += _paths(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += _paths(item, (*path, index))
    return found


def _replaced(document: Any, path: tuple[Any, ...], value: object) -> Any:
    if not path:
        return value
    document = copy.deepcopy(document)
    parent = document
    for step in path[:-1]:
        parent = parent[step]
    parent[path[-1]] = value
    return document


JOB_PATHS = _paths(a_job().to_json())
ANSWER_PATHS = _paths(an_answer().to_json())


class FuzzTests(SynchronousTestCase):
    """Any value anywhere in a job or answer: read, or refused as malformed; no crash."""

    @settings(max_examples=500, deadline=None)
    @given(st.sampled_from(JOB_PATHS), json_values)
    def test_jobs(self, path: tuple[object, ...], value: object) -> None:
        try:
            job = Job.from_json(_replaced(a_job().to_json(), path, value))
        except MalformedMessage:
            return
        # What reads back writes as JSON again, as the service sends it, and reads the same.
        text = json.dumps(job.to_json(), sort_keys=True)
        self.assertEqual(
            json.dumps(Job.from_json(json.loads(text)).to_json(), sort_keys=True), text
        )

    @settings(max_examples=500, deadline=None)
    @given(st.sampled_from(ANSWER_PATHS), json_values)
    def test_answers(self, path: tuple[object, ...], value: object) -> None:
        try:
            answer = read_answer(_replaced(an_answer().to_json(), path, value))
        except (MalformedMessage, AuthorityError, WorkerError):
            return
        text = json.dumps(answer.to_json(), sort_keys=True)
        again = read_answer(json.loads(text)).to_json()
        self.assertEqual(json.dumps(again, sort_keys=True), text)
