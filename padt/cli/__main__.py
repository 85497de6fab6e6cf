"""``python -m padt.cli``: the ``padt`` command."""

import sys

from padt.cli import main

sys.exit(main())
