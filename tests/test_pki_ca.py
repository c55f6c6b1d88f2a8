"""Keys on disk, the master's authorities, and the pinned CA of a member."""

from __future__ import annotations

import datetime
import os
import shutil
import stat
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from twisted.trial.unittest import SynchronousTestCase

from hepto.pki import ca, keys, policy, trust


def scratch(test: SynchronousTestCase) -> Path:
    """A fresh directory, removed after the test whatever its outcome."""
    path = Path(tempfile.mkdtemp(prefix="hepto-pki-"))
    test.addCleanup(shutil.rmtree, path, True)
    return path


CLUSTER = "authorities"
NOW = datetime.datetime(2025, 6, 1, 12, 0, tzinfo=datetime.UTC)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


class KeyFileTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.directory = scratch(self) / "keys"
        keys.ensure_directory(self.directory)

    def test_secret_files_are_owner_only_from_the_start(self) -> None:
        old = os.umask(0)
        self.addCleanup(os.umask, old)
        path = self.directory / "a.key"
        keys.write_private_key(path, keys.generate_key())
        self.assertEqual(mode(path), 0o600)
        self.assertEqual(mode(self.directory), 0o700)
        self.assertEqual([p.name for p in self.directory.iterdir()], ["a.key"])

    def test_replacing_keeps_mode_and_content_whole(self) -> None:
        path = self.directory / "b.key"
        path.write_bytes(b"old")
        path.chmod(0o644)
        key = keys.generate_key()
        keys.write_private_key(path, key)
        self.assertEqual(mode(path), 0o600)
        self.assertTrue(keys.same_key(keys.read_private_key(path), key))

    def test_directory_is_tightened(self) -> None:
        self.directory.chmod(0o755)
        keys.ensure_directory(self.directory)
        self.assertEqual(mode(self.directory), 0o700)

    def test_only_p256_keys_load(self) -> None:
        from cryptography.hazmat.primitives.asymmetric import ec, ed25519

        for other in (
            ec.generate_private_key(ec.SECP384R1()),
            ed25519.Ed25519PrivateKey.generate(),
        ):
            data = other.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            with self.assertRaises(keys.BadKey):
                keys.load_private_pem(data)
        with self.assertRaises(keys.BadKey):
            keys.load_private_pem(b"garbage")


class AuthorityTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.directory = scratch(self) / "ca"

    def create(self) -> ca.Authorities:
        authorities, created = ca.load_or_create_authorities(self.directory, CLUSTER, NOW)
        self.assertTrue(created)
        return authorities

    def test_first_start_creates_everything_owner_only(self) -> None:
        authorities = self.create()
        self.assertEqual(mode(self.directory), 0o700)
        names = sorted(path.name for path in self.directory.iterdir())
        self.assertEqual(
            names,
            [
                "etcd.crt",
                "etcd.key",
                "front-proxy.crt",
                "front-proxy.key",
                "kubernetes.crt",
                "kubernetes.key",
                "service-account.key",
                "service-account.pub",
            ],
        )
        for name in names:
            self.assertEqual(mode(self.directory / name), 0o600 if name.endswith(".key") else 0o644)
        for authority in authorities:
            certificate = authority.certificate
            self.assertTrue(
                certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
            )
            self.assertEqual(certificate.not_valid_after_utc - NOW, ca.CA_LIFETIME)
            self.assertEqual(
                certificate.subject.get_attributes_for_oid(x509.NameOID.ORGANIZATIONAL_UNIT_NAME)[
                    0
                ].value,
                CLUSTER,
            )
        subjects = {authority.certificate.subject for authority in authorities}
        self.assertEqual(len(subjects), 3)

    def test_restart_never_remints(self) -> None:
        first = self.create()
        before = {path.name: path.read_bytes() for path in self.directory.iterdir()}
        again, created = ca.load_or_create_authorities(
            self.directory, CLUSTER, NOW + datetime.timedelta(days=400)
        )
        self.assertFalse(created)
        self.assertEqual(
            before, {path.name: path.read_bytes() for path in self.directory.iterdir()}
        )
        for one, other in zip(first, again, strict=True):
            self.assertEqual(one.certificate, other.certificate)
            self.assertTrue(keys.same_key(one.key, other.key))

    def test_long_cluster_names_fit(self) -> None:
        authorities, _ = ca.load_or_create_authorities(self.directory, "c" * 63, NOW)
        self.assertIn("kubernetes-ca", authorities.kubernetes.certificate.subject.rfc4514_string())

    def assertDamaged(self, damage: str, expected: str) -> None:
        with self.assertRaises(ca.AuthorityError) as caught:
            ca.load_or_create_authorities(self.directory, CLUSTER, NOW)
        message = str(caught.exception)
        self.assertIn(expected, message, damage)
        self.assertIn("restore them from a backup", message)

    def test_damaged_files_stop_the_master(self) -> None:
        self.create()
        pristine = {path.name: path.read_bytes() for path in self.directory.iterdir()}
        other = ca.create_authority("kubernetes", CLUSTER, NOW)
        leaf_like = ca.create_authority("etcd", CLUSTER, NOW)
        not_a_ca = (
            x509.CertificateBuilder()
            .subject_name(leaf_like.certificate.subject)
            .issuer_name(leaf_like.certificate.subject)
            .public_key(leaf_like.key.public_key())
            .serial_number(1)
            .not_valid_before(NOW)
            .not_valid_after(NOW + datetime.timedelta(days=1))
            .sign(leaf_like.key, hashes.SHA256())
        )
        damages: dict[str, tuple[dict[str, bytes | None], str]] = {
            "missing key": ({"kubernetes.key": None}, "lacks kubernetes.key"),
            "missing public key": ({"service-account.pub": None}, "lacks service-account.pub"),
            "truncated certificate": (
                {"etcd.crt": pristine["etcd.crt"][:100]},
                "etcd.crt: not a PEM certificate",
            ),
            "empty key": ({"front-proxy.key": b""}, "front-proxy.key: not a PEM private key"),
            "swapped key": (
                {"kubernetes.key": keys.private_pem(other.key)},
                "does not match the certificate kubernetes.crt",
            ),
            "not a CA": (
                {
                    "etcd.crt": not_a_ca.public_bytes(serialization.Encoding.PEM),
                    "etcd.key": keys.private_pem(leaf_like.key),
                },
                "etcd.crt: is not a CA certificate",
            ),
            "service-account mismatch": (
                {"service-account.pub": keys.public_pem(other.key.public_key())},
                "service-account.pub: does not match",
            ),
        }
        for damage, (changes, expected) in damages.items():
            for name, data in pristine.items():
                (self.directory / name).write_bytes(data)
            for name, change in changes.items():
                if change is None:
                    (self.directory / name).unlink()
                else:
                    (self.directory / name).write_bytes(change)
            self.assertDamaged(damage, expected)
            # Nothing was replaced: the damage is still there for the operator to see.
            for name, change in changes.items():
                path = self.directory / name
                self.assertEqual(path.read_bytes() if path.exists() else None, change, damage)

    def test_expired_authority_stops_the_master(self) -> None:
        self.create()
        with self.assertRaises(ca.AuthorityError) as caught:
            ca.load_or_create_authorities(
                self.directory, CLUSTER, NOW + ca.CA_LIFETIME + datetime.timedelta(days=1)
            )
        self.assertIn("expired", str(caught.exception))

    def test_interrupted_creation_leaves_nothing_half_made(self) -> None:
        aside = self.directory.with_name(".ca.new")
        aside.mkdir()
        (aside / "kubernetes.key").write_text("half")
        self.create()
        self.assertFalse(aside.exists())


class TrustTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.path = scratch(self) / "ca.crt"
        self.authority = ca.create_authority("kubernetes", CLUSTER, NOW)

    def test_first_master_ca_is_pinned_and_kept(self) -> None:
        pins = trust.Trust.load(self.path)
        self.assertIsNone(pins.certificate)
        self.assertTrue(pins.consider("master", "master", self.authority.certificate_pem))
        self.assertFalse(pins.consider("master", "master", self.authority.certificate_pem))
        self.assertEqual(trust.Trust.load(self.path).certificate, self.authority.certificate)

    def test_full_role_is_a_master(self) -> None:
        self.assertTrue(
            trust.Trust(self.path).consider("m", "full", self.authority.certificate_pem)
        )

    def test_ca_from_a_non_master_is_refused(self) -> None:
        pins = trust.Trust(self.path)
        for role in ("node", None, "admin"):
            with self.assertRaises(policy.Refused) as caught:
                pins.consider("node-a", role, self.authority.certificate_pem)
            self.assertEqual(caught.exception.code, policy.FOREIGN_CA)
        self.assertIsNone(pins.certificate)
        self.assertFalse(self.path.exists())

    def test_second_ca_is_refused(self) -> None:
        pins = trust.Trust(self.path)
        pins.consider("master", "master", self.authority.certificate_pem)
        other = ca.create_authority("kubernetes", CLUSTER, NOW)
        with self.assertRaises(policy.Refused) as caught:
            pins.consider("master-2", "master", other.certificate_pem)
        self.assertEqual(caught.exception.code, policy.SECOND_CA)
        self.assertEqual(trust.Trust.load(self.path).certificate, self.authority.certificate)

    def test_announced_leaf_is_no_ca(self) -> None:
        from hepto.pki import requests, signer

        key = keys.generate_key()
        spec = requests.kubelet_specs(CLUSTER, "m")[0]
        leaf = signer.issue(self.authority, key.public_key(), spec, NOW)
        pem = leaf.public_bytes(serialization.Encoding.PEM).decode()
        with self.assertRaises(policy.Refused) as caught:
            trust.Trust(self.path).consider("m", "master", pem)
        self.assertEqual(caught.exception.code, policy.CA_FLAG)

    def test_damaged_pin_is_an_error(self) -> None:
        self.path.write_text("garbage")
        with self.assertRaises(ca.AuthorityError) as caught:
            trust.Trust.load(self.path)
        self.assertIn("remove it to trust the master's CA anew", str(caught.exception))
