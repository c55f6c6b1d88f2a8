"""The metrics: the exposition format, the families made from a status, the responder.

The families are made from a status document shaped as the agent's (the schema of
``docs/gossip-state.rst``, and each service's own section); the documentation test
checks every family those yield, and every one declared, against ``docs/metrics.rst``.
"""

from __future__ import annotations

import copy
import gc
import re
from pathlib import Path
from typing import Any

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import Logger
from twisted.trial.unittest import SynchronousTestCase

from hepto import config
from hepto.config import ConfigError, Endpoint
from hepto.metrics import families, process
from hepto.metrics.exposition import Metric, escape_label_value, format_value, render
from hepto.metrics.http import MAX_HEAD, ScrapeProtocol

DOCS = Path(__file__).resolve().parent.parent / "docs" / "metrics.rst"

#: A status as a master's agent shows it, every section present.
STATUS: dict[str, Any] = {
    "name": "m1",
    "cluster": "prod",
    "address": "[2001:db8::1]:7946",
    "identity": "ab" * 32,
    "incarnation": 3,
    "version": 12,
    "joined": True,
    "health": 1,
    "members": [
        {"name": "m1", "role": "master", "address": "[2001:db8::1]:7946", "state": "alive",
         "incarnation": 3, "version": 12},
        {"name": "n1", "role": "node", "address": "[2001:db8::2]:7946", "state": "dead",
         "incarnation": 1, "version": 4},
        {"name": "n2", "role": "node", "address": "[2001:db8::3]:7946", "state": "alive",
         "incarnation": 1, "version": None},
    ],
    "drops": {"undecryptable": 4, "stale": 1},
    "conflicts": [{"kind": "identity", "names": ["n3"], "detail": "", "count": 2,
                   "first_seen": 0.0, "last_seen": 1.0}],
    "swim": {"entered": {"suspect": 2, "dead": 1, "alive": 3}, "refutations": 5},
    "fetches": {"ok": 7},
    "traffic": {"datagrams_sent": 10, "datagrams_received": 11, "bytes_sent": 1000,
                "bytes_received": 1100},
    "metrics_url": "http://[::1]:7947/metrics",
    "mesh": {
        "phase": "running", "error": None,
        "peers": [
            {"name": "n1", "public_key": "k1=", "last_handshake": "2026-01-01T00:00:00Z",
             "rx_bytes": 5, "tx_bytes": 6},
            {"name": None, "public_key": "k2=", "last_handshake": None, "rx_bytes": 0,
             "tx_bytes": 0},
        ],
        "drops": {"bad-endpoint": 1}, "passes": 4, "pass_failures": 1,
    },
    "pki": {
        "certificates": {"kubelet": {"not_after": "2027-01-01T00:00:00+00:00", "state": "valid"},
                         "pending": {"state": "requested"}},
        "dropped": {"worker_failures": 1}, "worker": {"batches": 9, "failures": 1},
        "renewals": 2,
    },
    "kube": {"components": [{"name": "etcd", "state": "running", "ready": True, "restarts": 1}]},
    "backup": {"last": {"created": "2026-01-02T03:04:05Z", "size": 4096}, "failures": 2,
               "next": None, "kept": 1, "running": False, "last_error": None},
}  # fmt: skip

SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$")


def scrape_text(status: dict[str, Any]) -> str:
    return render(families.status_families(status)).decode()


def samples(text: str) -> dict[str, float]:
    """``name{labels}`` to value, every line checked against the format."""
    found = {}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        match = SAMPLE.match(line)
        assert match, f"not a sample line: {line!r}"
        found[line.rpartition(" ")[0]] = float(match.group(4))
    return found


class ExpositionTests(SynchronousTestCase):
    def test_render(self) -> None:
        metric = Metric("hepto_x_total", "counter", "A \\ help\nline.")
        text = render([metric([({"reason": 'a"b\\c\nd'}, 3)]), metric(2.5)]).decode()
        self.assertEqual(
            text,
            "# HELP hepto_x_total A \\\\ help\\nline.\n"
            "# TYPE hepto_x_total counter\n"
            'hepto_x_total{reason="a\\"b\\\\c\\nd"} 3\n'
            "# HELP hepto_x_total A \\\\ help\\nline.\n"
            "# TYPE hepto_x_total counter\n"
            "hepto_x_total 2.5\n",
        )

    def test_values(self) -> None:
        self.assertEqual(
            [format_value(v) for v in (True, 0, 7, 0.1, float("inf"), -float("inf"))],
            ["1", "0", "7", "0.1", "+Inf", "-Inf"],
        )
        self.assertEqual(format_value(float("nan")), "NaN")
        self.assertEqual(escape_label_value("plain"), "plain")

    def test_bad_names(self) -> None:
        self.assertRaises(ValueError, Metric, "hepto-x", "gauge", "")
        self.assertRaises(ValueError, Metric, "hepto_x", "counter", "")  # no _total
        self.assertRaises(ValueError, Metric, "hepto_x", "histogram", "")
        self.assertRaises(ValueError, Metric("hepto_x", "gauge", ""), [({"a-b": "1"}, 1)])
        self.assertRaises(ValueError, Metric("hepto_x", "gauge", ""), [({"__x": "1"}, 1)])


