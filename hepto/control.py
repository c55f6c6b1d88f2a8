"""The local control socket: ``hepto status`` asks the running agent what it sees.

A unix socket in the node's directory (owner-only, as the directory itself), speaking
line-delimited JSON: one request object per line, one response object per line.
``docs/gossip-state.rst`` documents the schema.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final, cast

from twisted.application.service import Service
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IListeningPort, IReactorUNIX
from twisted.internet.protocol import ServerFactory
from twisted.logger import Logger
from twisted.protocols.basic import LineOnlyReceiver
from twisted.python.failure import Failure

from hepto.unixpath import ShortPath

SOCKET_NAME: Final = "control.sock"
MAX_LINE: Final = 64 * 1024
#: The largest response a client reads: a status of 10,000 members is ~1.5 MiB.
MAX_RESPONSE: Final = 64 * 1024 * 1024

Section = Callable[[], Mapping[str, Any]]
#: A command answers at once, or later (a Deferred: ``hepto backup`` waits for one).
Answer = Mapping[str, Any] | Deferred[Mapping[str, Any]]
Command = Callable[[Mapping[str, Any]], Answer]


class ControlError(Exception):
    """The agent could not be asked, or refused the request; the message says why."""


class RequestError(Exception):
    """A command refuses its request; the message is sent back as the error."""


class _ControlProtocol(LineOnlyReceiver):
    delimiter = b"\n"
    MAX_LENGTH = MAX_LINE

    def __init__(self, service: ControlService) -> None:
        self.service = service

    def lineReceived(self, line: bytes) -> None:
        try:
            request = json.loads(line)
        except ValueError:
            self._reply({"error": "the request is not JSON"})
            return
        if not isinstance(request, dict) or not isinstance(request.get("command"), str):
            self._reply({"error": 'a request is an object like {"command": "status"}'})
            return
        answer = self.service.answer(request)
        if isinstance(answer, Deferred):
            answer.addCallback(self._reply)
        else:
            self._reply(answer)

    def lineLengthExceeded(self, line: bytes) -> None:
        self._reply({"error": f"request longer than {MAX_LINE} bytes"})
        self.transport.loseConnection()  # type: ignore[union-attr]

    def _reply(self, response: Mapping[str, Any]) -> None:
        if self.transport is None or self.transport.disconnecting:  # type: ignore[attr-defined]
            return  # the client left before a late answer came
        text = json.dumps(response, separators=(",", ":"), default=str)
        self.sendLine(text.encode("utf-8"))


class _ControlFactory(ServerFactory):
    noisy = False

    def __init__(self, service: ControlService) -> None:
        self.service = service

    def buildProtocol(self, addr: Any) -> _ControlProtocol:
        return _ControlProtocol(self.service)


class ControlService(Service):
    """Serves ``status``: the ``core`` object, plus one key per registered section.

    Other services add theirs with ``sections["mesh"] = callable`` (a JSON-able mapping):
    a section that raises is reported as ``{"error": ...}`` and spoils nothing else.
    More commands are added with ``commands["name"] = callable(request) -> response``, or a
    Deferred of the response for a command that takes time.
    """

    log = Logger(namespace="hepto.control")

    def __init__(self, path: Path, core: Section, reactor: IReactorUNIX) -> None:
        self.path = path
        self.core = core
        self.reactor = reactor
        self.sections: dict[str, Section] = {}
        self.commands: dict[str, Command] = {"status": lambda request: self.status()}
        self._port: IListeningPort | None = None
        self._bound: ShortPath | None = None
        self.setName("control")

    def answer(self, request: Mapping[str, Any]) -> Answer:
        """The command's answer, or a Deferred of it; never an exception, never a failure."""
        command = request["command"]
        handler = self.commands.get(command)
        if handler is None:
            return {"error": f"unknown command {command!r}; known: {', '.join(self.commands)}"}
        # maybeDeferred flattens a Deferred answer into the one it returns.
        answered = cast("Deferred[Mapping[str, Any]]", maybeDeferred(handler, request))
        answered.addErrback(self._refused, command)
        if answered.called:
            # Answered at once: no Deferred for the common case (status).
            result: list[Mapping[str, Any]] = []
            answered.addCallback(result.append)
            return result[0]
        return answered

    def _refused(self, failure: Failure, command: str) -> Mapping[str, Any]:
        if failure.check(RequestError):
            return {"error": str(failure.value)}
        self.log.failure("The control command {command} failed", failure, command=command)
        return {"error": f"{command} failed: {failure.value!r}"}

    def status(self) -> dict[str, Any]:
        result = dict(self.core())
        for name, section in self.sections.items():
            try:
                result[name] = dict(section())
            except Exception as error:
                self.log.failure("The status section {section} failed", section=name)
                result[name] = {"error": repr(error)}
        return result

    def startService(self) -> None:
        # The descriptor stays open while listening: the lock and the unlink at stop use
        # the same path.
        self._bound = ShortPath(self.path)
        try:
            # wantPID takes a lock beside the socket, and removes a socket left by a dead
            # agent; the node directory is owner-only, so mode 0600 is never even raced.
            self._port = self.reactor.listenUNIX(
                self._bound.path, _ControlFactory(self), mode=0o600, wantPID=True
            )
        except BaseException:
            self._bound.close()
            raise
        super().startService()

    def stopService(self) -> Any:
        super().stopService()
        port, self._port = self._port, None
        bound, self._bound = self._bound, None
        stopped = maybeDeferred(port.stopListening) if port is not None else succeed(None)
        return stopped.addBoth(lambda result: bound.close() if bound is not None else None)


