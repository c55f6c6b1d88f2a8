"""A real Prometheus scrapes three real agents, and sees a member's death in their series.

Three ``twistd hepto`` agents (``--no-contain --components none``), each in a network
namespace of a lab bridge, serve their metrics on their own address
(``--metrics [address]:9100``: the lab's link is the only network it is on); Prometheus,
Debian's binary with a configuration and a storage directory of this test's own, runs
in a fourth namespace and scrapes them every second. Everything observed goes through
Prometheus's HTTP API: the targets are up, each survivor's
``hepto_gossip_members{state="dead"}`` rises once one agent is killed with SIGKILL, and
that agent's target goes down.
"""

from __future__ import annotations

import json
from functools import partial
from typing import Any

import pytest
from twisted.trial.unittest import SynchronousTestCase

from agent import KEY, Agent, agents_lab
from hepto.control import ControlError, query
from netlab import Host, wait_until

pytestmark = pytest.mark.integration

CLUSTER = "ho"
METRICS_PORT = 9100
PROMETHEUS_PORT = 9090
#: Generous: two shared cores.
START_TIMEOUT = 120.0
#: LAN profile: suspicion lasts 4 to 24 s among 3 members; then a scrape or two.
DEATH_TIMEOUT = 90.0


class PrometheusTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.lab, self.root = agents_lab(self, "ho", "prometheus", "curl", "wireguard-go")
        self.agents: dict[str, Agent] = {}

    def start_agent(self, host: Host, anchor: Host | None) -> None:
        data_dir = self.root / host.name
        data_dir.mkdir()
        argv = [
            "--cluster", CLUSTER, "--name", host.name, "--key", KEY, "--no-contain",
            "--ip", str(host.interface), "--components", "none",
            "--metrics", f"[{host.address}]:{METRICS_PORT}",
        ]  # fmt: skip
        if anchor is not None:
            argv += ["--anchor", str(anchor.address)]
        agent = Agent.start(argv, data_dir=data_dir, prefix=host.command([]))
        self.addCleanup(agent.kill)
        self.agents[host.name] = agent

    def alive_seen(self, name: str) -> int:
        try:
            status = query(self.root / name / CLUSTER / name / "control.sock")
        except ControlError:
            return 0
        return sum(1 for member in status["members"] if member["state"] == "alive")

    def start_prometheus(self, host: Host, targets: list[Host]) -> None:
        directory = self.root / "prometheus"
        directory.mkdir()
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
            "scrape_configs": [
                {
                    "job_name": "hepto",
                    "static_configs": [
                        {"targets": [f"[{t.address}]:{METRICS_PORT}" for t in targets]}
                    ],
                }
            ],
        }
        # JSON is YAML: no YAML writer needed.
        (directory / "prometheus.yml").write_text(json.dumps(config))
        log = (directory / "prometheus.log").open("wb")
        self.addCleanup(log.close)
        host.spawn(
            [
                "prometheus",
                f"--config.file={directory / 'prometheus.yml'}",
                f"--storage.tsdb.path={directory / 'data'}",
                f"--web.listen-address=[{host.address}]:{PROMETHEUS_PORT}",
            ],
            stdout=log,
            stderr=log,
        )
        self.prometheus = host
        self.prometheus_log = directory / "prometheus.log"

    def api(self, path: str, **params: str) -> Any:
        """GET Prometheus's API from inside its namespace; None until it answers."""
        url = f"http://[{self.prometheus.address}]:{PROMETHEUS_PORT}/api/v1/{path}"
        argv = ["curl", "-sSfg", "--max-time", "5", "-G", url]
        for key, value in params.items():
            argv += ["--data-urlencode", f"{key}={value}"]
        result = self.prometheus.run(argv, check=False)
        if result.returncode != 0:
            return None
        answer = json.loads(result.stdout)
        self.assertEqual(answer["status"], "success", answer)
        return answer["data"]

    def targets(self) -> dict[str, str]:
        """Each scraped instance's health (up, down, unknown)."""
        data = self.api("targets")
        if data is None:
            return {}
        return {t["labels"]["instance"]: t["health"] for t in data["activeTargets"]}

    def series(self, expression: str) -> dict[str, float]:
        """The instant vector of ``expression``, by instance."""
        data = self.api("query", query=expression)
        if data is None:
            return {}
        return {r["metric"]["instance"]: float(r["value"][1]) for r in data["result"]}

    def test_targets_up_then_a_death_in_the_series(self) -> None:
        a, b, c, prometheus = (self.lab.add_host(name) for name in ("a", "b", "c", "prom"))
        hosts = [a, b, c]
        self.start_agent(a, None)
        self.start_agent(b, a)
        self.start_agent(c, a)
        for host in hosts:
            wait_until(
                partial(lambda name: self.alive_seen(name) == 3, host.name),
                START_TIMEOUT,
                interval=0.5,
                what=f"{host.name} to see 3 members alive",
            )
        self.start_prometheus(prometheus, hosts)
        instance = {host.name: f"[{host.address}]:{METRICS_PORT}" for host in hosts}
        try:
            wait_until(
                lambda: self.targets() == dict.fromkeys(instance.values(), "up"),
                START_TIMEOUT,
                interval=0.5,
                what="Prometheus to scrape the three agents",
            )
        except AssertionError:
            print(self.prometheus_log.read_text()[-3000:])
            raise
        alive = self.series('hepto_gossip_members{state="alive"}')
        self.assertEqual(alive, dict.fromkeys(instance.values(), 3.0))
        self.assertEqual(
            self.series('hepto_gossip_members{state="dead"}'),
            dict.fromkeys(instance.values(), 0.0),
        )
        self.assertEqual(set(self.series('hepto_info{cluster="ho"}')), set(instance.values()))
        self.assertEqual(len(self.series("process_resident_memory_bytes > 1e6")), 3)
        # Each agent froze what its start made (tens of thousands of objects).
        self.assertEqual(len(self.series("python_gc_frozen_objects > 10000")), 3)

        self.agents["c"].kill()
        survivors = [instance["a"], instance["b"]]
        wait_until(
            lambda: all(
                self.series('hepto_gossip_members{state="dead"}').get(name) == 1.0
                for name in survivors
            ),
            DEATH_TIMEOUT,
            interval=0.5,
            what="the survivors' series to show one dead member",
        )
        self.assertEqual(
            {name: value for name, value in self.series("hepto_gossip_deaths_total").items()
             if name in survivors},
            dict.fromkeys(survivors, 1.0),
        )  # fmt: skip
        wait_until(
            lambda: self.targets().get(instance["c"]) == "down",
            DEATH_TIMEOUT,
            interval=0.5,
            what="the killed agent's target to go down",
        )
        self.assertEqual(self.series("up == 0"), {instance["c"]: 0.0})
