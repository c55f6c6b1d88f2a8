"""The sealing envelope: only genuine, fresh, unreplayed messages of our cluster get through."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from hepto.gossip import crypto
from hepto.gossip.crypto import Dropped, Drops, Keyring, ReplayWindow, StreamCipher
from hepto.gossip.messages import MAX_DATAGRAM, MAX_PLAINTEXT, SEALING_OVERHEAD

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
NOW = 1_700_000_000.0


def keyring(
    keys: tuple[bytes, ...] = (KEY,),
    cluster: str = "prod",
    clock: Clock | None = None,
    **kwargs: object,
) -> Keyring:
    if clock is None:
        clock = Clock()
        clock.advance(NOW)
    return Keyring.from_cluster_keys(keys, cluster, clock, **kwargs)  # type: ignore[arg-type]


class EnvelopeTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.sender = keyring(clock=self.clock)
        self.receiver = keyring(clock=self.clock)

    def assertDropped(self, ring: Keyring, envelope: bytes, reason: str) -> None:
        before = ring.drops.counts[reason]
        error = self.assertRaises(Dropped, ring.open, envelope)
        self.assertEqual(error.reason, reason)
        self.assertEqual(ring.drops.counts[reason], before + 1)

    def test_round_trip(self) -> None:
        envelope = self.sender.seal(b"hello")
        self.assertEqual(self.receiver.open(envelope), b"hello")
        self.assertEqual(self.receiver.drops.as_dict(), {})

    def test_overhead_within_reservation(self) -> None:
        envelope = self.sender.seal(b"x" * MAX_PLAINTEXT)
        self.assertEqual(len(envelope), MAX_PLAINTEXT + crypto.OVERHEAD)
        self.assertLessEqual(crypto.OVERHEAD, SEALING_OVERHEAD)
        self.assertLessEqual(len(envelope), MAX_DATAGRAM)

    def test_nothing_in_plaintext(self) -> None:
        envelope = self.sender.seal(b"secret-member-name")
        self.assertNotIn(b"secret-member-name", envelope)
        self.assertNotIn(b"prod", envelope)

    def test_fresh_nonce_each_time(self) -> None:
        self.assertNotEqual(self.sender.seal(b"same"), self.sender.seal(b"same"))

    def test_wrong_key(self) -> None:
        stranger = keyring((OTHER_KEY,), clock=self.clock)
        self.assertDropped(self.receiver, stranger.seal(b"hi"), crypto.UNDECRYPTABLE)

    def test_other_cluster_same_key(self) -> None:
        neighbour = keyring(cluster="staging", clock=self.clock)
        self.assertDropped(self.receiver, neighbour.seal(b"hi"), crypto.UNDECRYPTABLE)

    def test_datagram_is_not_a_stream_frame(self) -> None:
        envelope = self.sender.seal(b"hi", crypto.DATAGRAM)
        error = self.assertRaises(Dropped, self.receiver.open, envelope, crypto.STREAM)
        self.assertEqual(error.reason, crypto.UNDECRYPTABLE)

    def test_replay(self) -> None:
        envelope = self.sender.seal(b"once")
        self.receiver.open(envelope)
        self.assertDropped(self.receiver, envelope, crypto.REPLAYED)
        self.clock.advance(30)
        self.assertDropped(self.receiver, envelope, crypto.REPLAYED)

    def test_replay_after_window_is_stale(self) -> None:
        envelope = self.sender.seal(b"once")
        self.receiver.open(envelope)
        self.clock.advance(crypto.DEFAULT_WINDOW + 1)
        self.assertDropped(self.receiver, envelope, crypto.STALE)
        # The window forgot the nonce: memory stays bounded.
        self.assertEqual(len(self.receiver.replay), 0)

    def test_stale_and_future(self) -> None:
        old = self.sender.seal(b"old")
        self.clock.advance(crypto.DEFAULT_WINDOW + 0.5)
        self.assertDropped(self.receiver, old, crypto.STALE)
        ahead = Clock()
        ahead.advance(self.clock.seconds() + crypto.DEFAULT_WINDOW + 0.5)
        self.assertDropped(self.receiver, keyring(clock=ahead).seal(b"x"), crypto.STALE)

    def test_skew_within_window_accepted(self) -> None:
        behind = Clock()
        behind.advance(self.clock.seconds() - crypto.DEFAULT_WINDOW + 1)
        self.assertEqual(self.receiver.open(keyring(clock=behind).seal(b"x")), b"x")

    def test_tamper_every_byte(self) -> None:
        envelope = self.sender.seal(b"payload")
        for position in range(len(envelope)):
            tampered = bytearray(envelope)
            tampered[position] ^= 0x01
            reason = crypto.UNKNOWN_VERSION if position == 0 else crypto.UNDECRYPTABLE
            self.assertDropped(self.receiver, bytes(tampered), reason)
        self.assertEqual(self.receiver.open(envelope), b"payload")

    def test_truncation(self) -> None:
        envelope = self.sender.seal(b"payload")
        for length in range(len(envelope)):
            reason = crypto.TRUNCATED if length < crypto.OVERHEAD else crypto.UNDECRYPTABLE
            self.assertDropped(self.receiver, envelope[:length], reason)

    def test_extension(self) -> None:
        self.assertDropped(self.receiver, self.sender.seal(b"p") + b"\0", crypto.UNDECRYPTABLE)

    def test_rotation(self) -> None:
        """Old key first, then both, then new first, then new alone: never a gap."""
        old_only = keyring((KEY,), clock=self.clock)
        both_old_first = keyring((KEY, OTHER_KEY), clock=self.clock)
        both_new_first = keyring((OTHER_KEY, KEY), clock=self.clock)
        new_only = keyring((OTHER_KEY,), clock=self.clock)
        steps = [old_only, both_old_first, both_new_first, new_only]
        for earlier, later in itertools.pairwise(steps):
            self.assertEqual(later.open(earlier.seal(b"a")), b"a")
            self.assertEqual(earlier.open(later.seal(b"b")), b"b")
        self.assertDropped(new_only, old_only.seal(b"c"), crypto.UNDECRYPTABLE)

    def test_needs_a_key(self) -> None:
        self.assertRaises(ValueError, Keyring.from_cluster_keys, (), "prod", self.clock)

    def test_derived_keys_are_domain_separated(self) -> None:
        self.assertNotEqual(crypto.derive_key(KEY), KEY)
        self.assertNotEqual(crypto.derive_key(KEY), crypto.derive_key(OTHER_KEY))


ALICE = bytes(16) + (7946).to_bytes(2, "big")
BOB = bytes(15) + b"\x01" + (7946).to_bytes(2, "big")


class DatagramTests(SynchronousTestCase):
    """Datagrams are sealed for one recipient: replayed to another, they fail at once."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.sender = keyring(clock=self.clock)
        self.receiver = keyring(clock=self.clock)

    def refused(self, datagram: bytes, recipient: bytes) -> str:
        error = self.assertRaises(Dropped, self.receiver.open_datagram, datagram, recipient)
        self.assertEqual(self.receiver.drops.counts[error.reason], 1)
        return error.reason

    def test_round_trip(self) -> None:
        datagram = self.sender.seal_datagram(b"hello", ALICE)
        self.assertEqual(self.receiver.open_datagram(datagram, ALICE), b"hello")

    def test_another_recipient_refuses_it_before_decrypting(self) -> None:
        datagram = self.sender.seal_datagram(b"hello", ALICE)
        self.assertEqual(self.refused(datagram, BOB), crypto.MISDIRECTED)
        # Not taken for a replay: alice still gets it.
        self.assertEqual(self.receiver.open_datagram(datagram, ALICE), b"hello")

    def test_a_forged_recipient_hash_does_not_help(self) -> None:
        datagram = self.sender.seal_datagram(b"hello", ALICE)
        forged = datagram[:1] + crypto.recipient_tag(BOB) + datagram[1 + 4 :]
        self.assertEqual(self.refused(forged, BOB), crypto.UNDECRYPTABLE)

    def test_envelopes_of_streams_are_not_datagrams(self) -> None:
        self.assertEqual(self.refused(self.sender.seal(b"hello"), ALICE), crypto.UNKNOWN_VERSION)

    def test_overhead_within_reservation(self) -> None:
        datagram = self.sender.seal_datagram(b"x" * MAX_PLAINTEXT, ALICE)
        self.assertEqual(len(datagram), MAX_PLAINTEXT + crypto.DATAGRAM_OVERHEAD)
        self.assertLessEqual(len(datagram), MAX_DATAGRAM)

    def test_replays_refused(self) -> None:
        datagram = self.sender.seal_datagram(b"hello", ALICE)
        self.receiver.open_datagram(datagram, ALICE)
        self.assertEqual(self.refused(datagram, ALICE), crypto.REPLAYED)


