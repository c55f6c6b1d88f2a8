"""The images the upstream conformance suite runs, made here: there is no registry.

Each image keeps the name and tag the suite asks for (``k8s.io/kubernetes/test/utils/
image``), so the suite needs no registry override; nodes import the archives from their
images folder at start.  What each image holds and why it is enough is in
``docs/conformance.rst``: in short, upstream's programs built from the pinned Kubernetes
module (agnhost, nnp), upstream's busybox built here for the busybox image
(tools/build-busybox), Debian's busybox-static for the tools of the others, and a few
Debian programs (``dig``, ``curl``, ``getent``, ``bash``) copied with the shared
libraries they load.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Final

import attrs

from hepto.images.layout import (
    Directory,
    Entry,
    File,
    ImageConfig,
    Recipe,
    Symlink,
    Written,
    ensure_archive,
)
from hepto.images.pause import pause_recipe
from images import BUSYBOX, busybox_recipe

E2E_REGISTRY: Final = "registry.k8s.io/e2e-test-images"
#: As alpine's, the base of most upstream test images.
PATH: Final = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: Debian programs the suite runs in its agnhost and DNS-testing pods.
DIG: Final = Path("/usr/bin/dig")
CURL: Final = Path("/usr/bin/curl")
GETENT: Final = Path("/usr/bin/getent")
BASH: Final = Path("/bin/bash")
#: OpenBSD's netcat, as in upstream's agnhost: busybox's lacks -v, -t, -u and -z.
NETCAT: Final = Path("/bin/nc.openbsd")

_AGNHOST_PASSWD: Final = (
    b"root:x:0:0:root:/root:/bin/sh\n"
    b"nobody:x:65534:65534:nobody:/:/bin/false\n"
    b"user-defined-in-image:x:1000:1000::/home/user-defined-in-image:/bin/sh\n"
)
_AGNHOST_GROUP: Final = (
    b"root:x:0:\nnogroup:x:65534:\nuser-defined-in-image:x:1000:\n"
    b"group-defined-in-image:x:50000:user-defined-in-image\n"
)
#: glibc's programs (getent, dig) read it; musl's and busybox's do not need it.
_NSSWITCH: Final = b"passwd: files\ngroup: files\nhosts: files dns\n"


class MissingProgram(Exception):
    """A program an image needs is not on this machine (tools/install-deps installs it)."""


@attrs.frozen
class Sources:
    """Where the images' programs and files come from on this machine.

    ``programs``: agnhost, nnp, sample-apiserver, etcd and busybox (tools/build-e2e);
    ``bundle``: the bundle's bin dir (coredns, pause); ``images``: ``test/images`` of the
    pinned Kubernetes module.
    """

    programs: Path
    bundle: Path
    images: Path


def shared_libraries(program: Path) -> list[Path]:
    """The files the dynamic loader maps for ``program``, the loader itself included.

    Empty for a static program.  Raises MissingProgram when ``program`` is absent.
    """
    if not program.exists():
        raise MissingProgram(f"{program} is missing: run tools/install-deps")
    listed = subprocess.run(
        ["ldd", str(program)], capture_output=True, text=True, timeout=30
    ).stdout
    paths = re.findall(r"(?:=> )?(/\S+) \(0x[0-9a-f]+\)", listed)
    return sorted({Path(path) for path in paths})


def with_libraries(path: str, program: Path) -> list[Entry]:
    """``program`` as ``path``, and each of its libraries at the path the loader asks for."""
    entries: list[Entry] = [File.copy(path, program.resolve(), 0o755)]
    for library in shared_libraries(program):
        entries.append(File.copy(str(library), library.resolve(), 0o755))
    return entries


def _merged(*groups: Iterable[Entry]) -> list[Entry]:
    """The entries of every group, a later one winning a path that an earlier one has."""
    by_path: dict[str, Entry] = {}
    for group in groups:
        for entry in group:
            by_path[entry.path] = entry
    return list(by_path.values())


def _busybox_entries() -> tuple[Entry, ...]:
    return busybox_recipe(BUSYBOX).entries


def _bash_as_sh() -> list[Entry]:
    """bash, with its libraries, as ``/bin/sh``: in agnhost, beside Debian's busybox.

    Debian's busybox's shell would run its own ``nc`` before agnhost's (it lacks ``-v``,
    ``-t``, ``-u``, ``-z``) and drop variables whose names are not shell identifiers
    (see :func:`busybox`). No spec reads agnhost's shell's own words.
    """
    return [*with_libraries("/bin/bash", BASH), Symlink("/bin/sh", "bash")]


def busybox(sources: Sources, tag: str = "1.37.0-2") -> Recipe:
    """Upstream's busybox, as upstream's image has it: the image most specs run commands in.

    Debian's busybox has two habits that upstream's has not: its shell runs its own
    applets before PATH's programs, and it drops from the environment of what it runs
    every variable whose name is not a shell identifier (``data-1``, which specs set from
    ConfigMap and Secret keys and read back with ``sh -c env``). Specs also compare
    busybox's own error messages (``/bin/sh: can't create /file: Read-only file
    system``), so no other shell will do either (docs/conformance.rst).
    """
    recipe = busybox_recipe(sources.programs / "busybox")
    return attrs.evolve(recipe, name=f"{E2E_REGISTRY}/busybox:{tag}")


def agnhost(sources: Sources, tag: str = "2.66.1") -> Recipe:
    """agnhost, with upstream's image's tools: a shell, dig, curl, getent, nc, coredns."""
    porter = sources.images / "agnhost" / "porter"
    entries = _merged(
        _busybox_entries(),
        with_libraries("/usr/bin/dig", DIG),
        with_libraries("/usr/bin/curl", CURL),
        with_libraries("/usr/bin/getent", GETENT),
        _bash_as_sh(),
        with_libraries("/usr/bin/nc", NETCAT),
        [
            Symlink("/bin/nc", "/usr/bin/nc"),
            File.copy("/agnhost", sources.programs / "agnhost", 0o755),
            Symlink("/agnhost-2", "agnhost"),
            File.copy("/coredns", sources.bundle / "coredns", 0o755),
            File.copy("/localhost.crt", porter / "localhost.crt", 0o644),
            File.copy("/localhost.key", porter / "localhost.key", 0o644),
            File("/etc/passwd", _AGNHOST_PASSWD),
            File("/etc/group", _AGNHOST_GROUP),
            File("/etc/nsswitch.conf", _NSSWITCH),
            Directory("/uploads"),
            Directory("/home/user-defined-in-image"),
        ],
    )
    config = ImageConfig(entrypoint=("/agnhost",), cmd=("pause",), env=(PATH,))
    return Recipe(f"{E2E_REGISTRY}/agnhost:{tag}", entries, config)


def _agnhost_webserver(sources: Sources, name: str, tag: str) -> Recipe:
    """kitten and nautilus: agnhost's test-webserver serving one picture and its data.

    Upstream builds them on the whole agnhost image; the specs only fetch the pages, so
    agnhost alone serves them, in a quarter of the size.
    """
    html = sources.images / name / "html"
    entries = [
        File.copy("/agnhost", sources.programs / "agnhost", 0o755),
        File.copy(f"/{name}.jpg", html / f"{name}.jpg", 0o644),
        File.copy("/data.json", html / "data.json", 0o644),
    ]
    config = ImageConfig(entrypoint=("/agnhost",), cmd=("test-webserver",), env=(PATH,))
    return Recipe(f"{E2E_REGISTRY}/{name}:{tag}", entries, config)


#: Where upstream's nginx image serves from; its specs only need a web server on port 80.
NGINX_ROOT: Final = "/usr/share/nginx/html"


def nginx(tag: str) -> Recipe:
    """A web server on port 80 (busybox's httpd) under the name of upstream's nginx image."""
    page = b"<html><body><h1>Welcome to nginx!</h1></body></html>\n"
    entries = [*_busybox_entries(), File(f"{NGINX_ROOT}/index.html", page)]
    config = ImageConfig(cmd=("httpd", "-f", "-v", "-p", "80", "-h", NGINX_ROOT), env=(PATH,))
    return Recipe(f"{E2E_REGISTRY}/nginx:{tag}", entries, config)


def nonewprivs(sources: Sources) -> Recipe:
    """nnp, setuid root, which prints its effective uid: no_new_privs must keep it."""
    entries = [
        *_busybox_entries(),
        File.copy("/usr/local/bin/nnp", sources.programs / "nnp", 0o4755),
    ]
    return Recipe(f"{E2E_REGISTRY}/nonewprivs:1.4", entries, ImageConfig(cmd=("nnp",), env=(PATH,)))


def glibc_dns_testing() -> Recipe:
    """glibc's resolver (getent) and dig, for the DNS specs that test glibc's behaviour."""
    entries = _merged(
        _busybox_entries(),
        with_libraries("/usr/bin/dig", DIG),
        with_libraries("/usr/bin/getent", GETENT),
        [File("/etc/nsswitch.conf", _NSSWITCH)],
    )
    return Recipe(f"{E2E_REGISTRY}/glibc-dns-testing:2.1.1", entries, ImageConfig(env=(PATH,)))


def pause(sources: Sources) -> Recipe:
    """The bundle's pause program under upstream's name: some specs run it as a container."""
    recipe = pause_recipe((sources.bundle / "pause").read_bytes())
    return attrs.evolve(recipe, name="registry.k8s.io/pause:3.10.2")


def sample_apiserver(sources: Sources) -> Recipe:
    """The sample aggregated API server of the pinned module, for the aggregator's spec."""
    program = File.copy("/sample-apiserver", sources.programs / "sample-apiserver", 0o755)
    config = ImageConfig(entrypoint=("/sample-apiserver",), env=(PATH,))
    return Recipe(f"{E2E_REGISTRY}/sample-apiserver:1.29.2", [program], config)


def etcd(sources: Sources) -> Recipe:
    """etcd of the pinned module, beside the sample API server as its storage."""
    entries: list[Entry] = [
        File.copy("/usr/local/bin/etcd", sources.programs / "etcd", 0o755),
        Directory("/tmp", 0o1777),
        Directory("/var/lib/etcd", 0o700),
    ]
    return Recipe("registry.k8s.io/etcd:3.7.0-0", entries, ImageConfig(env=(PATH,)))


def recipes(sources: Sources) -> Iterator[Recipe]:
    """Every image made here, each with the name the suite pulls."""
    yield busybox(sources)
    yield agnhost(sources)
    yield agnhost(sources, "2.55")  # AgnhostPrev: specs that change a pod's image
    yield nginx("1.27.0-2")
    yield nginx("1.28.0-2")  # NginxNew: a Deployment's rollout to a new image
    yield _agnhost_webserver(sources, "kitten", "1.8")
    yield _agnhost_webserver(sources, "nautilus", "1.8")
    yield nonewprivs(sources)
    yield glibc_dns_testing()
    yield pause(sources)
    yield sample_apiserver(sources)
    yield etcd(sources)


def archive_name(recipe: Recipe) -> str:
    """``agnhost-2.66.1.tar`` for ``registry.k8s.io/e2e-test-images/agnhost:2.66.1``."""
    repository, tag = recipe.name.rsplit(":", 1)
    return f"{repository.rsplit('/', 1)[-1]}-{tag}.tar"


def ensure_archives(sources: Sources, directory: Path) -> list[Path]:
    """Write every image's archive into ``directory``, keeping those already up to date."""
    directory.mkdir(parents=True, exist_ok=True)
    archives = []
    for recipe in recipes(sources):
        archive = directory / archive_name(recipe)
        ensure_archive(recipe, archive)
        archives.append(archive)
    return archives


__all__ = ["Sources", "Written", "ensure_archives", "recipes"]
