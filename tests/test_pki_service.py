"""The PKI service over an in-memory cluster: issue, install, renew, refuse."""

from __future__ import annotations

import base64
import datetime
import json
import shutil
import stat
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import attrs
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from twisted.internet import task
from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from hepto import plan
from hepto.errors import StartupError
from hepto.pki import ca, keys, policy, requests, signer, store
from hepto.pki import desk as desk_module
from hepto.pki import signing as signing_module
from hepto.pki.errors import WorkerError
from hepto.pki.local import LocalRunner
from hepto.pki.requests import ADMIN, APISERVER, KUBE_PROXY, KUBELET_CLIENT, KUBELET_SERVING
from hepto.pki.service import CertificateChange, PKIService, Runner
from hepto.state import ALIVE, LEFT, SUSPECT, Change, MemoryCluster, MemoryState, Record


def scratch(test: SynchronousTestCase) -> Path:
    """A fresh directory, removed after the test whatever its outcome."""
    path = Path(tempfile.mkdtemp(prefix="hepto-pki-"))
    test.addCleanup(shutil.rmtree, path, True)
    return path


CLUSTER = "memory"
START = datetime.datetime(2025, 6, 1, 12, 0, tzinfo=datetime.UTC).timestamp()
NODE_CERTIFICATES = (KUBELET_CLIENT, KUBELET_SERVING, KUBE_PROXY)


def start_failure(
    test: SynchronousTestCase, service: PKIService, kind: type[Exception]
) -> Exception:
    """Start ``service``; its start's batch must fail with ``kind``, which is returned."""
    service.startService()
    failed = test.failureResultOf(service.when_started(), kind).value
    assert isinstance(failed, Exception)
    return failed


def refused_code(service: PKIService, member: str, subject: str) -> str | None:
    refusal = service.refusals.get(member, subject)
    return None if refusal is None else refusal.code


def public_key(csr: x509.CertificateSigningRequest) -> keys.PublicKey:
    key = csr.public_key()
    assert isinstance(key, keys.PublicKey)
    return key


def pem_of(certificate: x509.Certificate) -> str:
    return certificate.public_bytes(serialization.Encoding.PEM).decode()


class Lab:
    """A MemoryCluster whose members each run a PKIService on their own clock."""

    def __init__(self, base: Path, start: float = START) -> None:
        self.base = base
        self.start_time = start
        self.cluster = MemoryCluster()
        self.views: dict[str, MemoryState] = {}
        self.clocks: dict[str, task.Clock] = {}
        self.services: dict[str, PKIService] = {}
        self.roles: dict[str, str] = {}

    def join(self, name: str, role: str, offset: float = 0.0, start: bool = True) -> PKIService:
        clock = task.Clock()
        clock.advance(self.start_time + offset)
        self.clocks[name] = clock
        self.roles[name] = role
        self.views[name] = self.cluster.join(name, role=role)
        return self.start(name) if start else self.make(name)

    def make(self, name: str) -> PKIService:
        service = PKIService(
            CLUSTER,
            name,
            self.roles[name],
            self.base / name,
            self.views[name],
            self.clocks[name],
            runner=LocalRunner(),
        )
        self.services[name] = service
        return service

    def start(self, name: str) -> PKIService:
        service = self.make(name)
        service.startService()
        self.settle()
        return service

    def restart(self, name: str) -> PKIService:
        self.services[name].stopService()
        return self.start(name)

    def settle(self) -> None:
        """Run every call that is due, until none is (reviews schedule more reviews)."""
        for _ in range(100):
            due = [
                clock
                for clock in self.clocks.values()
                if any(call.getTime() <= clock.seconds() for call in clock.getDelayedCalls())
            ]
            if not due:
                return
            for clock in due:
                clock.advance(0)
        raise AssertionError("the cluster never settled")

    def advance(self, seconds: float) -> None:
        """Move every clock forward, one step at a time so timers interleave fairly."""
        step = max(seconds / 20, 1)
        remaining = seconds
        while remaining > 0:
            for clock in self.clocks.values():
                clock.advance(min(step, remaining))
            remaining -= step
            self.settle()

    def record(self, name: str) -> Record:
        record = self.views[name].members()[name].record
        assert record is not None
        return record

    def stop(self) -> None:
        for service in self.services.values():
            if service.running:
                service.stopService()


class ServiceTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.lab = Lab(scratch(self))
        self.addCleanup(self.lab.stop)

    def authority(self, name: str = "kubernetes") -> x509.Certificate:
        """A CA of the first master that joined."""
        master = next(member for member, role in self.lab.roles.items() if role != "node")
        return ca.load_authority(
            self.lab.services[master].paths.authority_dir, name, self.now(master)
        ).certificate

    def now(self, name: str = "master") -> datetime.datetime:
        return datetime.datetime.fromtimestamp(self.lab.clocks[name].seconds(), datetime.UTC)

    def assertHolds(self, name: str, names: tuple[str, ...] = NODE_CERTIFICATES) -> None:
        """Files on disk, owner-only keys, chaining to the master's CA, exactly the spec."""
        service = self.lab.services[name]
        authority = self.authority()
        specs = {
            spec.name: spec for spec in requests.specs_for_role(self.lab.roles[name], CLUSTER, name)
        }
        for certificate_name in names:
            key_file = service.paths.key(certificate_name)
            certificate_file = service.paths.certificate(certificate_name)
            self.assertEqual(stat.S_IMODE(key_file.stat().st_mode), 0o600)
            key = keys.read_private_key(key_file)
            certificate = x509.load_pem_x509_certificate(certificate_file.read_bytes())
            spec = specs[certificate_name]
            policy.check_issued(
                certificate, spec, key, self.authority(spec.authority), self.now(name)
            )
            self.assertTrue(service.installed(certificate_name))
        self.assertEqual(
            x509.load_pem_x509_certificate(service.paths.trusted_ca.read_bytes()), authority
        )

    def pki(self, name: str) -> Any:
        return self.lab.record(name).get("pki")


