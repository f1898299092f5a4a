"""One run: ``run`` (end to end: config, lock, status, failures), ``loop`` (what every trainer shares: budget,
rows, loss checks, checkpoints), ``sync`` (the workers in one process), ``parallel`` (``mode=async``: the parent
and monitor of three worker ``processes``, their ``board`` and ``placement``), ``on_policy`` (PPO's rollout and
update loop), ``sinks`` (progress bar, TensorBoard, W&B), ``failures`` and ``interrupt`` (errors and signals
recorded), ``export`` (a trained policy as TorchScript)."""
