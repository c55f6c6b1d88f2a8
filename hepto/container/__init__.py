"""Self-containerization: a node's agent and its whole stack in namespaces of their own.

``plan`` decides (pure), ``host`` does the host's side through ``ip``, ``inside`` is
the container's PID 1, ``outer`` the process that holds it all together, ``cleanup``
what removes it whichever way it ends.  None imports Twisted: the outer process stays
small.  ``docs/container.rst`` has the rationale.
"""
