"""Streams and datagrams: decoders under fuzz, then real GossipServices over [::1]."""

from __future__ import annotations

import base64
import functools
import ipaddress
import json
import random
import socket
import struct
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import reactor, task
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks
from twisted.internet.endpoints import TCP6ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol, ServerFactory, connectionDone
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from agent import free_port
from hepto import config, plan
from hepto.config import Endpoint
from hepto.control import SOCKET_NAME, ControlError, ControlService, query
from hepto.gossip import codec, crypto, records, streams
from hepto.gossip.crypto import Keyring
from hepto.gossip.identity import IDENTITY_FILE, Identity
from hepto.gossip.knocks import KNOCK_REQUEST_TOO_SOON, UNEXPECTED_KNOCK
from hepto.gossip.messages import MAX_DATAGRAM, Ack, Ping
from hepto.gossip.persistence import SavedState
from hepto.gossip.profile import Profile
from hepto.gossip.proofs import Notary
from hepto.gossip.records import sign_record
from hepto.gossip.service import SAVE_DELAY, GossipService
from hepto.gossip.streams import (
    Fetch,
    FetchRecords,
    FrameBuffer,
    PeerState,
    PushPull,
    Record,
    Records,
    StreamAck,
    StreamDecodeError,
    StreamPing,
)
from hepto.gossip.table import MemberState
from hepto.gossip.transport import _sender, recipient_of, sender_of, socket_address
from hepto.state import ALIVE, DEAD, LEFT, SUSPECT, Change

KEY = "5a" * 32
WRONG_KEY = "a5" * 32
LOOPBACK = ipaddress.IPv6Address("::1")
PROOF = bytes(range(64))
#: Fast timings: the same protocol, ten times quicker than the LAN profile.
FAST = Profile(
    probe_interval=0.2,
    probe_timeout=0.1,
    gossip_interval=0.05,
    suspicion_mult=3,
    gossip_to_the_dead=3.0,
    reap_after=3.0,
    push_pull_interval=1.0,
    leave_timeout=1.0,
)
#: Generous: this machine's two cores are shared with a Go build.
TIMEOUT = 30.0


class StreamCodecTests(SynchronousTestCase):
    def test_round_trips(self) -> None:
        messages: list[streams.StreamMessage] = [
            PushPull(
                "alice",
                True,
                (
                    PeerState("bob", Endpoint(LOOPBACK, 7946), "master", 3, DEAD, b""),
                    PeerState("carol", Endpoint(LOOPBACK, 7947), "node", 5, ALIVE, PROOF),
                    PeerState("dave", Endpoint(LOOPBACK, 7948), "node", 5, SUSPECT, PROOF),
                ),
                (("bob", 4), ("alice", 1)),
            ),
            Fetch("bob"),
            FetchRecords(("bob",)),
            FetchRecords(("bob", "carol.example")),
            Records(()),
            Records((b"\x01blob", b"\x01other")),
            Record(b"\x01blob"),
            Record(None),
            StreamPing(Ping(7, "bob", "alice")),
            StreamAck(True),
            StreamAck(False),
        ]
        for message in messages:
            self.assertEqual(streams.decode(streams.encode(message)), message)

    def test_strict(self) -> None:
        good = json.loads(
            streams.encode(
                PushPull(
                    "a",
                    False,
                    (PeerState("b", Endpoint(LOOPBACK, 1), "node", 1, ALIVE, PROOF),),
                    (),
                )
            )[1:]
        )
        proof = good["members"][0][6]
        self.assertEqual(base64.b64decode(proof), PROOF)
        bad_documents = [
            {**good, "join": 1},
            {**good, "extra": 1},
            {**good, "sender": "Not A Name"},
            {**good, "members": [["b", "::1", 0, "node", 1, "alive", proof]]},
            {**good, "members": [["b", "1.2.3.4", 1, "node", 1, "alive", proof]]},
            {**good, "members": [["b", "::1", 1, "king", 1, "alive", proof]]},
            {**good, "members": [["b", "::1", 1, "node", -1, "alive", proof]]},
            {**good, "members": [["b", "::1", 1, "node", 1, "zombie", proof]]},
            {**good, "members": [["b", "::1", 1, "node", 1, "alive"]]},
            {**good, "members": [["b", "::1", 1, "node", 1, "alive", ""]]},
            {**good, "members": [["b", "::1", 1, "node", 1, "alive", proof[:-4]]]},
            {**good, "members": [["b", "::1", 1, "node", 1, "alive", "!" + proof[1:]]]},
            {**good, "members": [["b", "::1", 1, "node", 1, "alive", 5]]},
            {**good, "members": [["b", "::1", 1, "node", 1, "dead", "AAAA"]]},
            {**good, "digests": [["b", 0]]},
            {**good, "digests": [["b", 2**60]]},
            {**good, "digests": [["b", 1, 2]]},
        ]
        for document in bad_documents:
            payload = bytes((streams.PUSH_PULL,)) + json.dumps(document).encode()
            self.assertRaises(StreamDecodeError, streams.decode, payload)
        for payload in (b"", b"\x09", b"\x03", b"\x03\x02x", b"\x05\x02", b"\x02\xff", b"\x04"):
            self.assertRaises(StreamDecodeError, streams.decode, payload)
        blob = streams.encode(Records((b"\x01blob",)))
        bad_batches = [
            b"\x06",  # no name
            b"\x06bob\n",  # an empty one
            b"\x06bob\nNot A Name",
            b"\x06\xff",
            b"\x06" + "\n".join(["bob"] * (streams.MAX_MEMBERS + 1)).encode(),
            b"\x06" + b"\n" * (streams.MAX_FRAME - 1),  # refused before it is split
            blob[:-1],  # a record cut short
            blob + b"\x00\x00",  # a length cut short
            b"\x07\x00\x00\x00\x00",  # an empty record
            b"\x07" + struct.pack("!I", records.MAX_RECORD_SIZE + 1) + b"x",
        ]
        for payload in bad_batches:
            self.assertRaises(StreamDecodeError, streams.decode, payload)

    @settings(max_examples=1000, deadline=None)
    @given(st.binary(max_size=300))
    def test_fuzz_decoder(self, payload: bytes) -> None:
        # Refused only with the documented error (anything else fails the test), and
        # whatever is accepted is a well-formed message that encodes to itself again.
        try:
            message = streams.decode(payload)
        except StreamDecodeError:
            return
        self.assertEqual(streams.decode(streams.encode(message)), message)

    @settings(max_examples=300, deadline=None)
    @given(st.sampled_from([1, 2, 3, 4, 5, 6, 7]), st.text(max_size=200))
    def test_fuzz_typed_bodies(self, kind: int, body: str) -> None:
        try:
            message = streams.decode(bytes((kind,)) + body.encode())
        except StreamDecodeError:
            return
        self.assertEqual(streams.decode(streams.encode(message)), message)

    @settings(max_examples=300, deadline=None)
    @given(st.lists(st.binary(max_size=70), max_size=8), st.integers(1, 40))
    def test_fuzz_frame_buffer(self, frames: list[bytes], chunk: int) -> None:
        data = b"".join(streams.frame(f) for f in frames)
        buffer = FrameBuffer(limit=100)
        got = []
        for start in range(0, len(data), chunk):
            got += buffer.feed(data[start : start + chunk])
        self.assertEqual(got, frames)

    def test_frame_limit(self) -> None:
        buffer = FrameBuffer(limit=10)
        error = self.assertRaises(crypto.Dropped, buffer.feed, b"\x00\x00\x00\x0b")
        self.assertEqual(error.reason, crypto.OVERSIZED)


