"""The node's WireGuard key file, and the record format of the mesh."""

from __future__ import annotations

import base64
import ipaddress
import shutil
import stat
import subprocess
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from hepto import plan
from hepto.config import Endpoint
from hepto.mesh import record
from hepto.mesh.keys import (
    InvalidKey,
    KeyFileError,
    KeyPair,
    base64_to_hex,
    decode_key,
    hex_to_base64,
    load_or_create,
)
from hepto.mesh.record import RecordError


class KeyFileTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.path = Path(self.mktemp()) / "node" / "wireguard.key"

    def test_made_on_first_start_owner_only(self) -> None:
        keys = load_or_create(self.path)
        self.assertEqual(stat.S_IMODE(self.path.stat().st_mode), 0o600)
        self.assertEqual(self.path.read_text(), keys.private_key + "\n")
        self.assertEqual(list(self.path.parent.iterdir()), [self.path], "no temporary left")

    def test_kept_across_starts(self) -> None:
        self.assertEqual(load_or_create(self.path), load_or_create(self.path))

    def test_loosened_mode_is_tightened(self) -> None:
        load_or_create(self.path)
        self.path.chmod(0o644)
        load_or_create(self.path)
        self.assertEqual(stat.S_IMODE(self.path.stat().st_mode), 0o600)

    def test_garbage_is_a_clear_error_and_is_not_overwritten(self) -> None:
        self.path.parent.mkdir(parents=True)
        self.path.write_text("not a key\n")
        error = self.assertRaises(KeyFileError, load_or_create, self.path)
        self.assertIn(str(self.path), str(error))
        self.assertIn("move it away", str(error))
        self.assertEqual(self.path.read_text(), "not a key\n")

    def test_public_key_matches_wg_pubkey(self) -> None:
        if shutil.which("wg") is None:
            raise self.skipTest("needs wg (wireguard-tools)")
        keys = load_or_create(self.path)
        derived = (
            subprocess.run(
                ["wg", "pubkey"], input=self.path.read_bytes(), capture_output=True, check=True
            )
            .stdout.decode()
            .strip()
        )
        self.assertEqual(derived, keys.public_key)

    def test_generated_keys_are_clamped_like_wg_genkey(self) -> None:
        raw = decode_key(KeyPair.generate().private_key)
        self.assertEqual(raw[0] & 7, 0)
        self.assertEqual(raw[31] & 0xC0, 0x40)

    def test_private_key_is_not_in_repr(self) -> None:
        keys = KeyPair.generate()
        self.assertNotIn(keys.private_key, repr(keys))


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
