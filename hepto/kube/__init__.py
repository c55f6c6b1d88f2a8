"""Upstream Kubernetes components: their command lines, files and readiness.

One module per component describes it as a :class:`~hepto.kube.component.Component`;
:class:`~hepto.kube.service.KubeService` runs those of the node's role under the
supervisor.  See ``docs/kubernetes.rst``.
"""