def node_config(
    name: str, port: int, data_dir: Path, key: str = KEY, anchors: tuple[int, ...] = ()
) -> config.NodeConfig:
    node = config.parse_node_config(
        {
            "cluster": "test",
            "name": name,
            "key": key,
            "ip": "::1/128",
            "port": str(port),
            "data-dir": str(data_dir),
            "role": "node",
        },
        {"anchor": [f"[::1]:{anchor}" for anchor in anchors]},
        {"no-contain": True},
    )
    node.node_dir.mkdir(parents=True, mode=0o700, exist_ok=True)
    return node


def held(service: GossipService, name: str, key: str) -> Any:
    """``key`` of the record ``service`` holds for ``name``, or None."""
    member = service.state.members().get(name)
    return None if member is None or member.record is None else member.record.get(key)


def until(service: GossipService, predicate: Callable[[], bool], what: str) -> Deferred[None]:
    """Fires once ``predicate`` holds, checked on every state change: no polling."""
    done: Deferred[None] = Deferred()

    def check(change: Change | None = None) -> None:
        if not done.called and predicate():
            unsubscribe()
            done.callback(None)

    unsubscribe = service.state.subscribe(check)
    check()

    def timed_out(failure: Any) -> Any:
        unsubscribe()
        failure.value.args = (f"timed out waiting for {what}",)
        return failure

    done.addTimeout(TIMEOUT, reactor)
    return done.addErrback(timed_out)


@inlineCallbacks
def gone_quiet(services: Sequence[GossipService]) -> Any:
    """Fires once no member has news left to gossip.

    No event says when a queue runs dry (the last transmission just drops the item), so
    this looks once per gossip interval: a test helper, not the agent's way.
    """
    deadline = reactor.seconds() + TIMEOUT
    while any(service.membership.queued() for service in services):
        if reactor.seconds() > deadline:
            raise AssertionError("timed out waiting for the members' gossip to go quiet")
        yield deferLater(reactor, services[0].membership.profile.gossip_interval, lambda: None)


