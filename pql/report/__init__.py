"""A study's raw results -> ``runs`` (read from the index and their directories) -> ``aggregate`` (statistics with
bootstrap intervals) -> ``figures`` and ``markdown``; ``study`` puts them together, ``provenance`` says where
and with what code each run ran."""
