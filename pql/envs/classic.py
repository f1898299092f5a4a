"""Batched torch ports of gymnasium's classic-control continuous tasks.

Each task keeps its state as ``[N]`` tensors and steps all environments with a
handful of element-wise ops: no Python loop over environments, no host sync.
``dtype=torch.float64`` reproduces gymnasium's arithmetic (tests compare the two).
"""

from __future__ import annotations

import abc
import math

import torch

from pql.envs.contract import StepResult, VecEnv


class TorchClassicEnv(VecEnv):
    """Shared episode bookkeeping: time limit, auto-reset, final observation, seeded resets.

    Subclasses describe one task through ``_initial_state``, ``_dynamics`` and
    ``_observe``; the state is a tuple of ``[N]`` tensors.
    """

    obs_dim: int
    act_dim: int = 1

    def __init__(self, num_envs: int, device: str | torch.device = "cpu", seed: int = 0,
                 dtype: torch.dtype = torch.float32, max_episode_steps: int | None = None) -> None:
        self.num_envs = num_envs
        self.device = torch.device(device)
        self.dtype = dtype
        self.max_episode_steps = max_episode_steps if max_episode_steps is not None else self.default_time_limit
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed)
        self.elapsed = torch.zeros(num_envs, dtype=torch.long, device=self.device)
        self.state = self._initial_state(num_envs)

    default_time_limit: int

    @property
    def bytes_per_env(self) -> int:
        """Bytes of state held per environment: the state components and the step counter."""
        return sum(s.element_size() for s in self.state) + self.elapsed.element_size()

    def _uniform(self, n: int, low: float, high: float) -> torch.Tensor:
        u = torch.rand(n, generator=self.generator, device=self.device, dtype=self.dtype)
        return low + (high - low) * u

    @abc.abstractmethod
    def _initial_state(self, n: int) -> tuple[torch.Tensor, ...]:
        """Fresh states for n environments, each component ``[n]``."""

    @abc.abstractmethod
    def _dynamics(self, state: tuple[torch.Tensor, ...], action: torch.Tensor
                  ) -> tuple[tuple[torch.Tensor, ...], torch.Tensor, torch.Tensor]:
        """One step from ``state`` with ``action [N, A]``: (next state, reward [N], terminated [N])."""

    @abc.abstractmethod
    def _observe(self, state: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """Observation ``[N, D]`` of ``state``."""

    def reset(self) -> torch.Tensor:
        """Reset every env; the first observations ``[N, obs_dim]``."""
        self.state = self._initial_state(self.num_envs)
        self.elapsed.zero_()
        return self._observe(self.state)

    def set_episode_steps(self, steps: torch.Tensor) -> None:
        """Steps into the current episodes ``[N]`` (long)."""
        self.elapsed.copy_(steps.to(self.elapsed))

    def step(self, actions: torch.Tensor) -> StepResult:
        """Step every env with ``actions [N, act_dim]`` in env units; an env that ends resets itself."""
        state, reward, terminated = self._dynamics(self.state, actions.to(self.device))
        self.elapsed += 1
        truncated = self.elapsed >= self.max_episode_steps
        final_obs = self._observe(state)
        done = terminated | truncated
        # Most steps end no episode. Asking costs a host sync, free on a CPU only; a GPU always draws.
        if self.device.type == "cpu" and not bool(done.any()):
            self.state = state
            return final_obs, reward, terminated, truncated, {"final_obs": final_obs}
        fresh = self._initial_state(self.num_envs)
        self.state = tuple(torch.where(done, f, s) for f, s in zip(fresh, state, strict=True))
        self.elapsed = torch.where(done, 0, self.elapsed)
        obs = torch.where(done.unsqueeze(-1), self._observe(self.state), final_obs)
        return obs, reward, terminated, truncated, {"final_obs": final_obs}


class Pendulum(TorchClassicEnv):
    """gymnasium ``Pendulum-v1``: swing up and balance; obs (cos th, sin th, th_dot), torque in [-2, 2]."""

    obs_dim = 3
    default_time_limit = 200
    max_speed, max_torque, dt, g, m, length = 8.0, 2.0, 0.05, 10.0, 1.0, 1.0

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.action_low = torch.full((1,), -self.max_torque, device=self.device, dtype=self.dtype)
        self.action_high = -self.action_low

    def _initial_state(self, n: int) -> tuple[torch.Tensor, ...]:
        return self._uniform(n, -math.pi, math.pi), self._uniform(n, -1.0, 1.0)

    def _dynamics(self, state, action):
        th, thdot = state
        # gymnasium keeps the float32 action in float32 for the two torque terms.
        u = action[:, 0].to(torch.float32).clamp(-self.max_torque, self.max_torque)
        torque_accel = (3.0 / (self.m * self.length**2) * u).to(self.dtype)
        torque_cost = (0.001 * u**2).to(self.dtype)
        norm_th = torch.remainder(th + math.pi, 2 * math.pi) - math.pi
        costs = norm_th**2 + 0.1 * thdot**2 + torque_cost
        newthdot = thdot + (3 * self.g / (2 * self.length) * torch.sin(th) + torque_accel) * self.dt
        newthdot = newthdot.clamp(-self.max_speed, self.max_speed)
        newth = th + newthdot * self.dt
        return (newth, newthdot), -costs, torch.zeros_like(th, dtype=torch.bool)

    def _observe(self, state):
        th, thdot = state
        return torch.stack((torch.cos(th), torch.sin(th), thdot), dim=-1)


class MountainCarContinuous(TorchClassicEnv):
    """gymnasium ``MountainCarContinuous-v0``: reach x >= 0.45; obs (x, v), force in [-1, 1]."""

    obs_dim = 2
    default_time_limit = 999
    min_position, max_position, max_speed = -1.2, 0.6, 0.07
    goal_position, goal_velocity, power = 0.45, 0.0, 0.0015

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.action_low = torch.full((1,), -1.0, device=self.device, dtype=self.dtype)
        self.action_high = -self.action_low

    def _initial_state(self, n: int) -> tuple[torch.Tensor, ...]:
        return self._uniform(n, -0.6, -0.4), torch.zeros(n, device=self.device, dtype=self.dtype)

    def _dynamics(self, state, action):
        position, velocity = state
        a = action[:, 0].to(self.dtype)
        force = a.clamp(-1.0, 1.0)
        velocity = velocity + force * self.power - 0.0025 * torch.cos(3 * position)
        velocity = velocity.clamp(-self.max_speed, self.max_speed)
        position = (position + velocity).clamp(self.min_position, self.max_position)
        velocity = torch.where((position == self.min_position) & (velocity < 0), 0.0, velocity)
        terminated = (position >= self.goal_position) & (velocity >= self.goal_velocity)
        reward = 100.0 * terminated.to(self.dtype) - 0.1 * a**2
        return (position, velocity), reward, terminated

    def _observe(self, state):
        return torch.stack(state, dim=-1)
