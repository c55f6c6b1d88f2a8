"""The gossip wire format: exact round trips, exact sizes, and a decoder that only ever
raises DecodeError, whatever bytes arrive."""

from __future__ import annotations

import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from hepto.config import Endpoint
from hepto.gossip import codec
from hepto.gossip.codec import DecodeError, EncodeError, decode, encode, encoded_size
from hepto.gossip.messages import (
    MAX_DATAGRAM,
    MAX_PLAINTEXT,
    SEALING_OVERHEAD,
    Ack,
    Alive,
    Dead,
    Digest,
    Knock,
    KnockRequest,
    Message,
    Nack,
    Ping,
    PingReq,
    Suspect,
)

ENDPOINT = Endpoint(ipaddress.IPv6Address("2001:db8::1"), 7946)
PROOF = bytes(range(64))
SAMPLES: list[Message] = [
    Ping(1, "node-b", "node-a"),
    PingReq(2**32 - 1, "node-c", ENDPOINT, "node-a"),
    Ack(0, "node-b"),
    Nack(7, "node-c"),
    Alive("node-a", 2**64 - 1, ENDPOINT, "master", PROOF),
    Suspect("node-b", 3, "node-a"),
    Dead("node-b", 4, "node-b"),
    Digest("node-é", 12),
    KnockRequest(9, "node-a"),
    Knock(2**32 - 1, "node-b"),
]

names = st.text(min_size=1, max_size=40).filter(lambda text: len(text.encode()) <= 255)
seqs = st.integers(0, 2**32 - 1)
u64s = st.integers(0, 2**64 - 1)
endpoints = st.builds(
    Endpoint,
    st.builds(ipaddress.IPv6Address, st.integers(0, 2**128 - 1)),
    st.integers(1, 65535),
)
messages = st.one_of(
    st.builds(Ping, seqs, names, names),
    st.builds(PingReq, seqs, names, endpoints, names),
    st.builds(Ack, seqs, names),
    st.builds(Nack, seqs, names),
    st.builds(Alive, names, u64s, endpoints, names, st.binary(min_size=64, max_size=64)),
    st.builds(Suspect, names, u64s, names),
    st.builds(Dead, names, u64s, names),
    st.builds(Digest, names, u64s),
    st.builds(KnockRequest, seqs, names),
    st.builds(Knock, seqs, names),
)
frames = st.lists(messages, min_size=1, max_size=8)


class ConstantsTests(SynchronousTestCase):
    def test_budget(self) -> None:
        """A sealed frame fits the IPv6 minimum MTU: 1280 - 40 (IPv6) - 8 (UDP)."""
        self.assertEqual(MAX_DATAGRAM, 1280 - 40 - 8)
        self.assertEqual(MAX_PLAINTEXT + SEALING_OVERHEAD, MAX_DATAGRAM)


class RoundTripTests(SynchronousTestCase):
    def test_every_kind(self) -> None:
        frame = encode(SAMPLES)
        self.assertEqual(decode(frame), SAMPLES)
        self.assertEqual(len(frame), codec.HEADER_SIZE + sum(map(encoded_size, SAMPLES)))

    def test_known_bytes(self) -> None:
        """The layout is a contract with other versions: pin one frame byte for byte."""
        self.assertEqual(
            encode([Ack(258, "b"), Digest("a", 1)]),
            b"\x02" + b"\x03\x00\x00\x01\x02\x01b" + b"\x08\x01a" + b"\x00" * 7 + b"\x01",
        )
        self.assertEqual(
            encode([Alive("a", 3, ENDPOINT, "node", PROOF)]),
            b"\x02\x05\x01a"
            + b"\x00" * 7
            + b"\x03"
            + b"\x20\x01\x0d\xb8"
            + b"\x00" * 11
            + b"\x01\x1f\x0a\x04node"
            + PROOF,
        )
        self.assertEqual(
            encode([KnockRequest(258, "a"), Knock(3, "b")]),
            b"\x02" + b"\x09\x00\x00\x01\x02\x01a" + b"\x0a\x00\x00\x00\x03\x01b",
        )

    def test_smallest_message(self) -> None:
        self.assertEqual(encoded_size(Ack(0, "a")), codec.MIN_MESSAGE_SIZE)
        self.assertGreater(encoded_size(Digest("a", 0)), codec.MIN_MESSAGE_SIZE)

    @given(frames)
    def test_round_trip(self, frame: list[Message]) -> None:
        size = codec.HEADER_SIZE + sum(map(encoded_size, frame))
        if size > MAX_PLAINTEXT:
            self.assertRaises(EncodeError, encode, frame)
            return
        data = encode(frame)
        self.assertEqual(len(data), size)
        self.assertEqual(decode(data), frame)


