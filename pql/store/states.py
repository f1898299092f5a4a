"""The states a run and a study's cell can be in: one list, read by every layer that writes or counts them.

A run's ``status.json`` says one of :data:`RUN_STATES`, written only by the run (or, ``queued``, by the
launcher that submitted it). A study's cell is seen through its run: :data:`CELL_STATES` adds what only the
study can tell, in the order ``pql status`` counts them.
"""

RUN_STATES = ("running", "done", "failed", "interrupted", "queued")
"""``status.json``'s ``state``: training; finished its budget; failed (its error, cause and whether it resumes
recorded); stopped by a signal after a checkpoint (resumes); submitted to SLURM and waiting to start."""

CELL_STATES = ("done", "running", "queued", "failed", "stale", "pending", "skipped")
"""A cell as ``pql ablate`` and ``pql status`` see it: its run's state, or ``stale`` (its run directory holds a
run of another config or schema: set aside and redone), ``pending`` (to run: no run yet, an interrupted one or a
dead claim to resume, corrupt files to redo) and ``skipped`` (left out by this invocation, the reason given)."""