class FamiliesTests(SynchronousTestCase):
    def test_figures(self) -> None:
        found = samples(scrape_text(STATUS))
        expected = {
            'hepto_info{cluster="prod",name="m1",role="master"}': 1,
            'hepto_gossip_members{state="alive"}': 2,
            'hepto_gossip_members{state="dead"}': 1,
            'hepto_gossip_members{state="left"}': 0,
            "hepto_gossip_suspicions_total": 2,
            "hepto_gossip_deaths_total": 1,
            "hepto_gossip_refutations_total": 5,
            'hepto_gossip_datagrams_total{direction="in"}': 11,
            'hepto_gossip_bytes_total{direction="out"}': 1000,
            'hepto_gossip_drops_total{reason="undecryptable"}': 4,
            "hepto_gossip_records": 2,
            'hepto_gossip_record_fetches_total{result="ok"}': 7,
            'hepto_gossip_record_fetches_total{result="failed"}': 0,
            'hepto_gossip_conflicts{kind="identity"}': 1,
            "hepto_mesh_peers": 2,
            'hepto_mesh_peer_last_handshake_timestamp_seconds{peer="n1"}': 1767225600,
            'hepto_mesh_peer_last_handshake_timestamp_seconds{peer="k2="}': 0,
            'hepto_mesh_peer_bytes_total{peer="n1",direction="in"}': 5,
            "hepto_mesh_reconcile_failures_total": 1,
            'hepto_pki_certificate_expiry_timestamp_seconds{certificate="kubelet"}': 1798761600,
            "hepto_pki_renewals_total": 2,
            "hepto_pki_worker_batches_total": 9,
            'hepto_component_state{component="etcd",state="running"}': 1,
            'hepto_component_state{component="etcd",state="backoff"}': 0,
            'hepto_component_ready{component="etcd"}': 1,
            'hepto_component_restarts_total{component="etcd"}': 1,
            "hepto_backup_last_success_timestamp_seconds": 1767323045,
            "hepto_backup_last_size_bytes": 4096,
            "hepto_backup_failures_total": 2,
        }
        self.assertEqual({key: found.get(key) for key in expected}, expected)
        self.assertNotIn('certificate="pending"', scrape_text(STATUS))
        # A master with no backup yet; a node has no backup section, hence no families.
        first = samples(scrape_text({**STATUS, "backup": {**STATUS["backup"], "last": None}}))
        self.assertEqual(first["hepto_backup_last_success_timestamp_seconds"], 0)
        node = {key: value for key, value in STATUS.items() if key != "backup"}
        self.assertNotIn("hepto_backup_", scrape_text(node))

    def test_failed_section(self) -> None:
        """A section the status could not make, or a malformed one, is left out alone."""
        status = copy.deepcopy(STATUS)
        status["pki"] = {"error": "RuntimeError()"}
        del status["mesh"]["passes"]
        text = scrape_text(status)
        self.assertNotIn("hepto_pki_", text)
        self.assertNotIn("hepto_mesh_", text)
        self.assertIn("hepto_gossip_members", text)
        self.assertIn("hepto_component_ready", text)
        self.assertEqual(len(self.flushLoggedErrors(KeyError)), 1)

    def test_process(self) -> None:
        before = gc.get_stats()[0]["collections"]
        found = samples(render(process.process_families()).decode())
        after = gc.get_stats()[0]["collections"]
        self.assertGreater(found["process_resident_memory_bytes"], 1 << 20)
        self.assertGreater(found["process_cpu_seconds_total"], 0)
        self.assertGreater(found["process_open_fds"], 2)
        self.assertLess(found["process_start_time_seconds"], __import__("time").time())
        self.assertGreater(found["process_start_time_seconds"], 1.5e9)
        self.assertGreaterEqual(found['python_gc_collections_total{generation="0"}'], before)
        self.assertLessEqual(found['python_gc_collections_total{generation="0"}'], after)
        self.assertIn('python_gc_collections_total{generation="2"}', found)
        # Nothing froze this test's process.
        self.assertEqual(found["python_gc_frozen_objects"], gc.get_freeze_count())

    def test_documented(self) -> None:
        """Every family the agent declares, and every family a scrape shows, is in the docs."""
        table = DOCS.read_text()
        documented = set(
            re.findall(r"^``((?:hepto|process|python)_[a-z_]+)``", table, re.MULTILINE)
        )
        declared = {metric.name for metric in (*families.METRICS, *process.METRICS)}
        text = scrape_text(STATUS) + render(process.process_families()).decode()
        exported = set(re.findall(r"^# TYPE (\S+) ", text, re.MULTILINE))
        self.assertEqual(exported - declared, set())
        self.assertEqual(declared - documented, set(), "document them in docs/metrics.rst")
        self.assertEqual(documented - declared, set(), "docs/metrics.rst lists a family no more")


