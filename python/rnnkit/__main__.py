"""``python -m rnnkit``: the ``rnnkit`` command (see rnnkit.cli); with no subcommand, ``info``."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