class IssueTests(ServiceTestCase):
    def test_master_and_two_nodes_end_up_with_verified_certificates(self) -> None:
        self.lab.join("master", "master")
        self.lab.join("node-a", "node")
        self.lab.join("node-b", "node")
        master_names = tuple(spec.name for spec in requests.master_specs(CLUSTER, "master"))
        self.assertHolds("master", master_names)
        self.assertHolds("node-a")
        self.assertHolds("node-b")
        for name, service in self.lab.services.items():
            self.assertEqual(service.refusals.as_json(), [], name)
        # Once installed, requests and answers leave the records: only the CA remains.
        self.assertEqual(set(self.pki("master")), {"ca"})
        self.assertIsNone(self.pki("node-a"))
        self.assertIsNone(self.pki("node-b"))
        self.assertLess(len(json.dumps(dict(self.lab.record("master").data))), 1024)

    def test_nodes_joining_before_the_master_wait_for_it(self) -> None:
        self.lab.join("node-a", "node")
        requested = self.pki("node-a")
        self.assertEqual(set(requested["csr"]), set(NODE_CERTIFICATES))
        self.assertEqual(self.lab.services["node-a"].status()["trusted_ca"], None)
        self.lab.join("master", "master")
        self.assertHolds("node-a")

    def test_full_role_signs_its_own_kubelet_certificates(self) -> None:
        self.lab.join("full", "full")
        self.lab.join("node-a", "node")
        names = tuple(spec.name for spec in requests.specs_for_role("full", CLUSTER, "full"))
        self.assertIn(KUBELET_SERVING, names)
        self.assertHolds("full", names)
        self.assertEqual(set(self.pki("full")), {"ca"})
        self.assertTrue(self.lab.services["node-a"].installed(KUBELET_CLIENT))

    def test_kubeconfigs(self) -> None:
        self.lab.join("master", "master")
        self.lab.join("node-a", "node")
        master, node = self.lab.services["master"], self.lab.services["node-a"]
        expected = {
            master.paths.node_dir / "kubeconfig": ("hepto-admin", ADMIN, master),
            master.paths.kubeconfig("controller-manager"): (
                "system:kube-controller-manager",
                "controller-manager",
                master,
            ),
            master.paths.kubeconfig("scheduler"): ("system:kube-scheduler", "scheduler", master),
            node.paths.kubeconfig("kubelet"): ("system:node:node-a", KUBELET_CLIENT, node),
        }
        for path, (user, certificate_name, service) in expected.items():
            self.assertEqual(stat.S_IMODE(path.stat().st_mode), 0o600)
            document = yaml.safe_load(path.read_text())
            self.assertEqual(document["current-context"], f"{user}@{CLUSTER}")
            server = document["clusters"][0]["cluster"]["server"]
            self.assertEqual(server, f"https://[{plan.apiserver_address(CLUSTER)}]:6443")
            embedded = document["clusters"][0]["cluster"]["certificate-authority-data"]
            self.assertEqual(base64.b64decode(embedded), service.paths.trusted_ca.read_bytes())
            user_entry = document["users"][0]
            self.assertEqual(user_entry["name"], user)
            self.assertEqual(
                base64.b64decode(user_entry["user"]["client-certificate-data"]),
                service.paths.certificate(certificate_name).read_bytes(),
            )
        self.assertFalse(node.paths.kubeconfig("admin").exists())


class RestartTests(ServiceTestCase):
    def test_master_restart_changes_no_ca_and_no_certificate(self) -> None:
        self.lab.join("master", "master")
        self.lab.join("node-a", "node")
        paths = self.lab.services["master"].paths
        before = {path: path.read_bytes() for path in paths.pki_dir.rglob("*") if path.is_file()}
        node_before = self.lab.services["node-a"].paths.certificate(KUBELET_CLIENT).read_bytes()
        self.lab.advance(3600)
        self.lab.restart("master")
        after = {path: path.read_bytes() for path in paths.pki_dir.rglob("*") if path.is_file()}
        self.assertEqual(before, after)
        self.assertEqual(
            self.lab.services["node-a"].paths.certificate(KUBELET_CLIENT).read_bytes(),
            node_before,
        )
        self.assertEqual(self.lab.services["node-a"].refusals.as_json(), [])

    def test_node_restart_asks_for_nothing(self) -> None:
        self.lab.join("master", "master")
        self.lab.join("node-a", "node")
        version = self.lab.record("node-a").version
        self.lab.restart("node-a")
        self.assertHolds("node-a")
        self.assertEqual(self.lab.record("node-a").version, version)

    def test_damaged_ca_stops_the_master(self) -> None:
        self.lab.join("master", "master")
        paths = self.lab.services["master"].paths
        self.lab.services["master"].stopService()
        paths.authority_key("etcd").write_text("damaged")
        failed = start_failure(self, self.lab.make("master"), ca.AuthorityError)
        self.assertIn("etcd.key", str(failed))
        self.assertEqual(paths.authority_key("etcd").read_text(), "damaged")

    def test_node_promoted_with_a_foreign_pin_refuses_to_start(self) -> None:
        self.lab.join("master", "master")
        self.lab.join("node-a", "node")
        self.lab.services["node-a"].stopService()
        self.lab.roles["node-a"] = "master"
        failed = start_failure(self, self.lab.make("node-a"), ca.AuthorityError)
        self.assertIn("trusts another cluster CA", str(failed))

    def test_damaged_trust_stops_a_node(self) -> None:
        self.lab.join("master", "master")
        self.lab.join("node-a", "node")
        paths = self.lab.services["node-a"].paths
        self.lab.services["node-a"].stopService()
        paths.trusted_ca.write_text("damaged")
        failed = start_failure(self, self.lab.make("node-a"), ca.AuthorityError)
        self.assertIn(paths.trusted_ca.name, str(failed))
        self.assertEqual(paths.trusted_ca.read_text(), "damaged")

    def test_damaged_leaf_is_requested_again(self) -> None:
        self.lab.join("master", "master")
        self.lab.join("node-a", "node")
        node = self.lab.services["node-a"]
        node.stopService()
        node.paths.certificate(KUBELET_SERVING).write_text("garbage")
        self.lab.start("node-a")
        self.assertHolds("node-a")


