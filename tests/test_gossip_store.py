"""The record store against a fake Membership and a fake fetcher: no network, no reactor."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from typing import Any

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from hepto import plan
from hepto.config import Endpoint
from hepto.gossip import records, store
from hepto.gossip.crypto import Drops
from hepto.gossip.identity import Identity, Pins
from hepto.gossip.records import SignedRecord, sign_record
from hepto.gossip.store import RecordStore
from hepto.state import ALIVE, DEAD, SUSPECT, Change

CLUSTER = "prod"
ME = Identity.generate()
BOB = Identity.generate()
CAROL = Identity.generate()
MALLORY = Identity.generate()


def endpoint(index: int) -> Endpoint:
    return Endpoint(ipaddress.IPv6Address(f"2001:db8::{index}"), 7946)


@attrs.frozen
class FakeState:
    name: str
    address: Endpoint
    role: str = "node"
    incarnation: int = 0
    status: str = ALIVE


@attrs.define
class FakeMembership:
    on_digest: Callable[[Any, str, int], None] | None = None
    on_arrival: Callable[[Any, str], None] | None = None
    states: dict[str, FakeState] = attrs.field(factory=dict)
    callbacks: list[Callable[[Any, Any], None]] = attrs.field(factory=list)
    broadcasts: list[tuple[str, int]] = attrs.field(factory=list)

    def members(self) -> Mapping[str, FakeState]:
        return dict(self.states)

    def subscribe(self, callback: Callable[[Any, Any], None]) -> None:
        self.callbacks.append(callback)

    def broadcast_digest(self, name: str, version: int) -> None:
        self.broadcasts.append((name, version))

    def set(self, state: FakeState) -> None:
        old = self.states.get(state.name)
        self.states[state.name] = state
        for callback in self.callbacks:
            callback(old, state)

    def digest(self, holder: str, name: str, version: int) -> None:
        assert self.on_digest is not None
        self.on_digest(self.states[holder], name, version)

    def arrival(self, teller: str, name: str) -> None:
        assert self.on_arrival is not None
        self.on_arrival(self.states[teller], name)


@attrs.define
class FakeFetcher:
    calls: list[tuple[Endpoint, str, Deferred[bytes | None]]] = attrs.field(factory=list)

    def __call__(self, holder: Endpoint, name: str) -> Deferred[bytes | None]:
        result: Deferred[bytes | None] = Deferred()
        self.calls.append((holder, name, result))
        return result

    def pending(self) -> list[tuple[Endpoint, str]]:
        return [(holder, name) for holder, name, d in self.calls if not d.called]

    def answer(self, blob: bytes | None, index: int = -1) -> None:
        self.calls[index][2].callback(blob)

    def fail(self, index: int = -1) -> None:
        self.calls[index][2].errback(ConnectionError("refused"))


@attrs.define
class FakeBatchFetcher:
    calls: list[tuple[Endpoint, list[str], Deferred[list[bytes]]]] = attrs.field(factory=list)

    def __call__(self, holder: Endpoint, names: list[str]) -> Deferred[list[bytes]]:
        result: Deferred[list[bytes]] = Deferred()
        self.calls.append((holder, list(names), result))
        return result

    def pending(self) -> list[tuple[Endpoint, list[str]]]:
        return [(holder, names) for holder, names, d in self.calls if not d.called]

    def answer(self, *records: SignedRecord | bytes) -> None:
        self.calls[-1][2].callback([r if isinstance(r, bytes) else r.blob for r in records])

    def fail(self) -> None:
        self.calls[-1][2].errback(ConnectionError("refused"))


def signed(identity: Identity, name: str, version: int, **data: Any) -> SignedRecord:
    return sign_record(identity, CLUSTER, name, version, data)


class StoreTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.membership = FakeMembership()
        self.membership.set(FakeState("me", endpoint(1), role="master"))
        self.fetcher = FakeFetcher()
        self.batches = FakeBatchFetcher()
        self.saved: list[SignedRecord] = []
        self.drops = Drops(self.clock)
        self.store = RecordStore.create(
            cluster=CLUSTER,
            name="me",
            identity=ME,
            data={"role": "master", "gossip": str(endpoint(1))},
            membership=self.membership,
            fetch=self.fetcher,
            fetch_many=self.batches,
            clock=self.clock,
            drops=self.drops,
            on_own_record=self.saved.append,
        )
        self.changes: list[Change] = []
        self.store.subscribe(self.changes.append)
        self.store.start()

    def add(self, name: str, index: int, status: str = ALIVE) -> None:
        self.membership.set(FakeState(name, endpoint(index), status=status))

    def test_own_record_announced_and_saved(self) -> None:
        member = self.store.members()["me"]
        self.assertEqual(member.status, ALIVE)
        assert member.record is not None
        self.assertEqual(member.record.version, 1)
        self.assertEqual(member.record.get("role"), "master")
        self.assertEqual(self.membership.broadcasts, [("me", 1)])
        self.assertEqual([record.version for record in self.saved], [1])

    def test_restart_continues_the_version(self) -> None:
        previous = signed(ME, "me", 41, role="master", wireguard="key")
        restarted = RecordStore.create(
            cluster=CLUSTER,
            name="me",
            identity=ME,
            data={"role": "node"},
            previous=previous,
            membership=FakeMembership(),
            fetch=self.fetcher,
            fetch_many=self.batches,
            clock=self.clock,
            drops=self.drops,
        )
        self.assertEqual(restarted.own.version, 42)
        self.assertEqual(restarted.own.data, {"role": "node", "wireguard": "key"})

    def test_publish(self) -> None:
        self.changes.clear()
        self.store.publish("wireguard", {"key": "abc"})
        own = self.store.members()["me"].record
        assert own is not None
        self.assertEqual((own.version, own.get("wireguard")), (2, {"key": "abc"}))
        self.assertEqual(self.membership.broadcasts[-1], ("me", 2))
        self.assertEqual(self.saved[-1].version, 2)
        self.assertEqual(len(self.changes), 1)
        self.assertEqual(self.changes[0].new, self.store.members()["me"])
        # The same value again costs nothing.
        self.store.publish("wireguard", {"key": "abc"})
        self.assertEqual(self.store.own.version, 2)
        self.store.publish("absent", None)
        self.assertEqual(self.store.own.version, 2)
        self.store.publish("wireguard", None)
        self.assertEqual((self.store.own.version, "wireguard" in self.store.own.data), (3, False))

    def test_publish_refuses_bad_values_unchanged(self) -> None:
        self.assertRaises((TypeError, ValueError), self.store.publish, "x", object())
        self.assertRaises(ValueError, self.store.publish, "x", "a" * records.MAX_RECORD_SIZE)
        self.assertEqual(self.store.own.version, 1)

    def test_digest_fetches_and_shows(self) -> None:
        self.add("bob", 2)
        self.assertIsNone(self.store.members()["bob"].record)
        self.changes.clear()
        self.membership.digest("bob", "bob", 3)
        self.assertEqual(self.fetcher.pending(), [(endpoint(2), "bob")])
        self.fetcher.answer(signed(BOB, "bob", 3, role="node").blob)
        record = self.store.members()["bob"].record
        assert record is not None
        self.assertEqual((record.version, record.get("role")), (3, "node"))
        self.assertEqual(
            [(c.name, c.old and c.old.record, c.new and c.new.record) for c in self.changes],
            [("bob", None, record)],
        )
        self.assertEqual(self.fetcher.pending(), [])
        # Already held: no fetch.
        self.membership.digest("bob", "bob", 3)
        self.membership.digest("bob", "bob", 2)
        self.assertEqual(len(self.fetcher.calls), 1)

    def test_new_holders_advertise_what_they_fetched(self) -> None:
        """Epidemic spread: a member that fetched a newer record advertises it in turn."""
        self.add("bob", 2)
        self.store.accept(signed(BOB, "bob", 2).blob)
        self.membership.broadcasts.clear()
        self.membership.digest("bob", "bob", 3)
        self.assertEqual(self.membership.broadcasts, [])
        self.fetcher.answer(signed(BOB, "bob", 3).blob)
        self.assertEqual(self.membership.broadcasts, [("bob", 3)])
        # Hearing of what we already hold advertises nothing again.
        self.membership.digest("bob", "bob", 3)
        self.assertEqual(self.membership.broadcasts, [("bob", 3)])

    def test_a_first_record_is_no_news(self) -> None:
        """Whoever learns of a member fetches its record: nobody advertises a first one."""
        self.add("bob", 2)
        self.membership.broadcasts.clear()
        self.membership.digest("bob", "bob", 3)
        self.fetcher.answer(signed(BOB, "bob", 3).blob)
        self.store.want_from(endpoint(2), [("carol", 1)], {})
        self.batches.answer(signed(CAROL, "carol", 1))
        self.assertEqual(self.store.digests(), {"me": 1, "bob": 3, "carol": 1})
        self.assertEqual(self.membership.broadcasts, [])

    def test_an_arrival_s_record_comes_from_its_teller(self) -> None:
        self.add("bob", 2)
        self.add("carol", 3)
        self.membership.broadcasts.clear()
        self.membership.arrival("bob", "carol")
        self.assertEqual(self.fetcher.pending(), [(endpoint(2), "carol")])
        # Told again meanwhile, by carol herself: still one fetch.
        self.membership.arrival("carol", "carol")
        self.fetcher.answer(signed(CAROL, "carol", 4).blob)
        self.assertEqual(self.store.digests()["carol"], 4)
        self.assertEqual((self.fetcher.pending(), self.membership.broadcasts), ([], []))
        # Held: a later arrival (a restart forgotten meanwhile aside) fetches nothing.
        self.membership.arrival("bob", "carol")
        self.membership.arrival("bob", "me")
        self.assertEqual(len(self.fetcher.calls), 1)

    def test_an_arrival_s_teller_without_the_record_leaves_it_to_the_owner(self) -> None:
        self.add("bob", 2)
        self.add("carol", 3)
        self.membership.arrival("bob", "carol")
        self.fetcher.answer(None)
        self.assertEqual(self.fetcher.pending(), [(endpoint(3), "carol")])
        self.fetcher.answer(signed(CAROL, "carol", 1).blob)
        self.assertEqual(self.store.digests()["carol"], 1)

    def test_a_suspected_owner_is_still_asked_a_dead_one_not(self) -> None:
        """In a join storm most suspicions are false: a suspect owns its record still."""
        self.add("bob", 2)
        self.add("carol", 3, status=SUSPECT)
        self.add("dave", 4, status=DEAD)
        self.membership.arrival("bob", "carol")
        self.membership.arrival("bob", "dave")
        self.fetcher.answer(None, 0)
        self.fetcher.answer(None, 1)
        self.assertEqual(self.fetcher.pending(), [(endpoint(3), "carol")])

    def test_a_record_being_fetched_is_served_once_fetched(self) -> None:
        self.add("bob", 2)
        self.add("carol", 3)
        self.assertIsNone(self.store.until_fetched("carol"))  # not fetching it
        self.membership.arrival("bob", "carol")
        asked = self.store.until_fetched("carol")
        assert asked is not None
        self.assertNoResult(asked)
        record = signed(CAROL, "carol", 2)
        self.fetcher.answer(record.blob)
        self.successResultOf(asked)
        self.assertEqual(self.store.record_blob("carol"), record.blob)
        self.assertIsNone(self.store.until_fetched("carol"))  # held
        self.assertIsNone(self.store.until_fetched("me"))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_our_own_record_held_is_served_once_released(self) -> None:
        self.assertIsNone(self.store.until_fetched("me"))  # not held
        release = self.store.hold_own()
        second = self.store.hold_own()
        asked = self.store.until_fetched("me")
        assert asked is not None
        self.store.publish("pki", {"csr": "request"})
        release()
        release()  # twice: counts once
        self.assertNoResult(asked)  # the second hold still holds
        second()
        self.successResultOf(asked)
        self.assertIsNone(self.store.until_fetched("me"))
        self.assertEqual(self.store.record_blob("me"), self.store.own.blob)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_our_own_record_held_is_waited_for_a_while_only(self) -> None:
        self.store.hold_own()
        asked = self.store.until_fetched("me")
        assert asked is not None
        self.clock.advance(store.SERVE_WAIT)
        self.successResultOf(asked)

    def test_a_record_being_fetched_is_waited_for_a_while_only(self) -> None:
        self.add("bob", 2)
        self.add("carol", 3)
        self.membership.arrival("bob", "carol")
        asked = self.store.until_fetched("carol")
        assert asked is not None
        self.clock.advance(store.SERVE_WAIT - 0.1)
        self.assertNoResult(asked)
        self.clock.advance(0.1)
        self.successResultOf(asked)
        self.assertIsNone(self.store.record_blob("carol"))
        # The fetch ends later all the same: nothing fires twice.
        self.fetcher.answer(signed(CAROL, "carol", 2).blob)
        self.assertIsNotNone(self.store.record_blob("carol"))

    def test_waiting_askers_are_answered_when_the_fetch_gives_up_or_the_store_stops(
        self,
    ) -> None:
        self.add("bob", 2)
        self.add("carol", 3, status=DEAD)
        self.membership.arrival("bob", "carol")
        given_up = self.store.until_fetched("carol")
        assert given_up is not None
        self.fetcher.fail()  # and the owner is dead: no holder left
        self.successResultOf(given_up)
        self.membership.arrival("bob", "carol")
        stopped = self.store.until_fetched("carol")
        assert stopped is not None
        self.store.stop()
        self.successResultOf(stopped)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_fetches_deduplicated_and_newer_wins(self) -> None:
        self.add("bob", 2)
        self.add("carol", 3)
        self.membership.digest("bob", "bob", 3)
        self.membership.digest("carol", "bob", 3)
        self.membership.digest("carol", "bob", 4)
        self.assertEqual(len(self.fetcher.calls), 1)
        self.fetcher.answer(signed(BOB, "bob", 3).blob)
        # v3 is not what we want now: ask the one that advertised v4.
        self.assertEqual(self.fetcher.pending(), [(endpoint(3), "bob")])
        self.fetcher.answer(signed(BOB, "bob", 4).blob)
        self.assertEqual(self.store.digests()["bob"], 4)
        self.assertEqual(self.fetcher.pending(), [])

    def test_fetches_run_a_few_at_a_time_and_the_rest_in_turn(self) -> None:
        """A joiner learns of every record at once: it asks for them a few at a time."""
        self.store.max_fetches = 2
        identities = {f"m{index}": Identity.generate() for index in range(5)}
        for index, name in enumerate(identities, start=2):
            self.add(name, index)
            self.store.want(name, 1, endpoint(index))
        self.assertEqual([name for _, name in self.fetcher.pending()], ["m0", "m1"])
        self.fetcher.answer(signed(identities["m0"], "m0", 1).blob, 0)
        self.assertEqual([name for _, name in self.fetcher.pending()], ["m1", "m2"])
        # A queued record that arrives meanwhile through another fetch is not asked again.
        self.store.accept(signed(identities["m3"], "m3", 1).blob)
        self.fetcher.fail(1)
        self.assertEqual([name for _, name in self.fetcher.pending()], ["m2", "m4"])
        self.fetcher.answer(signed(identities["m2"], "m2", 1).blob, 2)
        self.fetcher.answer(signed(identities["m4"], "m4", 1).blob, 3)
        self.assertEqual(self.fetcher.pending(), [])
        self.assertEqual(set(self.store.digests()), {"me", "m0", "m2", "m3", "m4"})

    def test_failed_fetch_retries_another_holder_then_the_owner(self) -> None:
        self.add("bob", 2)
        self.add("carol", 3)
        self.add("dave", 4)
        self.membership.digest("carol", "bob", 5)
        self.membership.digest("dave", "bob", 5)
        self.fetcher.fail()
        self.assertEqual(self.fetcher.pending(), [(endpoint(4), "bob")])
        self.fetcher.answer(None)  # dave no longer has it
        self.assertEqual(self.fetcher.pending(), [(endpoint(2), "bob")])
        self.fetcher.answer(b"garbage")
        self.assertEqual(self.drops.counts[records.BAD_RECORD], 1)
        self.assertEqual(self.fetcher.pending(), [])
        self.assertNotIn("bob", self.store.digests())
        self.assertEqual(self.store.fetched, {"failed": 1, "missing": 1, "ok": 1})
        # A later digest starts over.
        self.membership.digest("carol", "bob", 5)
        self.assertEqual(self.fetcher.pending(), [(endpoint(3), "bob")])

    def test_a_push_pull_s_records_come_from_its_peer_in_one_stream(self) -> None:
        """A joiner's whole state in one stream, not one stream per record."""
        self.add("bob", 2)
        self.add("carol", 3)
        self.store.accept(signed(CAROL, "carol", 4).blob)
        owners = {"bob": endpoint(2), "carol": endpoint(3), "me": endpoint(1)}
        digests = [("bob", 2), ("carol", 4), ("me", 1), ("dave", 1)]
        self.store.want_from(endpoint(3), digests, owners)
        # Only what we lack, and nothing one by one meanwhile.
        self.assertEqual(self.batches.pending(), [(endpoint(3), ["bob", "dave"])])
        self.assertEqual(self.fetcher.calls, [])
        dave = Identity.generate()
        self.batches.answer(signed(BOB, "bob", 2), signed(dave, "dave", 1))
        self.assertEqual(self.store.digests(), {"me": 1, "bob": 2, "carol": 4, "dave": 1})
        self.assertEqual(self.store.fetched, {"ok": 2})
        self.assertEqual((self.batches.pending(), self.fetcher.pending()), ([], []))

    def test_members_a_push_pull_s_peer_holds_no_record_of_come_from_their_owners(self) -> None:
        self.add("bob", 2)
        self.add("carol", 3)
        owners = {"bob": endpoint(2), "carol": endpoint(3), "me": endpoint(1)}
        self.store.want_from(endpoint(3), [("carol", 1)], owners)
        self.assertEqual(self.batches.pending(), [(endpoint(3), ["carol"])])
        self.assertEqual(self.fetcher.pending(), [(endpoint(2), "bob")])
        self.fetcher.answer(signed(BOB, "bob", 1).blob)
        self.batches.answer(signed(CAROL, "carol", 1))
        self.assertEqual(self.store.digests(), {"me": 1, "bob": 1, "carol": 1})
        # Held now: the next push/pull fetches nothing.
        self.store.want_from(endpoint(3), [("carol", 1)], owners)
        self.assertEqual((len(self.fetcher.calls), len(self.batches.calls)), (1, 1))

    def test_what_a_joiner_catches_up_on_is_no_news(self) -> None:
        self.add("bob", 2)
        self.add("carol", 3)
        self.store.accept(signed(BOB, "bob", 1).blob)
        self.store.accept(signed(CAROL, "carol", 1).blob)
        self.membership.broadcasts.clear()
        self.store.want_from(endpoint(3), [("bob", 2)], {}, advertise=False)
        self.batches.answer(signed(BOB, "bob", 2))
        self.store.want_from(endpoint(3), [("carol", 2)], {})
        self.batches.answer(signed(CAROL, "carol", 2))
        self.assertEqual(self.membership.broadcasts, [("carol", 2)])
        self.assertEqual(self.store.digests(), {"me": 1, "bob": 2, "carol": 2})

    def test_what_the_peer_does_not_deliver_comes_one_by_one_from_owners(self) -> None:
        self.add("bob", 2)
        self.add("carol", 3)
        owners = {"bob": endpoint(2), "carol": endpoint(3)}
        self.store.want_from(endpoint(4), [("carol", 2), ("bob", 3)], owners)
        # The peer holds no carol (it skipped her), and an older bob than it said.
        self.batches.answer(signed(BOB, "bob", 2))
        self.assertEqual(self.batches.pending(), [])
        self.assertEqual(self.fetcher.pending(), [(endpoint(3), "carol"), (endpoint(2), "bob")])
        self.assertEqual(self.store.fetched, {"ok": 1, "missing": 1})
        self.fetcher.answer(signed(BOB, "bob", 3).blob, 1)
        self.fetcher.answer(None, 0)
        # The owners were the last resort: the peer has been asked already.
        self.assertEqual(self.fetcher.pending(), [])
        self.assertEqual(self.store.digests()["bob"], 3)

    def test_a_reply_cut_at_its_size_is_followed_by_another_stream(self) -> None:
        identities = {f"m{index}": Identity.generate() for index in range(4)}
        for index, name in enumerate(identities, start=2):
            self.add(name, index)
        self.store.want_from(endpoint(9), [(name, 1) for name in identities], {})
        self.batches.answer(*(signed(identities[n], n, 1) for n in ("m0", "m1")))
        self.assertEqual(self.batches.pending(), [(endpoint(9), ["m2", "m3"])])
        self.batches.answer(signed(identities["m3"], "m3", 1))
        # m2 again would be a third stream for what the holder just left out: owner instead.
        self.assertEqual(self.batches.pending(), [])
        self.assertEqual(self.fetcher.pending(), [(endpoint(4), "m2")])

    def test_a_failed_batch_falls_back_to_owners(self) -> None:
        self.add("bob", 2)
        self.store.want_from(endpoint(4), [("bob", 1)], {"bob": endpoint(2)})
        # A digest heard meanwhile offers another holder, and starts nothing of its own.
        self.membership.digest("bob", "bob", 1)
        self.assertEqual(self.fetcher.calls, [])
        self.batches.fail()
        self.assertEqual(self.store.fetched, {"failed": 1})
        self.assertEqual(self.fetcher.pending(), [(endpoint(2), "bob")])
        self.fetcher.fail()
        # The holder may be older than batches, not down: it is asked for bob alone.
        self.assertEqual(self.fetcher.pending(), [(endpoint(4), "bob")])
        self.fetcher.answer(signed(BOB, "bob", 1).blob)
        self.assertEqual(self.store.digests()["bob"], 1)

    def test_a_batch_refuses_records_not_asked_for(self) -> None:
        self.add("bob", 2)
        self.add("carol", 3)
        self.store.want_from(endpoint(4), [("bob", 1)], {})
        self.batches.answer(signed(CAROL, "carol", 1), b"garbage", signed(BOB, "bob", 1))
        self.assertEqual(self.drops.counts[store.UNEXPECTED_RECORD], 1)
        self.assertEqual(self.drops.counts[records.BAD_RECORD], 1)
        self.assertNotIn("carol", self.store.digests())
        self.assertEqual(self.store.digests()["bob"], 1)

    def test_records_already_being_fetched_are_not_batched_again(self) -> None:
        self.add("bob", 2)
        self.add("carol", 3)
        self.membership.digest("bob", "bob", 1)
        self.store.want_from(endpoint(4), [("bob", 1), ("carol", 1)], {})
        self.store.want_from(endpoint(5), [("carol", 1)], {})
        self.assertEqual(self.batches.pending(), [(endpoint(4), ["carol"])])
        # The other push/pull's peer is kept as a holder to try.
        self.batches.answer()
        self.assertEqual(self.fetcher.pending(), [(endpoint(2), "bob"), (endpoint(5), "carol")])

    def test_a_forgotten_member_s_batched_record_is_let_go(self) -> None:
        self.add("bob", 2)
        self.store.want_from(endpoint(4), [("bob", 1)], {})
        self.store.forget("bob")
        self.batches.answer()
        self.assertEqual(self.fetcher.calls, [])

    def test_batch_replies_stop_at_their_size(self) -> None:
        bob, carol = signed(BOB, "bob", 1, pad="x" * 300), signed(CAROL, "carol", 1)
        self.store.accept(bob.blob)
        self.store.accept(carol.blob)
        names = ["nobody", "bob", "carol", "me"]
        self.assertEqual(
            self.store.record_blobs(names, 10_000),
            [bob.blob, carol.blob, self.store.own.blob],
        )
        self.assertEqual(
            self.store.record_blobs(names, len(bob.blob) + len(carol.blob)),
            [bob.blob, carol.blob],
        )
        # The first is always sent, whatever its size: else no reply would ever carry it.
        self.assertEqual(self.store.record_blobs(names, 1), [bob.blob])

    def test_fetcher_raising_is_a_failed_fetch(self) -> None:
        self.add("bob", 2)

        def broken(holder: Endpoint, name: str) -> Deferred[bytes | None]:
            raise OSError("no route")

        self.store.fetch = broken
        self.membership.digest("bob", "bob", 2)
        self.assertNotIn("bob", self.store.digests())

    def test_versions_never_go_backwards(self) -> None:
        self.add("bob", 2)
        self.assertTrue(self.store.accept(signed(BOB, "bob", 5).blob))
        self.assertFalse(self.store.accept(signed(BOB, "bob", 4).blob))
        self.assertFalse(self.store.accept(signed(BOB, "bob", 5, other=1).blob))
        self.assertEqual(self.store.digests()["bob"], 5)
        self.assertEqual(self.drops.counts[store.OUTDATED_RECORD], 1)

    def test_unexpected_record_refused(self) -> None:
        self.add("bob", 2)
        self.membership.digest("bob", "bob", 1)
        self.fetcher.answer(signed(CAROL, "carol", 1).blob)
        self.assertEqual(self.drops.counts[store.UNEXPECTED_RECORD], 1)
        self.assertNotIn("carol", self.store.digests())

    def test_pinned_identity_conflict(self) -> None:
        self.add("bob", 2)
        self.assertTrue(self.store.accept(signed(BOB, "bob", 1).blob))
        self.changes.clear()
        self.assertFalse(self.store.accept(signed(MALLORY, "bob", 9, role="master").blob, "x"))
        self.assertEqual(self.store.digests()["bob"], 1)
        self.assertEqual(self.changes, [])
        self.assertEqual(self.drops.counts[store.CONFLICT], 1)
        [conflict] = self.store.conflicts()
        self.assertEqual((conflict["kind"], conflict["names"]), ("identity", ["bob"]))
        self.store.accept(signed(MALLORY, "bob", 10).blob)
        self.assertEqual(self.store.conflicts()[0]["count"], 2)

    def test_pins_survive_through_the_pins_object(self) -> None:
        pins = Pins.from_mapping({"bob": BOB.public_key})
        self.store.pins = pins
        self.assertFalse(self.store.accept(signed(MALLORY, "bob", 1).blob))

    def test_someone_else_signing_our_name(self) -> None:
        self.assertFalse(self.store.accept(signed(MALLORY, "me", 99).blob))
        self.assertEqual(self.store.own.version, 1)
        self.assertEqual(self.store.conflicts()[0]["names"], ["me"])

    def test_own_record_ahead_of_us_moves_us_forward(self) -> None:
        """Restored from an old backup: others hold v7 of ours; we jump to v8."""
        self.add("bob", 2)
        self.membership.digest("bob", "me", 7)
        self.assertEqual(self.fetcher.pending(), [(endpoint(2), "me")])
        self.fetcher.answer(signed(ME, "me", 7, role="old").blob)
        self.assertEqual(self.store.own.version, 8)
        self.assertEqual(self.store.own.data["role"], "master")
        self.assertEqual(self.membership.broadcasts[-1], ("me", 8))
        self.assertEqual(self.saved[-1].version, 8)

    def test_own_record_at_our_version_changes_nothing(self) -> None:
        self.assertFalse(self.store.accept(self.store.own.blob))
        self.assertEqual(self.store.own.version, 1)
        self.assertEqual(self.membership.broadcasts, [("me", 1)])

    def test_impossible_versions_not_fetched(self) -> None:
        self.add("bob", 2)
        self.membership.digest("bob", "bob", records.MAX_VERSION + 1)
        self.assertEqual(self.fetcher.calls, [])

    def test_statuses_follow_membership(self) -> None:
        self.add("bob", 2)
        self.store.accept(signed(BOB, "bob", 1).blob)
        self.changes.clear()
        self.add("bob", 2, SUSPECT)
        self.add("bob", 2, DEAD)
        self.assertEqual(
            [
                (c.old.status if c.old else None, c.new.status if c.new else None)
                for c in self.changes
            ],
            [(ALIVE, SUSPECT), (SUSPECT, DEAD)],
        )
        self.assertEqual(self.changes[-1].new.record, self.changes[-1].old.record)  # type: ignore[union-attr]
        self.store.forget("bob")
        self.assertNotIn("bob", self.store.members())
        self.assertIsNone(self.changes[-1].new)

    def test_record_without_member_is_held_not_shown(self) -> None:
        self.store.accept(signed(BOB, "bob", 1).blob)
        self.assertNotIn("bob", self.store.members())
        self.add("bob", 2)
        self.assertEqual(self.store.members()["bob"].record.version, 1)  # type: ignore[union-attr]

    def test_mesh_address_conflict_reported(self) -> None:
        real = plan.mesh_address

        def colliding(cluster: str, name: str) -> ipaddress.IPv6Address:
            return real(cluster, "twin" if name in ("twin-a", "twin-b") else name)

        self.patch(plan, "mesh_address", colliding)
        self.add("twin-a", 5)
        self.assertEqual(self.store.conflicts(), [])
        self.add("twin-b", 6)
        [conflict] = self.store.conflicts()
        self.assertEqual(conflict["kind"], "mesh-address")
        self.assertEqual(conflict["names"], ["twin-a", "twin-b"])

    def test_status_rows(self) -> None:
        self.add("bob", 2, SUSPECT)
        self.store.accept(signed(BOB, "bob", 4, role="node").blob)
        self.assertEqual(
            self.store.status(),
            [
                {
                    "name": "bob",
                    "role": "node",
                    "address": "[2001:db8::2]:7946",
                    "state": "suspect",
                    "incarnation": 0,
                    "version": 4,
                },
                {
                    "name": "me",
                    "role": "master",
                    "address": "[2001:db8::1]:7946",
                    "state": "alive",
                    "incarnation": 0,
                    "version": 1,
                },
            ],
        )

    def test_a_failing_listener_does_not_stop_the_store(self) -> None:
        def broken(change: Change) -> None:
            raise RuntimeError("bug in a service")

        self.store.subscribe(broken)
        self.add("bob", 2)
        self.store.accept(signed(BOB, "bob", 1).blob)
        self.assertEqual(self.changes[-1].new.record.version, 1)  # type: ignore[union-attr]
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 2)
