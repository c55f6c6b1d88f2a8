"""The signing policy, the signer and its replay ledger: allowed and refused, per role."""

from __future__ import annotations

import datetime
import ipaddress
import json
import shutil
import tempfile
from pathlib import Path

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twisted.trial.unittest import SynchronousTestCase

from hepto import plan
from hepto.pki import ca, keys, policy, requests, signer
from hepto.pki.policy import Refused
from hepto.pki.requests import KUBELET_CLIENT, KUBELET_SERVING, CertificateSpec


def scratch(test: SynchronousTestCase) -> Path:
    """A fresh directory, removed after the test whatever its outcome."""
    path = Path(tempfile.mkdtemp(prefix="hepto-pki-"))
    test.addCleanup(shutil.rmtree, path, True)
    return path


CLUSTER = "policy"
NOW = datetime.datetime(2025, 6, 1, 12, 0, tzinfo=datetime.UTC)


def pem(csr: x509.CertificateSigningRequest) -> str:
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def spec_of(name: str, member: str = "node-a") -> CertificateSpec:
    return {spec.name: spec for spec in requests.kubelet_specs(CLUSTER, member)}[name]


def custom_csr(
    key: keys.PrivateKey | rsa.RSAPrivateKey,
    attributes: list[x509.NameAttribute],
    extensions: list[x509.ExtensionType] = (),  # type: ignore[assignment]
) -> str:
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name(attributes))
    for extension in extensions:
        builder = builder.add_extension(extension, critical=False)
    return pem(builder.sign(key, hashes.SHA256()))


def node_subject(member: str = "node-a", group: str = "system:nodes") -> list[x509.NameAttribute]:
    return [
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, group),
        x509.NameAttribute(NameOID.COMMON_NAME, f"system:node:{member}"),
    ]


def serving_names(member: str = "node-a") -> x509.SubjectAlternativeName:
    return x509.SubjectAlternativeName(
        [x509.DNSName(member), x509.IPAddress(plan.mesh_address(CLUSTER, member))]
    )