class RenewalTests(ServiceTestCase):
    def test_certificates_renew_at_two_thirds_of_their_life_with_new_keys(self) -> None:
        self.lab.join("master", "master")
        self.lab.join("node-a", "node")
        node, master = self.lab.services["node-a"], self.lab.services["master"]
        changes: list[CertificateChange] = []
        node.subscribe(changes.append)
        master_changes: list[CertificateChange] = []
        master.subscribe(master_changes.append)
        first = x509.load_pem_x509_certificate(node.paths.certificate(KUBELET_CLIENT).read_bytes())
        first_key = keys.read_private_key(node.paths.key(KUBELET_CLIENT))
        first_apiserver = master.paths.certificate(APISERVER).read_bytes()
        renew_at = store.renewal_time(first)
        self.assertEqual(
            renew_at - first.not_valid_before_utc,
            (first.not_valid_after_utc - first.not_valid_before_utc) * 2 / 3,
        )
        until_renewal = (renew_at - self.now("node-a")).total_seconds()
        self.lab.advance(until_renewal - 3600)
        self.assertEqual(changes, [])
        self.assertEqual(master_changes, [])
        renewals = node.status()["renewals"]
        self.lab.advance(7200)
        self.assertEqual(sorted(change.name for change in changes), sorted(NODE_CERTIFICATES))
        self.assertEqual(node.status()["renewals"] - renewals, len(NODE_CERTIFICATES))
        second = x509.load_pem_x509_certificate(node.paths.certificate(KUBELET_CLIENT).read_bytes())
        second_key = keys.read_private_key(node.paths.key(KUBELET_CLIENT))
        self.assertNotEqual(first.serial_number, second.serial_number)
        self.assertFalse(keys.same_key(first_key, second_key))
        self.assertGreater(second.not_valid_after_utc, first.not_valid_after_utc)
        self.assertHolds("node-a")
        self.assertNotEqual(master.paths.certificate(APISERVER).read_bytes(), first_apiserver)
        self.assertEqual(len(master_changes), len(requests.master_specs(CLUSTER, "master")))
        self.assertFalse(node.paths.pending_key(KUBELET_CLIENT).exists())
        self.assertIsNone(self.pki("node-a"))
        self.assertEqual(set(self.pki("master")), {"ca"})
        # And again, on the new certificate's schedule.
        changes.clear()
        self.lab.advance((store.renewal_time(second) - self.now("node-a")).total_seconds() + 60)
        self.assertEqual(len(changes), len(NODE_CERTIFICATES))

    def test_renewal_waits_for_an_absent_master_keeping_the_old_certificate(self) -> None:
        self.lab.join("master", "master")
        self.lab.join("node-a", "node")
        node = self.lab.services["node-a"]
        self.lab.services["master"].stopService()
        old = node.paths.certificate(KUBELET_CLIENT).read_bytes()
        self.lab.advance(300 * 86400)
        self.assertEqual(node.paths.certificate(KUBELET_CLIENT).read_bytes(), old)
        self.assertTrue(node.paths.pending_key(KUBELET_CLIENT).exists())
        self.assertEqual(set(self.pki("node-a")["csr"]), set(NODE_CERTIFICATES))
        # The pending key survives a restart: the same key is asked for again.
        pending = keys.read_private_key(node.paths.pending_key(KUBELET_CLIENT))
        self.lab.restart("node-a")
        csr = x509.load_pem_x509_csr(self.pki("node-a")["csr"][KUBELET_CLIENT].encode())
        self.assertTrue(keys.same_key(public_key(csr), pending))
        self.lab.start("master")
        self.assertHolds("node-a")
        self.assertTrue(
            keys.same_key(keys.read_private_key(node.paths.key(KUBELET_CLIENT)), pending)
        )

    def test_expired_node_certificate_is_replaced(self) -> None:
        self.lab.join("master", "master")
        self.lab.join("node-a", "node")
        self.lab.services["node-a"].stopService()
        for clock in self.lab.clocks.values():
            clock.advance(400 * 86400)
        self.lab.settle()
        self.lab.start("node-a")
        self.assertHolds("node-a")


