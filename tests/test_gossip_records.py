"""Identities, pins, signed records and the saved state."""

from __future__ import annotations

import ipaddress
import json
import os
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from hepto.config import Endpoint
from hepto.gossip import identity as identity_module
from hepto.gossip import records
from hepto.gossip.identity import Identity, IdentityError, Pins, load_or_create
from hepto.gossip.persistence import KnownMember, PersistenceError, SavedState, StateFile
from hepto.gossip.records import RecordError, open_record, sign_record

ALICE = Identity.generate()
MALLORY = Identity.generate()


class IdentityFileTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.path = Path(self.mktemp())
        self.path.mkdir()
        self.key = self.path / identity_module.IDENTITY_FILE

    def test_made_once_owner_only(self) -> None:
        first = load_or_create(self.key)
        self.assertEqual(self.key.stat().st_mode & 0o777, 0o600)
        self.assertEqual(load_or_create(self.key).public_key, first.public_key)
        self.assertEqual([p.name for p in self.path.iterdir()], [identity_module.IDENTITY_FILE])

    def test_corrupt_file_is_a_clear_error(self) -> None:
        self.key.write_bytes(b"short")
        error = self.assertRaises(IdentityError, load_or_create, self.key)
        self.assertIn("32-byte", str(error))

    def test_readable_by_others_refused(self) -> None:
        load_or_create(self.key)
        os.chmod(self.key, 0o644)
        error = self.assertRaises(IdentityError, load_or_create, self.key)
        self.assertIn("chmod 600", str(error))

    def test_sign_verify(self) -> None:
        signature = ALICE.sign(b"message")
        self.assertTrue(identity_module.verify(ALICE.public_key, b"message", signature))
        self.assertFalse(identity_module.verify(MALLORY.public_key, b"message", signature))
        self.assertFalse(identity_module.verify(ALICE.public_key, b"messagE", signature))
        self.assertFalse(identity_module.verify(b"short", b"message", signature))


class PinsTests(SynchronousTestCase):
    def test_first_identity_wins(self) -> None:
        pins = Pins()
        self.assertTrue(pins.check("alice", ALICE.public_key))
        self.assertTrue(pins.changed)
        pins.changed = False
        self.assertTrue(pins.check("alice", ALICE.public_key))
        self.assertFalse(pins.changed)
        self.assertFalse(pins.check("alice", MALLORY.public_key))
        self.assertEqual(pins.get("alice"), ALICE.public_key)
        self.assertEqual(Pins.from_mapping(pins.as_mapping()).get("alice"), ALICE.public_key)


