"""MeshService: keeps this node's WireGuard device equal to the cluster's membership.

On start it takes the node's key pair (its identity's: :mod:`hepto.mesh.keys`), finds
the underlay (the public address peers reach it on, and that link's MTU:
:mod:`hepto.mesh.underlay`), brings up a backend (the kernel's WireGuard if it has one,
else wireguard-go), and publishes ``wireguard`` in its record (as soon as it knows its
key and endpoint, before the device is up: see :meth:`MeshService._bring_up`).
Then every state change asks for a reconcile pass.  Passes never overlap, a burst of
changes makes one pass (:mod:`hepto.mesh.passes`), and a pass whose desired mesh equals
the last one applied does no I/O at all.  Forced passes (after wireguard-go came back,
and every ``resync_interval`` to refresh the status and undo hand edits) read the
device and still change only what differs.
"""

from __future__ import annotations

import collections
import datetime
import enum
import ipaddress
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from typing import Any, Final, Protocol

import attrs
from nacl.signing import SigningKey
from twisted.application.service import Service
from twisted.internet import defer, task
from twisted.internet.defer import Deferred, TimeoutError
from twisted.internet.error import ConnectError, ConnectionLost
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from hepto import plan
from hepto.backoff import Backoff, BackoffPolicy
from hepto.config import Endpoint, NodeConfig
from hepto.machine import Transitions
from hepto.mesh import record
from hepto.mesh.backend import (
    AddPeer,
    Backend,
    BackendUnavailable,
    DeviceStatus,
    describe,
    summarize,
)
from hepto.mesh.greetings import Greeter, Greetings, greets_first
from hepto.mesh.keys import KeyPair
from hepto.mesh.links import LinkMissing, Links
from hepto.mesh.passes import PassScheduler
from hepto.mesh.reconcile import (
    DEFAULT_KEEPALIVE,
    Candidates,
    Desired,
    Problem,
    after_changes,
    concerns_mesh,
    desired_mesh,
    mesh_mtu,
    own_addresses,
    plan_peer_changes,
)
from hepto.mesh.rtnetlink import RtNetlink
from hepto.mesh.uapi import UAPIProtocolError
from hepto.mesh.underlay import Underlay, find_underlay, wait_for_underlay
from hepto.once import Once
from hepto.state import Change, ClusterState

#: The mesh interface; "hepto" says who owns it in ``ip link``, and it avoids ``wg0``,
#: which an operator's own WireGuard may already use.
DEFAULT_INTERFACE: Final = "hepto0"
#: WireGuard's customary port: the one firewall rules and documentation expect.
DEFAULT_LISTEN_PORT: Final = 51820
#: Seconds between forced passes.  They keep the status fresh (handshakes, byte counts:
#: nothing announces those) and undo hand edits; when nothing drifted, one costs a device
#: read and three netlink dumps, and changes nothing.
RESYNC_INTERVAL: Final = 10.0
#: Seconds before retrying a failed pass, doubling up to the resync interval.
RETRY_DELAY: Final = 1.0
#: Changes of one pass logged a line each; more make one line (a joiner's first pass
#: adds a peer per member: a hundred lines, and 5 % of its CPU, at 100 members).
DESCRIBED_CHANGES: Final = 8


#: What a pass may meet while wireguard-go restarts: logged without a traceback.
TRANSIENT: Final = (
    BackendUnavailable,
    LinkMissing,
    ConnectError,
    ConnectionLost,
    UAPIProtocolError,
    TimeoutError,
)


class Phase(enum.Enum):
    """Where the mesh is: ``hepto status`` shows it."""

    STOPPED = "stopped"
    #: Taking its keys, waiting for the underlay, bringing up a backend.
    STARTING = "starting"
    RUNNING = "running"
    #: It cannot start (no backend at all): ``error`` says why; only a stop follows.
    FAILED = "failed"


class PhaseInput(enum.Enum):
    START = "start"
    STARTED = "started"
    START_FAILED = "start failed"
    STOP = "stop"
    #: A reconcile pass is wanted: a change of state, a recreated device, a resync.
    WANTED = "pass wanted"


@attrs.frozen
class MeshSettings:
    cluster: str
    name: str
    is_master: bool
    interface: str = DEFAULT_INTERFACE
    listen_port: int = DEFAULT_LISTEN_PORT
    keepalive: int = DEFAULT_KEEPALIVE
    resync_interval: float = RESYNC_INTERVAL


