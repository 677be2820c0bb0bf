"""``python -m purpose_bus``: see :mod:`purpose_bus._demo`."""

import sys

from ._demo import main

sys.exit(main())
