"""``python -m scopetrace``: the same as the ``scopetrace`` command."""

import sys

from ._cli import main

sys.exit(main())
