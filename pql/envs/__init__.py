"""Environment backends behind one registry, selected by ``BACKEND/TASK`` names."""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

from pql.envs.classic import MountainCarContinuous, Pendulum
from pql.envs.contract import StepResult, VecEnv
from pql.envs.gym_backend import GymVecEnv, gym_task_problem
from pql.envs.isaacgym_backend import IsaacGymVecEnv, isaacgym_task_problem
from pql.envs.isaaclab_backend import IsaacLabVecEnv, isaaclab_task_problem
from pql.envs.playground_backend import PlaygroundVecEnv, playground_task_problem

EnvFactory = Callable[..., VecEnv]

_REGISTRY: dict[str, EnvFactory] = {
    "classic/pendulum": Pendulum,
    "classic/mountaincar": MountainCarContinuous,
}
# Families of tasks named PREFIX<name>: (factory(name, num_envs, device=, seed=), why name cannot be made or None).
_FAMILIES: dict[str, tuple[Callable[..., VecEnv], Callable[[str], str | None]]] = {
    "gym/": (GymVecEnv, gym_task_problem),
    "playground/": (PlaygroundVecEnv, playground_task_problem),
    "isaacgym/": (IsaacGymVecEnv, isaacgym_task_problem),
    "isaaclab/": (IsaacLabVecEnv, isaaclab_task_problem),
}
# Backends whose simulator exists once per process (Isaac Gym's _create_sim_once, Isaac Lab's
# SimulationContext singleton): a run cannot make separate evaluation environments.
ONE_SIMULATION_PER_PROCESS = ("isaacgym/", "isaaclab/")


def register(task: str, factory: EnvFactory) -> None:
    """Add a task; ``factory(num_envs, device=, seed=)`` must return a VecEnv."""
    _REGISTRY[task] = factory


def known_tasks() -> list[str]:
    """The registered task names (families such as gym/<id> are not listed one by one)."""
    return sorted(_REGISTRY)


def task_problem(task: str) -> str | None:
    """Why ``task`` cannot be made here (unknown name, backend not installed), or None if it can."""
    if task in _REGISTRY:
        return None
    for prefix, (_, problem) in _FAMILIES.items():
        if task.startswith(prefix):
            return problem(task[len(prefix):])
    families = ", ".join(f"{p}<name>" for p in _FAMILIES)
    return f"unknown task '{task}'; known: {', '.join(known_tasks())}, {families}"


def env_factory(task: str) -> EnvFactory:
    """``factory(num_envs, device=, seed=)`` building ``task``; picklable (by reference) where the registered
    factory is, so another process can build the task without its registration."""
    problem = task_problem(task)
    if problem is not None:
        raise KeyError(problem)
    if task in _REGISTRY:
        return _REGISTRY[task]
    prefix = next(p for p in _FAMILIES if task.startswith(p))
    return functools.partial(_FAMILIES[prefix][0], task[len(prefix):])


def make_env(task: str, num_envs: int, device: str | torch.device = "cpu", seed: int = 0) -> VecEnv:
    """Build ``num_envs`` environments of ``task`` on ``device``."""
    return env_factory(task)(num_envs, device=device, seed=seed)


__all__ = ["ONE_SIMULATION_PER_PROCESS", "StepResult", "VecEnv", "env_factory", "known_tasks", "make_env", "register",
           "task_problem"]