class WaitingTests(ServiceTestCase):
    def test_when_installed_fires_once_everything_is_there(self) -> None:
        node = self.lab.join("node-a", "node")
        fired: list[object] = []
        node.when_installed([KUBELET_CLIENT]).addCallback(fired.append)
        both: list[object] = []
        node.when_installed(NODE_CERTIFICATES).addCallback(both.append)
        cancelled = node.when_installed([KUBELET_SERVING])
        cancelled.addErrback(lambda failure: None)
        cancelled.cancel()
        self.assertEqual(fired, [])
        self.lab.join("master", "master")
        self.assertEqual(fired, [node.paths])
        self.assertEqual(both, [node.paths])
        self.assertTrue(node.paths.kubeconfig("kubelet").exists())
        self.assertEqual(self.successResultOf(node.when_installed(NODE_CERTIFICATES)), node.paths)
        with self.assertRaises(ValueError):
            node.when_installed([APISERVER])

    def test_listener_failure_does_not_stop_installation(self) -> None:
        node = self.lab.join("node-a", "node")

        def broken(change: CertificateChange) -> None:
            raise RuntimeError("supervisor bug")

        node.subscribe(broken)
        seen: list[str] = []
        unsubscribe = node.subscribe(lambda change: seen.append(change.name))
        self.lab.join("master", "master")
        self.assertEqual(sorted(seen), sorted(NODE_CERTIFICATES))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), len(NODE_CERTIFICATES))
        unsubscribe()

    def test_status_is_json(self) -> None:
        self.lab.join("master", "master")
        self.lab.join("node-a", "node")
        for name, service in self.lab.services.items():
            status = json.loads(json.dumps(service.status()))
            for certificate_name, entry in status["certificates"].items():
                self.assertEqual(entry["state"], "valid", (name, certificate_name))
                self.assertIn("not_after", entry)
                self.assertIn("renew_at", entry)
                self.assertIn("subject", entry)
        master = self.lab.services["master"].status()
        self.assertEqual(set(master["authorities"]), {"kubernetes", "etcd", "front-proxy"})
        self.assertEqual(master["outstanding"], {})
        self.assertEqual(
            self.lab.services["node-a"].status()["certificates"][KUBELET_CLIENT]["subject"],
            "CN=system:node:node-a,O=system:nodes",
        )