def counted(service: GossipService, reason: str, at_least: int = 1) -> Deferred[None]:
    """Fires once ``reason`` was counted ``at_least`` times."""
    done: Deferred[None] = Deferred()

    def check(_: str = "") -> None:
        if not done.called and service.drops.counts[reason] >= at_least:
            stop()
            done.callback(None)

    stop = service.drops.observe(check)
    check()
    return done.addTimeout(TIMEOUT, reactor)


def reaching(service: GossipService, names: set[str]) -> Deferred[None]:
    """Fires once ``service`` holds exactly ``names`` as reaching it unprompted."""
    done: Deferred[None] = Deferred()

    def check(unprompted: frozenset[str]) -> None:
        if not done.called and unprompted == names:
            unsubscribe()
            done.callback(None)

    unsubscribe = service.reach.subscribe(check)
    check(service.reach.unprompted)
    return done.addTimeout(TIMEOUT, reactor)


class SocketAddressTests(SynchronousTestCase):
    """Every datagram asks for an address one way or the other: what is answered, and
    how much is remembered."""

    def test_answers_what_formatting_and_parsing_would(self) -> None:
        endpoint = Endpoint(ipaddress.IPv6Address("2001:db8::1"), 7946)
        self.assertEqual(socket_address(endpoint), ("2001:db8::1", 7946))
        self.assertEqual(socket_address(endpoint), ("2001:db8::1", 7946))
        self.assertEqual(sender_of(("2001:db8:0::1", 7946, 0, 0)), endpoint)
        self.assertEqual(sender_of(("fe80::1%eth0", "7946")).host, ipaddress.IPv6Address("fe80::1"))

    def test_refuses_what_is_no_address(self) -> None:
        strangers: list[tuple[Any, ...]] = [
            ("not an address", 1),
            ("::1",),
            ("::1", "port"),
            ([], 1),
        ]
        for address in strangers:
            with self.assertRaises((ValueError, TypeError, IndexError)):
                sender_of(address)

    def test_a_flood_of_strangers_is_bounded(self) -> None:
        for index in range(2 * plan.ADDRESS_CACHE + 10):
            host = f"2001:db8::{index + 1:x}"
            self.assertEqual(sender_of((host, 7946)).host, ipaddress.IPv6Address(host))
            endpoint = Endpoint(ipaddress.IPv6Address(host), 7946)
            self.assertEqual(socket_address(endpoint), (host, 7946))
        for remembered in (_sender, socket_address):
            self.assertLessEqual(remembered.cache_info().currsize, plan.ADDRESS_CACHE)


class _Idle(Protocol):
    """A client that says nothing; ``lost`` fires once its connection is gone."""

    def __init__(self) -> None:
        self.lost: Deferred[None] = Deferred()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost.callback(None)


