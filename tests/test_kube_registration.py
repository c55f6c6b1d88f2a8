"""hepto.kube.registration on fakes: the desired Node, its patches, and register_node's
attempts, retries and cancellation against an in-memory apiserver on a task.Clock.

The real apiserver is in tests/test_kube_registration_apiserver.py.
"""

from __future__ import annotations

import copy
import ipaddress
from collections.abc import Callable, Mapping
from typing import Any

import attrs
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from hepto.goarch import go_architecture
from hepto.kube.api import JSON, APIError, BadResponse
from hepto.kube.registration import (
    RETRY,
    DesiredNode,
    NodeAddress,
    Patch,
    Raced,
    RegistrationFailed,
    desired_node,
    patches,
    register_node,
)
from test_supervisor_fakes import LogCapture

MESH = ipaddress.IPv6Address("fd12:3456:789a:100::1")
PUBLIC = ipaddress.IPv6Address("2001:db8::1")
MOVED = ipaddress.IPv6Address("2001:db8::2")


def node(public: ipaddress.IPv6Address | None = PUBLIC, role: str = "node") -> DesiredNode:
    return desired_node("n1", role, MESH, public, machine="x86_64")


def merge(target: Any, patch: Any) -> Any:
    """RFC 7386, as the apiserver applies ``application/merge-patch+json``."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge(result.get(key), value)
    return result


def status(code: int, reason: str) -> APIError:
    return APIError("", "", code, reason, f"said the apiserver ({code})")


Hook = Callable[[str, str], "Deferred[JSON] | None"]


@attrs.define
class FakeAPI:
    """Nodes in a dict, with the apiserver's answers; ``hook`` may answer a call first."""

    nodes: dict[str, JSON] = attrs.field(factory=dict)
    calls: list[tuple[str, str]] = attrs.field(factory=list)
    hook: Hook | None = None

    def _call(self, method: str, path: str, handle: Callable[[], JSON]) -> Deferred[JSON]:
        self.calls.append((method, path))
        if self.hook is not None:
            answered = self.hook(method, path)
            if answered is not None:
                return answered
        try:
            return succeed(handle())
        except APIError as error:
            return fail(attrs.evolve(error, method=method.split("/")[0], path=path))

    def _name(self, path: str) -> str:
        return path.split("/")[4]

    def get(self, path: str) -> Deferred[JSON]:
        def handle() -> JSON:
            found = self.nodes.get(self._name(path))
            if found is None:
                raise status(404, "NotFound")
            return copy.deepcopy(found)

        return self._call("GET", path, handle)

    def create(self, path: str, body: Mapping[str, Any]) -> Deferred[JSON]:
        def handle() -> JSON:
            name = body["metadata"]["name"]
            if name in self.nodes:
                raise status(409, "AlreadyExists")
            self.nodes[name] = copy.deepcopy(dict(body))
            return copy.deepcopy(self.nodes[name])

        return self._call("POST", path, handle)

    def merge_patch(self, path: str, patch: Mapping[str, Any]) -> Deferred[JSON]:
        def handle() -> JSON:
            name = self._name(path)
            if name not in self.nodes:
                raise status(404, "NotFound")
            self.nodes[name] = merge(self.nodes[name], patch)
            return copy.deepcopy(self.nodes[name])

        suffix = "/status" if path.endswith("/status") else ""
        return self._call("PATCH" + suffix, path, handle)

    def failing(self, *errors: Exception) -> None:
        """The next calls fail with these, one each, before reaching the nodes."""
        queue = list(errors)

        def hook(method: str, path: str) -> Deferred[JSON] | None:
            if not queue:
                return None
            error = queue.pop(0)
            if isinstance(error, APIError):
                error = attrs.evolve(error, method=method.split("/")[0], path=path)
            return fail(error)

        self.hook = hook