class BadInputTests(ServiceTestCase):
    def test_bad_requests_are_refused_reported_and_unsigned(self) -> None:
        self.lab.join("master", "master")
        self.lab.join("node-a", "node")
        view = self.lab.cluster.join("node-b", role="node")
        key = keys.generate_key()
        other_name = requests.kubelet_specs(CLUSTER, "node-a")[0]
        masters = attrs.evolve(
            requests.kubelet_specs(CLUSTER, "node-b")[0], organizations=("system:masters",)
        )

        def csr(spec: requests.CertificateSpec) -> str:
            return requests.build_csr(spec, key).public_bytes(serialization.Encoding.PEM).decode()

        view.publish(
            "pki",
            {
                "csr": {
                    KUBELET_CLIENT: csr(other_name),
                    KUBELET_SERVING: "garbage",
                    APISERVER: csr(requests.master_specs(CLUSTER, "node-b")[2]),
                    "whatever": csr(masters),
                }
            },
        )
        self.lab.settle()
        master = self.lab.services["master"]
        refusals = {
            (entry["member"], entry["subject"]): entry for entry in master.refusals.as_json()
        }
        self.assertEqual(refusals["node-b", KUBELET_CLIENT]["code"], policy.SUBJECT)
        self.assertEqual(refusals["node-b", KUBELET_SERVING]["code"], policy.MALFORMED)
        self.assertEqual(refusals["node-b", APISERVER]["code"], policy.UNKNOWN_CERTIFICATE)
        self.assertEqual(refusals["node-b", "whatever"]["code"], policy.UNKNOWN_CERTIFICATE)
        published = self.pki("master")
        self.assertNotIn("signed", published)
        # Answers are published under legitimate names only, so node-b can see why.
        self.assertEqual(
            set(published["refused"]["node-b"]), {KUBELET_CLIENT, KUBELET_SERVING, APISERVER}
        )
        # Same input again: no new log line, no double count.
        view.publish("role", "node")
        self.lab.settle()
        refusal = master.refusals.get("node-b", KUBELET_CLIENT)
        self.assertEqual(refusal and refusal.count, 1)

        for malformed in ("a string", {"csr": ["list"]}, {"csr": {str(i): "x" for i in range(20)}}):
            view.publish("pki", malformed)
            self.lab.settle()
            self.assertNotIn("signed", self.pki("master"))
        self.assertEqual(refused_code(master, "node-b", "record"), policy.MALFORMED)
        self.assertEqual(refused_code(master, "node-b", "csr"), policy.MALFORMED)
        # node-a was never disturbed.
        self.assertHolds("node-a")

    def test_a_failing_review_spoils_no_other_member(self) -> None:
        master = self.lab.join("master", "master")
        original = desk_module.Desk._review_member

        def review(desk: desk_module.Desk, name: str, entry: Any) -> None:
            if desk.member == "master" and name == "node-a":
                raise RuntimeError("a bug")
            original(desk, name, entry)

        self.patch(desk_module.Desk, "_review_member", review)
        with capturedLogs() as events:
            self.lab.join("node-a", "node")
            self.lab.join("node-b", "node")
        self.assertHolds("node-b")
        self.assertFalse(self.lab.services["node-a"].installed(KUBELET_CLIENT))
        self.assertEqual(master.dropped["review_failures"], 1)
        # Logged in the worker, emitted by the agent: critical, with the traceback.
        failures = [
            formatEvent(event) for event in events if event["log_level"] == LogLevel.critical
        ]
        self.assertEqual(len(failures), 1)
        self.assertIn("Reviewing the record of node-a failed", failures[0])
        self.assertIn("RuntimeError: a bug", failures[0])

    def test_member_announcing_no_role_gets_signed_once_it_does(self) -> None:
        self.lab.join("master", "master")
        view = self.lab.cluster.join("node-c")
        self.lab.views["node-c"] = view
        self.lab.roles["node-c"] = "node"
        clock = task.Clock()
        clock.advance(START)
        self.lab.clocks["node-c"] = clock
        self.lab.start("node-c")
        master = self.lab.services["master"]
        self.assertEqual(refused_code(master, "node-c", KUBELET_CLIENT), policy.ROLE)
        self.assertEqual(
            self.lab.services["node-c"].status()["refused_by_master"][KUBELET_CLIENT]["code"],
            policy.ROLE,
        )
        view.publish("role", "node")
        self.lab.settle()
        self.assertHolds("node-c")
        self.assertIsNone(master.refusals.get("node-c", KUBELET_CLIENT))

    def test_ca_from_a_non_master_is_refused_and_nothing_installed(self) -> None:
        rogue = ca.create_authority("kubernetes", CLUSTER, datetime.datetime.now(datetime.UTC))
        self.lab.join("node-a", "node")
        node = self.lab.services["node-a"]
        request = self.pki("node-a")["csr"][KUBELET_CLIENT]
        csr = x509.load_pem_x509_csr(request.encode())
        spec = requests.kubelet_specs(CLUSTER, "node-a")[0]
        forged = signer.issue(rogue, public_key(csr), spec, self.now("node-a"))
        evil = self.lab.cluster.join("evil", role="node")
        evil.publish(
            "pki",
            {"ca": rogue.certificate_pem, "signed": {"node-a": {KUBELET_CLIENT: pem_of(forged)}}},
        )
        self.lab.settle()
        self.assertIsNone(node.status()["trusted_ca"])
        self.assertFalse(node.installed(KUBELET_CLIENT))
        self.assertFalse(node.paths.trusted_ca.exists())
        self.assertEqual(refused_code(node, "evil", "ca"), policy.FOREIGN_CA)
        self.lab.join("master", "master")
        self.assertHolds("node-a")
        self.assertEqual(refused_code(self.lab.services["master"], "evil", "ca"), policy.FOREIGN_CA)

    def test_second_master_is_refused_by_everyone(self) -> None:
        self.lab.join("master", "master")
        self.lab.join("node-a", "node")
        before = self.lab.services["node-a"].paths.certificate(KUBELET_CLIENT).read_bytes()
        self.lab.join("master-2", "master")
        for name in ("master", "node-a"):
            self.assertEqual(
                refused_code(self.lab.services[name], "master-2", "ca"), policy.SECOND_CA, name
            )
        self.assertEqual(
            self.lab.services["node-a"].paths.certificate(KUBELET_CLIENT).read_bytes(), before
        )
        self.assertHolds("node-a")

    def test_offers_that_do_not_chain_or_match_are_not_installed(self) -> None:
        """The test plays a master (with the trusted CA) that hands out bad certificates."""
        self.lab.join("master", "master")
        master = self.lab.services["master"]
        master.stopService()
        node = self.lab.join("node-a", "node")
        self.assertTrue(node.paths.trusted_ca.exists())
        request = x509.load_pem_x509_csr(self.pki("node-a")["csr"][KUBELET_CLIENT].encode())
        spec = requests.kubelet_specs(CLUSTER, "node-a")[0]
        rogue = ca.create_authority("kubernetes", CLUSTER, self.now())
        genuine = ca.load_authority(master.paths.authority_dir, "kubernetes", self.now())
        offers = {
            policy.CHAIN: signer.issue(rogue, public_key(request), spec, self.now()),
            policy.KEY_MISMATCH: signer.issue(
                genuine, keys.generate_key().public_key(), spec, self.now()
            ),
            policy.SUBJECT: signer.issue(
                genuine,
                public_key(request),
                attrs.evolve(spec, organizations=("system:masters",)),
                self.now(),
            ),
        }
        for code, certificate in offers.items():
            self.lab.views["master"].publish(
                "pki",
                {
                    "ca": genuine.certificate_pem,
                    "signed": {"node-a": {KUBELET_CLIENT: pem_of(certificate)}},
                },
            )
            self.lab.settle()
            self.assertFalse(node.installed(KUBELET_CLIENT), code)
            if code == policy.KEY_MISMATCH:
                self.assertEqual(node.dropped["offers_for_other_keys"], 1)
            else:
                self.assertEqual(refused_code(node, "master", KUBELET_CLIENT), code)
        self.assertFalse(node.paths.certificate(KUBELET_CLIENT).exists())

    def test_stale_record_version_is_ignored(self) -> None:
        self.lab.join("master", "master")
        node = self.lab.join("node-a", "node", start=False)
        node.startService()
        # The request as first published, before the master answered.
        old_member = self.lab.views["master"].members()["node-a"]
        self.lab.settle()
        self.assertHolds("node-a")
        master = self.lab.services["master"]
        assert old_member.record is not None and old_member.record.get("pki")
        # A replay that gossip let through (MemoryCluster itself refuses older versions).
        view = self.lab.views["master"]
        current = view._members["node-a"]
        view._members["node-a"] = old_member
        view._notifier.notify(Change("node-a", current, old_member))
        self.lab.settle()
        self.assertEqual(master.dropped[policy.STALE_RECORD], 1)
        self.assertNotIn("signed", self.pki("master"))

    def test_replayed_csr_for_a_retired_key_gets_nothing(self) -> None:
        self.lab.join("master", "master")
        node = self.lab.join("node-a", "node", start=False)
        node.startService()
        old_request = self.lab.record("node-a").get("pki")["csr"][KUBELET_CLIENT]
        self.lab.settle()
        # Renewal retires the first key.
        self.lab.advance(250 * 86400)
        self.assertHolds("node-a")
        current = node.paths.certificate(KUBELET_CLIENT).read_bytes()
        # The master's memory of retired keys survives its restart.
        ledger = json.loads(self.lab.services["master"].paths.ledger.read_text())
        self.assertEqual(len(ledger["members"]["node-a"][KUBELET_CLIENT]["retired"]), 1)
        self.lab.restart("master")
        # Someone holding node-a's identity (or a rolled-back record) replays the old CSR.
        self.lab.views["node-a"].publish("pki", {"csr": {KUBELET_CLIENT: old_request}})
        self.lab.settle()
        master = self.lab.services["master"]
        self.assertEqual(refused_code(master, "node-a", KUBELET_CLIENT), policy.RETIRED_KEY)
        self.assertNotIn("signed", self.pki("master"))
        self.assertEqual(node.paths.certificate(KUBELET_CLIENT).read_bytes(), current)

    def test_node_restored_with_a_retired_key_starts_over(self) -> None:
        self.lab.join("master", "master")
        node = self.lab.join("node-a", "node")
        old_key = node.paths.key(KUBELET_CLIENT).read_bytes()
        self.lab.advance(250 * 86400)
        node.stopService()
        # An old backup: the first key, no certificate.
        node.paths.certificate(KUBELET_CLIENT).unlink()
        node.paths.key(KUBELET_CLIENT).unlink()
        node.paths.pending_key(KUBELET_CLIENT).write_bytes(old_key)
        node = self.lab.start("node-a")
        self.assertHolds("node-a")
        self.assertNotEqual(node.paths.key(KUBELET_CLIENT).read_bytes(), old_key)

    def test_member_leaving_takes_its_answers_away(self) -> None:
        self.lab.join("master", "master")
        self.lab.services["master"].stopService()
        # node-a asks, then stops before the answer comes: it stays in the master's record.
        self.lab.join("node-a", "node")
        self.lab.services["node-a"].stopService()
        self.lab.start("master")
        master = self.lab.services["master"]
        self.assertIn("node-a", self.pki("master")["signed"])
        self.lab.cluster.set_status("node-a", LEFT)
        self.lab.settle()
        self.assertNotIn("signed", self.pki("master"))
        self.assertEqual(master.status()["outstanding"], {})


