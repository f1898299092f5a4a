"""The actor: steps the environments with exploration noise and hands n-step transitions on.

Actions inside the workers are in [-1, 1]; only the environments see their own units.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from pql.buffers import NStepWindow, Transitions
from pql.devices import set_generator_state
from pql.envs import VecEnv
from pql.nets import OffPolicyActor
from pql.normalizer import RunningNormalizer
from pql.speed import Speed, timed_warm_up


def to_env_units(action: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """Map ``action [B, A]`` from [-1, 1] to ``[low, high]`` (each ``[A]``)."""
    return low + (action + 1.0) * 0.5 * (high - low)


def exploration_std(kind: str, num_envs: int, sigma_min: float, sigma_max: float, sigma: float,
                    device: torch.device | str, generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-env noise std ``[N]``: linspace(sigma_min, sigma_max, N) for 'mixed', sigma everywhere for 'fixed',
    drawn from U[sigma_min, sigma_max] with ``generator`` for 'per_episode' (FastTD3's, redrawn by the actor
    for each env whose episode ends)."""
    if kind == "mixed":
        return torch.linspace(sigma_min, sigma_max, num_envs, device=device)
    if kind == "per_episode":
        return uniform_std(num_envs, sigma_min, sigma_max, generator, device)
    return torch.full((num_envs,), sigma, device=device)


def uniform_std(num_envs: int, low: float, high: float, generator: torch.Generator | None,
                device: torch.device | str) -> torch.Tensor:
    """``[N]`` stds drawn from U[low, high]."""
    return low + (high - low) * torch.rand(num_envs, generator=generator, device=device)


class EpisodeReturns:
    """Running undiscounted returns of N environments and the tally of finished episodes (no host sync)."""

    def __init__(self, num_envs: int, device: torch.device, dtype: torch.dtype) -> None:
        self.current = torch.zeros(num_envs, device=device, dtype=dtype)
        self.finished_sum = torch.zeros((), device=device, dtype=torch.float64)
        self.finished_count = torch.zeros((), device=device, dtype=torch.long)

    def record(self, reward: torch.Tensor, done: torch.Tensor) -> None:
        """Add one step's ``reward [N]``; close the episodes where ``done [N]``."""
        self.current += reward
        self.finished_sum += (self.current * done).sum()
        self.finished_count += done.sum()
        self.current.masked_fill_(done, 0.0)

    def take_totals(self) -> tuple[float, int]:
        """(sum, count) of the returns of the episodes finished since the last call; resets the tally."""
        total, count = float(self.finished_sum), int(self.finished_count)
        self.finished_sum.zero_()
        self.finished_count.zero_()
        return total, count

    def take_mean(self) -> float:
        """Mean return of the episodes finished since the last call (NaN if none); resets the tally."""
        total, count = self.take_totals()
        return total / count if count else float("nan")