class RecordTests(SynchronousTestCase):
    def test_round_trip(self) -> None:
        signed = sign_record(ALICE, "prod", "alice", 3, {"role": "node", "z": [1, 2.5, None]})
        opened = open_record(signed.blob, "prod")
        self.assertEqual(opened, signed)
        self.assertEqual(opened.record.version, 3)
        self.assertEqual(opened.record.get("role"), "node")
        self.assertEqual(opened.key, ALICE.public_key)

    def test_canonical_form(self) -> None:
        signed = sign_record(ALICE, "prod", "alice", 1, {"b": 1, "a": "é"})
        body = signed.blob[65:]
        self.assertEqual(
            body,
            json.dumps(
                {
                    "data": {"a": "é", "b": 1},
                    "key": ALICE.public_key.hex(),
                    "name": "alice",
                    "version": 1,
                },
                separators=(",", ":"),
                ensure_ascii=False,
            ).encode(),
        )

    def test_other_cluster_refused(self) -> None:
        signed = sign_record(ALICE, "prod", "alice", 1, {})
        error = self.assertRaises(RecordError, open_record, signed.blob, "staging")
        self.assertEqual(error.reason, records.BAD_SIGNATURE)

    def test_tampered_refused(self) -> None:
        signed = sign_record(ALICE, "prod", "alice", 1, {"role": "node"})
        forged = signed.blob.replace(b'"node"', b'"full"')
        error = self.assertRaises(RecordError, open_record, forged, "prod")
        self.assertEqual(error.reason, records.BAD_SIGNATURE)

    def test_non_canonical_refused_even_if_signed(self) -> None:
        body = b'{"name":"alice", "version":1}'
        blob = b"\x01" + ALICE.sign(body) + body
        error = self.assertRaises(RecordError, open_record, blob, "prod")
        self.assertEqual(error.reason, records.BAD_RECORD)

    def test_resigned_key_swap_is_just_another_identity(self) -> None:
        """Mallory can sign a record for alice: pinning, not the record, refuses it."""
        forged = sign_record(MALLORY, "prod", "alice", 9, {})
        self.assertEqual(open_record(forged.blob, "prod").key, MALLORY.public_key)

    def test_invalid_fields_refused(self) -> None:
        def blob_of(fields: dict[str, object]) -> bytes:
            body = records.canonical_json(fields)
            message = b"hepto/record/v1\0prod\0" + body
            return b"\x01" + ALICE.sign(message) + body

        good = {"name": "alice", "version": 1, "key": ALICE.public_key.hex(), "data": {}}
        self.assertEqual(open_record(blob_of(good), "prod").name, "alice")
        bad_values: list[dict[str, object]] = [
            {**good, "name": "Alice!"},
            {**good, "name": 7},
            {**good, "version": 0},
            {**good, "version": True},
            {**good, "version": 1.0},
            {**good, "version": 2**60},
            {**good, "data": []},
            {**good, "key": "zz" * 32},
            {**good, "key": ALICE.public_key.hex().upper()},
            {**good, "extra": 1},
            {k: v for k, v in good.items() if k != "data"},
        ]
        for fields in bad_values:
            error = self.assertRaises(RecordError, open_record, blob_of(fields), "prod")
            self.assertEqual(error.reason, records.BAD_RECORD, fields)

    def test_size_limits(self) -> None:
        self.assertRaises(
            ValueError, sign_record, ALICE, "prod", "alice", 1, {"x": "a" * records.MAX_RECORD_SIZE}
        )
        error = self.assertRaises(
            RecordError, open_record, b"\x01" + b"\0" * records.MAX_RECORD_SIZE, "prod"
        )
        self.assertEqual(error.reason, records.OVERSIZED_RECORD)

    def test_not_json_is_a_value_error(self) -> None:
        self.assertRaises((TypeError, ValueError), sign_record, ALICE, "prod", "a", 1, {"x": {1j}})
        self.assertRaises(ValueError, sign_record, ALICE, "prod", "a", 1, {"x": float("nan")})
        self.assertRaises(ValueError, sign_record, ALICE, "prod", "a", 0, {})

    def test_deep_nesting_refused_not_crashing(self) -> None:
        body = b'{"data":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
        error = self.assertRaises(RecordError, open_record, b"\x01" + b"\0" * 64 + body, "prod")
        self.assertEqual(error.reason, records.BAD_RECORD)

    @settings(max_examples=500, deadline=None)
    @given(st.binary(max_size=400))
    def test_fuzz_random_blobs(self, blob: bytes) -> None:
        error = self.assertRaises(RecordError, open_record, blob, "prod")
        self.assertIn(error.reason, (records.BAD_RECORD, records.BAD_SIGNATURE))

    @settings(max_examples=300, deadline=None)
    @given(st.integers(0, 10_000), st.integers(1, 255))
    def test_fuzz_bit_flips(self, position: int, mask: int) -> None:
        blob = bytearray(sign_record(ALICE, "prod", "alice", 5, {"role": "node"}).blob)
        blob[position % len(blob)] ^= mask
        self.assertRaises(RecordError, open_record, bytes(blob), "prod")


class PersistenceTests(SynchronousTestCase):
    def setUp(self) -> None:
        directory = Path(self.mktemp())
        directory.mkdir()
        self.file = StateFile(directory / "gossip-state.json")

    def test_first_start_is_empty(self) -> None:
        self.assertEqual(self.file.load(), SavedState())

    def test_round_trip_owner_only(self) -> None:
        saved = SavedState(
            incarnation=4,
            record=sign_record(ALICE, "prod", "alice", 7, {}).blob,
            members=(
                KnownMember("bob", Endpoint(ipaddress.IPv6Address("2001:db8::2"), 7946), "master"),
            ),
            pins={"bob": MALLORY.public_key},
        )
        self.file.save(saved)
        self.assertEqual(self.file.load(), saved)
        self.assertEqual(self.file.path.stat().st_mode & 0o777, 0o600)

    def test_corrupt_is_a_clear_error(self) -> None:
        for text in ("{", "[]", '{"format": 1}', '{"format": 1, "incarnation": -1}'):
            self.file.path.write_text(text)
            error = self.assertRaises(PersistenceError, self.file.load)
            self.assertIn(str(self.file.path), str(error))
