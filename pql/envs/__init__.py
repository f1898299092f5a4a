"""Environment backends behind one registry, selected by ``BACKEND/TASK`` names."""

from __future__ import annotations

from collections.abc import Callable

import torch

from pql.envs.classic import MountainCarContinuous, Pendulum
from pql.envs.contract import StepResult, VecEnv

EnvFactory = Callable[..., VecEnv]

_REGISTRY: dict[str, EnvFactory] = {
    "classic/pendulum": Pendulum,
    "classic/mountaincar": MountainCarContinuous,
}


def register(task: str, factory: EnvFactory) -> None:
    """Add a task; ``factory(num_envs, device=, seed=)`` must return a VecEnv."""
    _REGISTRY[task] = factory


def known_tasks() -> list[str]:
    return sorted(_REGISTRY)


def make_env(task: str, num_envs: int, device: str | torch.device = "cpu", seed: int = 0) -> VecEnv:
    """Build ``num_envs`` environments of ``task`` on ``device``."""
    if task not in _REGISTRY:
        raise KeyError(f"unknown task '{task}'; known: {', '.join(known_tasks())}")
    return _REGISTRY[task](num_envs, device=device, seed=seed)


__all__ = ["StepResult", "VecEnv", "known_tasks", "make_env", "register"]