class ServicesTests(TestCase):
    """Real UDP and TCP on [::1] between GossipServices of one process."""

    timeout = 120

    def setUp(self) -> None:
        self.data_dir = Path(self.mktemp())
        self.services: dict[str, GossipService] = {}

    def start(
        self, name: str, key: str = KEY, anchors: tuple[str, ...] = (), port: int | None = None
    ) -> GossipService:
        port = port or free_port()
        anchor_ports = tuple(self.services[anchor].address.port for anchor in anchors)
        service = GossipService.from_config(
            node_config(name, port, self.data_dir, key, anchor_ports),
            reactor,
            FAST,
            random.Random(name),
        )
        service.startService()
        self.services[name] = service
        self.addCleanup(self.stop, service)
        return service

    def stop(self, service: GossipService) -> Deferred[None] | None:
        return service.stopService() if service.running else None

    def sees(self, observer: str, name: str, status: str = ALIVE) -> Callable[[], bool]:
        def predicate() -> bool:
            member = self.services[observer].state.members().get(name)
            return member is not None and member.status == status

        return predicate

    @inlineCallbacks
    def test_fallback_ping_can_be_cancelled(self) -> Any:
        """Membership cancels the TCP ping when the probe interval ends: no late reply."""
        alice = self.start("alice")
        accepted: list[Protocol] = []
        closed: list[Protocol] = []

        class Silent(Protocol):
            def connectionMade(self) -> None:
                accepted.append(self)

            def connectionLost(self, reason: object = None) -> None:
                closed.append(self)

        factory = ServerFactory.forProtocol(Silent)
        listening = reactor.listenTCP(0, factory, interface="::1")  # type: ignore[arg-type]
        self.addCleanup(listening.stopListening)
        target = Endpoint(ipaddress.IPv6Address("::1"), listening.getHost().port)  # type: ignore[attr-defined]
        pinged = alice.transport.ping_stream(target, Ping(1, "nobody", "alice"))
        while not accepted:  # Nothing in the cluster state changes: look.
            yield deferLater(reactor, 0.01, lambda: None)
        pinged.cancel()
        self.assertFalse(self.successResultOf(pinged))
        while not closed:  # The cancelled ping hangs up.
            yield deferLater(reactor, 0.01, lambda: None)

    @inlineCallbacks
    def test_join_propagate_fetch_and_leave(self) -> Any:
        alice = self.start("alice")
        bob = self.start("bob", anchors=("alice",))
        carol = self.start("carol", anchors=("bob",))
        for observer in ("alice", "bob", "carol"):
            for name in ("alice", "bob", "carol"):
                yield until(
                    self.services[observer], self.sees(observer, name), f"{observer} sees {name}"
                )
        self.assertTrue(all(s.joined for s in self.services.values()))

        blob = "x" * 4096  # Too big for any datagram: it must travel by fetch.
        carol.state.publish("payload", blob)
        for service in (alice, bob):
            yield until(
                service,
                lambda s=service: held(s, "carol", "payload") == blob,  # type: ignore[misc]
                "the 4 KiB record",
            )
        record = alice.state.members()["carol"].record
        assert record is not None
        self.assertEqual(record.version, carol.store.own.version)
        self.assertEqual(record.get("role"), "node")
        self.assertEqual(record.get("gossip"), str(carol.address))

        yield carol.stopService()
        yield until(alice, self.sees("alice", "carol", LEFT), "carol's leave")
        self.assertEqual(alice.status()["drops"].get(crypto.UNDECRYPTABLE, 0), 0)

    @inlineCallbacks
    def joined_by_dave(self, old_alice: bool) -> Any:
        """alice, bob and carol with 4 KiB records each; then dave joins through alice.

        Fires with the record requests of dave's that the three answered.  With
        ``old_alice``, alice hangs up on a batch, as a member older than batches does.
        """
        names = ("alice", "bob", "carol")
        services = [self.start("alice")]
        services += [self.start(name, anchors=("alice",)) for name in names[1:]]
        for service in services:
            service.state.publish("payload", service.config.name * 1024)
        for observer in services:
            for name in names:
                yield until(
                    observer,
                    lambda o=observer, n=name: held(o, n, "payload") == n * 1024,  # type: ignore[misc]
                    f"{observer.config.name} holds {name}'s payload",
                )
        # News still in flight (the payloads' digests) would reach dave by gossip, and he
        # would fetch those records one by one before the join's answer arrives.
        yield gone_quiet(services)
        asked: list[streams.StreamMessage] = []
        for service in services:
            answer = service.respond

            def spy(request: Any, peer: Endpoint, answer: Any = answer, name: str = "") -> Any:
                named = getattr(request, "names", None) or (getattr(request, "name", None),)
                if isinstance(request, Fetch | FetchRecords) and "dave" not in named:
                    asked.append(request)
                    if old_alice and name == "alice" and isinstance(request, FetchRecords):
                        return None
                return answer(request, peer)

            service.respond = functools.partial(spy, name=service.config.name)  # type: ignore[method-assign]
        dave = self.start("dave", anchors=("alice",))
        for name in names:
            yield until(
                dave,
                lambda n=name: held(dave, n, "payload") == n * 1024,  # type: ignore[misc]
                f"dave holds {name}'s payload",
            )
        return asked

    @inlineCallbacks
    def test_a_record_being_fetched_is_served_once_here(self) -> Any:
        """Asked for a record that it is fetching itself (a newcomer's, asked of whoever
        told of it), a member answers once its own fetch brings it."""
        alice, bob = self.start("alice"), self.start("bob")
        accepted: list[Protocol] = []

        class Silent(Protocol):
            def connectionMade(self) -> None:
                accepted.append(self)

        listening = reactor.listenTCP(0, ServerFactory.forProtocol(Silent), interface="::1")  # type: ignore[arg-type]
        self.addCleanup(listening.stopListening)
        holder = Endpoint(ipaddress.IPv6Address("::1"), listening.getHost().port)  # type: ignore[attr-defined]
        alice.store.want("zed", 1, holder)
        while not accepted:  # alice's own fetch hangs on the silent holder.
            yield deferLater(reactor, 0.01, lambda: None)
        asked = bob.transport.fetch(alice.address, "zed")
        yield deferLater(reactor, 0.2, lambda: None)
        self.assertNoResult(asked)
        record = sign_record(Identity.generate(), alice.config.cluster, "zed", 3, {})
        self.assertTrue(alice.store.accept(record.blob))
        self.assertEqual((yield asked), record.blob)
        for protocol in accepted:
            protocol.transport.loseConnection()  # type: ignore[union-attr]

    @inlineCallbacks
    def test_a_held_record_is_first_fetched_whole(self) -> Any:
        """A joiner whose record is held (its PKI's requests still to come) is seen
        alive at once; its record, fetched on its arrival, is the whole one."""
        alice = self.start("alice")
        versions: list[int] = []

        def record_changed(change: Change) -> None:
            old = change.old.record if change.old is not None else None
            new = change.new.record if change.new is not None else None
            if change.name == "bob" and new is not None and new != old:
                versions.append(new.version)

        alice.state.subscribe(record_changed)
        bob = GossipService.from_config(
            node_config("bob", free_port(), self.data_dir, KEY, (alice.address.port,)),
            reactor,
            FAST,
            random.Random("bob"),
        )
        release = bob.hold_own_record()
        bob.startService()
        self.services["bob"] = bob
        self.addCleanup(self.stop, bob)
        yield until(alice, self.sees("alice", "bob"), "alice sees bob")
        yield deferLater(reactor, 0.3, lambda: None)
        self.assertEqual(versions, [])  # alice's fetch waits for bob's record
        bob.state.publish("pki", {"csr": "request"})
        release()
        yield until(alice, lambda: held(alice, "bob", "pki") is not None, "bob's whole record")
        self.assertEqual(versions, [bob.store.own.version])
        release()  # twice: nothing more

    @inlineCallbacks
    def test_a_joiner_takes_every_record_in_one_stream(self) -> Any:
        asked = yield self.joined_by_dave(old_alice=False)
        self.assertEqual(asked, [FetchRecords(("alice", "bob", "carol"))])
        self.assertEqual(self.services["dave"].store.fetched, {"ok": 3})

    @inlineCallbacks
    def test_a_member_older_than_batches_serves_records_one_by_one(self) -> Any:
        asked = yield self.joined_by_dave(old_alice=True)
        self.assertEqual(
            sorted(asked, key=repr),
            [Fetch("alice"), Fetch("bob"), Fetch("carol"), FetchRecords(("alice", "bob", "carol"))],
        )
        self.assertEqual(self.services["dave"].store.fetched, {"failed": 3, "ok": 3})

    @inlineCallbacks
    def test_members_knock_from_a_port_of_their_own(self) -> Any:
        """Each asks the others to knock; on [::1] nothing filters, so all arrive."""
        services = [self.start("alice"), self.start("bob", anchors=("alice",))]
        services.append(self.start("carol", anchors=("bob",)))
        for service in services:
            others = {s.config.name for s in services} - {service.config.name}
            yield reaching(service, others)
        requests = sum(s.drops.counts[KNOCK_REQUEST_TOO_SOON] for s in services)
        self.assertEqual(requests, 0)
        self.assertEqual(sum(s.drops.counts[UNEXPECTED_KNOCK] for s in services), 0)

    def crash(self, service: GossipService) -> None:
        """As kill -9 would: no leave, no goodbye; timers and sockets just stop."""
        service._stopping = True
        for timer in service._timers.values():
            if timer.active():
                timer.cancel()
        service.membership.stop()
        stopped = service.transport.stop()
        self.addCleanup(lambda: stopped)

    @inlineCallbacks
    def test_crashed_member_declared_dead_then_forgotten(self) -> Any:
        alice = self.start("alice")
        bob = self.start("bob", anchors=("alice",))
        carol = self.start("carol", anchors=("alice",))
        for observer in (alice, bob):
            yield until(observer, self.sees(observer.config.name, "carol"), "carol joins")
        forgotten: list[Change] = []
        alice.state.subscribe(lambda c: forgotten.append(c) if c.new is None else None)
        self.crash(carol)
        yield until(alice, self.sees("alice", "carol", DEAD), "carol dead for alice")
        yield until(bob, self.sees("bob", "carol", DEAD), "carol dead for bob")
        yield until(alice, lambda: "carol" not in alice.state.members(), "carol reaped")
        self.assertEqual([c.name for c in forgotten], ["carol"])
        self.assertNotIn("carol", alice.store.digests())

    @inlineCallbacks
    def test_join_retries_until_an_anchor_answers(self) -> Any:
        """The anchor starts after its joiner: the joiner keeps trying, then gets in."""
        anchor_port = free_port()
        bob = GossipService.from_config(
            node_config("bob", free_port(), Path(self.mktemp()), anchors=(anchor_port,)),
            reactor,
            FAST,
            random.Random(1),
        )
        # When the join is done: after bob has merged alice's state, the exchange's own
        # callbacks may take a few turns of the reactor (its stream closing).
        joined: Deferred[str] = Deferred()
        record_join = bob._joined

        def spy(how: str) -> None:
            record_join(how)
            if not joined.called:
                joined.callback(how)

        self.patch(bob, "_joined", spy)
        bob.startService()
        self.addCleanup(self.stop, bob)
        self.services["bob"] = bob
        yield deferLater(reactor, 1.5, lambda: None)  # At least one refused attempt.
        self.assertFalse(bob.joined)
        self.assertGreaterEqual(bob._join_retries.failures, 1)
        self.start("alice", port=anchor_port)
        yield until(bob, self.sees("bob", "alice"), "bob joins alice")
        how = yield joined.addTimeout(10, reactor)
        self.assertEqual(how, f"through [::1]:{anchor_port}")
        self.assertTrue(bob.joined)

    @inlineCallbacks
    def test_stream_flood_refused_and_counted(self) -> Any:
        alice = self.start("alice")
        server = alice.transport._server
        assert server is not None
        # Smaller than the defaults (64 served, 256 waiting), the same logic.
        server.limit, server.backlog = 8, 16
        endpoint = TCP6ClientEndpoint(reactor, "::1", alice.address.port)
        idle = [_Idle() for _ in range(8 + 16 + 3)]
        for protocol in idle:
            yield connectProtocol(endpoint, protocol)
            self.addCleanup(protocol.transport.abortConnection)  # type: ignore[union-attr]
        yield counted(alice, streams.BUSY, 3)
        self.assertEqual((len(server.open), len(server.waiting)), (8, 16))
        # Still serving once the flood is gone: gone, since a flooding client's port on
        # [::1] may be the very number bob is about to listen on.
        for protocol in idle:
            protocol.transport.abortConnection()  # type: ignore[union-attr]
        yield gatherResults([protocol.lost for protocol in idle])
        bob = self.start("bob", anchors=("alice",))
        yield until(bob, self.sees("bob", "alice"), "bob joins after the flood")

    @inlineCallbacks
    def test_wrong_key_never_admitted(self) -> Any:
        alice = self.start("alice")
        mallory = self.start("mallory", key=WRONG_KEY, anchors=("alice",))
        bob = self.start("bob", anchors=("alice",))
        yield until(alice, self.sees("alice", "bob"), "bob joins")
        # Mallory keeps trying to join; every attempt is dropped as undecryptable.
        yield counted(alice, crypto.UNDECRYPTABLE, 2)
        self.assertNotIn("mallory", alice.state.members())
        self.assertNotIn("mallory", bob.state.members())
        self.assertFalse(mallory.joined)
        self.assertEqual(set(mallory.state.members()), {"mallory"})

    @inlineCallbacks
    def test_restart_rejoins_ahead(self) -> Any:
        alice = self.start("alice")
        port = free_port()
        bob = self.start("bob", anchors=("alice",), port=port)
        yield until(alice, self.sees("alice", "bob"), "bob joins")
        bob.state.publish("wireguard", "key-1")
        yield until(
            alice,
            lambda: held(alice, "bob", "wireguard") == "key-1",
            "bob's record",
        )
        before = (bob.membership.incarnation, bob.store.own.version)
        yield bob.stopService()
        yield until(alice, self.sees("alice", "bob", LEFT), "bob leaves")
        # Same directory: same identity, later incarnation and version, same data.
        again = self.start("bob", anchors=("alice",), port=port)
        self.assertGreater(again.membership.incarnation, before[0])
        self.assertGreater(again.store.own.version, before[1])
        self.assertEqual(again.store.own.data.get("wireguard"), "key-1")
        self.assertEqual(again.identity.public_key, bob.identity.public_key)
        yield until(alice, self.sees("alice", "bob"), "bob back")
        yield until(
            alice,
            lambda: alice.state.members()["bob"].record.version == again.store.own.version,  # type: ignore[union-attr]
            "bob's new version",
        )

    @inlineCallbacks
    def test_control_socket(self) -> Any:
        """Gossip's status and publish command, as the node's control socket serves them."""
        alice = self.start("alice")
        self.start("bob", anchors=("alice",))
        yield until(alice, self.sees("alice", "bob"), "bob joins")
        path = alice.config.node_dir / SOCKET_NAME
        control = ControlService(path, alice.status, reactor)  # type: ignore[arg-type]
        control.commands["publish"] = alice.publish_command
        control.startService()
        self.addCleanup(control.stopService)
        self.assertEqual(path.stat().st_mode & 0o777, 0o600)
        control.sections["extra"] = lambda: {"answer": 42}
        status = yield self._query(path)
        self.assertEqual({m["name"] for m in status["members"]}, {"alice", "bob"})
        bob_row = next(m for m in status["members"] if m["name"] == "bob")
        self.assertEqual(
            set(bob_row), {"name", "role", "address", "state", "incarnation", "version"}
        )
        self.assertEqual(bob_row["state"], "alive")
        self.assertIsInstance(status["drops"], dict)
        self.assertIsInstance(status["health"], int)
        self.assertEqual(status["conflicts"], [])
        self.assertEqual(status["extra"], {"answer": 42})
        error = yield self._query(path, "reboot")
        self.assertIsInstance(error, ControlError)
        missing = yield self._query(path.with_name("nothing.sock"))
        self.assertIn("no hepto agent is running", str(missing))
        version = alice.store.own.version
        published = yield self._query(path, "publish", key="x-note", value={"a": 1})
        self.assertEqual(published, {"name": "alice", "version": version + 1})
        self.assertEqual(alice.store.own.data["x-note"], {"a": 1})
        refused = yield self._query(path, "publish", key="role", value="master")
        self.assertIn("'x-'", str(refused))
        self.assertEqual(alice.store.own.data["role"], "node")

    def _query(self, path: Path, command: str = "status", **arguments: Any) -> Deferred[Any]:
        from twisted.internet.threads import deferToThread

        def ask() -> Any:
            try:
                return query(path, command, **arguments)
            except ControlError as error:
                return error

        return deferToThread(ask)

    @inlineCallbacks
    def test_bad_datagrams_counted_and_replay_refused(self) -> Any:
        alice = self.start("alice")
        bob = self.start("bob")
        ring = Keyring.from_cluster_keys((bytes.fromhex(KEY),), "test", reactor)
        probe = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        self.addCleanup(probe.close)
        probe.bind(("::1", 0))
        probe.settimeout(TIMEOUT)
        target = ("::1", alice.address.port)
        to_alice = recipient_of(alice.address)
        probe.sendto(b"\x02garbage", target)
        probe.sendto(b"\x00" * (MAX_DATAGRAM + 1), target)
        sealed_garbage = ring.seal_datagram(b"\x07\x07", to_alice)
        probe.sendto(sealed_garbage, target)
        # An envelope of the stream kind, or for another member: refused as such.
        probe.sendto(ring.seal(codec.encode([Ping(9, "alice", "tester")])), target)
        ping = ring.seal_datagram(codec.encode([Ping(1, "alice", "tester")]), to_alice)
        probe.sendto(ping, target)
        from twisted.internet.threads import deferToThread

        reply = yield deferToThread(probe.recv, 2048)
        probe_address = Endpoint(ipaddress.IPv6Address("::1"), probe.getsockname()[1])
        acked = codec.decode(ring.open_datagram(reply, recipient_of(probe_address)))
        self.assertIn(Ack(1, "alice"), acked)
        probe.sendto(ping, target)  # The same datagram again: a replay.
        yield counted(alice, crypto.REPLAYED)
        # And to bob, for whom it was not sealed: refused at the envelope.
        probe.sendto(ping, ("::1", bob.address.port))
        yield counted(bob, crypto.MISDIRECTED)
        drops = alice.status()["drops"]
        self.assertEqual(drops.get(crypto.TRUNCATED), 1)
        self.assertEqual(drops.get(crypto.OVERSIZED), 1)
        self.assertEqual(drops.get(crypto.MALFORMED), 1)
        self.assertEqual(drops.get(crypto.UNKNOWN_VERSION), 1)
        self.assertEqual(drops.get(crypto.REPLAYED), 1)
        self.assertEqual(bob.status()["drops"], {crypto.MISDIRECTED: 1})

    @inlineCallbacks
    def test_bad_streams_aborted_and_counted(self) -> Any:
        alice = self.start("alice")
        endpoint = TCP6ClientEndpoint(reactor, "::1", alice.address.port)

        class Sender(Protocol):
            def __init__(self, data: bytes) -> None:
                self.data = data
                self.lost: Deferred[None] = Deferred()

            def connectionMade(self) -> None:
                self.transport.write(self.data)  # type: ignore[union-attr]

            def connectionLost(self, reason: Any = None) -> None:
                self.lost.callback(None)

        for data in (b"\xff\xff\xff\xff", streams.frame(b"\x01" + b"\0" * 60)):
            sender = Sender(data)
            yield connectProtocol(endpoint, sender)
            yield sender.lost.addTimeout(TIMEOUT, reactor)
        self.assertEqual(alice.drops.counts[crypto.OVERSIZED], 1)
        self.assertEqual(alice.drops.counts[crypto.UNDECRYPTABLE], 1)


