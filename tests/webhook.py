"""A validating admission webhook for the cluster network's test: image, certificate,
and the objects that register it.

The webhook (``tests/webhook/main.go``) is built here with the Go toolchain that builds
the bundle, into an image of one file; the cluster pulls nothing.
"""

from __future__ import annotations

import base64
import datetime
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any, Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from hepto.images.layout import Directory, Entry, File, ImageConfig, Recipe, Written, write_archive

WEBHOOK_IMAGE: Final = "localhost/hepto/webhook:1"
SOURCE: Final = Path(__file__).parent / "webhook"
#: The label that puts an object under the webhook: nothing else in the cluster is.
SELECTOR_LABEL: Final = "hepto-test/webhook"


def go() -> str | None:
    found = shutil.which("go")
    if found is None and Path("/usr/local/go/bin/go").exists():
        found = "/usr/local/go/bin/go"
    return found


def build(destination: Path) -> Path:
    """The webhook, a static binary, at ``destination``."""
    toolchain = go()
    if toolchain is None:
        raise RuntimeError("no Go toolchain: the webhook cannot be built")
    env = {**os.environ, "CGO_ENABLED": "0", "GOFLAGS": "", "GOWORK": "off"}
    subprocess.run(
        [toolchain, "build", "-trimpath", "-ldflags=-s -w", "-o", str(destination), "."],
        cwd=SOURCE,
        env=env,
        check=True,
        capture_output=True,
        timeout=600,
    )
    return destination


def write_webhook_archive(binary: Path, destination: Path) -> Written:
    entries: list[Entry] = [
        File.copy("/webhook", binary, 0o755),
        Directory("/tls"),
        Directory("/tmp", 0o1777),
    ]
    recipe = Recipe(WEBHOOK_IMAGE, entries, ImageConfig(cmd=("/webhook",)))
    return write_archive(recipe, destination)


def _pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def certificates(dns_name: str) -> tuple[bytes, bytes, bytes]:
    """A CA, and a serving certificate and key for ``dns_name`` that it signed (PEM)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "webhook test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    serving = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns_name)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(dns_name)]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return _pem(ca), _pem(serving), key_pem


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def manifests(node: str, ca: bytes, certificate: bytes, key: bytes) -> list[dict[str, Any]]:
    """The webhook's Secret, its pod on ``node``, its Service and its registration."""
    labels = {"app": "webhook"}
    return [
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "webhook-tls"},
            "type": "kubernetes.io/tls",
            "data": {"tls.crt": _b64(certificate), "tls.key": _b64(key)},
        },
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "webhook", "labels": labels},
            "spec": {
                "nodeName": node,
                "terminationGracePeriodSeconds": 1,
                "containers": [
                    {
                        "name": "webhook",
                        "image": WEBHOOK_IMAGE,
                        "ports": [{"containerPort": 8443}],
                        "readinessProbe": {
                            "tcpSocket": {"port": 8443},
                            "periodSeconds": 1,
                        },
                        "volumeMounts": [{"name": "tls", "mountPath": "/tls"}],
                    }
                ],
                "volumes": [{"name": "tls", "secret": {"secretName": "webhook-tls"}}],
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "webhook"},
            "spec": {"selector": labels, "ports": [{"port": 443, "targetPort": 8443}]},
        },
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingWebhookConfiguration",
            "metadata": {"name": "hepto-test"},
            "webhooks": [
                {
                    "name": "refuses.hepto.test",
                    "admissionReviewVersions": ["v1"],
                    "sideEffects": "None",
                    "failurePolicy": "Fail",
                    "timeoutSeconds": 10,
                    "objectSelector": {"matchLabels": {SELECTOR_LABEL: "yes"}},
                    "rules": [
                        {
                            "apiGroups": [""],
                            "apiVersions": ["v1"],
                            "operations": ["CREATE"],
                            "resources": ["configmaps"],
                        }
                    ],
                    "clientConfig": {
                        "caBundle": _b64(ca),
                        "service": {
                            "namespace": "default",
                            "name": "webhook",
                            "path": "/validate",
                            "port": 443,
                        },
                    },
                }
            ],
        },
    ]
