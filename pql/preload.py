"""Simulators that refuse to load after torch (Isaac Gym), imported first by the entry points.

Kept free of torch imports: ``pql train`` and the ablation jobs call
:func:`preload_simulator` before anything else imports torch.
"""

from __future__ import annotations

import sys


def preload_simulator(task: str) -> None:
    """Import Isaac Gym now if ``task`` is an ``isaacgym/`` one and torch is not loaded yet."""
    if task.startswith("isaacgym/") and "torch" not in sys.modules:
        try:
            import isaacgym  # noqa: F401
        except ImportError:
            pass  # config validation reports the install command