class MergeTests(SynchronousTestCase):
    """What a push/pull's digests set in motion, against a store that only records."""

    def test_records_are_fetched_from_the_peer_then_their_owners(self) -> None:
        service = GossipService.from_config(
            node_config("joiner", free_port(), Path(self.mktemp())), reactor, FAST
        )
        wanted: list[tuple[int, list[tuple[str, int]], dict[str, int], bool]] = []

        class Recorder:
            def want_from(
                self,
                holder: Endpoint,
                digests: Sequence[tuple[str, int]],
                owners: Mapping[str, Endpoint],
                advertise: bool = True,
            ) -> None:
                ports = {name: owner.port for name, owner in owners.items()}
                wanted.append((holder.port, list(digests), ports, advertise))

        service.store = Recorder()  # type: ignore[assignment]

        def peer(name: str, port: int, status: str = ALIVE) -> PeerState:
            return PeerState(name, Endpoint(LOOPBACK, port), "node", 1, status, PROOF)

        digests = (("anchor", 5), ("bob", 6), ("gone", 7), ("joiner", 8))
        anchor = PushPull(
            sender="anchor",
            join=False,
            members=(peer("anchor", 1), peer("bob", 2), peer("gone", 3, DEAD), peer("joiner", 4)),
            digests=digests,
        )
        service._merge(anchor)
        # From the peer first (all in one stream); a dead owner is never asked.
        owners = {"anchor": 1, "bob": 2, "joiner": 4}
        self.assertEqual(wanted, [(1, list(digests), owners, True)])
        # What a joiner catches up on is no news for gossip.
        service._merge(anchor, catching_up=True)
        self.assertEqual(wanted[1:], [(1, list(digests), owners, False)])


