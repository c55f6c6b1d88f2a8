"""An SSH manhole into the running node, for operators only.

It is arbitrary code execution as root: it listens only on a unix socket (mode 0600)
or a loopback port, admits only the keys of an authorized_keys file, and is imported
only when ``--manhole`` is given, so that conch costs nothing otherwise.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from twisted.application.internet import StreamServerEndpointService
from twisted.conch import manhole, manhole_ssh
from twisted.conch.checkers import IAuthorizedKeysDB, SSHPublicKeyChecker, readAuthorizedKeyFile
from twisted.conch.insults import insults
from twisted.conch.ssh import keys
from twisted.cred import portal
from twisted.internet import endpoints
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.logger import Logger
from zope.interface import implementer

from hepto.config import ManholeConfig

log = Logger()


@implementer(IAuthorizedKeysDB)
@attrs.frozen
class AuthorizedKeysFile:
    """Keys read anew at every login, so an operator edits the file without a restart."""

    path: Path

    def getAuthorizedKeys(self, username: bytes) -> list[keys.Key]:
        try:
            with self.path.open("rb") as lines:
                return list(readAuthorizedKeyFile(lines))
        except FileNotFoundError:
            log.warn("Manhole login refused: no authorized keys at {path}", path=str(self.path))
            return []


def host_key(path: Path) -> keys.Key:
    """The manhole's own SSH host key, made once and kept (0600) so clients can pin it."""
    if not path.exists():
        pem = ed25519.Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
        path.touch(mode=0o600)
        path.write_bytes(pem)
    return keys.Key.fromFile(str(path))


def manhole_factory(
    namespace: Callable[[], dict[str, Any]], authorized: Path, key: keys.Key
) -> manhole_ssh.ConchFactory:
    realm = manhole_ssh.TerminalRealm()

    def chained_protocol() -> insults.ServerProtocol:
        return insults.ServerProtocol(manhole.ColoredManhole, namespace())

    # Annotated as a class in Twisted, but only ever called: any factory will do.
    realm.chainedProtocolFactory = chained_protocol  # type: ignore[assignment]
    checker = SSHPublicKeyChecker(AuthorizedKeysFile(authorized))
    factory = manhole_ssh.ConchFactory(portal.Portal(realm, [checker]))  # type: ignore[arg-type]
    # Instance attributes: the class-level dicts are shared by every ConchFactory.
    factory.publicKeys = {key.sshType(): key.public()}
    factory.privateKeys = {key.sshType(): key}  # type: ignore[dict-item]
    return factory


def manhole_endpoint(reactor: Any, config: ManholeConfig) -> IStreamServerEndpoint:
    if config.socket is not None:
        return endpoints.UNIXServerEndpoint(reactor, str(config.socket), mode=0o600, wantPID=True)
    assert config.endpoint is not None
    return endpoints.TCP6ServerEndpoint(
        reactor, config.endpoint.port, interface=str(config.endpoint.host)
    )


def manhole_service(
    reactor: Any, config: ManholeConfig, node_dir: Path, namespace: Callable[[], dict[str, Any]]
) -> StreamServerEndpointService:
    factory = manhole_factory(
        namespace, config.authorized_keys, host_key(node_dir / "manhole_host_key")
    )
    service = StreamServerEndpointService(manhole_endpoint(reactor, config), factory)
    service.setName("manhole")
    return service
