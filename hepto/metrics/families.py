"""The agent's metric families, made from its status: the document ``hepto status --json`` shows.

One source for both: every figure a scrape shows is one the status shows, counted once,
where it happens (``docs/gossip-state.rst`` has the schema).  A section the status
could not make (``{"error": ...}``) yields no families; the others are still served.
"""

from __future__ import annotations

import datetime
import functools
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Final

from twisted.logger import Logger

from hepto.metrics.exposition import Family, Metric
from hepto.state import STATUSES
from hepto.supervisor.process import State

Status = Mapping[str, Any]

_log = Logger(namespace="hepto.metrics")

INFO: Final = Metric(
    "hepto_info", "gauge", "Always 1: the node's cluster, name and role as labels."
)
# Gossip
MEMBERS: Final = Metric(
    "hepto_gossip_members", "gauge", "Members this node knows, itself included, by state."
)
ENTERED: Final = Metric(
    "hepto_gossip_member_transitions_total",
    "counter",
    "Times a member entered a state (alive, suspect, dead, left) in this node's view.",
)
SUSPICIONS: Final = Metric(
    "hepto_gossip_suspicions_total", "counter", "Members this node began to suspect."
)
DEATHS: Final = Metric(
    "hepto_gossip_deaths_total", "counter", "Members this node declared or learnt dead."
)
REFUTATIONS: Final = Metric(
    "hepto_gossip_refutations_total",
    "counter",
    "Accusations of this node it refuted by raising its incarnation.",
)
INCARNATION: Final = Metric("hepto_gossip_incarnation", "gauge", "This node's SWIM incarnation.")
HEALTH: Final = Metric(
    "hepto_gossip_health", "gauge", "Lifeguard's local health score (0 is best)."
)
JOINED: Final = Metric("hepto_gossip_joined", "gauge", "1 once this node joined its cluster.")
DATAGRAMS: Final = Metric(
    "hepto_gossip_datagrams_total", "counter", "Gossip UDP datagrams, by direction (in, out)."
)
BYTES: Final = Metric(
    "hepto_gossip_bytes_total", "counter", "Bytes of gossip UDP datagrams, by direction."
)
DROPS: Final = Metric("hepto_gossip_drops_total", "counter", "Gossip input refused, by reason.")
RECORD_VERSION: Final = Metric(
    "hepto_gossip_record_version", "gauge", "The version of this node's own record."
)
RECORDS: Final = Metric(
    "hepto_gossip_records", "gauge", "Members whose record this node holds, itself included."
)
FETCHES: Final = Metric(
    "hepto_gossip_record_fetches_total",
    "counter",
    "Record fetches finished, by result (ok, missing, failed).",
)
CONFLICTS: Final = Metric(
    "hepto_gossip_conflicts", "gauge", "Conflicts seen (identity, mesh-address), by kind."
)
# Mesh
MESH_RUNNING: Final = Metric(
    "hepto_mesh_running", "gauge", "1 while the mesh is up (its phase is running)."
)
PEERS: Final = Metric("hepto_mesh_peers", "gauge", "WireGuard peers on the mesh's device.")
HANDSHAKE: Final = Metric(
    "hepto_mesh_peer_last_handshake_timestamp_seconds",
    "gauge",
    "When the last WireGuard handshake with a peer happened, since the epoch (0: never).",
)
PEER_BYTES: Final = Metric(
    "hepto_mesh_peer_bytes_total",
    "counter",
    "Bytes through the WireGuard device with a peer, by direction (in, out).",
)
PASSES: Final = Metric(
    "hepto_mesh_reconcile_passes_total", "counter", "Reconcile passes that changed the device."
)
PASS_FAILURES: Final = Metric(
    "hepto_mesh_reconcile_failures_total", "counter", "Reconcile passes that failed."
)
MESH_DROPS: Final = Metric(
    "hepto_mesh_problems_total",
    "counter",
    "Members (or parts of their record) left out of the mesh, by kind.",
)
# PKI
EXPIRY: Final = Metric(
    "hepto_pki_certificate_expiry_timestamp_seconds",
    "gauge",
    "When each of this node's certificates expires, since the epoch.",
)
RENEWALS: Final = Metric(
    "hepto_pki_renewals_total", "counter", "Certificate renewals done by the PKI worker."
)
BATCHES: Final = Metric(
    "hepto_pki_worker_batches_total", "counter", "Batches the PKI worker answered."
)
WORKER_FAILURES: Final = Metric(
    "hepto_pki_worker_failures_total", "counter", "PKI batches that failed (and were retried)."
)
PKI_DROPS: Final = Metric(
    "hepto_pki_drops_total", "counter", "PKI input refused or work failed, by kind."
)
# Supervised components
COMPONENT_STATE: Final = Metric(
    "hepto_component_state",
    "gauge",
    "1 for the state each supervised component is in, 0 for the others.",
)
COMPONENT_READY: Final = Metric(
    "hepto_component_ready", "gauge", "1 while a supervised component passes its probe."
)
COMPONENT_RESTARTS: Final = Metric(
    "hepto_component_restarts_total", "counter", "Restarts of a supervised component."
)
# A master's backups
BACKUP_LAST: Final = Metric(
    "hepto_backup_last_success_timestamp_seconds",
    "gauge",
    "When the master's newest backup was taken, since the epoch (0: none yet).",
)
BACKUP_SIZE: Final = Metric(
    "hepto_backup_last_size_bytes", "gauge", "Size of the master's newest backup file."
)
BACKUP_FAILURES: Final = Metric(
    "hepto_backup_failures_total", "counter", "Backups that failed (and were retried)."
)
METRICS: Final = tuple(value for value in list(globals().values()) if isinstance(value, Metric))