class BatchTests(ServiceTestCase):
    def jobs(self, name: str) -> list[dict[str, Any]]:
        runner = self.lab.services[name].runner
        assert isinstance(runner, LocalRunner)
        return runner.jobs

    def test_liveness_alone_costs_no_batch(self) -> None:
        self.lab.join("master", "master")
        self.lab.join("node-a", "node")
        self.assertHolds("node-a")
        before = {name: len(self.jobs(name)) for name in ("master", "node-a")}
        self.lab.cluster.set_status("node-a", SUSPECT)
        self.lab.cluster.set_status("node-a", ALIVE)
        self.lab.cluster.set_status("master", SUSPECT)
        self.lab.settle()
        self.assertEqual({name: len(self.jobs(name)) for name in ("master", "node-a")}, before)
        # A member leaving is news, once.
        self.lab.cluster.set_status("node-a", LEFT)
        self.lab.settle()
        self.assertEqual(len(self.jobs("master")), before["master"] + 1)
        self.assertEqual(self.jobs("master")[-1]["members"], {"node-a": None})

    def test_other_keys_of_a_record_cost_no_batch(self) -> None:
        self.lab.join("master", "master")
        self.lab.join("node-a", "node")
        self.assertHolds("node-a")
        before = {name: len(self.jobs(name)) for name in ("master", "node-a")}
        # The mesh's key, an operator's: a new version of the record, nothing for the PKI.
        self.lab.views["node-a"].publish("x-note", "hello")
        self.lab.views["master"].publish("x-note", "hello")
        self.lab.settle()
        self.assertEqual({name: len(self.jobs(name)) for name in ("master", "node-a")}, before)
        # A role is read by the desk: a change of it is reviewed.
        self.lab.views["node-a"].publish("role", "full")
        self.lab.settle()
        self.assertEqual(len(self.jobs("master")), before["master"] + 1)

    def test_a_node_joining_costs_other_nodes_no_batch(self) -> None:
        self.lab.join("master", "master")
        self.lab.join("node-a", "node")
        self.assertHolds("node-a")
        before = {name: len(self.jobs(name)) for name in ("master", "node-a")}
        # node-b's requests are the master's business: node-a's worker is not woken for
        # them, nor for node-b's leave; the master reviews both.
        self.lab.join("node-b", "node")
        self.assertHolds("node-b")
        self.assertEqual(len(self.jobs("node-a")), before["node-a"])
        self.assertGreater(len(self.jobs("master")), before["master"])
        self.lab.cluster.set_status("node-b", LEFT)
        self.lab.settle()
        self.assertEqual(len(self.jobs("node-a")), before["node-a"])
        self.assertEqual(self.jobs("master")[-1]["members"], {"node-b": None})

    def test_a_node_still_reviews_what_concerns_it(self) -> None:
        self.lab.join("master", "master")
        self.lab.join("node-a", "node")
        node = self.lab.services["node-a"]
        before = len(self.jobs("node-a"))
        # A CA announced by a non-master: refused, so that status shows it.
        rogue = ca.create_authority("kubernetes", CLUSTER, datetime.datetime.now(datetime.UTC))
        evil = self.lab.cluster.join("evil", role="node")
        evil.publish("pki", {"ca": rogue.certificate_pem})
        self.lab.settle()
        self.assertEqual(len(self.jobs("node-a")), before + 1)
        self.assertEqual(refused_code(node, "evil", "ca"), policy.FOREIGN_CA)
        # A member once seen stays seen: its next entry, without the CA, is reviewed too
        # (what the desk made of the member may change with it).
        evil.publish("pki", {})
        self.lab.settle()
        self.assertEqual(len(self.jobs("node-a")), before + 2)
        self.assertEqual(self.jobs("node-a")[-1]["members"]["evil"]["pki"], {})


