"""Upstream programs as children of the agent: started in order, probed, restarted, stopped.

The supervisor knows nothing of Kubernetes: :mod:`hepto.kube` describes the components
as :class:`ProcessSpec` values.  See ``docs/supervisor.rst``.
"""

from hepto.supervisor.launcher import (
    DirectLauncher,
    Launcher,
    PythonLauncher,
    UtilLinuxLauncher,
    default_launcher,
)
from hepto.supervisor.probes import (
    AlwaysReady,
    HTTPProbe,
    Probe,
    ProbeFailed,
    ProbeTLS,
    UnixSocketProbe,
)
from hepto.supervisor.process import (
    ProcessSpec,
    ProcessStatus,
    State,
    SupervisedProcess,
    describe_exit,
)
from hepto.supervisor.supervisor import Supervisor

__all__ = [
    "AlwaysReady",
    "DirectLauncher",
    "HTTPProbe",
    "Launcher",
    "Probe",
    "ProbeFailed",
    "ProbeTLS",
    "ProcessSpec",
    "ProcessStatus",
    "PythonLauncher",
    "State",
    "SupervisedProcess",
    "Supervisor",
    "UnixSocketProbe",
    "UtilLinuxLauncher",
    "default_launcher",
    "describe_exit",
]
