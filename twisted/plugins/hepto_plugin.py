# Kept tiny: twistd imports every plugin at every start.
from twisted.application.service import ServiceMaker

hepto = ServiceMaker(
    "hepto",
    "hepto.tap",
    "An opinionated Kubernetes distribution for geo-distributed clusters.",
    "hepto",
)
