"""A backup of a real etcd, spoken to with the master's certificates, and its restore.

The bundle's etcd serves with the certificates a master's PKI made; ``take_backup``
snapshots it through the gRPC gateway; ``hepto restore`` (the command) rebuilds a
master's directory elsewhere with the bundle's etcdutl; an etcd started on it serves
the old keys at a revision bumped past the old one.
"""

from __future__ import annotations

import io
import os
import subprocess
import time
from contextlib import redirect_stderr
from pathlib import Path

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from agent import free_port
from hepto import cli
from hepto.backup.restore import BUMP_REVISION
from hepto.backup.sealing import BackupError
from hepto.backup.snapshot import save_snapshot
from hepto.backup.take import etcd_origin, take_backup
from hepto.https import ClientTLS, Origin
from hepto.pki.requests import APISERVER_ETCD_CLIENT, ETCD_CA
from hepto.programs import BUNDLE_BIN_DIR
from netlab import wait_until
from test_pki_service import CLUSTER, Lab, scratch

BIN_DIR = Path(os.environ.get("HEPTO_TEST_BIN_DIR", BUNDLE_BIN_DIR))
KEY = "5a" * 32
OTHER_KEY = "a5" * 32


class EtcdBackupTests(SynchronousTestCase):
    def setUp(self) -> None:
        for program in ("etcd", "etcdctl", "etcdutl"):
            if not (BIN_DIR / program).exists():
                raise SkipTest(f"needs {program} in {BIN_DIR} (tools/build-bundle)")
        self.lab = Lab(scratch(self), start=time.time())
        self.addCleanup(self.lab.stop)
        self.master = self.lab.join("master", "master")
        self.node_dir = self.master.paths.node_dir
        # What gossip keeps beside the PKI: this test has no gossip, so stand-ins.
        (self.node_dir / "identity.key").write_bytes(os.urandom(32))
        (self.node_dir / "identity.key").chmod(0o600)
        (self.node_dir / "gossip-state.json").write_text('{"format": 1}')
        self.port = free_port()

    def start_etcd(self, data_dir: Path) -> subprocess.Popen[bytes]:
        endpoint = f"https://[::1]:{self.port}"
        peer = f"https://[::1]:{free_port()}"
        argv = [
            str(BIN_DIR / "etcd"), "--name", "master", "--data-dir", str(data_dir),
            "--listen-client-urls", endpoint, "--advertise-client-urls", endpoint,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"master={peer}", "--client-cert-auth",
            "--peer-client-cert-auth",
        ]  # fmt: skip
        for flag, path in self.master.paths.component_files("etcd").items():
            argv += [flag, str(path)]
        log = (data_dir.parent / "etcd.log").open("ab")
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.addCleanup(self.stop, process)
        wait_until(lambda: self.etcdctl("endpoint", "health").returncode == 0, 60, 0.2, "etcd")
        return process

    @staticmethod
    def stop(process: subprocess.Popen[bytes]) -> None:
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=30)

    def etcdctl(self, *argv: str) -> subprocess.CompletedProcess[str]:
        paths = self.master.paths
        return subprocess.run(
            [str(BIN_DIR / "etcdctl"), "--endpoints", f"https://[::1]:{self.port}",
             "--cacert", str(paths.authority_certificate(ETCD_CA)),
             "--cert", str(paths.certificate(APISERVER_ETCD_CLIENT)),
             "--key", str(paths.key(APISERVER_ETCD_CLIENT)), "--dial-timeout", "3s", *argv],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip

    def origin(self) -> Origin:
        default = etcd_origin(self.node_dir)
        return Origin(default.scheme, default.host, self.port, default.tls)

    def revision(self) -> int:
        out = self.etcdctl("get", "/", "--prefix", "--keys-only", "-w", "fields").stdout
        return int(next(line for line in out.splitlines() if '"Revision"' in line).split()[-1])

    def restore(self, *argv: str) -> tuple[int, str]:
        errors = io.StringIO()
        out = io.StringIO()
        with redirect_stderr(errors):
            try:
                cli.main(["restore", "--cluster", CLUSTER, "--name", "master",
                          "--bin-dir", str(BIN_DIR), *argv], out)  # fmt: skip
            except SystemExit as exit:
                return int(exit.code or 0), errors.getvalue()
        return 0, out.getvalue()

    def test_backup_and_restore_elsewhere(self) -> None:
        etcd = self.start_etcd(scratch(self) / "etcd")
        for index in range(50):
            self.assertEqual(self.etcdctl("put", f"/registry/k{index}", "v" * 2048).returncode, 0)
        old_revision = self.revision()
        out = scratch(self) / "master.backup"
        taken = take_backup(self.node_dir, CLUSTER, "master", bytes.fromhex(KEY), out,
                            origin=self.origin())  # fmt: skip
        self.assertEqual(taken.size, out.stat().st_size)
        self.assertEqual(out.stat().st_mode & 0o777, 0o600)
        print(f"\nfigure: backup of 50 keys of 2 KiB: {taken.size} bytes in {taken.seconds} s")
        self.stop(etcd)

        data_dir = scratch(self) / "elsewhere"
        code, said = self.restore("--key", f"{OTHER_KEY},{KEY}", "--data-dir", str(data_dir),
                                  str(out))  # fmt: skip
        self.assertEqual(code, 0, said)
        self.assertIn("restored the backup", said)
        restored = data_dir / CLUSTER / "master"
        for name in ("identity.key", "gossip-state.json", "pki/ca.crt", "pki/ca/etcd.key",
                     "pki/ca/service-account.key", "pki/ca/kubernetes.crt"):  # fmt: skip
            self.assertEqual((restored / name).read_bytes(), (self.node_dir / name).read_bytes())
        self.assertEqual((restored / "pki/ca/etcd.key").stat().st_mode & 0o777, 0o600)
        self.assertEqual((restored / "pki/ca/etcd.crt").stat().st_mode & 0o777, 0o644)
        self.assertEqual(restored.stat().st_mode & 0o777, 0o700)
        self.assertEqual(sorted(p.name for p in restored.parent.iterdir()), ["master"])

        # etcd on the restored data (with the old node's certificates: same CA).
        self.start_etcd(restored / "etcd")
        got = self.etcdctl("get", "--print-value-only", "/registry/k7").stdout.strip()
        self.assertEqual(got, "v" * 2048)
        self.assertGreaterEqual(self.revision(), old_revision + BUMP_REVISION)
        # Marked compacted: a watch from an old revision fails instead of replaying.
        watch = self.etcdctl("watch", "/registry/k7", "--rev", str(old_revision))
        self.assertIn("compacted", watch.stdout + watch.stderr)

        # Into a master's directory that is not empty: refused, untouched.
        code, said = self.restore("--key", KEY, "--data-dir", str(data_dir), str(out))
        self.assertEqual(code, 1)
        self.assertIn("is not empty", said)

    def test_bad_backups_change_nothing(self) -> None:
        self.start_etcd(scratch(self) / "etcd")
        out = scratch(self) / "master.backup"
        take_backup(self.node_dir, CLUSTER, "master", bytes.fromhex(KEY), out,
                    origin=self.origin())  # fmt: skip
        good = out.read_bytes()
        data_dir = scratch(self) / "target"
        cases = {
            "wrong key": (good, OTHER_KEY, "cannot be opened with the cluster key"),
            "truncated": (good[: len(good) // 2], KEY, "cannot be opened"),
            "corrupt": (good[:-100] + bytes([good[-100] ^ 1]) + good[-99:], KEY,
                        "cannot be opened"),
            "empty": (b"", KEY, "not a hepto backup"),
        }  # fmt: skip
        for case, (data, key, message) in cases.items():
            bad = scratch(self) / f"{case}.backup"
            bad.write_bytes(data)
            code, said = self.restore("--key", key, "--data-dir", str(data_dir), str(bad))
            self.assertEqual(code, 1, case)
            self.assertIn(message, said, case)
            self.assertFalse(data_dir.exists(), case)
        code, said = self.restore(
            "--cluster", "other", "--key", KEY, "--data-dir", str(data_dir), str(out)
        )
        self.assertIn(f"is a backup of cluster '{CLUSTER}', not 'other'", said)
        self.assertFalse(data_dir.exists())
        # A failure of etcdutl leaves nothing either.
        failing = scratch(self)
        (failing / "etcdutl").write_text("#!/bin/sh\necho 'no space left' >&2\nexit 3\n")
        (failing / "etcdutl").chmod(0o755)
        code, said = self.restore(
            "--key", KEY, "--data-dir", str(data_dir), "--bin-dir", str(failing), str(out)
        )
        self.assertEqual(code, 1, said)
        self.assertIn("etcdutl snapshot restore failed (exit 3): no space left", said)
        self.assertFalse(data_dir.exists())  # not even the directories above

    def test_etcd_refuses_a_stranger(self) -> None:
        self.start_etcd(scratch(self) / "etcd")
        origin = self.origin()
        # Without a client certificate: etcd refuses the TLS handshake.
        stranger = Origin(origin.scheme, origin.host, origin.port,
                          ClientTLS(origin.tls.ca if origin.tls else None))  # fmt: skip
        with self.assertRaisesRegex(BackupError, "cannot take etcd's snapshot"):
            save_snapshot(stranger, io.BytesIO())
