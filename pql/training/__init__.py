"""The training layer: a run's loop (``loop``), its directory (``run_dir``), its sinks, the
actor-critic workers in one process (``sync``) or three (``parallel``), PPO's loop (``ppo``), and
``run``: one run end to end."""