class RemoteRequestTests(SynchronousTestCase):
    """What a remote member may obtain through gossip."""

    def setUp(self) -> None:
        self.key = keys.generate_key()

    def check(self, role: object, name: object, csr_pem: object, member: str = "node-a") -> None:
        policy.check_remote_request(CLUSTER, member, role, name, csr_pem)

    def assertRefused(
        self, code: str, role: object, name: object, csr_pem: object, member: str = "node-a"
    ) -> Refused:
        with self.assertRaises(Refused) as caught:
            self.check(role, name, csr_pem, member)
        self.assertEqual(caught.exception.code, code, caught.exception.reason)
        self.assertTrue(caught.exception.reason)
        return caught.exception

    def test_node_gets_its_kubelet_certificates(self) -> None:
        for name in (KUBELET_CLIENT, KUBELET_SERVING):
            spec = spec_of(name)
            found, key = policy.check_remote_request(
                CLUSTER, "node-a", "node", name, pem(requests.build_csr(spec, self.key))
            )
            self.assertEqual(found, spec)
            self.assertTrue(keys.same_key(key, self.key))

    def test_master_and_full_roles_get_nothing_remotely(self) -> None:
        csr_pem = pem(requests.build_csr(spec_of(KUBELET_CLIENT), self.key))
        for role in ("master", "full"):
            self.assertRefused(policy.ROLE, role, KUBELET_CLIENT, csr_pem)

    def test_missing_or_invalid_role(self) -> None:
        csr_pem = pem(requests.build_csr(spec_of(KUBELET_CLIENT), self.key))
        for role in (None, "admin", 3, ["node"]):
            self.assertRefused(policy.ROLE, role, KUBELET_CLIENT, csr_pem)

    def test_node_cannot_ask_for_master_certificates(self) -> None:
        for spec in requests.master_specs(CLUSTER, "node-a"):
            csr_pem = pem(requests.build_csr(spec, self.key))
            self.assertRefused(policy.UNKNOWN_CERTIFICATE, "node", spec.name, csr_pem)

    def test_invalid_member_name(self) -> None:
        csr_pem = pem(requests.build_csr(spec_of(KUBELET_CLIENT), self.key))
        self.assertRefused(policy.BAD_NAME, "node", KUBELET_CLIENT, csr_pem, member="Bad Name")

    def test_system_masters_refused(self) -> None:
        csr_pem = custom_csr(self.key, node_subject(group="system:masters"))
        refused = self.assertRefused(policy.SUBJECT, "node", KUBELET_CLIENT, csr_pem)
        self.assertIn("system:masters", refused.reason)

    def test_extra_organization_refused(self) -> None:
        attributes = [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:masters"),
            *node_subject(),
        ]
        self.assertRefused(policy.SUBJECT, "node", KUBELET_CLIENT, custom_csr(self.key, attributes))

    def test_another_members_name_refused(self) -> None:
        """node-b's record carrying a CSR for node-a: the subject names someone else."""
        csr_pem = pem(requests.build_csr(spec_of(KUBELET_CLIENT, "node-a"), self.key))
        self.assertRefused(policy.SUBJECT, "node", KUBELET_CLIENT, csr_pem, member="node-b")
        serving = pem(requests.build_csr(spec_of(KUBELET_SERVING, "node-a"), self.key))
        self.assertRefused(policy.SUBJECT, "node", KUBELET_SERVING, serving, member="node-b")

    def test_foreign_san_refused(self) -> None:
        for names in (
            [x509.DNSName("node-a"), x509.IPAddress(plan.apiserver_address(CLUSTER))],
            [x509.DNSName("node-a"), x509.IPAddress(plan.mesh_address(CLUSTER, "node-b"))],
            [x509.DNSName("kubernetes"), x509.IPAddress(plan.mesh_address(CLUSTER, "node-a"))],
            [*serving_names(), x509.DNSName("evil.example")],
            [*serving_names(), x509.IPAddress(ipaddress.IPv6Address("::1"))],
            [*serving_names(), x509.UniformResourceIdentifier("spiffe://x")],
            [x509.DNSName("node-a")],
        ):
            csr_pem = custom_csr(
                self.key,
                node_subject(),
                [
                    x509.SubjectAlternativeName(names),
                    x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                ],
            )
            self.assertRefused(policy.SAN, "node", KUBELET_SERVING, csr_pem)

    def test_serving_without_names_refused(self) -> None:
        csr_pem = custom_csr(
            self.key, node_subject(), [x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH])]
        )
        self.assertRefused(policy.SAN, "node", KUBELET_SERVING, csr_pem)

    def test_client_with_names_refused(self) -> None:
        csr_pem = custom_csr(self.key, node_subject(), [serving_names()])
        self.assertRefused(policy.SAN, "node", KUBELET_CLIENT, csr_pem)

    def test_odd_usages_refused(self) -> None:
        for usages in (
            [ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH],
            [ExtendedKeyUsageOID.CODE_SIGNING],
            [ExtendedKeyUsageOID.SERVER_AUTH],
        ):
            csr_pem = custom_csr(self.key, node_subject(), [x509.ExtendedKeyUsage(usages)])
            self.assertRefused(policy.USAGE, "node", KUBELET_CLIENT, csr_pem)
        signing = x509.KeyUsage(True, False, False, False, False, True, True, False, False)
        csr_pem = custom_csr(self.key, node_subject(), [signing])
        self.assertRefused(policy.USAGE, "node", KUBELET_CLIENT, csr_pem)

    def test_plain_key_usage_allowed(self) -> None:
        plain = x509.KeyUsage(True, False, False, False, False, False, False, False, False)
        self.check("node", KUBELET_CLIENT, custom_csr(self.key, node_subject(), [plain]))

    def test_ca_refused(self) -> None:
        csr_pem = custom_csr(
            self.key, node_subject(), [x509.BasicConstraints(ca=True, path_length=None)]
        )
        self.assertRefused(policy.CA_FLAG, "node", KUBELET_CLIENT, csr_pem)

    def test_unknown_extension_refused(self) -> None:
        csr_pem = custom_csr(self.key, node_subject(), [x509.OCSPNoCheck()])
        self.assertRefused(policy.EXTENSION, "node", KUBELET_CLIENT, csr_pem)

    def test_wrong_key_types_refused(self) -> None:
        rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.assertRefused(
            policy.KEY_TYPE, "node", KUBELET_CLIENT, custom_csr(rsa_key, node_subject())
        )
        p384 = ec.generate_private_key(ec.SECP384R1())
        self.assertRefused(
            policy.KEY_TYPE, "node", KUBELET_CLIENT, custom_csr(p384, node_subject())
        )

    def test_csr_signed_by_another_key_than_it_carries(self) -> None:
        """Swap the public key inside a valid CSR: the signature no longer matches it."""
        genuine = requests.build_csr(spec_of(KUBELET_CLIENT), self.key)
        der = genuine.public_bytes(serialization.Encoding.DER)
        other = keys.generate_key().public_key()
        spki = self.key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        forged_spki = other.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.assertIn(spki, der)
        forged = x509.load_der_x509_csr(der.replace(spki, forged_spki))
        self.assertRefused(policy.SIGNATURE, "node", KUBELET_CLIENT, pem(forged))

    def test_malformed_csrs(self) -> None:
        good = pem(requests.build_csr(spec_of(KUBELET_CLIENT), self.key))
        body = good.splitlines()
        corrupted = "\n".join([body[0], body[1][:10] + "AAAA" + body[1][14:], *body[2:]])
        cases: dict[str, list[object]] = {
            policy.MALFORMED: [
                None,
                42,
                {"pem": good},
                "",
                "not a csr",
                "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
                good + good,
                good.replace("A", "é", 1),
                corrupted,
            ],
            policy.TOO_LARGE: [good + "x" * policy.MAX_PEM_CHARACTERS],
        }
        for code, values in cases.items():
            for value in values:
                self.assertRefused(code, "node", KUBELET_CLIENT, value)

    def test_certificate_name_must_be_known(self) -> None:
        csr_pem = pem(requests.build_csr(spec_of(KUBELET_CLIENT), self.key))
        for name in ("kubelet", None, 7, "x" * 500):
            self.assertRefused(policy.UNKNOWN_CERTIFICATE, "node", name, csr_pem)


