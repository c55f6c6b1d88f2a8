"""containerd: the node's container runtime, its CRI on a socket of the node's own.

:func:`containerd` describes the process; :func:`config` and :func:`cni_template` are
the files it reads, as text, from plain values.  The rationale of every setting is in
``docs/nodes.rst``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import attrs

from hepto.kube.component import Component, Context, SocketReadiness, flags
from hepto.kube.layout import Layout

NAME: Final = "containerd"
#: The bridge of the node's pods, in the node's network namespace.
POD_BRIDGE: Final = "hepto-pods"
#: The CNI plugins the configuration names (loopback: the CRI sets up ``lo`` itself).
CNI_PLUGINS: Final = ("bridge", "host-local", "portmap", "loopback")
#: Where CNI plugins are found when ``--bin-dir`` has none: Debian's, then upstream's.
CNI_DIRS: Final = (Path("/usr/lib/cni"), Path("/opt/cni/bin"))
#: Plugins hepto has no use for: they only add start-up work, memory and log lines.
DISABLED_PLUGINS: Final = (
    "io.containerd.nri.v1.nri",
    "io.containerd.snapshotter.v1.btrfs",
    "io.containerd.snapshotter.v1.zfs",
    "io.containerd.snapshotter.v1.devmapper",
    "io.containerd.snapshotter.v1.erofs",
    "io.containerd.differ.v1.erofs",
)


def containerd(context: Context) -> Component:
    layout = Layout(context.node_dir, context.cluster, context.name)
    return Component(
        name=NAME,
        program="containerd",
        args=flags(("--config", layout.containerd_config)),
        readiness=SocketReadiness(layout.containerd_socket),
        dependencies=("sweeper",),
        directories=(
            layout.containerd_root,
            layout.containerd_state,
            layout.shim_sockets,
            layout.runc_root,
            layout.cni_config_dir,
            layout.cni_ipam_dir,
        ),
        in_runtime_cgroups=True,
    )


@attrs.frozen
class RuntimeSettings:
    """What containerd's configuration depends on beyond the node's paths."""

    layout: Layout
    runc: Path
    shim: Path
    cni_dirs: tuple[Path, ...]
    sandbox_image: str
    #: False where no process may lower an oom_score_adj (no CAP_SYS_RESOURCE).
    may_lower_oom_score: bool
    #: hepto's pod network: a template containerd renders in the node's CNI directory.
    #: Without it, another network plugin drops its configuration in the usual place.
    own_network: bool = True


def _string(value: str | Path) -> str:
    # A JSON string is a TOML basic string: the same quotes and escapes.
    return json.dumps(str(value))


def _strings(values: Sequence[str | Path]) -> str:
    return "[" + ", ".join(_string(value) for value in values) + "]"


def config(settings: RuntimeSettings) -> str:
    """containerd's configuration (version 3, which containerd 2.x reads and migrates)."""
    layout = settings.layout
    cri_images = "plugins.'io.containerd.cri.v1.images'"
    cri_runtime = "plugins.'io.containerd.cri.v1.runtime'"
    runc = f"{cri_runtime}.containerd.runtimes.runc"
    return f"""\
# Written by the hepto agent at each start of containerd; edits are lost.
# Every setting's rationale: docs/nodes.rst.
version = 3
root = {_string(layout.containerd_root)}
state = {_string(layout.containerd_state)}
imports = []
disabled_plugins = {_strings(DISABLED_PLUGINS)}

[grpc]
  address = {_string(layout.containerd_socket)}

[ttrpc]
  address = {_string(str(layout.containerd_socket) + ".ttrpc")}

[plugins.'io.containerd.shim.v1.manager']
  socket_dir = {_string(layout.shim_sockets)}

[{cri_images}]
  snapshotter = "overlayfs"

[{cri_images}.pinned_images]
  sandbox = {_string(settings.sandbox_image)}

[{cri_runtime}]
  netns_mounts_under_state_dir = true
  restrict_oom_score_adj = {"false" if settings.may_lower_oom_score else "true"}
  cdi_spec_dirs = []

[{cri_runtime}.containerd]
  default_runtime_name = "runc"

[{runc}]
  runtime_type = "io.containerd.runc.v2"
  runtime_path = {_string(settings.shim)}

[{runc}.options]
  SystemdCgroup = false
  BinaryName = {_string(settings.runc)}
  Root = {_string(layout.runc_root)}

[{cri_runtime}.cni]
{_cni(settings)}
  max_conf_num = 1
  ip_pref = "ipv6"

[plugins.'io.containerd.grpc.v1.cri']
  stream_server_address = "::1"
  stream_server_port = "0"
"""


#: Where network plugins (Calico, Cilium) put theirs, when hepto's own is off.
OTHER_CNI_CONF_DIR: Final = Path("/etc/cni/net.d")
OTHER_CNI_BIN_DIR: Final = Path("/opt/cni/bin")


def _cni(settings: RuntimeSettings) -> str:
    layout = settings.layout
    if settings.own_network:
        return (
            f"  bin_dirs = {_strings(settings.cni_dirs)}\n"
            f"  conf_dir = {_string(layout.cni_config_dir)}\n"
            f"  conf_template = {_string(layout.cni_template)}"
        )
    dirs = [OTHER_CNI_BIN_DIR, *(path for path in settings.cni_dirs if path != OTHER_CNI_BIN_DIR)]
    return f"  bin_dirs = {_strings(dirs)}\n  conf_dir = {_string(OTHER_CNI_CONF_DIR)}"


def cni_template(layout: Layout, mtu: int) -> str:
    """The pod network of one node, which containerd renders with its ``{{.PodCIDR}}``.

    containerd writes it into the CNI directory once the kubelet hands it the Node's pod
    prefix, and never rewrites it while a configuration is loaded: a configuration
    changed under running pods would break their teardown.
    """
    network = {
        "cniVersion": "1.0.0",
        "name": "hepto",
        "plugins": [
            {
                "type": "bridge",
                "bridge": POD_BRIDGE,
                "isGateway": True,
                "ipMasq": False,
                "hairpinMode": True,
                "mtu": mtu,
                "ipam": {
                    "type": "host-local",
                    "dataDir": str(layout.cni_ipam_dir),
                    "ranges": [[{"subnet": "{{.PodCIDR}}"}]],
                    "routes": [{"dst": "::/0"}],
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }
    return json.dumps(network, indent=2) + "\n"
