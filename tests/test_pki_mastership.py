"""The master's proof: its identity signed by the cluster CA's key, as members check it."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from hepto.pki import keys, mastership

IDENTITY = bytes(range(32))
OTHER_IDENTITY = bytes(range(1, 33))


class MastershipTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.ca = keys.generate_key()
        self.proof = mastership.prove(self.ca, "geo", "m1", IDENTITY)

    def verify(self, proof: object, name: str = "m1", identity: bytes = IDENTITY) -> bool:
        return mastership.verify(self.ca.public_key(), proof, "geo", name, identity)

    def test_the_master_s_own_proof(self) -> None:
        self.assertTrue(self.verify(self.proof))

    def test_the_same_statement_the_same_proof(self) -> None:
        # A batch that signs again must not change the record.
        self.assertEqual(mastership.prove(self.ca, "geo", "m1", IDENTITY), self.proof)

    def test_a_copied_proof_proves_no_one_else(self) -> None:
        self.assertFalse(self.verify(self.proof, identity=OTHER_IDENTITY))
        self.assertFalse(self.verify(self.proof, name="a"))
        self.assertFalse(
            mastership.verify(self.ca.public_key(), self.proof, "other", "m1", IDENTITY)
        )

    def test_another_ca_proves_nothing(self) -> None:
        impostor = mastership.prove(keys.generate_key(), "geo", "m1", IDENTITY)
        self.assertFalse(self.verify(impostor))

    def test_junk_is_no_proof(self) -> None:
        for junk in (None, 5, "", "not base64!", "QUJD", "A" * 300, {"proof": self.proof}):
            with self.subTest(junk=junk):
                self.assertFalse(self.verify(junk))
