"""Real ``twistd -n hepto`` agents, each in its own network namespace on one bridge.

What is observed goes through each agent's control socket (``hepto status --json``'s
source) and its JSON log; nothing reaches into a process.
"""

from __future__ import annotations

import socket
import statistics
import time
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import reactor
from twisted.trial.unittest import SynchronousTestCase

from agent import KEY, Agent, agents_lab
from hepto.config import DEFAULT_PORT as GOSSIP_PORT
from hepto.config import Endpoint
from hepto.control import ControlError, query
from hepto.gossip import codec
from hepto.gossip.crypto import Keyring
from hepto.gossip.identity import Identity
from hepto.gossip.messages import Alive, Dead
from hepto.gossip.proofs import Notary
from hepto.gossip.transport import recipient_of
from netlab import Host, holds_for, netns_socket, wait_until

pytestmark = pytest.mark.integration

CLUSTER = "hg"
WRONG_KEY = "a5" * 32
#: Generous: two shared cores, and a Go build competing for them.
START_TIMEOUT = 120.0
#: LAN profile: suspicion lasts 4 to 24 s among 4 members.
DEATH_TIMEOUT = 120.0


class AgentsTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.lab, self.root = agents_lab(self, "hg", "nft")
        self.agents: dict[str, Agent] = {}
        self.hosts: dict[str, Host] = {}

    def start(self, host: Host, anchor: Host | None = None, key: str = KEY) -> Agent:
        data_dir = self.root / host.name
        data_dir.mkdir(exist_ok=True)
        argv = [
            "--cluster", CLUSTER, "--name", host.name, "--key", key, "--no-contain",
            "--ip", str(host.interface), "--components", "none",
        ]  # fmt: skip
        if anchor is not None:
            argv += ["--anchor", str(anchor.address)]
        agent = Agent.start(argv, data_dir=data_dir, prefix=host.command([]))
        self.addCleanup(agent.kill)
        self.agents[host.name] = agent
        self.hosts[host.name] = host
        return agent

    def socket(self, name: str) -> Path:
        return self.root / name / CLUSTER / name / "control.sock"

    def status(self, name: str) -> dict[str, Any] | None:
        try:
            return query(self.socket(name), timeout=10)
        except ControlError:
            return None

    def view(self, observer: str) -> dict[str, dict[str, Any]]:
        status = self.status(observer)
        return {} if status is None else {m["name"]: m for m in status["members"]}

    def all_see(
        self,
        observers: Iterable[str],
        members: Iterable[str],
        state: str = "alive",
        check: Callable[[dict[str, Any]], bool] = lambda member: True,
    ) -> bool:
        members = list(members)
        for observer in observers:
            view = self.view(observer)
            for name in members:
                member = view.get(name)
                if member is None or member["state"] != state or not check(member):
                    return False
        return True

    def wait_all_see(
        self,
        observers: Iterable[str],
        members: Iterable[str],
        state: str,
        timeout: float,
        **kwargs: Any,
    ) -> float:
        observers, members = list(observers), list(members)
        started = time.monotonic()
        wait_until(
            lambda: self.all_see(observers, members, state, **kwargs),
            timeout,
            interval=0.2,
            what=f"{observers} to see {members} {state}",
        )
        return time.monotonic() - started

    def record_arrivals(self, member: str, version: int) -> dict[str, float]:
        """When each agent logged holding ``member``'s record at ``version`` or newer."""
        arrivals = {}
        for name, agent in self.agents.items():
            for event in agent.events():
                held = event.get("version")
                if (
                    event.get("member") == member
                    and isinstance(held, int)
                    and held >= version
                    and "log_time" in event
                    and "Record of" in event.get("log_text", "")
                ):
                    arrivals[name] = float(event["log_time"])
                    break
        return arrivals