class BoundedRecordTests(ServiceTestCase):
    def test_answers_in_flight_are_bounded_and_everyone_is_served_in_turn(self) -> None:
        self.patch(signing_module, "MAX_OUTSTANDING", 1)
        self.lab.join("master", "master")
        master = self.lab.services["master"]
        master.stopService()
        for name in ("node-a", "node-b", "node-c"):
            self.lab.join(name, "node")
        published: list[int] = []

        def count_answers(change: Change) -> None:
            if change.name == "master" and change.new and change.new.record:
                published.append(len((change.new.record.get("pki") or {}).get("signed", {})))

        self.lab.views["node-a"].subscribe(count_answers)
        self.lab.start("master")
        for name in ("node-a", "node-b", "node-c"):
            self.assertHolds(name)
        self.assertTrue(published)
        self.assertLessEqual(max(published), 1)
        self.assertEqual(self.lab.services["master"].dropped["deferred_requests"], 2)
        self.assertEqual(self.lab.services["master"].status()["waiting"], [])


class ClockSkewTests(ServiceTestCase):
    def test_node_behind_the_master_installs_once_the_certificate_is_valid(self) -> None:
        self.lab.join("master", "master")
        node = self.lab.join("node-a", "node", offset=-3600)
        self.assertFalse(node.installed(KUBELET_CLIENT))
        self.assertEqual(
            refused_code(node, "master", KUBELET_CLIENT),
            policy.VALIDITY,
        )
        self.lab.advance(3600)
        self.assertHolds("node-a")


class ScaleTests(ServiceTestCase):
    def test_ten_nodes(self) -> None:
        started = time.perf_counter()
        self.lab.join("master", "master")
        for index in range(10):
            self.lab.join(f"node-{index}", "node")
        elapsed = time.perf_counter() - started
        for index in range(10):
            self.assertHolds(f"node-{index}")
        self.assertEqual(set(self.pki("master")), {"ca"})
        print(
            "\n10 nodes and a master hold all their certificates after "
            f"{elapsed:.3f} s (wall clock, one process)"
        )


class FailingRunner(LocalRunner):
    """The worker, failing as told: before a job (it never ran) or after it (answer lost)."""

    def __init__(self) -> None:
        super().__init__()
        self.fail_before = 0
        self.mangle = 0
        self.fail_after: Callable[[dict[str, Any]], bool] = lambda answer: False

    def run(self, job: Mapping[str, Any]) -> Deferred[dict[str, Any]]:
        if self.fail_before:
            self.fail_before -= 1
            return fail(WorkerError("the PKI worker exited with status 1 during a job"))
        if self.mangle:
            self.mangle -= 1
            return succeed({"memory": 5, "log": [{"level": "nonsense"}, "nonsense"]})
        answer = self.answer(job)
        if self.fail_after(answer):
            self.fail_after = lambda answer: False
            return fail(WorkerError("the PKI worker was killed by signal 9 during a job"))
        return succeed(answer)