class AuthorityFixture:
    authorities: ca.Authorities

    @classmethod
    def make_authorities(cls) -> ca.Authorities:
        return ca.Authorities(
            kubernetes=ca.create_authority("kubernetes", CLUSTER, NOW),
            etcd=ca.create_authority("etcd", CLUSTER, NOW),
            front_proxy=ca.create_authority("front-proxy", CLUSTER, NOW),
            service_account_key=keys.generate_key(),
        )


class SignerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.authorities = AuthorityFixture.make_authorities()
        self.path = scratch(self)
        self.signer = signer.Signer(
            CLUSTER, self.authorities, signer.KeyLedger(self.path / "ledger.json")
        )

    def request(self, key: keys.PrivateKey, name: str = KUBELET_CLIENT) -> str:
        return pem(requests.build_csr(spec_of(name), key))

    def test_issued_certificate_states_the_spec_only(self) -> None:
        key = keys.generate_key()
        certificate = self.signer.sign_remote(
            "node-a", "node", KUBELET_SERVING, self.request(key, KUBELET_SERVING), NOW
        )
        policy.check_issued(
            certificate, spec_of(KUBELET_SERVING), key, self.authorities.kubernetes.certificate, NOW
        )
        constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints)
        self.assertFalse(constraints.value.ca)
        self.assertEqual(certificate.not_valid_after_utc - NOW, signer.LEAF_LIFETIME)
        self.assertLessEqual(certificate.not_valid_before_utc, NOW - ca.BACKDATE)

    def test_leaf_never_outlives_its_authority(self) -> None:
        late = self.authorities.kubernetes.certificate.not_valid_after_utc - datetime.timedelta(
            days=10
        )
        certificate = self.signer.sign_local(
            spec_of(KUBELET_CLIENT), keys.generate_key().public_key(), late
        )
        self.assertEqual(
            certificate.not_valid_after_utc,
            self.authorities.kubernetes.certificate.not_valid_after_utc,
        )

    def test_each_spec_is_signed_by_its_authority(self) -> None:
        for spec in requests.master_specs(CLUSTER, "master"):
            key = keys.generate_key()
            certificate = self.signer.sign_local(spec, key.public_key(), NOW)
            authority = self.authorities[spec.authority].certificate
            policy.check_issued(certificate, spec, key, authority, NOW)
            for other in self.authorities:
                if other.name != spec.authority:
                    with self.assertRaises(Refused):
                        policy.check_issued(certificate, spec, key, other.certificate, NOW)

    def test_replayed_csr_for_a_retired_key_is_refused(self) -> None:
        old, new = keys.generate_key(), keys.generate_key()
        old_request = self.request(old)
        self.signer.sign_remote("node-a", "node", KUBELET_CLIENT, old_request, NOW)
        # The same request again (a retransmission) is harmless: the member holds that key.
        self.signer.sign_remote("node-a", "node", KUBELET_CLIENT, old_request, NOW)
        self.signer.sign_remote("node-a", "node", KUBELET_CLIENT, self.request(new), NOW)
        with self.assertRaises(Refused) as caught:
            self.signer.sign_remote("node-a", "node", KUBELET_CLIENT, old_request, NOW)
        self.assertEqual(caught.exception.code, policy.RETIRED_KEY)
        # A freshly signed CSR for the retired key is refused as well: it is the key that counts.
        with self.assertRaises(Refused):
            self.signer.sign_remote("node-a", "node", KUBELET_CLIENT, self.request(old), NOW)

    def test_ledger_survives_restart(self) -> None:
        old, new = keys.generate_key(), keys.generate_key()
        self.signer.sign_remote("node-a", "node", KUBELET_CLIENT, self.request(old), NOW)
        self.signer.sign_remote("node-a", "node", KUBELET_CLIENT, self.request(new), NOW)
        self.assertFalse((self.path / "ledger.json").exists())
        self.signer.ledger.save()
        self.assertEqual((self.path / "ledger.json").stat().st_mode & 0o777, 0o600)
        restarted = signer.Signer(
            CLUSTER, self.authorities, signer.KeyLedger.load(self.path / "ledger.json")
        )
        with self.assertRaises(Refused):
            restarted.sign_remote("node-a", "node", KUBELET_CLIENT, self.request(old), NOW)
        restarted.sign_remote("node-a", "node", KUBELET_CLIENT, self.request(new), NOW)

    def test_keys_are_per_member_and_certificate(self) -> None:
        key = keys.generate_key()
        self.signer.sign_remote("node-a", "node", KUBELET_CLIENT, self.request(key), NOW)
        self.signer.sign_remote(
            "node-a", "node", KUBELET_CLIENT, self.request(keys.generate_key()), NOW
        )
        with self.assertRaises(Refused):  # retired for node-a's client certificate...
            self.signer.sign_remote("node-a", "node", KUBELET_CLIENT, self.request(key), NOW)
        # ... not for its serving certificate, whose ledger is separate,
        serving = self.signer.sign_remote(
            "node-a", "node", KUBELET_SERVING, self.request(key, KUBELET_SERVING), NOW
        )
        self.assertEqual(serving.public_key(), key.public_key())
        # ... nor for another member.
        other = pem(requests.build_csr(spec_of(KUBELET_CLIENT, "node-b"), key))
        client = self.signer.sign_remote("node-b", "node", KUBELET_CLIENT, other, NOW)
        self.assertEqual(client.public_key(), key.public_key())

    def test_ledger_is_bounded(self) -> None:
        ledger = signer.KeyLedger()
        for index in range(signer.RETIRED_KEYS_KEPT + 10):
            ledger.admit("m", "c", f"{index:064x}")
        document = ledger.as_json()
        self.assertEqual(len(document["members"]["m"]["c"]["retired"]), signer.RETIRED_KEYS_KEPT)

    def test_damaged_ledger_is_set_aside(self) -> None:
        path = self.path / "ledger.json"
        for garbage in (
            "{not json",
            json.dumps({"format": 9, "members": {}}),
            json.dumps({"format": 1, "members": {"a": {"b": {"current": 3, "retired": []}}}}),
        ):
            path.write_text(garbage)
            ledger = signer.KeyLedger.load(path)
            self.assertEqual(ledger.as_json()["members"], {})
            self.assertFalse(path.exists())
            self.assertEqual((self.path / "ledger.json.damaged").read_text(), garbage)


