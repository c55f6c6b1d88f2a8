"""Importing archives into containerd from the agent, on the reactor.

:func:`import_archive` runs the two ctr commands of :mod:`hepto.images.ctr` as child
processes and fires with the images the archive named.  It does not look inside the
archive first: reading gigabytes would stall the reactor, and ctr's verdict is the one
that counts.  :func:`import_folder` imports a node's folder of archives at start, one
after the other; an archive ctr refuses is logged as an error and the others go on.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Final

from twisted.internet import error
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorProcess
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from hepto.images import ctr as commands
from hepto.images.ctr import KUBERNETES_NAMESPACE, CtrError, Image
from hepto.images.layout import Platform, host_platform

#: The folder of a node's directory whose archives are imported at start.
FOLDER_NAME: Final = "images"
#: The endings of the files the folder's import takes: tars, gzip-compressed or not.
#: ``.oci`` is an OCI archive by another name (as some tools call it); what is inside
#: decides the format, not the name.
ARCHIVE_SUFFIXES: Final = (".tar", ".tar.gz", ".tgz", ".oci")

log = Logger(namespace="hepto.images")


class _Collect(ProcessProtocol):
    """A child's output and its exit: ``ended`` fires with (stdout, stderr, status).

    ``status`` is the exit status, or minus the signal that killed it.  Cancelling
    ``ended`` kills the child.
    """

    def __init__(self) -> None:
        self._out: list[bytes] = []
        self._err: list[bytes] = []
        self.ended: Deferred[tuple[bytes, bytes, int]] = Deferred(self._kill)

    def outReceived(self, data: bytes) -> None:
        self._out.append(data)

    def errReceived(self, data: bytes) -> None:
        self._err.append(data)

    def processEnded(self, reason: Failure) -> None:
        if self.ended.called:  # cancelled
            return
        value = reason.value
        code = getattr(value, "exitCode", None)
        status = code if code is not None else -(getattr(value, "signal", None) or 0)
        self.ended.callback((b"".join(self._out), b"".join(self._err), status))

    def _kill(self, _: Deferred[tuple[bytes, bytes, int]]) -> None:
        if self.transport is not None:
            try:
                self.transport.signalProcess("KILL")
            except error.ProcessExitedAlready:
                pass


def run(reactor: IReactorProcess, argv: Sequence[str]) -> Deferred[tuple[bytes, bytes, int]]:
    """Run ``argv``; fires with (stdout, stderr, status).

    The environment is empty: ctr takes defaults from ``CONTAINERD_SNAPSHOTTER`` and the
    like, and the agent's own must not decide where images are unpacked.
    """
    child = _Collect()
    try:
        reactor.spawnProcess(child, argv[0], list(argv), env={})
    except OSError as failure:
        child.ended.errback(CtrError(f"cannot run {argv[0]}: {failure.strerror or failure}"))
    return child.ended


async def _import(
    reactor: IReactorProcess, ctr: Path, socket: Path, archive: Path, namespace: str
) -> list[Image]:
    token = commands.new_token()
    _, stderr, status = await run(
        reactor, commands.import_command(ctr, socket, archive, token, namespace)
    )
    if status != 0:
        raise commands.import_failed(status, stderr)
    stdout, stderr, status = await run(
        reactor, commands.list_command(ctr, socket, token, namespace)
    )
    if status != 0:
        raise commands.list_failed(status, stderr)
    try:
        images = commands.parse_listing(stdout.decode("utf-8", "replace"))
    except ValueError as problem:
        raise CtrError(f"cannot read ctr's list of images: {problem}") from None
    if not images:
        raise commands.named_nothing()
    return images


def import_archive(
    reactor: IReactorProcess,
    ctr: Path,
    socket: Path,
    archive: Path,
    namespace: str = KUBERNETES_NAMESPACE,
) -> Deferred[list[Image]]:
    """Import ``archive`` into the containerd listening on ``socket``, through ``ctr``.

    Fires with the images it named (names, digests, platforms), or fails with
    :class:`~hepto.images.ctr.CtrError` carrying ctr's own reason.  Cancelling it kills
    ctr.
    """
    return Deferred.fromCoroutine(_import(reactor, ctr, socket, archive, namespace))


def archives_in(folder: Path) -> list[Path]:
    """The archives of ``folder`` the import takes, by name; none if it does not exist.

    Hidden files are left alone: copy an archive in under a hidden name, then rename it,
    so that a start never imports half a copy.
    """
    try:
        candidates = sorted(folder.iterdir())
    except FileNotFoundError:
        return []
    return [
        path
        for path in candidates
        if not path.name.startswith(".")
        and path.name.endswith(ARCHIVE_SUFFIXES)
        and path.is_file()  # an OCI layout may be a directory named x.oci: not an archive
    ]


def runs_here(image: Image, platform: Platform) -> bool:
    """Whether ``image`` offers a platform ``platform`` runs (unknown: benefit of doubt)."""
    for offered in image.platforms:
        os, _, rest = offered.partition("/")
        if platform.runs(os, rest.partition("/")[0]):
            return True
    return not image.platforms


async def _import_folder(
    reactor: IReactorProcess, ctr: Path, socket: Path, folder: Path, namespace: str
) -> list[Image]:
    archives = archives_in(folder)
    if not archives:
        log.debug("No image archives to import in {folder}", folder=str(folder))
        return []
    log.info(
        "Importing {count} image archives from {folder}", count=len(archives), folder=str(folder)
    )
    platform = host_platform()
    imported: list[Image] = []
    for archive in archives:
        try:
            images = await import_archive(reactor, ctr, socket, archive, namespace)
        except CancelledError:
            raise
        except CtrError as failure:
            log.error(
                "Cannot import {archive}: {reason}", archive=str(archive), reason=str(failure)
            )
            continue
        except Exception:
            log.failure("Importing {archive} failed", archive=str(archive))
            continue
        for image in images:
            log.info(
                "Imported {image} ({digest}) from {archive}",
                image=image.name,
                digest=image.digest,
                archive=str(archive),
            )
            if not runs_here(image, platform):
                log.warn(
                    "{image} offers {platforms} and no {platform}: pods cannot run it here",
                    image=image.name,
                    platforms=", ".join(image.platforms),
                    platform=str(platform),
                )
        imported += images
    return imported


def import_folder(
    reactor: IReactorProcess,
    ctr: Path,
    socket: Path,
    folder: Path,
    namespace: str = KUBERNETES_NAMESPACE,
) -> Deferred[list[Image]]:
    """Import every archive of ``folder`` (see :func:`archives_in`), one after the other.

    Each image imported is logged with its digest; an archive ctr refuses is logged as
    an error, and the others are imported all the same.  Fires with every image
    imported; never fails, unless cancelled (which kills the ctr running).
    """
    return Deferred.fromCoroutine(_import_folder(reactor, ctr, socket, folder, namespace))
