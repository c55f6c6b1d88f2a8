"""A lean apiserver client for the agent: JSON over one :func:`hepto.https.exchange`.

The agent makes a handful of calls (its Node, at start), each authenticated by a client
certificate from its PKI and checked against the cluster CA.  A Kubernetes client
library would cost every agent 20 to 40 MB resident; this module costs nothing the agent
has not loaded already (:mod:`ssl`, :mod:`http.client`, :mod:`json`).

Errors are exceptions that say what failed: :class:`APIError` for an error status, with
the apiserver's own ``Status`` message; :class:`BadResponse` for an answer that is not
the JSON object it should be.  A server that cannot be reached fails with the exchange's
own error (an :class:`OSError`, :class:`ssl.SSLError` or :mod:`http.client` error).
"""

from __future__ import annotations

import http
import json
from collections.abc import Mapping
from typing import Any, Final

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorThreads

from hepto import plan
from hepto.https import ClientTLS, Origin, Request, Response, exchange
from hepto.pki.kubeconfig import APISERVER_PORT
from hepto.pki.paths import Paths
from hepto.pki.specs import KUBELET_CLIENT

JSON = dict[str, Any]

#: The largest answer read: a Node, with its images and conditions, is tens of KB.
RESPONSE_LIMIT: Final = 1024 * 1024
#: Each blocking step of a request (connect, handshake, each read); the apiserver's own
#: request timeout is 60 s, but it answers the agent's small requests in milliseconds.
TIMEOUT: Final = 10.0

JSON_TYPE: Final = "application/json"
MERGE_PATCH_TYPE: Final = "application/merge-patch+json"


@attrs.define(auto_exc=True)
class APIError(Exception):
    """The apiserver answered ``method path`` with an error status.

    ``reason`` and ``message`` are those of its ``Status`` object (``Forbidden``, and
    why), or the HTTP reason phrase and an excerpt of the body when it sent none.
    """

    method: str
    path: str
    status: int
    reason: str
    message: str

    def __str__(self) -> str:
        return f"{self.method} {self.path}: HTTP {self.status} {self.reason}: {self.message}"

    @property
    def transient(self) -> bool:
        """Whether the same request may succeed later: the server's trouble, or its load."""
        return self.status >= 500 or self.status == http.HTTPStatus.TOO_MANY_REQUESTS


@attrs.define(auto_exc=True)
class BadResponse(Exception):
    """A success status with a body that is not one whole JSON object."""

    method: str
    path: str
    problem: str

    def __str__(self) -> str:
        return f"{self.method} {self.path}: {self.problem}"


def _excerpt(body: bytes) -> str:
    return body[:200].decode("utf-8", errors="replace").strip()


def _error(method: str, path: str, response: Response) -> APIError:
    try:
        phrase = http.HTTPStatus(response.status).phrase
    except ValueError:
        phrase = "(unknown status)"
    reason, message = phrase, _excerpt(response.body)
    try:
        status = json.loads(response.body)
    except ValueError:
        status = None
    if isinstance(status, dict) and status.get("kind") == "Status":
        reason = str(status.get("reason") or phrase)
        message = str(status.get("message") or message)
    return APIError(method, path, response.status, reason, message)


def decode(method: str, path: str, response: Response) -> JSON:
    """The JSON object of a success, or the error that the response says."""
    if not 200 <= response.status < 300:
        raise _error(method, path, response)
    if response.truncated:
        raise BadResponse(method, path, f"answer longer than {len(response.body)} bytes")
    try:
        document = json.loads(response.body)
    except ValueError as error:
        raise BadResponse(method, path, f"answer is not JSON ({error})") from None
    if not isinstance(document, dict):
        raise BadResponse(method, path, f"answer is a JSON {type(document).__name__}")
    return document


@attrs.frozen
class APIClient:
    """Requests to one apiserver, each on a connection of its own, in the thread pool.

    Certificate files are read at every request: a renewed certificate is used as soon
    as the PKI installs it.
    """

    reactor: IReactorThreads
    origin: Origin
    timeout: float = TIMEOUT
    limit: int = RESPONSE_LIMIT

    @classmethod
    def for_node(
        cls, reactor: IReactorThreads, cluster: str, paths: Paths, certificate: str = KUBELET_CLIENT
    ) -> APIClient:
        """The cluster's apiserver, as the holder of ``certificate`` in the node's PKI.

        By default the kubelet's client certificate: the node's own identity,
        ``system:node:<name>`` in ``system:nodes``.  The server must show a certificate
        of the cluster CA for the apiserver address.
        """
        tls = ClientTLS(paths.trusted_ca, paths.certificate(certificate), paths.key(certificate))
        address = str(plan.apiserver_address(cluster))
        return cls(reactor, Origin("https", address, APISERVER_PORT, tls))

    def get(self, path: str) -> Deferred[JSON]:
        return self.request("GET", path)

    def create(self, path: str, body: Mapping[str, Any]) -> Deferred[JSON]:
        """``POST`` the object ``body`` to the collection at ``path``."""
        return self.request("POST", path, body)

    def merge_patch(self, path: str, patch: Mapping[str, Any]) -> Deferred[JSON]:
        """A JSON merge patch (RFC 7386): maps merge, lists are replaced whole."""
        return self.request("PATCH", path, patch, MERGE_PATCH_TYPE)

    def request(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None = None,
        content_type: str = JSON_TYPE,
    ) -> Deferred[JSON]:
        headers = {"Accept": JSON_TYPE}
        payload = None
        if body is not None:
            payload = json.dumps(body, separators=(",", ":")).encode("utf-8")
            headers["Content-Type"] = content_type
        answered = exchange(
            self.reactor,
            self.origin,
            Request(method, path, payload, headers),
            limit=self.limit,
            timeout=self.timeout,
        )
        return answered.addCallback(lambda response: decode(method, path, response))