class ControlSocketTests(TestCase):
    @inlineCallbacks
    def test_path_longer_than_sun_path(self) -> Any:
        """Long cluster and node names make the path exceed 107 bytes: still served."""
        from twisted.internet.threads import deferToThread

        directory = Path(self.mktemp()).absolute() / ("n" * 120)
        directory.mkdir(parents=True)
        path = directory / "control.sock"
        self.assertGreater(len(str(path)), 107)
        control = ControlService(path, lambda: {"members": []}, reactor)  # type: ignore[arg-type]
        control.startService()
        stopped = False
        try:
            self.assertEqual(path.stat().st_mode & 0o777, 0o600)
            status = yield deferToThread(query, path)
            self.assertEqual(status, {"members": []})
            yield control.stopService()
            stopped = True
            self.assertFalse(path.exists())
            error = yield deferToThread(lambda: self.assertRaises(ControlError, query, path))
            self.assertIn("no hepto agent is running", str(error))
        finally:
            if not stopped:
                yield control.stopService()


class ConstructionTests(SynchronousTestCase):
    def test_nothing_is_read_or_made_before_from_config(self) -> None:
        node = node_config("me", free_port(), Path(self.mktemp()))
        node.node_dir.rmdir()
        service = GossipService(
            node, task.Clock(), Identity.generate(), SavedState(), Endpoint(LOOPBACK, 1), FAST
        )
        self.assertFalse(node.node_dir.exists())
        self.assertEqual(service.status()["incarnation"], 1)
        node.node_dir.mkdir(mode=0o700)
        made = GossipService.from_config(node, task.Clock(), FAST)
        self.assertTrue((node.node_dir / IDENTITY_FILE).exists())
        again = GossipService.from_config(node, task.Clock(), FAST)
        self.assertEqual(again.identity.public_key, made.identity.public_key)


