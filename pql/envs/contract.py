"""The vectorised environment contract every backend implements.

All tensors live on ``env.device``. N = ``num_envs``, D = ``obs_dim``,
A = ``act_dim``; float tensors have dtype ``env.dtype`` (float32 unless asked).

- ``reset() -> obs``: obs ``[N, D]`` float. Starts every environment afresh.
- ``step(actions) -> (obs, reward, terminated, truncated, info)``:
  actions ``[N, A]`` float in the environment's own units (``action_low`` ..
  ``action_high``, each ``[A]``); obs ``[N, D]`` float, the observation to act on
  next (already the first observation of a new episode where one ended);
  reward ``[N]`` float; terminated ``[N]`` bool, the episode reached a terminal
  state (no bootstrapping); truncated ``[N]`` bool, the time limit cut the episode
  (bootstrapping continues; may coincide with terminated, which then wins);
  info ``{"final_obs": [N, D]}``, the true observation reached by this step:
  the episode's last observation where terminated | truncated, else equal to obs.

``max_episode_steps`` is the time limit in steps (None: none); Isaac Gym tasks and some
Isaac Lab tasks truncate at ``max_episode_length - 1`` steps, so for them it is an upper bound.

``reset_deferred`` is True for backends that restart a finished environment only during
the next step (Isaac Gym): there obs equals final_obs on the step that ended an episode,
and the new episode's first observation comes one step later.

``compile_s`` is the time a backend spent compiling its simulation (Playground's JAX jit), all
of it done by the first ``reset``, so that no step pays for it.

``set_episode_steps(steps)`` moves each environment's count of steps into its current episode to
``steps [N]`` (long, each below ``max_episode_steps``) without touching its state, so that the time
limit cuts the first episodes at different steps; a backend that cannot raises NotImplementedError.

``generator`` is the torch.Generator behind the environments' resets; checkpoints save
its state so that a resumed run resets as the uninterrupted one would have.
"""

from __future__ import annotations

import abc
from typing import Any

import torch

StepResult = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, dict[str, Any]]


class VecEnv(abc.ABC):
    """A batch of N environments stepped together; see the module docstring for shapes."""

    num_envs: int
    obs_dim: int
    act_dim: int
    device: torch.device
    dtype: torch.dtype
    action_low: torch.Tensor  # [A]
    action_high: torch.Tensor  # [A]
    max_episode_steps: int | None
    generator: torch.Generator
    reset_deferred: bool = False
    compile_s: float = 0.0  # seconds spent compiling the simulation (JAX's jit), all before the first step

    @abc.abstractmethod
    def reset(self) -> torch.Tensor:
        """Reset all environments; returns obs ``[N, D]``."""

    @abc.abstractmethod
    def step(self, actions: torch.Tensor) -> StepResult:
        """Advance every environment by one step with ``actions [N, A]``; auto-resets finished ones."""

    def set_episode_steps(self, steps: torch.Tensor) -> None:
        """Set each environment's count of steps into its current episode to ``steps [N]`` (long)."""
        raise NotImplementedError(f"{type(self).__name__} cannot set its episodes' step counts")

