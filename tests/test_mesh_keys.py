"""The node's WireGuard keys, its identity's, and the record format of the mesh."""

from __future__ import annotations

import base64
import ipaddress
import shutil
import subprocess

from nacl.signing import SigningKey
from twisted.trial.unittest import SynchronousTestCase

from hepto import plan
from hepto.config import Endpoint
from hepto.mesh import record
from hepto.mesh.keys import (
    InvalidKey,
    KeyPair,
    base64_to_hex,
    bound_public_key,
    decode_key,
    hex_to_base64,
)
from hepto.mesh.record import RecordError


class IdentityKeyTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.identity = SigningKey.generate()
        self.keys = KeyPair.from_identity(self.identity)

    def test_public_key_matches_wg_pubkey(self) -> None:
        if shutil.which("wg") is None:
            raise self.skipTest("needs wg (wireguard-tools)")
        derived = subprocess.run(
            ["wg", "pubkey"],
            input=(self.keys.private_key + "\n").encode(),
            capture_output=True,
            check=True,
        )
        self.assertEqual(derived.stdout.decode().strip(), self.keys.public_key)

    def test_anyone_can_tell_the_key_of_an_identity(self) -> None:
        public = bytes(self.identity.verify_key)
        self.assertEqual(bound_public_key(public), self.keys.public_key)
        other = KeyPair.from_identity(SigningKey.generate())
        self.assertNotEqual(bound_public_key(public), other.public_key)

    def test_the_same_identity_the_same_key(self) -> None:
        again = SigningKey(bytes(self.identity))
        self.assertEqual(KeyPair.from_identity(again), self.keys)

    def test_no_key_for_what_is_no_identity(self) -> None:
        for junk in (b"", b"x" * 31, b"\x00" * 32, b"\x01" + b"\x00" * 31):
            with self.subTest(junk=junk):
                self.assertIsNone(bound_public_key(junk))

    def test_generated_keys_are_clamped_like_wg_genkey(self) -> None:
        raw = decode_key(KeyPair.generate().private_key)
        self.assertEqual(raw[0] & 7, 0)
        self.assertEqual(raw[31] & 0xC0, 0x40)

    def test_private_key_is_not_in_repr(self) -> None:
        self.assertNotIn(self.keys.private_key, repr(self.keys))


class KeyTextTests(SynchronousTestCase):
    def test_hex_round_trip(self) -> None:
        text = KeyPair.generate().public_key
        self.assertEqual(hex_to_base64(base64_to_hex(text)), text)

    def test_wrong_lengths_and_alphabets(self) -> None:
        self.assertRaises(InvalidKey, decode_key, base64.b64encode(b"x" * 31).decode())
        self.assertRaises(InvalidKey, decode_key, "@" * 44)
        self.assertRaises(InvalidKey, decode_key, "é")
        self.assertRaises(InvalidKey, hex_to_base64, "zz" * 32)
        self.assertRaises(InvalidKey, hex_to_base64, "00" * 31)


class RecordTests(SynchronousTestCase):
    def test_round_trip(self) -> None:
        keys = KeyPair.generate()
        where = Endpoint(ipaddress.IPv6Address("2001:db8::1"), 51820)
        value = record.wireguard_value(keys.public_key, where)
        self.assertEqual(value, {"public_key": keys.public_key, "endpoint": "[2001:db8::1]:51820"})
        self.assertEqual(record.parse_wireguard(value), (keys.public_key, where))

    def test_endpoints_refused(self) -> None:
        for text in (
            None,
            5,
            "2001:db8::1",
            "[2001:db8::1]",
            "[2001:db8::1]:",
            "[2001:db8::1]:0",
            "[2001:db8::1]:65536",
            "[2001:db8::1]:12x",
            "[192.0.2.1]:1",
            "[::]:1",
            "[ff02::1]:1",
            "[fe80::1]:1",
            "[2001:db8::1\n]:1",
        ):
            with self.subTest(text=text):
                self.assertRaises(RecordError, record.parse_endpoint, text)

    def test_wireguard_values_refused(self) -> None:
        good = KeyPair.generate().public_key
        values: tuple[object, ...] = (
            [],
            {},
            {"public_key": 1, "endpoint": "[2001:db8::1]:1"},
            {"public_key": good[:-2], "endpoint": "[2001:db8::1]:1"},
            {"public_key": good + "\nremove=true", "endpoint": "[2001:db8::1]:1"},
            {"public_key": good},
        )
        for value in values:
            with self.subTest(value=value):
                self.assertRaises(RecordError, record.parse_wireguard, value)

    def test_pod_prefixes(self) -> None:
        inside = next(plan.pod_prefix("geo").subnets(new_prefix=64))
        self.assertEqual(record.parse_pod_prefix("geo", str(inside)), inside)
        for value in (
            7,
            "garbage",
            "::/0",
            str(plan.mesh_prefix("geo")),
            f"{inside.network_address}1/64",
        ):
            with self.subTest(value=value):
                self.assertRaises(RecordError, record.parse_pod_prefix, "geo", value)
