"""wireguard-go, spawned and supervised by the agent and configured over its UAPI socket.

wireguard-go puts its socket at ``/var/run/wireguard/<interface>.sock``, a path it does
not let one change, and network namespaces share the filesystem: two agents on one
machine would fight over one socket.  So each wireguard-go runs in a mount namespace of
its own where the agent's socket directory is bind-mounted on ``/var/run/wireguard``::

    setpriv --pdeathsig KILL -- unshare --mount --propagation private -- \\
        sh -c 'mkdir -p /var/run/wireguard && mount --bind "$1" /var/run/wireguard \\
               && exec "$2" -f "$3"' sh <socket dir> wireguard-go hepto0

Every program in that chain ``exec``s the next, so wireguard-go keeps the pid the agent
spawned, and ``--pdeathsig KILL`` makes the kernel kill it if the agent dies: it never
outlives the agent to hold the interface hostage.  ``mount`` follows the ``/var/run``
symlink, so this works whether ``/var/run`` is ``/run`` or a directory of its own.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final

from twisted.internet import error, task
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorProcess, IReactorTime
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from hepto.backoff import Backoff, BackoffPolicy
from hepto.mesh import uapi
from hepto.mesh.backend import BackendUnavailable, DeviceStatus, PeerChange
from hepto.watch import FileWatch

MOUNT_SCRIPT: Final = (
    'mkdir -p /var/run/wireguard && mount --bind "$1" /var/run/wireguard && exec "$2" -f "$3"'
)
#: Seconds before restarting a wireguard-go that died, from one doubling up to 30; a run
#: of a minute was healthy, and the next failure starts the delays over.
RESTART: Final = BackoffPolicy(initial=1.0, maximum=30.0, stable_after=60.0)
#: Seconds for wireguard-go to open its socket (~15 ms seen) before it is killed.
READY_TIMEOUT: Final = 30.0
#: How often a FileWatch without inotify looks for the socket (wireguard-go takes ~15 ms).
FALLBACK_INTERVAL: Final = 0.05
#: wireguard-go binds its socket, then listens: a connection in between is refused.
#: Retry that many times, from 5 ms doubling (1.3 s in all).
PROBE_ATTEMPTS: Final = 9
PROBE_RETRY: Final = BackoffPolicy(initial=0.005, maximum=0.005 * 2 ** (PROBE_ATTEMPTS - 2))
#: Seconds between SIGTERM and SIGKILL on stop.
STOP_TIMEOUT: Final = 10.0


def command(
    socket_dir: Path, interface: str, program: str = "wireguard-go", wrapper: Sequence[str] = ()
) -> list[str]:
    """The argv that runs ``program`` for ``interface`` with its socket in ``socket_dir``.

    ``wrapper`` goes first, for tests that run it in a network namespace
    (``ip netns exec NAME``): it too must exec, not fork.  ``setsid`` puts it in a
    session of its own, as the supervisor does with every child: a signal to the agent's
    process group (a terminal's Ctrl-C, a service manager's stop) reaches the agent
    alone, which stops the mesh last, instead of killing it under the other components.
    """
    return [
        *wrapper,
        "setsid",
        "setpriv",
        "--pdeathsig",
        "KILL",
        "--",
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "--",
        "sh",
        "-c",
        MOUNT_SCRIPT,
        "sh",
        str(socket_dir),
        program,
        interface,
    ]


class WireGuardGoProtocol(ProcessProtocol):
    """One run of wireguard-go: its output goes to the log, its end fires ``ended``."""

    log = Logger()

    def __init__(self, interface: str) -> None:
        self.interface = interface
        #: Fires (with None) once the process is reaped and its pipes closed.
        self.ended: Deferred[None] = Deferred()
        self.reason: Failure | None = None
        self._partial = {1: b"", 2: b""}

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        lines = (self._partial.get(childFD, b"") + data).split(b"\n")
        self._partial[childFD] = lines.pop()
        for line in lines:
            self._line(line)

    def _line(self, raw: bytes) -> None:
        line = raw.decode("utf-8", "replace").rstrip()
        if not line:
            return
        # wireguard-go prefixes "ERROR: (iface) ..." and "DEBUG: ..."; the rest is a banner.
        if line.startswith("ERROR"):
            self.log.warn("wireguard-go {interface}: {line}", interface=self.interface, line=line)
        else:
            self.log.debug("wireguard-go {interface}: {line}", interface=self.interface, line=line)

    def processEnded(self, reason: Failure) -> None:
        for fd, rest in self._partial.items():
            if rest:
                self._line(rest)
            self._partial[fd] = b""
        self.reason = reason
        self.ended.callback(None)


class UserspaceBackend:
    """wireguard-go for one interface, restarted with backoff whenever it dies.

    ``start`` fires once the first wireguard-go answers on its socket; after a restart,
    the ``recreated`` callback says the device is back, empty.
    """

    kind = "userspace"
    log = Logger()

    def __init__(
        self,
        reactor: Any,
        interface: str,
        socket_dir: Path,
        program: str = "wireguard-go",
        wrapper: Sequence[str] = (),
        environment: dict[str, str] | None = None,
        watch: Callable[[Path], FileWatch] | None = None,
        restart: BackoffPolicy = RESTART,
        ready_timeout: float = READY_TIMEOUT,
    ) -> None:
        self.reactor = reactor
        self.interface = interface
        self.socket_dir = socket_dir
        self.socket = socket_dir / f"{interface}.sock"
        self.argv = command(socket_dir, interface, program, wrapper)
        self.environment = dict(os.environ if environment is None else environment)
        # Errors only: wireguard-go's debug output is a line per packet event.
        self.environment.setdefault("LOG_LEVEL", "error")
        self.client = uapi.UAPIClient(reactor, self.socket)
        self._make_watch = watch or (
            lambda directory: FileWatch(reactor, directory, FALLBACK_INTERVAL)
        )
        self._watch: FileWatch | None = None
        self.ready_timeout = ready_timeout
        self.process: Any = None
        self.pid: int | None = None
        self.restarts = 0
        self._backoff = Backoff(restart)
        self._started_at = 0.0
        self._ready = False
        self._stopping = False
        self._first: Deferred[None] | None = None
        self._recreated: Callable[[], None] = lambda: None
        self._restart_call: IDelayedCall | None = None
        self._protocol: WireGuardGoProtocol | None = None
        self._appeared: Deferred[None] | None = None

    @property
    def running(self) -> bool:
        return self._ready and self.process is not None

    def start(self, recreated: Callable[[], None]) -> Deferred[None]:
        self._recreated = recreated
        self.socket_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._watch = self._make_watch(self.socket_dir)
        self._first = Deferred()
        self._spawn()
        return self._first

    def _spawn(self) -> None:
        self._restart_call = None
        # A wireguard-go killed by SIGKILL leaves its socket; the new one's creation must
        # be what we see.  The directory is ours alone.
        self.socket.unlink(missing_ok=True)
        # A new process, a new connection (the last one's end may not have been read yet).
        self.client.close()
        protocol = WireGuardGoProtocol(self.interface)
        self._protocol = protocol
        self._ready = False
        assert self._watch is not None
        appeared = self._appeared = self._watch.appeared(self.socket.name)
        try:
            process = IReactorProcess(self.reactor).spawnProcess(
                protocol, self.argv[0], self.argv, env=self.environment
            )
        except OSError as spawn_error:
            appeared.cancel()
            self._failed(Failure(spawn_error))
            return
        self.process = process
        self.pid = process.pid
        self._started_at = IReactorTime(self.reactor).seconds()
        self.log.info(
            "Started wireguard-go for {interface} (pid {pid}), socket {socket}",
            interface=self.interface,
            pid=self.pid,
            socket=str(self.socket),
        )
        protocol.ended.addCallback(self._ended, protocol)
        appeared.addTimeout(self.ready_timeout, self.reactor)
        appeared.addCallback(lambda _: Deferred.fromCoroutine(self._probe()))
        appeared.addCallbacks(
            self._answered,
            self._not_answering,
            callbackArgs=(protocol,),
            errbackArgs=(protocol,),
        )

    async def _probe(self) -> DeviceStatus:
        """A first ``get``; the socket file exists a moment before it accepts connections."""
        refusals = Backoff(PROBE_RETRY)
        for _ in range(PROBE_ATTEMPTS - 1):
            try:
                return await self.client.get()
            except error.ConnectionRefusedError:
                await task.deferLater(self.reactor, refusals.failed())
        return await self.client.get()

    def _answered(self, _: DeviceStatus, protocol: WireGuardGoProtocol) -> None:
        if protocol is not self._protocol or self._stopping:
            return
        self._ready = True
        self.log.info(
            "wireguard-go for {interface} answers on {socket}",
            interface=self.interface,
            socket=str(self.socket),
        )
        first, self._first = self._first, None
        if first is None:
            self._recreated()
        elif not first.called:  # (it is, when cancelled)
            first.callback(None)

    def _not_answering(self, reason: Failure, protocol: WireGuardGoProtocol) -> None:
        if protocol is not self._protocol or self._stopping or self.process is None:
            return  # It ended already, and _ended deals with that.
        self.log.failure(
            "wireguard-go for {interface} did not answer on {socket}; killing it",
            reason,
            interface=self.interface,
            socket=str(self.socket),
        )
        self._signal("KILL")

    def _ended(self, _: None, protocol: WireGuardGoProtocol) -> None:
        if protocol is not self._protocol:
            return
        self.process = None
        self._ready = False
        if self._appeared is not None and not self._appeared.called:
            self._appeared.cancel()
        if self._stopping:
            return
        assert protocol.reason is not None
        self._failed(protocol.reason)

    def _failed(self, reason: Failure) -> None:
        lived = IReactorTime(self.reactor).seconds() - self._started_at
        delay = self._backoff.failed(lived)
        self.restarts += 1
        # Scheduled before logging: an observer may well stop us from within the log call.
        self._restart_call = IReactorTime(self.reactor).callLater(delay, self._spawn)
        self.log.warn(
            "wireguard-go for {interface} ended ({reason}) after {lived:.1f} s; "
            "restarting in {delay} s",
            interface=self.interface,
            reason=reason.getErrorMessage(),
            lived=lived,
            delay=delay,
        )

    def _signal(self, name: str) -> None:
        if self.process is None:
            return
        try:
            self.process.signalProcess(name)
        except error.ProcessExitedAlready:
            pass

    def _device(self) -> uapi.UAPIClient:
        if not self.running:
            raise BackendUnavailable(f"wireguard-go for {self.interface} is not running")
        return self.client

    def read(self) -> Deferred[DeviceStatus]:
        return Deferred.fromCoroutine(self._read())

    async def _read(self) -> DeviceStatus:
        return await self._device().get()

    def configure(self, private_key: str, listen_port: int) -> Deferred[None]:
        return Deferred.fromCoroutine(self._set(uapi.set_request(private_key, listen_port)))

    def apply(self, changes: Sequence[PeerChange]) -> Deferred[None]:
        return Deferred.fromCoroutine(self._set(uapi.set_request(changes=changes)))

    async def _set(self, request: bytes) -> None:
        await self._device().set(request)

    def stop(self) -> Deferred[None]:
        """SIGTERM (wireguard-go then removes its link and socket), SIGKILL if it lingers."""
        self._stopping = True
        if self._restart_call is not None and self._restart_call.active():
            self._restart_call.cancel()
        self._restart_call = None
        first, self._first = self._first, None
        if first is not None and not first.called:
            first.errback(BackendUnavailable("stopped before wireguard-go answered"))
        if self._watch is not None:
            self._watch.close()
            self._watch = None
        closing = self.client.close()
        protocol = self._protocol
        if self.process is None or protocol is None:
            return closing
        done: Deferred[Any] = Deferred()
        protocol.ended.addBoth(done.callback)
        self._signal("TERM")
        killer = IReactorTime(self.reactor).callLater(STOP_TIMEOUT, self._signal, "KILL")

        def ended(_: object) -> Deferred[None]:
            if killer.active():
                killer.cancel()
            self.log.info("wireguard-go for {interface} stopped", interface=self.interface)
            return closing

        return done.addCallback(ended)