class ActorWorker:
    """Steps all N environments with the policy plus per-env Gaussian noise and emits n-step transitions."""

    def __init__(self, env: VecEnv, policy: OffPolicyActor, normalizer: RunningNormalizer, noise_std: torch.Tensor,
                 window: NStepWindow, reward_scale: float, generator: torch.Generator,
                 speed: Speed | None = None, eval_slice: int = 0,
                 redraw_range: tuple[float, float] | None = None, fold_obs: bool = True,
                 correlation: float = 0.0) -> None:
        self.env, self.policy, self.normalizer = env, policy, normalizer
        self.fold_obs = fold_obs  # False: the V-learner owns the normaliser (algo.obs_norm_replay) and folds them
        self.noise_std = noise_std[:, None]  # [N, 1]
        self.redraw_range = redraw_range  # (low, high): an env's std is redrawn from U[low, high] when its episode ends
        self.window, self.reward_scale, self.generator = window, reward_scale, generator
        self.correlation = correlation  # rho of each env's AR(1) noise (0: white, and no state kept)
        self.noise = torch.zeros(env.num_envs, env.act_dim, device=env.device) if correlation else None  # [N, A]
        self.fresh = torch.ones(env.num_envs, 1, dtype=torch.bool, device=env.device) if correlation else None
        self.speed = speed or Speed(device=env.device)
        self._act = self.speed.compile(self._explore)
        self.obs = env.reset()
        # The first ``eval_slice`` envs act without noise; their episodes are the evaluation (simulators
        # with one simulation per process, which cannot make separate evaluation envs).
        self.eval_slice = eval_slice
        self.episodes = EpisodeReturns(env.num_envs - eval_slice, env.device, env.dtype)
        self.eval_episodes = EpisodeReturns(eval_slice, env.device, env.dtype)

    def _explore(self, obs: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Exploration actions ``[N, A]`` of raw ``obs [N, D]`` given standard normal ``noise [N, A]``."""
        return self.policy.explore(self.normalizer(obs), self.noise_std, noise)

    def warm_up(self) -> float:
        """Compile the policy step on stand-in inputs; returns the seconds it took (0 when not compiling)."""
        if not self.speed.compiling:
            return 0.0
        env = self.env
        obs = torch.zeros(env.num_envs, env.obs_dim, device=env.device, dtype=env.dtype)
        noise = torch.zeros(env.num_envs, env.act_dim, device=env.device)
        with torch.no_grad():
            return timed_warm_up([lambda: self._act(obs, noise)], env.device)

    @property
    def emitting(self) -> bool:
        """Whether the next step emits transitions (the n-step window is full)."""
        return self.window.filled == self.window.n

    @torch.no_grad()
    def step(self, random: bool = False) -> Transitions | None:
        """One step of every env; ``random`` draws uniform actions (warm-up). Returns n-step transitions or None."""
        env = self.env
        if self.fold_obs:
            self.normalizer.update(self.obs)
        shape = (env.num_envs, env.act_dim)
        if random:
            action = torch.rand(shape, generator=self.generator, device=env.device) * 2 - 1
            if self.fresh is not None:
                self.fresh.fill_(True)
        else:
            noise = self._noise(torch.randn(shape, generator=self.generator, device=env.device))
            if self.eval_slice:
                noise[:self.eval_slice] = 0.0  # the deterministic action, for any policy's explore()
            self.speed.begin_step()
            action = self.speed.kept(self._act(self.obs, noise))  # the window keeps it past the next replay
        next_obs, reward, terminated, truncated, info = env.step(to_env_units(action, env.action_low, env.action_high))
        done, k = terminated | truncated, self.eval_slice
        if self.fresh is not None:
            self.fresh.copy_(done[:, None])
        if self.redraw_range is not None:
            fresh = uniform_std(env.num_envs, *self.redraw_range, self.generator, env.device)
            self.noise_std.copy_(torch.where(done[:, None], fresh[:, None], self.noise_std))  # in place: no sync
        self.episodes.record(reward[k:], done[k:])
        if k:
            self.eval_episodes.record(reward[:k], done[:k])
        out = self.window.push(self.obs, action, reward * self.reward_scale, info["final_obs"], terminated, truncated)
        self.obs = next_obs
        return out

    def _noise(self, draws: torch.Tensor) -> torch.Tensor:
        """This step's standard normal noise ``[N, A]`` from fresh ``draws [N, A]``: the draws themselves (white
        noise), or with ``correlation`` rho each env's AR(1) step rho n + sqrt(1 - rho^2) draws, restarted from the
        draws where the env's episode began."""
        if self.noise is None or self.fresh is None:
            return draws
        rho = self.correlation
        self.noise.copy_(torch.where(self.fresh, draws, rho * self.noise + math.sqrt(1.0 - rho * rho) * draws))
        return self.noise.clone()

    def state_dict(self) -> dict[str, Any]:
        """The actor's part of a checkpoint: normaliser, the noise and reset generators, and the per-env noise
        std where it is redrawn per episode."""
        state = {"normalizer": self.normalizer.state_dict(),
                 "rng": {"actor": self.generator.get_state(), "env": self.env.generator.get_state()}}
        if self.redraw_range is not None:
            state["noise_std"] = self.noise_std[:, 0].cpu()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint (any dict holding :meth:`state_dict`'s keys); the envs restart."""
        self.normalizer.load_state_dict(state["normalizer"])
        set_generator_state(self.generator, state["rng"]["actor"])
        set_generator_state(self.env.generator, state["rng"]["env"])
        if "noise_std" in state:
            self.noise_std.copy_(state["noise_std"].to(self.noise_std.device)[:, None])
        self.obs = self.env.reset()
        if self.fresh is not None:
            self.fresh.fill_(True)  # every env starts a new episode, and its noise process with it