def _timestamp(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    moment = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


class MasterSource(Protocol):
    """Who the cluster CA proves masters: :class:`hepto.pki.service.PKIService`."""

    @property
    def masters(self) -> frozenset[str]: ...

    def subscribe_masters(
        self, listener: Callable[[frozenset[str]], None]
    ) -> Callable[[], None]: ...


class ReachSource(Protocol):
    """Who reaches this node unprompted: :class:`hepto.gossip.reach.Reach`.

    Read by every pass, and followed by none: what it learns (the answer to a knock,
    every member at every join) is applied by the next pass, the resync at the latest.
    A pass of its own cost every member a few milliseconds per join, to change a
    keepalive of 25 s ten seconds sooner.
    """

    @property
    def unprompted(self) -> frozenset[str]: ...


class MeshService(Service):
    """The WireGuard mesh of one node; its name is ``mesh``.

    Its phase is a transition table, :data:`PHASES`, below the class; a
    :class:`~hepto.mesh.passes.PassScheduler` times its reconcile passes.
    """

    name = "mesh"
    log = Logger()

    def __init__(
        self,
        settings: MeshSettings,
        state: ClusterState,
        reactor: Any,
        keys: Callable[[], KeyPair],
        backends: Sequence[Callable[[], Backend]],
        links: Links,
        underlay: Callable[[], Underlay | None],
        masters: MasterSource | None = None,
        reach: ReachSource | None = None,
        greeter: Greeter | None = None,
    ) -> None:
        self.settings = settings
        self.state = state
        self.reactor = reactor
        self._make_keys = keys
        #: Who the cluster CA proves masters (the PKI); None: every record's own word.
        self._masters = masters
        self._unsubscribe_masters: Callable[[], None] | None = None
        #: Who reaches us unprompted; None: nobody is known to, every peer keeps alive.
        self._reach = reach
        self._backend_factories = tuple(backends)
        self.links = links
        self._find_underlay = underlay
        self.keys: KeyPair | None = None
        self.underlay: Underlay | None = None
        self.backend: Backend | None = None
        self._phase = Phase.STOPPED
        self._passes = PassScheduler(reactor, self._run)
        self.error: str | None = None
        #: Counted reasons for leaving a member (or part of its record) out of the mesh.
        self.drops: collections.Counter[str] = collections.Counter()
        self.passes = 0
        #: Passes that failed (and were retried); never reset.
        self.pass_failures = 0
        self.device_reads = 0
        self._problems: frozenset[Problem] = frozenset()
        self._device: DeviceStatus | None = None
        self._device_at: float | None = None
        self._applied: Desired | None = None
        #: What the passes took of each record, kept from pass to pass (desired_mesh).
        self._candidates: Candidates = {}
        #: The link's addresses, routes and MTU as the last pass made them (None: unknown).
        self._synced: (
            tuple[frozenset[ipaddress.IPv6Address], frozenset[ipaddress.IPv6Network], int] | None
        ) = None
        self._starting: Deferred[None] | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self._resync: task.LoopingCall | None = None
        self._retry: IDelayedCall | None = None
        # A failed pass is retried sooner than the next resync, and never later.
        retries = BackoffPolicy(RETRY_DELAY, maximum=max(RETRY_DELAY, settings.resync_interval))
        self._retries = Backoff(retries)
        #: Whether the next pass reads the device even if nothing changed since the last.
        self._force = False
        #: New peers that greet us first, and when we greet them (hepto.mesh.greetings).
        self._greetings = Greetings()
        self._greeting_call: IDelayedCall | None = None
        #: Greets by datagram the peers that get no keepalive (hepto.mesh.greetings).
        self.greeter = greeter if greeter is not None else Greeter(log=self.log)
        self._addresses_up: Once[None] = Once()

    @property
    def phase(self) -> str:
        return self._phase.value

    @property
    def mtu(self) -> int | None:
        return None if self.underlay is None else mesh_mtu(self.underlay.mtu)

    @property
    def endpoint(self) -> Endpoint | None:
        if self.underlay is None:
            return None
        return Endpoint(self.underlay.address, self.settings.listen_port)

    @property
    def addresses(self) -> frozenset[ipaddress.IPv6Address]:
        settings = self.settings
        return own_addresses(settings.cluster, settings.name, settings.is_master)

    def when_addresses_ready(self) -> Deferred[None]:
        """Fires once this node's mesh addresses (and the apiserver's) are on the interface.

        For the services that bind to them, such as etcd and kube-apiserver.
        """
        return self._addresses_up.when()

    # Starting and stopping

    def startService(self) -> None:
        super().startService()
        self._phase_input(PhaseInput.START)

    def _phase_input(self, input: PhaseInput, *args: Any) -> None:
        # The state first: an input that comes during the output meets the new one.
        self._phase, output = PHASES.step(self._phase, input)
        output(self, *args)

    def _start(self) -> None:
        starting = self._starting = Deferred.fromCoroutine(self._bring_up())
        starting.addCallbacks(
            self._start_answered,
            self._start_answered,
            callbackArgs=(starting,),
            errbackArgs=(starting,),
        )

    async def _bring_up(self) -> None:
        self.keys = self._make_keys()
        self.underlay = await wait_for_underlay(self._find_underlay, self.reactor, self.log)
        # Published before the device is up, so that a joiner's first record carries its
        # key: every member fetches one record of it, not two.  A peer's greeting that
        # arrives before our device has the key is lost; our first pass greets every
        # peer, and those handshakes bring the tunnels up (docs/mesh.rst, "The record").
        self._publish()
        self.backend = await self._bring_up_backend()

    def _start_answered(self, result: object, starting: Deferred[None]) -> None:
        if starting is not self._starting:
            return  # Stopped while starting: the failure is the stop's doing.
        self._starting = None
        if isinstance(result, Failure):
            self._phase_input(PhaseInput.START_FAILED, result)
        else:
            self._phase_input(PhaseInput.STARTED)

    def _up(self) -> None:
        assert self.backend is not None
        self.log.info(
            "Mesh up on {interface} ({backend}): {addresses}, endpoint {endpoint}, mtu {mtu}",
            interface=self.settings.interface,
            backend=self.backend.kind,
            addresses=", ".join(sorted(str(address) for address in self.addresses)),
            endpoint=str(self.endpoint),
            mtu=self.mtu,
        )
        self._unsubscribe = self.state.subscribe(self._changed)
        if self._masters is not None:
            self._unsubscribe_masters = self._masters.subscribe_masters(lambda _: self._wanted())
        self._resync = task.LoopingCall(self._wanted, True)
        self._resync.clock = self.reactor
        self._resync.start(self.settings.resync_interval, now=False)
        self._wanted(force=True)

    async def _bring_up_backend(self) -> Backend:
        reasons = []
        for make in self._backend_factories:
            backend = make()
            self.backend = backend  # so that a stop meanwhile stops it too
            try:
                await backend.start(self._recreated)
            except BackendUnavailable as error:
                self.backend = None
                reasons.append(f"{backend.kind}: {error}")
                self.log.info(
                    "WireGuard backend {backend} unavailable ({reason}); trying the next",
                    backend=backend.kind,
                    reason=str(error),
                )
                continue
            self.log.info(
                "WireGuard backend: {backend} for {interface}",
                backend=backend.kind,
                interface=self.settings.interface,
            )
            return backend
        raise MeshError("no usable WireGuard backend (" + "; ".join(reasons) + ")")

    def _start_failed(self, reason: Failure) -> None:
        self.error = reason.getErrorMessage()
        self._withdraw()
        if reason.check(MeshError):
            self.log.critical("The mesh cannot start: {error}", error=self.error)
        else:
            self.log.failure("The mesh cannot start", reason)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        self._phase_input(PhaseInput.STOP)
        self._passes.stop()
        for call in (self._retry, self._greeting_call):
            if call is not None and call.active():
                call.cancel()
        self._retry = self._greeting_call = None
        # A later start finds its device anew: nothing of this run is assumed.
        self._applied = None
        self._greetings.clear()
        self.greeter.close()
        self._synced = None
        self._force = False
        # Whatever the phase, the backend made (even one still starting) goes.
        backend, self.backend = self.backend, None
        if backend is None:
            return defer.succeed(None)
        stopped = backend.stop()
        stopped.addErrback(
            lambda reason: self.log.failure("Stopping the mesh backend failed", reason)
        )
        return stopped

    def _abandon_start(self) -> None:
        starting, self._starting = self._starting, None
        if starting is not None:
            starting.cancel()

    def _stop_following(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self._unsubscribe_masters is not None:
            self._unsubscribe_masters()
            self._unsubscribe_masters = None
        if self._resync is not None and self._resync.running:
            self._resync.stop()
        self._resync = None

    def _nothing(self) -> None:
        pass

    def _publish(self) -> None:
        assert self.keys is not None and self.endpoint is not None
        value = record.wireguard_value(self.keys.public_key, self.endpoint)
        if self._published() != value:
            self.state.publish(record.WIREGUARD, value)

    def _withdraw(self) -> None:
        """No device will answer: peers stop greeting one (our record loses ``wireguard``)."""
        if self._published() is not None:
            self.state.publish(record.WIREGUARD, None)

    def _published(self) -> object:
        """Our record's ``wireguard`` as the cluster holds it (None: none)."""
        own = self.state.members().get(self.state.name)
        return None if own is None or own.record is None else own.record.get(record.WIREGUARD)

    # Reconciling

    def _changed(self, change: Change) -> None:
        if concerns_mesh(change):
            self._wanted()

    def _recreated(self) -> None:
        self.log.info(
            "The WireGuard device {interface} came back empty; configuring it again",
            interface=self.settings.interface,
        )
        self._wanted(force=True)

    def _wanted(self, force: bool = False) -> None:
        """Ask for a pass: passes never overlap, and a burst of changes makes one pass."""
        self._force = self._force or force
        self._phase_input(PhaseInput.WANTED)

    def _ask_for_a_pass(self) -> None:
        self._passes.want()

    def _run(self) -> Deferred[None]:
        force, self._force = self._force, False
        running = Deferred.fromCoroutine(self._pass(force))
        return running.addCallbacks(self._passed, self._pass_failed)

    def _passed(self, _: object) -> None:
        self._retries.reset()

    def _pass_failed(self, reason: Failure) -> None:
        if not self.running:
            return
        self.pass_failures += 1
        self._applied = None
        self._synced = None
        delay = self._retries.failed()
        self._retry = self.reactor.callLater(delay, self._retry_now)
        if reason.check(*TRANSIENT):
            # wireguard-go restarting, its socket or link briefly gone: no traceback.
            self.log.warn(
                "Mesh reconcile failed ({error}); retrying in {delay} s",
                error=reason.getErrorMessage() or repr(reason.value),
                delay=delay,
            )
        else:
            self.log.failure("Mesh reconcile failed; retrying in {delay} s", reason, delay=delay)

    def _retry_now(self) -> None:
        self._retry = None
        self._wanted(force=True)

    def _greeted(self) -> frozenset[str]:
        """The peers the device has (and has greeted, or been greeted by)."""
        if self._applied is None:
            return frozenset()
        return frozenset(peer.name for peer in self._applied.peers.values())

    def _unprompted(self) -> frozenset[str]:
        """The members that reach us unprompted: their peers need no keepalive."""
        return frozenset() if self._reach is None else self._reach.unprompted

    def _note_greetings(self, now: float) -> None:
        """New peers that greet us first wait for their greeting, which comes on time."""
        own = self.settings.name
        peers = [
            name
            for name, member in self.state.members().items()
            if name != own
            and member.reachable
            and member.record is not None
            and member.record.get(record.WIREGUARD)
        ]
        self._greetings.note(own, peers, self._greeted(), now)
        self._time_greetings(now)

    def _time_greetings(self, now: float) -> None:
        if self._greeting_call is not None and self._greeting_call.active():
            self._greeting_call.cancel()
        when = self._greetings.next_due(now)
        self._greeting_call = (
            None if when is None else self.reactor.callLater(when - now, self._greetings_due)
        )

    def _greetings_due(self) -> None:
        """Greet the peers whose turn came: by datagram, or by a keepalive that a pass sets."""
        self._greeting_call = None
        now = self.reactor.seconds()
        due = self._greetings.due(now)
        if due - self._unprompted():
            self._wanted()  # the pass greets the others too
            return
        # Only peers the device has: one still being added is greeted by its pass.
        self._greet(due & self._greeted(), ())
        self._time_greetings(now)

    def _greet(self, due: frozenset[str], added: Iterable[str]) -> None:
        """``due`` have had their greeting, and new peers (``added``) that we greet first
        theirs: by a datagram where the device gives them no keepalive to greet with."""
        own = self.settings.name
        first = {name for name in added if greets_first(own, name)}
        for name in sorted((due | first) & self._unprompted()):
            self.greeter.greet(plan.mesh_address(self.settings.cluster, name))
        self._greetings.greeted(due)

    def desired(self) -> Desired:
        assert self.keys is not None
        settings = self.settings
        now = self.reactor.seconds()
        # One end of a new tunnel greets at once, the other a little later (greetings);
        # those that reach us unprompted get no keepalive, and a datagram greets them.
        quiet = self._greetings.waiting(now) | self._unprompted()
        return desired_mesh(
            settings.cluster,
            settings.name,
            settings.is_master,
            self.keys.public_key,
            self.state.members(),
            settings.keepalive,
            None if self._masters is None else self._masters.masters,
            quiet,
            self._candidates,
        )

    async def _pass(self, force: bool) -> None:
        assert self.keys is not None and self.backend is not None and self.mtu is not None
        now = self.reactor.seconds()
        self._note_greetings(now)
        greetings = self._greetings.due(now)
        desired = self.desired()
        self._report(desired.problems)
        if not force and desired == self._applied:
            self._greet(greetings, ())
            return
        self.passes += 1
        backend = self.backend
        # A device holds what it was told: a pass that a change of membership asked for
        # plans against the device as last read and told since, and only a forced pass
        # (the resync, a recreated device, a retry) reads it again.  A read costs ~10 ms
        # of parsing at 100 peers, on every member at every join.
        device = self._device
        if force or device is None:
            device = await self._read(backend)
        if (
            device.private_key != self.keys.private_key
            or device.listen_port != self.settings.listen_port
        ):
            await backend.configure(self.keys.private_key, self.settings.listen_port)
            device = attrs.evolve(
                device, private_key=self.keys.private_key, listen_port=self.settings.listen_port
            )
            self._device = device
            self.log.info(
                "Set the key and port {port} of {interface}",
                port=self.settings.listen_port,
                interface=self.settings.interface,
            )
        # The link goes up before peers are added: wireguard-go and the kernel greet a
        # peer given a keepalive at once, but only on an interface that is up.  Most
        # passes change peers alone: the link is looked at when its wishes changed, and
        # on every forced pass (the resync), which repairs what others changed.  When only
        # routes changed since the last look (a member came or went with its pod prefix),
        # those routes are all the pass touches.
        link = (self.addresses, desired.routes, self.mtu)
        if force or link != self._synced:
            synced, self._synced = self._synced, None
            if force or synced is None or (synced[0], synced[2]) != (link[0], link[2]):
                done = self.links.sync(*link)
            else:
                before = synced[1]
                done = self.links.change_routes(link[1] - before, before - link[1])
            self._synced = link
            if done:
                self.log.info(
                    "Mesh interface {interface}: {done}",
                    interface=self.settings.interface,
                    done=", ".join(done),
                )
        if not self._addresses_up.done:
            self._addresses_up.fire(None)
        previous = {} if self._applied is None else self._applied.peers
        changes = plan_peer_changes(desired.peers, device.peers, previous)
        if changes:
            await backend.apply(changes)
            if len(changes) > DESCRIBED_CHANGES:
                self.log.info("Mesh: {change}", change=summarize(changes))
            else:
                for change in changes:
                    self.log.info("Mesh: {change}", change=describe(change))
            # For the status and the next pass, without a second read: it holds what
            # it was told.
            self._device = after_changes(device, changes)
        self._applied = desired
        self._greet(greetings, (c.spec.name for c in changes if isinstance(c, AddPeer)))

    async def _read(self, backend: Backend) -> DeviceStatus:
        device = await backend.read()
        self.device_reads += 1
        self._device = device
        self._device_at = self.reactor.seconds()
        return device

    def _report(self, problems: frozenset[Problem]) -> None:
        """Log and count each problem once, when it appears, not on every pass."""
        for problem in sorted(problems - self._problems, key=lambda p: (p.member, p.reason)):
            self.drops[problem.kind] += 1
            self.log.warn(
                "Leaving out of the mesh (in part) member {member}: {reason}",
                member=problem.member,
                reason=problem.reason,
            )
        self._problems = problems

    # Status

    def status(self) -> dict[str, Any]:
        """What ``hepto status`` shows of the mesh: a JSON-compatible dict.

        Peers come from the device as last read: at most ``resync_interval`` old, and
        ``as_of`` says when.
        """
        names = (
            {key: spec.name for key, spec in self._applied.peers.items()} if self._applied else {}
        )
        device = self._device
        peers = None
        if device is not None:
            peers = [
                {
                    "name": names.get(key),
                    "public_key": key,
                    "endpoint": peer.endpoint,
                    "allowed_ips": sorted(str(network) for network in peer.allowed_ips),
                    "persistent_keepalive": peer.keepalive,
                    "last_handshake": _timestamp(peer.last_handshake),
                    "rx_bytes": peer.rx_bytes,
                    "tx_bytes": peer.tx_bytes,
                }
                for key, peer in sorted(
                    device.peers.items(), key=lambda item: (names.get(item[0]) or "", item[0])
                )
            ]
        return {
            "interface": self.settings.interface,
            "backend": None if self.backend is None else self.backend.kind,
            "phase": self.phase,
            "error": self.error,
            "public_key": None if self.keys is None else self.keys.public_key,
            "endpoint": None if self.endpoint is None else str(self.endpoint),
            "mtu": self.mtu,
            "addresses": sorted(str(address) for address in self.addresses),
            "routes": [] if self._applied is None else sorted(map(str, self._applied.routes)),
            "peers": peers,
            "as_of": _timestamp(self._device_at),
            "problems": [
                {"member": problem.member, "kind": problem.kind, "reason": problem.reason}
                for problem in sorted(self._problems, key=lambda p: (p.member, p.reason))
            ],
            "drops": dict(self.drops),
            "passes": self.passes,
            "pass_failures": self.pass_failures,
        }


# fmt: off
#: The mesh's phases; any other (phase, input) raises :class:`~hepto.machine.IllegalTransition`.
PHASES: Final[Transitions[Phase, PhaseInput, Callable[..., None]]] = Transitions.of(
    "mesh",
    [
        # phase          input                     next phase       output
        (Phase.STOPPED,  PhaseInput.START,         Phase.STARTING,  MeshService._start),
        (Phase.STARTING, PhaseInput.STARTED,       Phase.RUNNING,   MeshService._up),
        (Phase.STARTING, PhaseInput.START_FAILED,  Phase.FAILED,    MeshService._start_failed),
        (Phase.RUNNING,  PhaseInput.WANTED,        Phase.RUNNING,   MeshService._ask_for_a_pass),
        # Passes are the running mesh's alone: a wish before or after is dropped.
        (Phase.STOPPED,  PhaseInput.WANTED,        Phase.STOPPED,   MeshService._nothing),
        (Phase.STARTING, PhaseInput.WANTED,        Phase.STARTING,  MeshService._nothing),
        (Phase.FAILED,   PhaseInput.WANTED,        Phase.FAILED,    MeshService._nothing),
        (Phase.STOPPED,  PhaseInput.STOP,          Phase.STOPPED,   MeshService._nothing),
        (Phase.STARTING, PhaseInput.STOP,          Phase.STOPPED,   MeshService._abandon_start),
        (Phase.RUNNING,  PhaseInput.STOP,          Phase.STOPPED,   MeshService._stop_following),
        (Phase.FAILED,   PhaseInput.STOP,          Phase.STOPPED,   MeshService._nothing),
    ],
)
# fmt: on


class MeshError(Exception):
    """The mesh cannot run; ``str()`` says why in one sentence."""


def mesh_service(
    config: NodeConfig,
    state: ClusterState,
    reactor: Any,
    identity: SigningKey,
    masters: MasterSource | None = None,
    interface: str = DEFAULT_INTERFACE,
    listen_port: int = DEFAULT_LISTEN_PORT,
    reach: ReachSource | None = None,
) -> MeshService:
    """The node's mesh: its identity's key, its socket directory in the node's directory,
    both backends."""
    from hepto.mesh.kernel import KernelBackend, pyroute2_wireguard
    from hepto.mesh.userspace import UserspaceBackend

    rt = RtNetlink()
    socket_dir = config.node_dir / "wireguard"
    program = "wireguard-go"
    if config.bin_dir is not None and (config.bin_dir / program).exists():
        program = str(config.bin_dir / program)
    return MeshService(
        MeshSettings(config.cluster, config.name, config.is_master, interface, listen_port),
        state,
        reactor,
        keys=partial(KeyPair.from_identity, identity),
        backends=(
            lambda: KernelBackend(rt, pyroute2_wireguard, interface),
            lambda: UserspaceBackend(reactor, interface, socket_dir, program=program),
        ),
        links=Links(rt, interface),
        underlay=lambda: find_underlay(rt, config),
        masters=masters,
        reach=reach,
    )
