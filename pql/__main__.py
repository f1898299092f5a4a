"""``python -m pql``: the ``pql`` command line."""

from pql.cli import command

command()
