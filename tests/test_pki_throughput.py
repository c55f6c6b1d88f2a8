"""How fast the master signs: every CSR through the policy, the ledger and the issuer.

Run with ``-s`` to see the figure; the test itself checks every certificate, never time.
"""

from __future__ import annotations

import datetime
import time

from cryptography.hazmat.primitives import serialization
from twisted.trial.unittest import SynchronousTestCase

from hepto.pki import ca, keys, policy, requests, signer

CLUSTER = "throughput"
NOW = datetime.datetime(2025, 6, 1, 12, 0, tzinfo=datetime.UTC)
REQUESTS = 400


class SigningThroughputTests(SynchronousTestCase):
    def test_signing_throughput(self) -> None:
        authorities = ca.Authorities(
            kubernetes=ca.create_authority("kubernetes", CLUSTER, NOW),
            etcd=ca.create_authority("etcd", CLUSTER, NOW),
            front_proxy=ca.create_authority("front-proxy", CLUSTER, NOW),
            service_account_key=keys.generate_key(),
        )
        desk = signer.Signer(CLUSTER, authorities)
        work = []
        per_member = len(requests.kubelet_specs(CLUSTER, "node"))
        for index in range(REQUESTS // per_member):
            member = f"node-{index}"
            for spec in requests.kubelet_specs(CLUSTER, member):
                key = keys.generate_key()
                csr = requests.build_csr(spec, key)
                pem = csr.public_bytes(serialization.Encoding.PEM).decode()
                work.append((member, spec, key, pem))
        started = time.perf_counter()
        issued = [
            desk.sign_remote(member, "node", spec.name, pem, NOW) for member, spec, _, pem in work
        ]
        elapsed = time.perf_counter() - started
        for (_, spec, key, _), certificate in zip(work, issued, strict=True):
            policy.check_issued(certificate, spec, key, authorities.kubernetes.certificate, NOW)
        self.assertEqual(len(issued), len(work))
        print(
            f"\nsigned {REQUESTS} CSRs (parse, policy, ledger, issue) in {elapsed:.3f} s: "
            f"{REQUESTS / elapsed:.0f} CSRs/s"
        )