class ReplayWindowTests(SynchronousTestCase):
    def test_capacity_shrinks_the_window_never_admits_a_replay(self) -> None:
        window = ReplayWindow(window_ms=60_000, capacity=3)
        for index in range(3):
            self.assertIsNone(window.admit(bytes([index]), 1000 + index, 1000))
        # Full: the oldest is forgotten; its timestamp becomes the floor.
        self.assertIsNone(window.admit(b"\x09", 1010, 1010))
        self.assertEqual(len(window), 3)
        self.assertEqual(window.admit(b"\x00", 1000, 1010), crypto.STALE)
        self.assertEqual(window.admit(b"\x01", 1001, 1010), crypto.REPLAYED)
        self.assertEqual(window.admit(b"\x0a", 999, 1010), crypto.STALE)

    def test_expiry_by_time(self) -> None:
        window = ReplayWindow(window_ms=1000)
        window.admit(b"a", 0, 0)
        window.admit(b"b", 700, 700)
        window.admit(b"c", 1600, 1600)
        self.assertEqual(len(window), 2)


class StreamCipherTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.client = StreamCipher(keyring(clock=self.clock), initiator=True)
        self.server = StreamCipher(keyring(clock=self.clock), initiator=False)

    def test_conversation(self) -> None:
        self.assertEqual(self.server.open(self.client.seal(b"q1")), b"q1")
        self.assertEqual(self.client.open(self.server.seal(b"a1")), b"a1")
        self.assertEqual(self.server.open(self.client.seal(b"q2")), b"q2")
        self.assertEqual(self.client.open(self.server.seal(b"a2")), b"a2")
        self.assertEqual(self.client.stream_id, self.server.stream_id)

    def test_reordered_frames_refused(self) -> None:
        self.server.open(self.client.seal(b"first"))
        second, third = self.client.seal(b"second"), self.client.seal(b"third")
        error = self.assertRaises(Dropped, self.server.open, third)
        self.assertEqual(error.reason, crypto.UNDECRYPTABLE)
        self.assertEqual(self.server.open(second), b"second")

    def test_reflection_refused(self) -> None:
        """A frame the client sent, echoed back to it, is not the server speaking."""
        first = self.client.seal(b"first")
        self.server.open(first)
        self.client.open(self.server.seal(b"reply"))
        echo = self.client.seal(b"again")
        error = self.assertRaises(Dropped, self.client.open, echo)
        self.assertEqual(error.reason, crypto.UNDECRYPTABLE)

    def test_frames_of_another_stream_refused(self) -> None:
        other_client = StreamCipher(self.client.keyring, initiator=True)
        other_server = StreamCipher(self.server.keyring, initiator=False)
        self.server.open(self.client.seal(b"a"))
        other_server.open(other_client.seal(b"b"))
        spliced = other_client.seal(b"c")
        error = self.assertRaises(Dropped, self.server.open, spliced)
        self.assertEqual(error.reason, crypto.UNDECRYPTABLE)

    def test_replayed_stream_opening_refused(self) -> None:
        opening = self.client.seal(b"push-pull")
        self.server.open(opening)
        replayer = StreamCipher(self.server.keyring, initiator=False)
        error = self.assertRaises(Dropped, replayer.open, opening)
        self.assertEqual(error.reason, crypto.REPLAYED)

    def test_responder_cannot_speak_first(self) -> None:
        self.assertRaises(RuntimeError, self.server.seal, b"x")
        spoof = keyring(clock=self.clock).seal(b"x", crypto.STREAM)
        error = self.assertRaises(Dropped, self.client.open, spoof)
        self.assertEqual(error.reason, crypto.OUT_OF_ORDER)