class DesiredNodeTests(SynchronousTestCase):
    def test_labels_and_addresses(self) -> None:
        wanted = node()
        self.assertEqual(wanted.name, "n1")
        self.assertEqual(
            dict(wanted.labels),
            {
                "hepto/role": "node",
                "kubernetes.io/hostname": "n1",
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
            },
        )
        self.assertEqual(
            wanted.addresses,
            (
                NodeAddress("InternalIP", "fd12:3456:789a:100::1"),
                NodeAddress("ExternalIP", "2001:db8::1"),
                NodeAddress("Hostname", "n1"),
            ),
        )

    def test_no_public_address_no_external_ip(self) -> None:
        self.assertEqual(
            [address.type for address in node(public=None).addresses], ["InternalIP", "Hostname"]
        )

    def test_manifest(self) -> None:
        self.assertEqual(
            node(role="full").manifest(),
            {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {
                    "name": "n1",
                    "labels": {
                        "hepto/role": "full",
                        "kubernetes.io/arch": "amd64",
                        "kubernetes.io/hostname": "n1",
                        "kubernetes.io/os": "linux",
                    },
                },
                "status": {
                    "addresses": [
                        {"type": "InternalIP", "address": "fd12:3456:789a:100::1"},
                        {"type": "ExternalIP", "address": "2001:db8::1"},
                        {"type": "Hostname", "address": "n1"},
                    ]
                },
            },
        )
        self.assertEqual(node().path, "/api/v1/nodes/n1")

    def test_architectures(self) -> None:
        self.assertEqual(go_architecture("x86_64"), "amd64")
        self.assertEqual(go_architecture("aarch64"), "arm64")
        self.assertEqual(go_architecture("ARM64"), "arm64")
        self.assertEqual(go_architecture("riscv64"), "riscv64")
        self.assertEqual(go_architecture("armv7l"), "arm")
        self.assertIn(go_architecture(), ("amd64", "arm64"))


class PatchesTests(SynchronousTestCase):
    def existing(self, wanted: DesiredNode) -> JSON:
        """The Node as the apiserver has it once the kubelet has been there too."""
        created = wanted.manifest()
        created["metadata"]["labels"]["beta.kubernetes.io/os"] = "linux"
        created["metadata"]["resourceVersion"] = "42"
        created["spec"] = {"podCIDR": "fd00::/64"}
        created["status"]["conditions"] = [{"type": "Ready", "status": "True"}]
        return created

    def test_none_when_it_matches(self) -> None:
        wanted = node()
        self.assertEqual(patches(self.existing(wanted), wanted), [])

    def test_a_changed_label_alone(self) -> None:
        existing = self.existing(node())
        self.assertEqual(
            patches(existing, node(role="full")),
            [Patch("labels", "", {"metadata": {"labels": {"hepto/role": "full"}}})],
        )
        del existing["metadata"]["labels"]
        [patch] = patches(existing, node())
        self.assertEqual(patch.body["metadata"]["labels"], dict(node().labels))

    def test_addresses_as_a_whole_on_the_status(self) -> None:
        moved = node(public=MOVED)
        [patch] = patches(self.existing(node()), moved)
        self.assertEqual(patch.what, "addresses")
        self.assertEqual(patch.path(moved), "/api/v1/nodes/n1/status")
        self.assertEqual(
            patch.body,
            {"status": {"addresses": [address.as_json() for address in moved.addresses]}},
        )

    def test_addresses_in_another_order_or_missing(self) -> None:
        wanted = node()
        existing = self.existing(wanted)
        existing["status"]["addresses"].reverse()
        self.assertEqual([p.what for p in patches(existing, wanted)], ["addresses"])
        del existing["status"]
        self.assertEqual([p.what for p in patches(existing, wanted)], ["addresses"])
        # As a kubelet of its own would have registered it: mesh address and hostname.
        existing["status"] = {"addresses": [a.as_json() for a in node(public=None).addresses]}
        self.assertEqual([p.what for p in patches(existing, wanted)], ["addresses"])

    def test_both(self) -> None:
        found = patches(self.existing(node()), node(public=None, role="full"))
        self.assertEqual(
            [(p.what, p.subresource) for p in found], [("labels", ""), ("addresses", "status")]
        )


class RegisterTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.api = FakeAPI()
        self.clock = Clock()
        self.log = LogCapture.install(self)

    def register(self, wanted: DesiredNode | None = None) -> Deferred[None]:
        return register_node(self.api, wanted or node(), clock=self.clock)

    def warnings(self) -> list[str]:
        return [text for text in self.log.texts() if "not registered yet" in text]

    def test_creates_an_absent_node(self) -> None:
        self.successResultOf(self.register())
        self.assertEqual(self.api.calls, [("GET", "/api/v1/nodes/n1"), ("POST", "/api/v1/nodes")])
        self.assertEqual(self.api.nodes["n1"], node().manifest())
        self.assertIn(
            "Node n1 registered (created): InternalIP fd12:3456:789a:100::1, "
            "ExternalIP 2001:db8::1, Hostname n1",
            self.log.texts(),
        )

    def test_again_changes_nothing(self) -> None:
        self.successResultOf(self.register())
        del self.api.calls[:]
        self.successResultOf(self.register())
        self.assertEqual(self.api.calls, [("GET", "/api/v1/nodes/n1")])
        self.assertEqual(self.log.matching(done="unchanged")[0]["node"], "n1")

    def test_a_new_public_address_is_patched(self) -> None:
        self.successResultOf(self.register())
        del self.api.calls[:]
        self.successResultOf(self.register(node(public=MOVED)))
        self.assertEqual(
            self.api.calls,
            [("GET", "/api/v1/nodes/n1"), ("PATCH/status", "/api/v1/nodes/n1/status")],
        )
        self.assertEqual(self.api.nodes["n1"]["status"]["addresses"][1]["address"], "2001:db8::2")
        self.assertEqual(self.log.matching(done="addresses updated")[0]["node"], "n1")

    def test_labels_then_addresses(self) -> None:
        self.successResultOf(self.register())
        del self.api.calls[:]
        self.successResultOf(self.register(node(public=None, role="full")))
        self.assertEqual([method for method, _ in self.api.calls], ["GET", "PATCH", "PATCH/status"])
        self.assertEqual(self.api.nodes["n1"]["metadata"]["labels"]["hepto/role"], "full")
        self.assertEqual(len(self.api.nodes["n1"]["status"]["addresses"]), 2)

    def test_created_meanwhile_is_read_again_and_patched(self) -> None:
        kubelets = {"metadata": {"name": "n1", "labels": {"kubernetes.io/hostname": "n1"}}}

        def kubelet_first(method: str, path: str) -> Deferred[JSON] | None:
            if method == "POST":
                self.api.nodes["n1"] = copy.deepcopy(kubelets)
            return None

        self.api.hook = kubelet_first
        self.successResultOf(self.register())
        self.assertEqual(
            [method for method, _ in self.api.calls],
            ["GET", "POST", "GET", "PATCH", "PATCH/status"],
        )
        self.assertEqual(patches(self.api.nodes["n1"], node()), [])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_deleted_meanwhile_is_created_again(self) -> None:
        self.api.nodes["n1"] = {"metadata": {"name": "n1"}}

        def deleted_first(method: str, path: str) -> Deferred[JSON] | None:
            if method.startswith("PATCH"):
                self.api.nodes.pop("n1", None)
            return None

        self.api.hook = deleted_first
        self.successResultOf(self.register())
        self.assertEqual([method for method, _ in self.api.calls], ["GET", "PATCH", "GET", "POST"])

    def test_endless_races_back_off(self) -> None:
        def always_there(method: str, path: str) -> Deferred[JSON] | None:
            if method == "GET":
                return fail(status(404, "NotFound"))
            if method == "POST":
                return fail(status(409, "AlreadyExists"))
            return None

        self.api.hook = always_there
        registering = self.register()
        self.assertEqual(len(self.api.calls), 6)
        self.assertNoResult(registering)
        [warning] = self.warnings()
        self.assertIn("(Raced: the Node changed under 3 attempts in a row)", warning)
        self.api.hook = None
        self.clock.advance(RETRY.initial)
        self.successResultOf(registering)

    def test_retries_with_backoff_while_the_apiserver_is_away(self) -> None:
        refused = ConnectionRefusedError(111, "Connection refused")
        self.api.failing(refused, refused, refused, status(503, "ServiceUnavailable"))
        registering = self.register()
        waits = []
        while not registering.called:
            [call] = self.clock.getDelayedCalls()
            waits.append(call.getTime() - self.clock.seconds())
            self.clock.advance(waits[-1])
        self.successResultOf(registering)
        self.assertEqual(waits, [1.0, 2.0, 4.0, 8.0])
        self.assertEqual([method for method, _ in self.api.calls], ["GET"] * 5 + ["POST"])
        # Once per reason: three refusals make one warning, the 503 another.
        warnings = self.warnings()
        self.assertEqual(len(warnings), 2, warnings)
        self.assertIn(
            "Node n1 not registered yet (ConnectionRefusedError 111: [Errno 111] Connection "
            "refused); trying again in 1.0 s, then backing off to 30.0 s",
            warnings[0],
        )
        self.assertIn("(HTTP 503 ServiceUnavailable: ", warnings[1])
        [done] = self.log.matching(done="created")
        self.assertEqual(done["attempts"], 5)

    def test_backoff_reaches_its_maximum(self) -> None:
        self.api.failing(*[TimeoutError("timed out")] * 10)
        self.register()
        delays = []
        for _ in range(10):
            [call] = self.clock.getDelayedCalls()
            delays.append(call.getTime() - self.clock.seconds())
            self.clock.advance(delays[-1])
        self.assertEqual(delays[-4:], [30.0] * 4)
        self.assertEqual(len(self.warnings()), 1)

    def test_too_many_requests_is_retried(self) -> None:
        self.api.failing(status(429, "TooManyRequests"))
        registering = self.register()
        self.assertNoResult(registering)
        self.clock.advance(RETRY.initial)
        self.successResultOf(registering)

    def test_a_refusal_gives_up_at_once(self) -> None:
        forbidden = status(403, "Forbidden")
        self.api.failing(forbidden)
        failure = self.failureResultOf(self.register(), RegistrationFailed)
        self.assertEqual(failure.value.node, "n1")
        self.assertEqual(
            str(failure.value),
            "node n1 cannot be registered: GET /api/v1/nodes/n1: HTTP 403 Forbidden: "
            "said the apiserver (403)",
        )
        self.assertEqual(len(self.api.calls), 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.warnings(), [])

    def test_a_refused_creation_gives_up(self) -> None:
        def refuse(method: str, path: str) -> Deferred[JSON] | None:
            return fail(status(422, "Invalid")) if method == "POST" else None

        self.api.hook = refuse
        failure = self.failureResultOf(self.register(), RegistrationFailed)
        self.assertEqual(failure.value.error.status, 422)

    def test_a_malformed_answer_is_not_retried(self) -> None:
        self.api.failing(BadResponse("GET", "/api/v1/nodes/n1", "answer is a JSON list"))
        self.failureResultOf(self.register(), BadResponse)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_cancelled_between_attempts(self) -> None:
        self.api.failing(ConnectionRefusedError(111, "Connection refused"))
        registering = self.register()
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        registering.cancel()
        self.failureResultOf(registering, CancelledError)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(len(self.api.calls), 1)

    def test_cancelled_in_a_request(self) -> None:
        cancelled: list[Deferred[JSON]] = []
        self.api.hook = lambda method, path: Deferred(canceller=cancelled.append)
        registering = self.register()
        registering.cancel()
        self.failureResultOf(registering, CancelledError)
        self.assertEqual(len(cancelled), 1, "the request itself was not cancelled")
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.warnings(), [])

    def test_raced_is_transient(self) -> None:
        self.api.failing(Raced("again"))
        registering = self.register()
        self.assertNoResult(registering)
        self.clock.advance(RETRY.initial)
        self.successResultOf(registering)
