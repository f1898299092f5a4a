"""``python -m pql``: the ``pql`` command line."""

import sys

from pql.cli import main

sys.exit(main())
