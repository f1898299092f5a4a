"""Ablation studies: ``spec`` (a study's YAML) -> ``matrix`` (its cells and run ids) -> ``runner`` (what to run)
-> ``launchers`` (local, debug, SLURM) -> ``job`` (one cell); ``store`` (the study's view of its runs' states)
and ``memory`` / ``memory_check`` (the dry run's estimate, and ``pql train``'s check)."""