class IssuedCertificateTests(SynchronousTestCase):
    """What a member agrees to install."""

    def setUp(self) -> None:
        self.authorities = AuthorityFixture.make_authorities()
        self.authority = self.authorities.kubernetes
        self.key = keys.generate_key()
        self.spec = spec_of(KUBELET_SERVING)

    def assertRefused(
        self,
        code: str,
        certificate: x509.Certificate,
        key: keys.PrivateKey | None = None,
        now: datetime.datetime = NOW,
    ) -> None:
        with self.assertRaises(Refused) as caught:
            policy.check_issued(
                certificate, self.spec, key or self.key, self.authority.certificate, now
            )
        self.assertEqual(caught.exception.code, code, caught.exception.reason)

    def test_good_certificate(self) -> None:
        certificate = signer.issue(self.authority, self.key.public_key(), self.spec, NOW)
        policy.check_issued(certificate, self.spec, self.key, self.authority.certificate, NOW)

    def test_other_key(self) -> None:
        certificate = signer.issue(self.authority, self.key.public_key(), self.spec, NOW)
        self.assertRefused(policy.KEY_MISMATCH, certificate, keys.generate_key())

    def test_other_authority(self) -> None:
        rogue = ca.create_authority("kubernetes", CLUSTER, NOW)
        certificate = signer.issue(rogue, self.key.public_key(), self.spec, NOW)
        self.assertRefused(policy.CHAIN, certificate)
        certificate = signer.issue(self.authorities.etcd, self.key.public_key(), self.spec, NOW)
        self.assertRefused(policy.CHAIN, certificate)

    def test_validity(self) -> None:
        certificate = signer.issue(self.authority, self.key.public_key(), self.spec, NOW)
        self.assertRefused(policy.VALIDITY, certificate, now=NOW + signer.LEAF_LIFETIME)
        self.assertRefused(policy.VALIDITY, certificate, now=NOW - datetime.timedelta(hours=1))

    def test_other_statements(self) -> None:
        mismatched = {
            policy.SUBJECT: spec_of(KUBELET_SERVING, "node-b"),
            policy.SAN: spec_of(KUBELET_CLIENT),
            policy.USAGE: attrs.evolve(self.spec, usages=(requests.CLIENT,)),
        }
        for code, spec in mismatched.items():
            certificate = signer.issue(self.authority, self.key.public_key(), spec, NOW)
            self.assertRefused(code, certificate)