class JoinKillRestartTests(AgentsTestCase):
    def test_join_propagate_kill_restart_and_a_wrong_key(self) -> None:
        names = ["a1", "a2", "a3", "a4"]
        hosts = [self.lab.add_host(name) for name in names]
        mallory = self.lab.add_host("mallory")
        self.start(hosts[0])
        for host in hosts[1:]:
            self.start(host, anchor=hosts[0])
        self.start(mallory, anchor=hosts[0], key=WRONG_KEY)
        joined = self.wait_all_see(names, names, "alive", START_TIMEOUT)
        print(f"\n4 agents see each other alive {joined:.1f} s after the last start")
        # And hold each other's records: an owner holds its record from fetches until its
        # PKI's start has published in it, so each round below then makes one version.
        self.wait_all_see(
            names, names, "alive", START_TIMEOUT, check=lambda m: m["version"] is not None
        )

        # A changed 4 KiB record: only its digest rides UDP, the record travels by fetch.
        # Five rounds, each from a different phase of the gossip timers.
        last_arrivals = []
        for round_ in range(5):
            payload = str(round_) * 4096
            published_at = time.time()
            answer = query(self.socket("a4"), "publish", key="x-payload", value=payload)
            version = answer["version"]
            # A member holds no record of another (version None) until it has fetched one.
            self.wait_all_see(
                names, ["a4"], "alive", 60, check=lambda m, v=version: (m["version"] or 0) >= v
            )
            arrivals = self.record_arrivals("a4", version)
            self.assertEqual(set(arrivals), {"a1", "a2", "a3"})
            last_arrivals.append(max(arrivals.values()) - published_at)
            time.sleep(0.37)  # A pause off the 200 ms gossip beat.
        print(
            "a changed 4 KiB record held by all 3 others after "
            + ", ".join(f"{delay * 1000:.0f}" for delay in last_arrivals)
            + f" ms (median {statistics.median(last_arrivals) * 1000:.0f} ms)"
        )

        # kill -9: every other member declares it dead. (Forgetting it takes the LAN
        # profile's reap_after, an hour; test_gossip_transport covers it on fast timings.)
        before = self.view("a1")["a3"]
        self.agents["a3"].kill()
        survivors = ["a1", "a2", "a4"]
        dead_after = self.wait_all_see(survivors, ["a3"], "dead", DEATH_TIMEOUT)
        print(f"a3 killed: declared dead by all survivors after {dead_after:.1f} s")

        # Restarted from its directory: same identity, later incarnation and version.
        self.start(hosts[2], anchor=hosts[0])
        self.wait_all_see(
            names,
            ["a3"],
            "alive",
            START_TIMEOUT,
            check=lambda m: (
                m["incarnation"] > before["incarnation"] and (m["version"] or 0) > before["version"]
            ),
        )

        # The agent with the wrong key never got in, and was counted knocking.
        for name in names:
            self.assertNotIn("mallory", self.view(name))
        anchor_status = self.status("a1")
        assert anchor_status is not None
        self.assertGreater(anchor_status["drops"].get("undecryptable", 0), 0)
        outsider = self.status("mallory")
        assert outsider is not None
        self.assertEqual([m["name"] for m in outsider["members"]], ["mallory"])
        self.assertFalse(outsider["joined"])
        self.assertEqual(anchor_status["conflicts"], [])


class PartitionTests(AgentsTestCase):
    def test_partition_and_heal(self) -> None:
        names = ["p1", "p2", "p3", "p4"]
        hosts = [self.lab.add_host(name) for name in names]
        self.start(hosts[0])
        for host in hosts[1:]:
            self.start(host, anchor=hosts[0])
        self.wait_all_see(names, names, "alive", START_TIMEOUT)

        left, right = hosts[:2], hosts[2:]
        for host in left:
            host.drop_from(*right)
        for host in right:
            host.drop_from(*left)
        split = self.wait_all_see(["p1", "p2"], ["p3", "p4"], "dead", DEATH_TIMEOUT)
        self.wait_all_see(["p3", "p4"], ["p1", "p2"], "dead", DEATH_TIMEOUT)
        self.assertTrue(self.all_see(["p1", "p2"], ["p1", "p2"]))
        self.assertTrue(self.all_see(["p3", "p4"], ["p3", "p4"]))
        print(f"\npartition: each side declared the other dead after {split:.1f} s")

        for host in hosts:
            host.heal()
        healed = self.wait_all_see(names, names, "alive", START_TIMEOUT)
        print(f"healed: all alive again after {healed:.1f} s")