def query(
    socket_path: Path | str, command: str = "status", timeout: float = 10.0, **arguments: Any
) -> dict[str, Any]:
    """Ask the agent listening on ``socket_path``; raises ControlError with a clear reason."""
    path = str(socket_path)
    try:
        bindable = ShortPath(Path(path))
    except FileNotFoundError:
        raise ControlError(
            f"no hepto agent is running for this node ({Path(path).parent} does not exist)"
        ) from None
    except OSError as error:
        raise ControlError(f"cannot reach the agent at {path}: {error.strerror}") from None
    try:
        return _query(bindable.path, path, {**arguments, "command": command}, timeout)
    finally:
        bindable.close()


def _query(
    connect_to: str, path: str, request: Mapping[str, Any], timeout: float
) -> dict[str, Any]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
        connection.settimeout(timeout)
        try:
            connection.connect(connect_to)
        except FileNotFoundError:
            raise ControlError(
                f"no hepto agent is running for this node ({path} does not exist)"
            ) from None
        except ConnectionRefusedError:
            raise ControlError(
                f"no hepto agent is listening on {path} (left over by an agent that died?)"
            ) from None
        except PermissionError:
            raise ControlError(
                f"not allowed to open {path}: run as the agent's user (usually root)"
            ) from None
        except OSError as error:
            raise ControlError(f"cannot reach the agent at {path}: {error.strerror}") from None
        try:
            connection.sendall(json.dumps(request).encode() + b"\n")
            response = _read_line(connection)
        except TimeoutError:
            raise ControlError(f"the agent did not answer within {timeout:g} s") from None
        except OSError as error:
            raise ControlError(f"lost the agent at {path}: {error.strerror}") from None
    try:
        answer = json.loads(response)
    except ValueError:
        raise ControlError("the agent's answer is not JSON") from None
    if not isinstance(answer, dict):
        raise ControlError("the agent's answer is not a JSON object")
    if "error" in answer:
        raise ControlError(f"the agent refused: {answer['error']}")
    return answer


def _read_line(connection: socket.socket) -> bytes:
    chunks = []
    size = 0
    while True:
        chunk = connection.recv(65536)
        if not chunk:
            raise ControlError("the agent closed the connection without answering")
        chunks.append(chunk)
        size += len(chunk)
        if chunk.endswith(b"\n"):
            return b"".join(chunks)
        if size > MAX_RESPONSE:
            raise ControlError(f"the agent's answer exceeds {MAX_RESPONSE} bytes")
