"""The ``hepto`` command: operator tools beside the ``twistd hepto`` agent."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn, TextIO

from twisted.python import usage

from hepto import config, plan
from hepto.config import ConfigError, env_name

USAGE_ERROR = 2


class _NodeOptions(usage.Options):
    """The options naming a node, read from the environment as the agent reads them."""

    optParameters: list[list[Any]] = [
        ["cluster", None, None, f"Cluster name [{env_name('cluster')}]."],
        ["name", None, None, f"Node name [{env_name('name')}]."],
    ]

    def value(self, option: str) -> str | None:
        given = self[option]
        return given if given is not None else config.from_environment(option)


class InfoOptions(_NodeOptions):
    synopsis = "--cluster NAME [--name NAME] [--json]"
    longdesc = (
        "Print the addressing plan of a cluster, as a CNI or kube-proxy set-up needs it. "
        "Everything but mesh_address depends on the cluster name alone."
    )
    optFlags: list[list[Any]] = [["json", None, "Print one JSON object."]]

    def postOptions(self) -> None:
        cluster = config.parse_cluster(self.value("cluster"))
        name = self.value("name")
        self.plan = plan.Plan(cluster, config.parse_name(name) if name else None)


class _AgentOptions(_NodeOptions):
    """The options naming a running agent: its node, and the data directory it keeps."""

    optParameters: list[list[Any]] = [
        *_NodeOptions.optParameters,
        ["data-dir", None, None, f"Data directory [{env_name('data-dir')}]."],
    ]

    def postOptions(self) -> None:
        cluster = config.parse_cluster(self.value("cluster"))
        name = config.parse_name(self.value("name"))
        data_dir = Path(self.value("data-dir") or config.DEFAULT_DATA_DIR)
        self.socket = config.node_dir(data_dir, cluster, name) / "control.sock"


class StatusOptions(_AgentOptions):
    synopsis = "--cluster NAME --name NAME [--data-dir DIR] [--json]"
    longdesc = "Ask a running agent how it sees the cluster: members, drops, health and more."
    optFlags: list[list[Any]] = [["json", None, "Print one JSON object."]]


class BackupOptions(_AgentOptions):
    synopsis = "--cluster NAME --name NAME [--data-dir DIR] --out FILE"
    longdesc = (
        "Back up a running master now: its agent takes an etcd snapshot and gathers its CAs, "
        "keys and identity into one file sealed with a key derived from the cluster key, "
        "kept with its periodic backups and copied to FILE (docs/backup.rst). Prints the "
        "file's size and the time taken."
    )
    optParameters: list[list[Any]] = [
        *_AgentOptions.optParameters,
        ["out", "o", None, "Where to copy the backup (replaced atomically)."],
    ]

    def postOptions(self) -> None:
        super().postOptions()
        if not self["out"]:
            raise usage.UsageError("missing --out FILE: where to write the backup")
        self.out = Path(self["out"])


class RestoreOptions(_AgentOptions):
    synopsis = (
        "--cluster NAME --name NAME [--key HEX] [--data-dir DIR] [--bin-dir DIR] "
        "(FILE | --from FILE)"
    )
    longdesc = (
        "Rebuild a master's directory from a backup, on this host or another: the file is "
        "checked whole first, the master's directory must be absent or empty, and nothing "
        "is written unless everything succeeds. Then start the master as before "
        "(twistd hepto --role master ...)."
    )
    optParameters: list[list[Any]] = [
        *_AgentOptions.optParameters,
        ["key", None, None, f"Cluster key, or keyring (any opens) [{env_name('key')}]."],
        ["from", None, None, "The backup file (or give it as the argument)."],
        [
            "bin-dir",
            None,
            None,
            f"Where etcdutl is looked for before PATH [{env_name('bin-dir')}].",
        ],
    ]

    def parseArgs(self, *files: str) -> None:
        self.files = files

    def postOptions(self) -> None:
        super().postOptions()
        self.cluster = config.parse_cluster(self.value("cluster"))
        self.name = config.parse_name(self.value("name"))
        self.data_dir = Path(self.value("data-dir") or config.DEFAULT_DATA_DIR).absolute()
        self.keyring = config.parse_keyring(self.value("key"))
        given = [*self.files, *([self["from"]] if self["from"] else [])]
        if len(given) != 1:
            raise usage.UsageError("name one backup FILE (as the argument or --from)")
        self.file = Path(given[0])
        bin_dir = self.value("bin-dir")
        self.bin_dir = Path(bin_dir).absolute() if bin_dir else None


class ImportOptions(_AgentOptions):
    longdesc = (
        "Import image archives (docker save or OCI, tar or tar.gz) into the containerd of a "
        "running node, where its pods find them. Every archive is checked first: if any "
        "cannot be imported, none is. Prints each image imported, with its digest."
    )

    def getSynopsis(self) -> str:
        # Twisted repeats every parent's synopsis: two levels down, that reads badly.
        return "hepto images import --cluster NAME --name NAME [--data-dir DIR] ARCHIVE..."

    def parseArgs(self, *archives: str) -> None:
        if not archives:
            raise usage.UsageError("missing ARCHIVE: name the archives to import")
        self.archives = [Path(archive) for archive in archives]


class ImagesOptions(usage.Options):
    subCommands = [
        ["import", None, ImportOptions, "Import image archives into a node's containerd."],
    ]

    def getSynopsis(self) -> str:
        return "hepto images import [options] ARCHIVE..."

    def postOptions(self) -> None:
        if self.subCommand is None:
            raise usage.UsageError("missing command: import (see hepto images --help)")


class Options(usage.Options):
    synopsis = "hepto COMMAND [options]"
    subCommands = [
        ["info", None, InfoOptions, "Print the addressing plan of a cluster and node."],
        ["status", None, StatusOptions, "Print how a running node sees the cluster."],
        ["images", None, ImagesOptions, "Import container images into a running node."],
        ["backup", None, BackupOptions, "Back up a running master into one sealed file."],
        ["restore", None, RestoreOptions, "Rebuild a master's directory from a backup."],
    ]

    def postOptions(self) -> None:
        if self.subCommand is None:
            raise usage.UsageError(
                "missing command: info, status, images, backup or restore (see hepto --help)"
            )


def render_info(info: dict[str, Any]) -> str:
    width = max(len(key) for key in info)
    return "\n".join(
        f"{key:<{width}}  {'-' if value is None else value}" for key, value in info.items()
    )


def render_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    cells = [[str(row.get(column, "")) for column in columns] for row in rows]
    widths = [
        max([len(column)] + [len(row[i]) for row in cells]) for i, column in enumerate(columns)
    ]
    lines = ["  ".join(column.upper().ljust(widths[i]) for i, column in enumerate(columns))]
    lines += ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)) for row in cells]
    return "\n".join(line.rstrip() for line in lines)


def _certificate_rows(certificates: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {
            "certificate": name,
            "subject": certificate.get("subject", ""),
            "state": certificate.get("state", ""),
            "expires": certificate.get("not_after", ""),
            "renews": certificate.get("renew_at", ""),
        }
        for name, certificate in sorted(certificates.items())
    ]


def _peer_rows(peers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            "peer": peer.get("name", ""),
            "endpoint": peer.get("endpoint", ""),
            "allowed ips": ",".join(peer.get("allowed_ips", [])),
            "handshake": peer.get("last_handshake") or "never",
            # No keepalive: the peer reaches us unprompted (docs/mesh.rst, Keepalives).
            "keepalive": f"{peer['persistent_keepalive']} s"
            if peer.get("persistent_keepalive")
            else "-",
            "rx": peer.get("rx_bytes", 0),
            "tx": peer.get("tx_bytes", 0),
        }
        for peer in peers
    ]


def render_status(status: dict[str, Any]) -> str:
    """What an operator reads: tables of members, certificates and peers, then the rest."""
    shown = {"members", "pki", "mesh", "kube", "container", "backup"}
    parts = [render_table(status.get("members", []), MEMBER_COLUMNS)]
    summary = {
        key: value
        for key, value in status.items()
        if key not in shown and not isinstance(value, dict | list)
    }
    if summary:
        parts.append("  ".join(f"{key}: {value}" for key, value in summary.items()))
    for key in ("drops", "traffic"):
        if status.get(key):
            parts.append(f"{key}: " + ", ".join(f"{k} {v}" for k, v in sorted(status[key].items())))
    if status.get("conflicts"):
        parts.append(
            "conflicts:\n" + render_table(status["conflicts"], list(status["conflicts"][0]))
        )
    pki = status.get("pki")
    if isinstance(pki, dict):
        if pki.get("certificates"):
            parts.append(render_table(_certificate_rows(pki["certificates"]), CERTIFICATE_COLUMNS))
        if pki.get("waiting"):
            parts.append("certificates awaited: " + ", ".join(map(str, pki["waiting"])))
        if pki.get("refusals"):
            parts.append("refusals:\n" + render_table(pki["refusals"], list(pki["refusals"][0])))
    mesh = status.get("mesh")
    if isinstance(mesh, dict):
        parts.append(
            f"mesh: {mesh.get('interface')} ({mesh.get('backend')}, {mesh.get('phase')}), "
            f"endpoint {mesh.get('endpoint')}, mtu {mesh.get('mtu')}, "
            f"addresses {', '.join(mesh.get('addresses', []))}"
            + (f", error: {mesh['error']}" if mesh.get("error") else "")
        )
        if mesh.get("peers"):
            parts.append(render_table(_peer_rows(mesh["peers"]), PEER_COLUMNS))
    kube = status.get("kube")
    if isinstance(kube, dict) and kube.get("components"):
        rows = [
            {"component": component.get("name"), **component} for component in kube["components"]
        ]
        parts.append(render_table(rows, COMPONENT_COLUMNS))
    runtime = kube.get("runtime") if isinstance(kube, dict) else None
    if isinstance(runtime, dict):
        parts.append(
            f"runtime: containerd at {runtime.get('socket')}, cgroups {runtime.get('cgroup')}, "
            f"pods {runtime.get('pod_prefix') or 'not yet'}, "
            f"oom_score_adj lowered: {runtime.get('oom_score_adj_lowered')}"
        )
    if isinstance(status.get("backup"), dict):
        parts.append(render_backup(status["backup"]))
    if isinstance(status.get("container"), dict):
        parts.append(render_container(status["container"]))
    for key, value in status.items():
        if key not in shown and key not in summary and key not in ("drops", "traffic", "conflicts"):
            parts.append(f"{key}: {json.dumps(value, sort_keys=True)}")
    return "\n\n".join(parts)


def container_status(node_dir: Path) -> dict[str, Any] | None:
    """The node's container as its outer process recorded it, with its memory use now.

    Read here, on the host: the agent inside sees neither the host's side of its link
    nor its container's cgroup from above.
    """
    from hepto.cgroups import cgroup_hierarchies
    from hepto.container.plan import STATUS_FILE

    try:
        record: dict[str, Any] = json.loads((node_dir / "container" / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return None
    record["memory_bytes"] = None
    cgroup = str(record.get("cgroup", "")).lstrip("/")
    for hierarchy in cgroup_hierarchies(Path("/proc/self/mountinfo").read_text()):
        if hierarchy.version == 1 and "memory" not in hierarchy.controllers:
            continue
        name = "memory.usage_in_bytes" if hierarchy.version == 1 else "memory.current"
        try:
            record["memory_bytes"] = int((hierarchy.path / cgroup / name).read_text())
            break
        except (OSError, ValueError):
            continue
    return record


def render_backup(backup: dict[str, Any]) -> str:
    """``backup: last <time> (<size>) <path>, next <time>, <n> kept``, then any failure."""
    last = backup.get("last")
    if isinstance(last, dict):
        size = last.get("size")
        text = f"last {last.get('created')} ({_size(size) if isinstance(size, int) else '?'})"
        text += f" {last.get('path')}"
    else:
        text = "none yet"
    text += f", next {backup.get('next') or 'not scheduled'}, {backup.get('kept', 0)} kept"
    if backup.get("running"):
        text += ", one under way"
    if backup.get("last_error"):
        text += f"; last attempt failed: {backup['last_error']}"
    return f"backup: {text}"


def render_container(container: dict[str, Any]) -> str:
    memory = container.get("memory_bytes")
    link = container.get("host_link")
    return (
        f"container: {container.get('mode')} for {container.get('address')} on "
        f"{container.get('interface')}"
        + (f" (host link {link})" if link else "")
        + f", cgroup {container.get('cgroup')}, memory "
        + (f"{memory / 2**20:.1f} MiB" if isinstance(memory, int) else "unknown")
    )


MEMBER_COLUMNS = ["name", "role", "address", "state", "incarnation", "version"]
CERTIFICATE_COLUMNS = ["certificate", "subject", "state", "expires", "renews"]
COMPONENT_COLUMNS = ["component", "state", "ready", "pid", "restarts", "last_exit"]
PEER_COLUMNS = ["peer", "endpoint", "allowed ips", "handshake", "keepalive", "rx", "tx"]


def _fail(message: str) -> NoReturn:
    print(f"hepto: {message}", file=sys.stderr)
    raise SystemExit(USAGE_ERROR)


def _command_name(options: usage.Options) -> str:
    """The (sub)commands given so far, as typed: ``images import``."""
    names = []
    while options.subCommand is not None:
        names.append(options.subCommand)
        options = options.subOptions
    return " ".join(names)


def import_images(command: ImportOptions, out: TextIO) -> None:
    """Check every archive, then import them one by one; exit 1 on the first trouble."""
    from hepto.control import ControlError, query
    from hepto.images.ctr import KUBERNETES_NAMESPACE, CtrError, import_archive_blocking
    from hepto.images.inspect import ArchiveError, inspect_archive

    def failed(message: str) -> NoReturn:
        print(f"hepto: images import: {message}", file=sys.stderr)
        raise SystemExit(1)

    try:
        status = query(command.socket, "status")
    except ControlError as error:
        failed(str(error))
    kube = status.get("kube")
    runtime = kube.get("runtime") if isinstance(kube, dict) else None
    if not isinstance(runtime, dict):
        failed("this node's agent runs no containerd (is it a node, and has it started?)")
    if not (isinstance(runtime.get("socket"), str) and isinstance(runtime.get("ctr"), str)):
        failed(f"the agent's kube.runtime status misses the socket or ctr: {runtime!r}")
    bad = 0
    for archive in command.archives:
        try:
            inspect_archive(archive)
        except ArchiveError as error:
            print(f"hepto: images import: {archive}: {error}", file=sys.stderr)
            bad += 1
    if bad:
        failed(f"imported nothing: {bad} of {len(command.archives)} archives cannot be imported")
    namespace = runtime.get("namespace") or KUBERNETES_NAMESPACE
    for archive in command.archives:
        try:
            images = import_archive_blocking(
                Path(runtime["ctr"]), Path(runtime["socket"]), archive, namespace
            )
        except CtrError as error:
            failed(f"{archive}: {error}")
        for image in images:
            print(f"{image.name} {image.digest}", file=out, flush=True)


def _size(size: int) -> str:
    return f"{size / 2**20:.1f} MiB" if size >= 2**20 else f"{size / 2**10:.1f} KiB"


#: A backup of a large etcd takes seconds; the agent answers once it is written.
BACKUP_TIMEOUT = 900.0


def backup(command: BackupOptions, out: TextIO) -> None:
    """Ask the master's agent for a backup now, then copy it where the operator said."""
    from hepto.control import ControlError, query
    from hepto.files import write_atomically

    def failed(message: str) -> NoReturn:
        print(f"hepto: backup: {message}", file=sys.stderr)
        raise SystemExit(1)

    try:
        taken = query(command.socket, "backup", timeout=BACKUP_TIMEOUT)
    except ControlError as error:
        if "unknown command 'backup'" in str(error):
            failed("this node's agent takes no backups: it is no master")
        failed(str(error))
    kept = Path(str(taken.get("path")))
    try:
        if kept != command.out:
            write_atomically(command.out, kept.read_bytes(), 0o600)
    except OSError as error:
        failed(f"cannot copy {kept} to {command.out}: {error.strerror}")
    size = int(taken.get("size", 0))
    print(
        f"{command.out}: {size} bytes ({_size(size)}; etcd snapshot "
        f"{_size(int(taken.get('snapshot_size', 0)))}) in {taken.get('seconds')} s, "
        f"{_size(int(taken.get('peak_rss_kib', 0)) * 1024)} of memory at most; also kept as "
        f"{kept}",
        file=out,
    )


