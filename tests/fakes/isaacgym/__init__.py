"""Stand-in for the ``isaacgym`` package (its import has no effect here); see tests/fakes/README.md."""