class EncodeErrorTests(SynchronousTestCase):
    def test_refuses(self) -> None:
        for bad in (
            [],
            [Ack(-1, "a")],
            [Ack(2**32, "a")],
            [Digest("a", 2**64)],
            [Ack(1, "")],
            [Ack(1, "x" * 256)],
            [Alive("a", 1, Endpoint(ENDPOINT.host, 0), "node", PROOF)],
            [Alive("a", 1, ENDPOINT, "node", PROOF[:-1])],
            [Alive("a", 1, ENDPOINT, "node", b"")],
            [Digest("a" * 200, 1)] * 6,
        ):
            self.assertRaises(EncodeError, encode, bad)

    def test_not_a_message(self) -> None:
        self.assertRaises(EncodeError, encode, ["ping"])
        self.assertRaises(EncodeError, encoded_size, "ping")


class DecodeErrorTests(SynchronousTestCase):
    def assertReason(self, data: bytes, reason: str) -> None:
        with self.assertRaises(DecodeError) as caught:
            decode(data)
        self.assertEqual(caught.exception.reason, reason)

    def test_reasons(self) -> None:
        valid = encode([Ping(1, "node-b", "node-a")])
        self.assertReason(b"", "empty frame")
        self.assertReason(b"\x02", "frame without messages")
        self.assertReason(b"\x01" + valid[1:], "unknown version 1")
        self.assertReason(b"\x02\x0b", "unknown message type 11")
        self.assertReason(valid[:-1], "truncated ping source")
        self.assertReason(valid[:3], "truncated ping seq")
        self.assertReason(valid + b"\x03", "truncated ack seq")
        self.assertReason(b"\x02\x03\x00\x00\x00\x01\x00", "empty ack source")
        self.assertReason(b"\x02\x03\x00\x00\x00\x01\x01\xff", "invalid UTF-8 in ack source")
        self.assertReason(b"\x02" + b"\x03\x00\x00\x00\x01\x01a" * 200, "oversized frame")
        alive = encode([Alive("a", 1, ENDPOINT, "node", PROOF)])
        zero_port = alive.replace(b"\x1f\x0a", b"\x00\x00")
        self.assertReason(zero_port, "port 0 in alive address")
        self.assertReason(alive[:-1], "truncated alive proof")
        self.assertReason(alive[: -len(PROOF)], "truncated alive proof")

    @settings(max_examples=1000)
    @given(st.binary(max_size=MAX_DATAGRAM + 10))
    def test_random_bytes(self, data: bytes) -> None:
        self.assertOnlyDecodeError(data)
        # Past the version byte too, where the message parsers take over.
        self.assertOnlyDecodeError(bytes((codec.VERSION,)) + data)

    @settings(max_examples=1000)
    @given(frames, st.data())
    def test_mutations(self, frame: list[Message], data: st.DataObject) -> None:
        """Flip, cut, insert and append bytes of valid frames."""
        try:
            raw = bytearray(encode(frame))
        except EncodeError:
            return
        for _ in range(data.draw(st.integers(1, 4))):
            position = data.draw(st.integers(0, len(raw)))
            action = data.draw(st.sampled_from(["flip", "cut", "insert", "truncate"]))
            if action == "flip" and position < len(raw):
                raw[position] ^= data.draw(st.integers(1, 255))
            elif action == "cut":
                del raw[position : position + data.draw(st.integers(1, 8))]
            elif action == "insert":
                raw[position:position] = data.draw(st.binary(min_size=1, max_size=8))
            else:
                del raw[position:]
        self.assertOnlyDecodeError(bytes(raw))

    def assertOnlyDecodeError(self, data: bytes) -> None:
        try:
            decoded = decode(data)
        except DecodeError:
            return
        # Whatever decodes must be well-formed and encode back to the very same bytes.
        self.assertEqual(encode(decoded), data)