class InsiderTests(AgentsTestCase):
    """A key holder, with hepto's own codec and an identity of its own, cannot move a
    member in others' views, nor bring a dead one back."""

    def forged_alive(self, name: str, incarnation: int, address: Endpoint) -> Alive:
        """An Alive for ``name`` as the insider can make it: proven by its own identity."""
        notary = Notary(CLUSTER, name, self.insider_identity, lambda name: None)
        return Alive(name, incarnation, address, "node", notary.prove(incarnation, address, "node"))

    def setUp(self) -> None:
        super().setUp()
        self.insider_identity = Identity.generate()

    def dropped(self, observer: str, reason: str) -> int:
        status = self.status(observer)
        return 0 if status is None else int(status["drops"].get(reason, 0))

    def forge(self, insider: Host, recipients: Iterable[Host], *datagrams: list[Any]) -> None:
        """Each datagram of messages to each recipient in turn, from the insider's address."""
        keyring = Keyring.from_cluster_keys((bytes.fromhex(KEY),), CLUSTER, reactor)
        sender = netns_socket(insider.netns, socket.AF_INET6, socket.SOCK_DGRAM)
        self.addCleanup(sender.close)
        sender.bind((str(insider.address), GOSSIP_PORT))
        for messages in datagrams:
            payload = codec.encode(messages)
            for host in recipients:
                recipient = Endpoint(host.address, GOSSIP_PORT)
                datagram = keyring.seal_datagram(payload, recipient_of(recipient))
                sender.sendto(datagram, (str(host.address), GOSSIP_PORT))

    def members_and_an_insider(self, names: list[str]) -> tuple[list[Host], Host]:
        """Agents ``names``, all seeing each other alive and holding each other's record,
        and a host for the insider.

        Holding the records matters: until a member's record arrives no identity is pinned
        to its name, and an Alive is taken on trust (then checked, and the member suspected
        until it refutes): a forgery in that window moves the member for a moment, by
        design, and would make these tests fail on a loaded machine.
        """
        hosts = [self.lab.add_host(name) for name in names]
        insider = self.lab.add_host("insider")
        self.start(hosts[0])
        for host in hosts[1:]:
            self.start(host, anchor=hosts[0])
        self.wait_all_see(
            names, names, "alive", START_TIMEOUT, check=lambda m: m["version"] is not None
        )
        return hosts, insider

    def wait_refused(self, observers: Iterable[str]) -> None:
        """Until each of ``observers`` has counted a forged Alive."""
        for observer in observers:
            wait_until(
                partial(self.dropped, observer, "forged alive"),
                30,
                0.2,
                f"{observer} to refuse the forged Alive",
            )

    def test_a_forged_death_and_alive_elsewhere_move_no_one(self) -> None:
        hosts, insider = self.members_and_an_insider(["b1", "b2", "b3"])
        victim = hosts[1]
        where = f"[{victim.address}]:{GOSSIP_PORT}"
        incarnation = self.view("b1")["b2"]["incarnation"]
        fake = Endpoint(insider.address, GOSSIP_PORT)
        # The hijack that issue 19 reports: a death, then an Alive at the insider's
        # address, which a dead member's address used to follow.
        self.forge(
            insider,
            [hosts[0], hosts[2]],
            [Dead("b2", incarnation, "b3")],
            [self.forged_alive("b2", incarnation + 2, fake)],
        )
        self.wait_refused(["b1", "b3"])
        # Not for a moment elsewhere (SWIM alone would move it back in time: the
        # victim refutes what it hears of itself, at its own address).
        holds_for(
            lambda: all(self.view(name)["b2"]["address"] == where for name in ("b1", "b3")),
            5,
            0.1,
            "b2 at its own address",
        )
        # The forged leave holds until the victim hears of it and refutes, at its address.
        self.wait_all_see(
            ["b1", "b3"], ["b2"], "alive", DEATH_TIMEOUT, check=lambda m: m["address"] == where
        )
        # And its record changes still reach everyone.
        version = query(self.socket("b2"), "publish", key="x-after", value="still here")["version"]
        self.wait_all_see(
            ["b1", "b3"],
            ["b2"],
            "alive",
            60,
            check=lambda m: (m["version"] or 0) >= version and m["address"] == where,
        )

    def test_a_forged_alive_brings_no_dead_member_back(self) -> None:
        """The Alive that SWIM alone would take: the member's own address, a higher
        incarnation, for a member that is gone."""
        hosts, insider = self.members_and_an_insider(["c1", "c2", "c3"])
        victim = hosts[1]
        incarnation = self.view("c1")["c2"]["incarnation"]
        self.agents["c2"].kill()
        self.wait_all_see(["c1", "c3"], ["c2"], "dead", DEATH_TIMEOUT)
        where = Endpoint(victim.address, GOSSIP_PORT)
        self.forge(insider, [hosts[0], hosts[2]], [self.forged_alive("c2", incarnation + 5, where)])
        self.wait_refused(["c1", "c3"])
        holds_for(
            lambda: self.all_see(["c1", "c3"], ["c2"], "dead"),
            5,
            0.1,
            "c2 dead",
        )