def restore(command: RestoreOptions, out: TextIO) -> None:
    from hepto.backup.restore import restore as restore_backup
    from hepto.backup.sealing import BackupError
    from hepto.programs import MissingProgram, find_program

    try:
        etcdutl = find_program("etcdutl", command.bin_dir)
        restored = restore_backup(
            command.file,
            command.cluster,
            command.name,
            command.keyring,
            command.data_dir,
            etcdutl,
        )
    except MissingProgram as error:
        print(f"hepto: restore: {error}", file=sys.stderr)
        raise SystemExit(1) from None
    except BackupError as error:
        print(f"hepto: restore: {command.file}: {error}", file=sys.stderr)
        raise SystemExit(1) from None
    print(
        f"{restored.node_dir}: restored the backup of {restored.created} (hepto "
        f"{restored.hepto_version}, etcd snapshot {_size(restored.snapshot_size)}) in "
        f"{restored.seconds:.2f} s; start the master there as before",
        file=out,
    )


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> None:
    out = out or sys.stdout
    options = Options()
    try:
        options.parseOptions(list(sys.argv[1:] if argv is None else argv))
    except (ConfigError, usage.UsageError) as error:
        prefix = f"{_command_name(options)}: " if options.subCommand else ""
        _fail(f"{prefix}{error}")
    command = options.subOptions
    if isinstance(command, BackupOptions):
        backup(command, out)
        return
    if isinstance(command, RestoreOptions):
        restore(command, out)
        return
    if isinstance(command, ImagesOptions):
        assert isinstance(command.subOptions, ImportOptions)
        import_images(command.subOptions, out)
        return
    if isinstance(command, InfoOptions):
        info = command.plan.as_dict()
        print(json.dumps(info, indent=2) if command["json"] else render_info(info), file=out)
    elif isinstance(command, StatusOptions):
        from hepto.control import ControlError, query

        try:
            status = query(command.socket, "status")
        except ControlError as error:
            print(f"hepto: status: {error}", file=sys.stderr)
            raise SystemExit(1) from None
        container = container_status(command.socket.parent)
        if container is not None:
            status["container"] = container
        print(json.dumps(status, indent=2) if command["json"] else render_status(status), file=out)
