"""``python -m rnnkit``: the ``rnnkit`` command (see rnnkit.app.cli); with no subcommand, ``info``."""

import sys

from .app.cli import main

if __name__ == "__main__":
    sys.exit(main())