class WorkerFailureTests(ServiceTestCase):
    def node_with(self, runner: FailingRunner) -> PKIService:
        self.lab.roles["node-a"] = "node"
        clock = task.Clock()
        clock.advance(START)
        self.lab.clocks["node-a"] = clock
        self.lab.views["node-a"] = self.lab.cluster.join("node-a", role="node")
        service = PKIService(
            CLUSTER,
            "node-a",
            "node",
            self.lab.base / "node-a",
            self.lab.views["node-a"],
            clock,
            runner=runner,
        )
        self.lab.services["node-a"] = service
        return service

    def test_failed_batches_are_logged_and_tried_again_later(self) -> None:
        self.lab.join("master", "master")
        runner = FailingRunner()
        node = self.node_with(runner)
        node.startService()
        runner.fail_before = 2
        self.lab.settle()
        self.assertFalse(node.installed(KUBELET_CLIENT))
        self.assertEqual(node.dropped["worker_failures"], 1)
        self.lab.advance(1)  # the first retry, after a second, fails too
        self.assertEqual(node.dropped["worker_failures"], 2)
        self.assertFalse(node.installed(KUBELET_CLIENT))
        self.lab.advance(2)  # the second, two seconds later, succeeds
        self.assertHolds("node-a")
        self.assertEqual(node.status()["dropped"]["worker_failures"], 2)
        self.assertEqual(node.status()["worker"]["failures"], 2)

    def test_a_malformed_answer_is_a_failed_batch(self) -> None:
        self.lab.join("master", "master")
        runner = FailingRunner()
        node = self.node_with(runner)
        node.startService()
        runner.mangle = 1
        self.lab.settle()
        self.assertEqual(node.dropped["worker_failures"], 1)
        self.assertFalse(node.installed(KUBELET_CLIENT))
        self.lab.advance(1)
        self.assertHolds("node-a")

    def test_a_batch_whose_answer_is_lost_is_made_good(self) -> None:
        self.lab.join("master", "master")
        runner = FailingRunner()
        node = self.node_with(runner)
        changes: list[CertificateChange] = []
        node.subscribe(changes.append)
        installed = node.when_installed(NODE_CERTIFICATES)
        node.startService()
        # The worker dies after installing the certificates, before it could answer.
        runner.fail_after = lambda answer: bool(answer.get("changes"))
        self.lab.settle()
        self.assertTrue(node.paths.certificate(KUBELET_CLIENT).exists())
        self.assertNoResult(installed)
        self.lab.advance(1)
        self.assertHolds("node-a")
        self.assertEqual(self.successResultOf(installed), node.paths)
        self.assertEqual(sorted(change.name for change in changes), sorted(NODE_CERTIFICATES))
        self.assertTrue(node.paths.kubeconfig("kubelet").exists())
        self.assertIsNone(self.pki("node-a"))
        self.assertEqual(node.dropped["worker_failures"], 1)

    def test_a_batch_lost_after_a_new_key_publishes_its_request(self) -> None:
        runner = FailingRunner()
        node = self.node_with(runner)
        node.startService()
        # A renewal: the batch makes new keys, then its answer is lost.
        self.lab.join("master", "master")
        self.assertHolds("node-a")
        runner.fail_after = lambda answer: True
        certificate = x509.load_pem_x509_certificate(
            node.paths.certificate(KUBELET_CLIENT).read_bytes()
        )
        renew_at = store.renewal_time(certificate).timestamp()
        for clock in self.lab.clocks.values():
            clock.advance(renew_at - clock.seconds())
        self.lab.settle()
        self.assertEqual(node.dropped["worker_failures"], 1)
        self.lab.advance(2)
        self.assertHolds("node-a")
        self.assertIsNone(self.pki("node-a"))
        self.assertEqual(len(self.flushLoggedErrors()), 0)

    def test_an_authority_error_at_start_fails_the_start_and_stops_the_pki(self) -> None:
        self.lab.join("master", "master")
        node = self.node_with(FailingRunner())
        keys.ensure_directory(node.paths.pki_dir)
        node.paths.trusted_ca.write_text("damaged")
        start_failure(self, node, ca.AuthorityError)
        self.lab.advance(60)
        # Nothing more was tried: no batch, no request published.
        self.assertEqual(len(node.runner.jobs), 1)  # type: ignore[attr-defined]
        self.assertIsNone(self.pki("node-a"))
        self.assertEqual(node.paths.trusted_ca.read_text(), "damaged")


class BrokenWorkerTests(SynchronousTestCase):
    def service(self, runner: Runner, cluster: MemoryCluster | None = None) -> PKIService:
        cluster = MemoryCluster() if cluster is None else cluster
        return PKIService(
            CLUSTER,
            "master",
            "master",
            scratch(self),
            cluster.join("master", role="master"),
            task.Clock(),
            runner=runner,
        )

    def test_a_worker_that_cannot_start_fails_the_start(self) -> None:
        class Broken(LocalRunner):
            def run(self, job: Mapping[str, Any]) -> Deferred[dict[str, Any]]:
                return fail(WorkerError("cannot start the PKI worker: no python"))

        failed = start_failure(self, self.service(Broken()), StartupError)
        self.assertEqual(
            str(failed), "the PKI cannot start: cannot start the PKI worker: no python"
        )

    def test_the_start_waits_for_its_batch(self) -> None:
        class Held(LocalRunner):
            def __init__(self) -> None:
                super().__init__()
                self.held: list[tuple[Mapping[str, Any], Deferred[dict[str, Any]]]] = []

            def run(self, job: Mapping[str, Any]) -> Deferred[dict[str, Any]]:
                answer: Deferred[dict[str, Any]] = Deferred()
                self.held.append((job, answer))
                return answer

        runner, cluster = Held(), MemoryCluster()
        service = self.service(runner, cluster)
        installed = service.when_installed([APISERVER])
        service.startService()
        started = service.when_started()
        self.assertTrue(service.running)
        self.assertNoResult(started)
        self.assertEqual(service.status()["certificates"], {})
        # A member joins while the start's batch runs: its review waits for that batch.
        cluster.join("node-b", role="node")
        service.clock.advance(1)  # type: ignore[attr-defined]
        self.assertEqual(len(runner.held), 1)
        job, answer = runner.held[0]
        answer.callback(runner.answer(job))
        self.assertIsNone(self.successResultOf(started))
        self.assertEqual(self.successResultOf(installed), service.paths)
        self.assertIn("ca", service.state.members()["master"].record.get("pki"))  # type: ignore[union-attr]
        service.clock.advance(0)  # type: ignore[attr-defined]
        self.assertEqual([sorted(job["members"]) for job, _ in runner.held[1:]], [["node-b"]])
        self.assertEqual(service.batches, 1)

    def test_a_malformed_start_answer_fails_the_start(self) -> None:
        class Mangling(LocalRunner):
            def run(self, job: Mapping[str, Any]) -> Deferred[dict[str, Any]]:
                return succeed({"memory": 5})

        failed = start_failure(self, self.service(Mangling()), StartupError)
        self.assertIn("the PKI cannot start: the PKI worker's answer is malformed", str(failed))