class SavingTests(SynchronousTestCase):
    """What makes the service rewrite its state file."""

    def setUp(self) -> None:
        self.clock = task.Clock()
        self.service = GossipService.from_config(
            node_config("me", free_port(), Path(self.mktemp())), self.clock, FAST
        )
        # Running, as far as its timers go, without sockets.
        self.service.running = True
        self.other = MemberState("a", Endpoint(LOOPBACK, 1), "node", 1, ALIVE, 0.0)

    def scheduled(self) -> bool:
        return "save" in self.service._timers

    def test_suspicions_of_others_are_not_saved(self) -> None:
        suspected = attrs.evolve(self.other, status=SUSPECT)
        self.service._member_changed(self.other, suspected)
        self.service._member_changed(suspected, attrs.evolve(self.other, incarnation=2))
        self.assertFalse(self.scheduled())

    def test_what_is_kept_of_others_is_saved_soon(self) -> None:
        self.service._member_changed(None, self.other)
        self.assertTrue(self.scheduled())
        self.clock.advance(SAVE_DELAY)
        self.assertFalse(self.scheduled())
        moved = attrs.evolve(self.other, address=Endpoint(LOOPBACK, 2))
        self.service._member_changed(self.other, moved)
        self.assertTrue(self.scheduled())


class ProofTests(SynchronousTestCase):
    """A member taken on trust before its record is checked when the record comes."""

    def setUp(self) -> None:
        self.service = GossipService.from_config(
            node_config("me", free_port(), Path(self.mktemp())), task.Clock(), FAST
        )
        # What startService does, without its sockets.
        self.service.store.subscribe(self.service._state_changed)
        self.service.store.start()
        self.where = Endpoint(LOOPBACK, 9)
        self.z = Identity.generate()

    def take_on_trust(self, signer: Identity) -> None:
        notary = Notary(self.service.config.cluster, "z", signer, lambda name: None)
        proof = notary.prove(3, self.where, "node")
        self.service.membership.merge_state(
            [MemberState("z", self.where, "node", 3, ALIVE, 0.0, proof)]
        )
        self.assertEqual(self.service.membership.member("z").status, ALIVE)  # type: ignore[union-attr]

    def record_arrives(self) -> None:
        record = sign_record(self.z, self.service.config.cluster, "z", 1, {"role": "node"})
        self.assertTrue(self.service.store.accept(record.blob))

    def test_forged(self) -> None:
        self.take_on_trust(Identity.generate())
        self.record_arrives()
        self.assertEqual(self.service.membership.member("z").status, SUSPECT)  # type: ignore[union-attr]
        self.assertEqual(self.service.membership.drops["forged alive"], 1)

    def test_genuine(self) -> None:
        self.take_on_trust(self.z)
        self.record_arrives()
        self.assertEqual(self.service.membership.member("z").status, ALIVE)  # type: ignore[union-attr]
        self.assertEqual(self.service.membership.drops["forged alive"], 0)
