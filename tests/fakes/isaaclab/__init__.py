"""Stand-in for the ``isaaclab`` package; see tests/fakes/README.md."""