class ResponderTests(SynchronousTestCase):
    def exchange(self, request: bytes, body: bytes = b"x 1\n") -> tuple[bytes, StringTransport]:
        protocol = ScrapeProtocol(lambda: body, Logger())
        transport = StringTransport()
        protocol.makeConnection(transport)
        protocol.dataReceived(request)
        protocol.setTimeout(None)
        return transport.value(), transport

    def test_scrape(self) -> None:
        response, transport = self.exchange(
            b"GET /metrics HTTP/1.1\r\nHost: [::1]:7947\r\nAccept: */*\r\n\r\n"
        )
        head, _, body = response.partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.1 200 OK\r\n"))
        self.assertIn(b"Content-Type: text/plain; version=0.0.4; charset=utf-8", head)
        self.assertIn(b"Content-Length: 4\r\n", head)
        self.assertEqual(body, b"x 1\n")
        self.assertTrue(transport.disconnecting)

    def test_head_in_pieces(self) -> None:
        protocol = ScrapeProtocol(lambda: b"x 1\n", Logger())
        transport = StringTransport()
        protocol.makeConnection(transport)
        for piece in (b"HEAD /metrics?x=1 HT", b"TP/1.0\n", b"\n"):
            protocol.dataReceived(piece)
        protocol.setTimeout(None)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 200 OK"))
        self.assertTrue(transport.value().endswith(b"\r\n\r\n"))

    def test_refusals(self) -> None:
        for request, status in [
            (b"GET / HTTP/1.1\r\n\r\n", b"404"),
            (b"POST /metrics HTTP/1.1\r\n\r\n", b"405"),
            (b"garbage\r\n\r\n", b"400"),
            (b"GET /metrics HTTP/1.1\r\n" + b"X: y\r\n" * (MAX_HEAD // 4), b"431"),
        ]:
            response, transport = self.exchange(request)
            self.assertTrue(response.startswith(b"HTTP/1.1 " + status), (request[:20], response))
            self.assertTrue(transport.disconnecting)

    def test_failed_scrape(self) -> None:
        def scrape() -> bytes:
            raise RuntimeError("boom")

        protocol = ScrapeProtocol(scrape, Logger())
        transport = StringTransport()
        protocol.makeConnection(transport)
        protocol.dataReceived(b"GET /metrics HTTP/1.1\r\n\r\n")
        protocol.setTimeout(None)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 500"))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_idle_connection_dropped(self) -> None:
        clock = Clock()
        protocol = ScrapeProtocol(lambda: b"", Logger())
        protocol.callLater = clock.callLater  # type: ignore[method-assign,assignment]
        transport = StringTransport()
        protocol.makeConnection(transport)
        protocol.dataReceived(b"GET /metrics HTTP/1.1\r\n")
        clock.advance(9)
        self.assertFalse(transport.disconnecting)
        clock.advance(2)
        self.assertTrue(transport.disconnecting)


class OptionTests(SynchronousTestCase):
    def test_parse(self) -> None:
        loopback = __import__("ipaddress").IPv6Address("::1")
        self.assertEqual(config.parse_metrics(None), Endpoint(loopback, 7947))
        self.assertEqual(config.parse_metrics("9100"), Endpoint(loopback, 9100))
        self.assertIsNone(config.parse_metrics("none"))
        self.assertEqual(str(config.parse_metrics("[2001:db8::1]:9100")), "[2001:db8::1]:9100")
        for wrong in ("x", "[::1]", "70000", "10.0.0.1:80"):
            with self.assertRaises(ConfigError) as raised:
                config.parse_metrics(wrong)
            self.assertEqual(raised.exception.option, "metrics")
