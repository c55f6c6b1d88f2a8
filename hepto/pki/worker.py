"""The PKI worker: ``python -m hepto.pki.worker``, where the cryptography runs.

The resident agent never imports ``cryptography`` (its Rust library alone keeps about
9 MiB resident, see ``docs/memory.rst``).  Whenever the PKI has work, the agent's
:class:`~hepto.pki.client.WorkerClient` starts this program, or reuses it if it is
still there: it reads one job per line on its standard input, JSON, does it with a
fresh :class:`~hepto.pki.desk.Desk`, and writes one answer per line on its standard
output.  It exits when its input closes, or after ``--idle`` seconds without a job, so
that a burst of joins costs one process start and an idle cluster none.

Jobs and answers are :mod:`hepto.pki.protocol`'s; each answer also carries ``log``,
the log events of its job (:mod:`hepto.pki.joblog`), which the agent emits as its own.
A line that is no job (no JSON, or a field out of place) gets a ``failed`` answer
saying so, and the worker reads on.

Whatever else the worker's code prints goes to its standard error, which the agent
logs: its standard output carries answers only.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import select
import sys
import traceback
from collections.abc import Iterable, Iterator
from typing import IO, Any

from hepto.pki import joblog
from hepto.pki.desk import Desk
from hepto.pki.errors import AuthorityError
from hepto.pki.protocol import AUTHORITY, FAILED, Answer, Job, JobFailed, MalformedMessage


def _utc(seconds: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(seconds, tz=datetime.UTC)


def handle(job: object) -> dict[str, Any]:
    """Do one job, as JSON; the answer, as JSON, never an exception."""
    try:
        parsed = Job.from_json(job)
    except MalformedMessage as problem:
        return JobFailed(FAILED, f"not a job: {problem}").to_json()
    return do_job(parsed).to_json()


def do_job(job: Job) -> Answer | JobFailed:
    """Do one batch with a fresh desk: what it did, or why it could not."""
    config = job.config
    try:
        desk = Desk(
            config.cluster,
            config.name,
            config.role,
            config.node_dir,
            _utc(job.now),
            config.lifetime,
            # An empty key is no identity: a proof could name no one with it.
            config.identity or None,
        )
        if job.start:
            desk.start()
        else:
            assert job.memory is not None, "Job.from_json lets no resumption without memory"
            desk.resume(job.memory)
        for name in job.renew:
            desk.renew(name)
        desk.review(job.members)
    except AuthorityError as error:
        return JobFailed(AUTHORITY, str(error))
    except Exception:
        return JobFailed(FAILED, traceback.format_exc())
    return Answer(
        memory=desk.memory(),
        section=desk.section(),
        changes=tuple(desk.changes),
        installed=frozenset(desk.installed()),
        renewals=desk.renewals,
        revisits=desk.revisits,
        marks=frozenset(desk.marks),
        masters=frozenset(desk.masters),
        status=desk.status(),
    )


def _lines(descriptor: int, idle: float) -> Iterator[bytes]:
    """Lines from ``descriptor`` until it closes or stays silent ``idle`` seconds."""
    buffer = b""
    while True:
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            yield line
        ready, _, _ = select.select([descriptor], [], [], idle)
        if not ready:
            return
        chunk = os.read(descriptor, 65536)
        if not chunk:
            return
        buffer += chunk


def serve(lines: Iterable[bytes], answers: IO[str]) -> None:
    """Answer each job line, with the log events it produced."""
    for line in lines:
        try:
            job = json.loads(line)
        except ValueError as error:
            answer = JobFailed(FAILED, f"not a job: {error}").to_json()
        else:
            answer = handle(job)
        answer["log"] = joblog.take()
        answers.write(json.dumps(answer) + "\n")
        answers.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hepto.pki.worker")
    parser.add_argument(
        "--idle", type=float, required=True, help="seconds without a job before exiting"
    )
    arguments = parser.parse_args(argv)
    # Answers get a descriptor of their own; anything printed goes to standard error.
    answers = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    serve(_lines(0, arguments.idle), answers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