class DropsTests(SynchronousTestCase):
    def test_log_rate_limited_but_all_counted(self) -> None:
        clock = Clock()
        drops = Drops(clock, log_interval=10)
        events: list[dict[str, object]] = []
        drops._log.observer = events.append  # type: ignore[assignment]
        for _ in range(100):
            drops.count("stale", "peer")
        clock.advance(11)
        drops.count("stale", "peer")
        self.assertEqual(drops.as_dict(), {"stale": 101})
        self.assertEqual([event["dropped"] for event in events], [1, 100])


class FuzzTests(SynchronousTestCase):
    @settings(max_examples=500, deadline=None)
    @given(st.binary(max_size=MAX_DATAGRAM + 16))
    def test_random_envelopes_never_open(self, data: bytes) -> None:
        ring = keyring()
        error = self.assertRaises(Dropped, ring.open, data)
        self.assertIn(
            error.reason, (crypto.TRUNCATED, crypto.UNKNOWN_VERSION, crypto.UNDECRYPTABLE)
        )
        self.assertEqual(len(ring.replay), 0)

    @settings(max_examples=200, deadline=None)
    @given(st.binary(max_size=64), st.integers(0, 100), st.binary(min_size=1, max_size=4))
    def test_mutated_envelopes_never_open(self, payload: bytes, at: int, junk: bytes) -> None:
        ring = keyring()
        envelope = bytearray(ring.seal(payload))
        position = at % len(envelope)
        mutated = bytes(envelope[:position]) + junk + bytes(envelope[position + len(junk) :])
        if mutated == bytes(envelope):
            return
        self.assertRaises(Dropped, ring.open, mutated)
