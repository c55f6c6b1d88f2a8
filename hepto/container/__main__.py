"""``python -m hepto.container PLAN``: the outer process of a contained node."""

import sys

from hepto.container.outer import main

raise SystemExit(main(sys.argv))
