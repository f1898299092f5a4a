import sys

from pql.cli import main

sys.exit(main())
