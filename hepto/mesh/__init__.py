"""The WireGuard mesh under Kubernetes, driven by membership (see ``docs/mesh.rst``).

- :mod:`~hepto.mesh.keys`: the node's key pair and WireGuard's key encodings;
- :mod:`~hepto.mesh.record`: the ``wireguard`` record key, written and validated;
- :mod:`~hepto.mesh.reconcile`: the desired mesh and the changes to reach it (pure);
- :mod:`~hepto.mesh.backend`: the small interface of a WireGuard device;
- :mod:`~hepto.mesh.kernel`: the kernel's WireGuard over netlink;
- :mod:`~hepto.mesh.userspace` and :mod:`~hepto.mesh.uapi`: wireguard-go, supervised,
  and its configuration protocol;
- :mod:`~hepto.mesh.links`: the interface's MTU, addresses and routes over rtnetlink;
- :mod:`~hepto.mesh.underlay`: where peers reach this node, and that link's MTU;
- :mod:`~hepto.mesh.passes`: when reconcile passes run (never two at once);
- :mod:`~hepto.mesh.service`: :class:`~hepto.mesh.service.MeshService`, tying them to
  the cluster state;
- :mod:`~hepto.mesh.testing`: fakes for tests.
"""