class SpecTests(SynchronousTestCase):
    """The certificates each role holds, as the issue lists them."""

    def test_roles(self) -> None:
        node = {spec.name for spec in requests.specs_for_role("node", CLUSTER, "n")}
        master = {spec.name for spec in requests.specs_for_role("master", CLUSTER, "m")}
        full = {spec.name for spec in requests.specs_for_role("full", CLUSTER, "f")}
        self.assertEqual(node, {KUBELET_CLIENT, KUBELET_SERVING, "kube-proxy"})
        self.assertEqual(
            master,
            {
                "etcd-server",
                "etcd-peer",
                "apiserver",
                "apiserver-etcd-client",
                "apiserver-kubelet-client",
                "front-proxy-client",
                "controller-manager",
                "scheduler",
                "coredns",
                "admin",
            },
        )
        self.assertEqual(full, node | master)
        self.assertEqual(set(requests.CERTIFICATES), full)

    def test_apiserver_names(self) -> None:
        specs = {spec.name: spec for spec in requests.master_specs(CLUSTER, "m")}
        apiserver = specs[requests.APISERVER]
        self.assertEqual(
            set(apiserver.dns_names),
            {
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
                "localhost",
            },
        )
        self.assertEqual(
            set(apiserver.ip_addresses),
            {
                plan.mesh_address(CLUSTER, "m"),
                plan.apiserver_address(CLUSTER),
                plan.kubernetes_service_address(CLUSTER),
                ipaddress.IPv6Address("::1"),
            },
        )
        self.assertEqual(apiserver.usages, (requests.SERVER,))
        self.assertEqual(specs[requests.ADMIN].organizations, ("system:masters",))
        self.assertEqual(specs[requests.ADMIN].authority, requests.KUBERNETES_CA)
        self.assertEqual(specs[requests.APISERVER_ETCD_CLIENT].authority, requests.ETCD_CA)
        self.assertEqual(specs[requests.FRONT_PROXY_CLIENT].authority, requests.FRONT_PROXY_CA)
        for name in ("etcd-server", "etcd-peer"):
            self.assertEqual(set(specs[name].usages), {requests.SERVER, requests.CLIENT})
            self.assertEqual(specs[name].authority, requests.ETCD_CA)
        self.assertEqual(specs["controller-manager"].common_name, "system:kube-controller-manager")
        self.assertEqual(specs["scheduler"].common_name, "system:kube-scheduler")

    def test_kubelet_names(self) -> None:
        client, serving, proxy = requests.kubelet_specs(CLUSTER, "n")
        self.assertEqual(requests.subject(proxy).rfc4514_string(), "CN=system:kube-proxy")
        self.assertEqual(
            requests.subject(client).rfc4514_string(), "CN=system:node:n,O=system:nodes"
        )
        self.assertEqual(client.usages, (requests.CLIENT,))
        self.assertEqual(serving.dns_names, ("n",))
        self.assertEqual(serving.ip_addresses, (plan.mesh_address(CLUSTER, "n"),))
        self.assertEqual(serving.usages, (requests.SERVER,))

    def test_component_files_exist_for_every_component(self) -> None:
        from hepto.pki.paths import COMPONENT_CERTIFICATES, Paths

        paths = Paths(Path("/x"))
        for component in (*COMPONENT_CERTIFICATES, "admin"):
            files = paths.component_files(component)
            self.assertTrue(files)
            for path in files.values():
                self.assertTrue(str(path).startswith("/x/"))
        with self.assertRaises(ValueError):
            paths.component_files("kube-router")