def status_families(status: Status) -> list[Family]:
    """Every family of the agent but the process's, from one status document.

    A section the status could not make, or whose families cannot be made from it, is
    left out (and logged): the others are still served.
    """
    families: list[Family] = []
    for section, make in _SECTIONS:
        part = status if section is None else status.get(section)
        if not isinstance(part, Mapping) or set(part) == {"error"}:
            continue
        try:
            made = list(make(part))  # all of a section, or nothing of it
        except (KeyError, TypeError, ValueError):
            _log.failure("No metrics from the {section} status", section=section or "gossip")
        else:
            families.extend(made)
    return families


def _gossip(status: Status) -> Iterator[Family]:
    role = next((m["role"] for m in status["members"] if m["name"] == status["name"]), None)
    yield INFO([({"cluster": status["cluster"], "name": status["name"], "role": role or ""}, 1)])
    states = dict.fromkeys(STATUSES, 0)
    for member in status["members"]:
        states[member["state"]] = states.get(member["state"], 0) + 1
    yield MEMBERS([({"state": state}, count) for state, count in states.items()])
    swim = status["swim"]
    entered = swim["entered"]
    yield ENTERED([({"state": state}, entered.get(state, 0)) for state in STATUSES])
    yield SUSPICIONS(entered.get("suspect", 0))
    yield DEATHS(entered.get("dead", 0))
    yield REFUTATIONS(swim["refutations"])
    yield INCARNATION(status["incarnation"])
    yield HEALTH(status["health"])
    yield JOINED(1 if status["joined"] else 0)
    traffic = status["traffic"]
    yield DATAGRAMS(
        [
            ({"direction": "in"}, traffic["datagrams_received"]),
            ({"direction": "out"}, traffic["datagrams_sent"]),
        ]
    )
    yield BYTES(
        [
            ({"direction": "in"}, traffic["bytes_received"]),
            ({"direction": "out"}, traffic["bytes_sent"]),
        ]
    )
    yield DROPS(_by("reason", status["drops"]))
    yield RECORD_VERSION(status["version"])
    yield RECORDS(sum(1 for member in status["members"] if member["version"] is not None))
    yield FETCHES(_by("result", {"ok": 0, "missing": 0, "failed": 0, **status["fetches"]}))
    kinds: dict[str, int] = {"identity": 0, "mesh-address": 0}
    for conflict in status["conflicts"]:
        kinds[conflict["kind"]] = kinds.get(conflict["kind"], 0) + 1
    yield CONFLICTS(_by("kind", kinds))


def _mesh(status: Status) -> Iterator[Family]:
    yield MESH_RUNNING(1 if status["phase"] == "running" else 0)
    peers = status["peers"] or []
    yield PEERS(len(peers))
    handshakes, transferred = [], []
    for peer in peers:
        labels = {"peer": peer["name"] or peer["public_key"]}
        handshakes.append((labels, _epoch(peer["last_handshake"])))
        transferred.append(({**labels, "direction": "in"}, peer["rx_bytes"]))
        transferred.append(({**labels, "direction": "out"}, peer["tx_bytes"]))
    yield HANDSHAKE(handshakes)
    yield PEER_BYTES(transferred)
    yield PASSES(status["passes"])
    yield PASS_FAILURES(status["pass_failures"])
    yield MESH_DROPS(_by("kind", status["drops"]))


def _pki(status: Status) -> Iterator[Family]:
    yield EXPIRY(
        [
            ({"certificate": name}, _epoch(entry["not_after"]))
            for name, entry in sorted(status["certificates"].items())
            if entry.get("not_after")
        ]
    )
    yield RENEWALS(status["renewals"])
    yield BATCHES(status["worker"]["batches"])
    yield WORKER_FAILURES(status["worker"]["failures"])
    yield PKI_DROPS(_by("kind", status["dropped"]))


def _kube(status: Status) -> Iterator[Family]:
    components = status["components"]
    yield COMPONENT_STATE(
        [
            (
                {"component": component["name"], "state": state.value},
                component["state"] == state.value,
            )
            for component in components
            for state in State
        ]
    )
    yield COMPONENT_READY(
        [({"component": component["name"]}, bool(component["ready"])) for component in components]
    )
    yield COMPONENT_RESTARTS(
        [({"component": component["name"]}, component["restarts"]) for component in components]
    )


def _backup(status: Status) -> Iterator[Family]:
    last = status["last"] or {}
    yield BACKUP_LAST(_epoch(last.get("created")))
    yield BACKUP_SIZE(last.get("size") or 0)
    yield BACKUP_FAILURES(status["failures"])


def _by(label: str, counts: Mapping[str, int]) -> list[tuple[dict[str, str], float]]:
    return [({label: key}, value) for key, value in sorted(counts.items())]


@functools.lru_cache(maxsize=1024)
def _epoch(text: str | None) -> float:
    """Seconds since the epoch of an ISO 8601 time; cached, since the same handshake
    times and expiry dates come back at every scrape."""
    if not text:
        return 0
    moment = datetime.datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.timestamp()


_SECTIONS: Final[tuple[tuple[str | None, Callable[[Status], Iterator[Family]]], ...]] = (
    (None, _gossip),
    ("mesh", _mesh),
    ("pki", _pki),
    ("kube", _kube),
    ("backup", _backup),
)
