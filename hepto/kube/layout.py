"""Where a node's container runtime keeps its files, sockets and cgroups.

Everything lives under the node's directory, except what the kernel limits: unix
socket paths hold 107 bytes, and containerd puts a 64-character hash under its shim
socket directory, which must therefore stay short.  Those go under ``/run/hepto/<id>``,
where the id is a hash of the node's directory, so that several nodes share a host
(tests, the demo) without sharing a socket.  The rationale is in ``docs/nodes.rst``.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path, PurePosixPath
from typing import Final

import attrs

#: Sockets and runtime state: a tmpfs on every distribution, emptied at boot.
RUN_DIR: Final = Path("/run/hepto")
#: All nodes' cgroups, each under ``/hepto/<cluster>/<name>`` in every hierarchy.
CGROUP_PARENT: Final = PurePosixPath("/hepto")
#: containerd's namespace for the CRI: images must be imported there.
CRI_NAMESPACE: Final = "k8s.io"


@attrs.frozen
class Layout:
    """The runtime's paths for one node."""

    node_dir: Path
    cluster: str
    name: str

    @property
    def runtime_id(self) -> str:
        digest = hashlib.sha256(os.fsencode(self.node_dir.absolute()))
        return digest.hexdigest()[:12]

    # Under /run/hepto/<id>: sockets and state that end with the boot.

    @property
    def run_dir(self) -> Path:
        return RUN_DIR / self.runtime_id

    @property
    def containerd_socket(self) -> Path:
        return self.run_dir / "containerd.sock"

    @property
    def containerd_state(self) -> Path:
        return self.run_dir / "containerd"

    @property
    def shim_sockets(self) -> Path:
        return self.run_dir / "s"

    @property
    def runc_root(self) -> Path:
        return self.run_dir / "runc"

    @property
    def kubelet_root(self) -> Path:
        """The kubelet's root directory as it sees it: short, for the sockets it makes there.

        A bind mount of :attr:`kubelet_data`, in the agent's mount namespace only.
        """
        return self.run_dir / "kubelet"

    # Under the node's directory: what the agent writes, and what the runtime keeps.

    @property
    def runtime_dir(self) -> Path:
        """The files the agent writes for containerd and the kubelet."""
        return self.node_dir / "runtime"

    @property
    def containerd_config(self) -> Path:
        return self.runtime_dir / "containerd.toml"

    @property
    def cni_template(self) -> Path:
        return self.runtime_dir / "cni.json.tmpl"

    @property
    def kubelet_config(self) -> Path:
        return self.runtime_dir / "kubelet.json"

    @property
    def kube_proxy_config(self) -> Path:
        return self.runtime_dir / "kube-proxy.json"

    @property
    def corefile(self) -> Path:
        return self.runtime_dir / "Corefile"

    @property
    def resolv_conf(self) -> Path:
        return self.runtime_dir / "resolv.conf"

    @property
    def sweeper_script(self) -> Path:
        return self.runtime_dir / "sweeper.sh"

    @property
    def sysctl_dir(self) -> Path:
        return self.runtime_dir / "sysctl"

    @property
    def private_dir(self) -> Path:
        """Replacements for host paths the kubelet and CNI write whatever their settings."""
        return self.runtime_dir / "private"

    @property
    def pause_archive(self) -> Path:
        return self.runtime_dir / "pause.tar"

    @property
    def containerd_root(self) -> Path:
        return self.node_dir / "containerd"

    @property
    def kubelet_data(self) -> Path:
        """Where the kubelet's root directory is kept: on disk, for pods' volumes."""
        return self.node_dir / "kubelet"

    def private_host_path(self, path: Path) -> Path:
        """This node's own directory for a host path the kubelet or CNI write to."""
        return self.private_dir / str(path).strip("/").replace("/", "-")

    @property
    def pod_logs(self) -> Path:
        return self.node_dir / "pod-logs"

    @property
    def cni_config_dir(self) -> Path:
        return self.node_dir / "cni" / "net.d"

    @property
    def cni_ipam_dir(self) -> Path:
        return self.node_dir / "cni" / "ipam"

    @property
    def images_dir(self) -> Path:
        """Archives the operator drops here are imported at every start."""
        return self.node_dir / "images"

    # Cgroups, relative to each hierarchy's root.

    @property
    def cgroup(self) -> PurePosixPath:
        return CGROUP_PARENT / self.cluster / self.name

    @property
    def runtime_cgroup(self) -> PurePosixPath:
        """containerd and the kubelet; containerd's shims inherit it."""
        return self.cgroup / "runtime"

    @property
    def pods_cgroup(self) -> PurePosixPath:
        """The kubelet's ``cgroupRoot``: it makes ``kubepods`` below."""
        return self.cgroup / "pods"
