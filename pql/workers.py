"""The three PQL workers and the evaluator, as plain classes with ``step()`` / ``update()``.

They share nothing but what the trainer hands them: each owns its networks and
buffer on its own device. Actions inside the workers are in [-1, 1]; only the
environments see their own units.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from pql.algos.base import ActorObjective, CriticHead
from pql.buffers import NStepWindow, RingBuffer, Transitions
from pql.config import AlgoConfig
from pql.envs import VecEnv
from pql.nets import OffPolicyActor
from pql.normalizer import RunningNormalizer


def to_env_units(action: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """Map ``action [B, A]`` from [-1, 1] to ``[low, high]`` (each ``[A]``)."""
    return low + (action + 1.0) * 0.5 * (high - low)


def exploration_std(kind: str, num_envs: int, sigma_min: float, sigma_max: float, sigma: float,
                    device: torch.device | str) -> torch.Tensor:
    """Per-env noise std ``[N]``: linspace(sigma_min, sigma_max, N) for 'mixed', sigma everywhere for 'fixed'."""
    if kind == "mixed":
        return torch.linspace(sigma_min, sigma_max, num_envs, device=device)
    return torch.full((num_envs,), sigma, device=device)


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

    def take_mean(self) -> float:
        """Mean return of the episodes finished since the last call (NaN if none); resets the tally."""
        count = int(self.finished_count)
        mean = float(self.finished_sum) / count if count else float("nan")
        self.finished_sum.zero_()
        self.finished_count.zero_()
        return mean


class ActorWorker:
    """Steps all N environments with the policy plus per-env Gaussian noise and emits n-step transitions."""

    def __init__(self, env: VecEnv, policy: OffPolicyActor, normalizer: RunningNormalizer, noise_std: torch.Tensor,
                 window: NStepWindow, reward_scale: float, generator: torch.Generator) -> None:
        self.env, self.policy, self.normalizer = env, policy, normalizer
        self.noise_std = noise_std[:, None]  # [N, 1]
        self.window, self.reward_scale, self.generator = window, reward_scale, generator
        self.obs = env.reset()
        self.episodes = EpisodeReturns(env.num_envs, env.device, env.dtype)

    @property
    def emitting(self) -> bool:
        """Whether the next step emits transitions (the n-step window is full)."""
        return self.window.filled == self.window.n

    @torch.no_grad()
    def step(self, random: bool = False) -> Transitions | None:
        """One step of every env; ``random`` draws uniform actions (warm-up). Returns n-step transitions or None."""
        env = self.env
        self.normalizer.update(self.obs)
        shape = (env.num_envs, env.act_dim)
        if random:
            action = torch.rand(shape, generator=self.generator, device=env.device) * 2 - 1
        else:
            action = self.policy.explore(self.normalizer(self.obs), self.noise_std, self.generator)
        next_obs, reward, terminated, truncated, info = env.step(to_env_units(action, env.action_low, env.action_high))
        self.episodes.record(reward, terminated | truncated)
        out = self.window.push(self.obs, action, reward * self.reward_scale, info["final_obs"], terminated, truncated)
        self.obs = next_obs
        return out

    def state_dict(self) -> dict[str, Any]:
        """The actor's part of a checkpoint: normaliser and the noise and reset generators."""
        return {"normalizer": self.normalizer.state_dict(),
                "rng": {"actor": self.generator.get_state(), "env": self.env.generator.get_state()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint (any dict holding :meth:`state_dict`'s keys); the envs restart."""
        self.normalizer.load_state_dict(state["normalizer"])
        self.generator.set_state(state["rng"]["actor"])
        self.env.generator.set_state(state["rng"]["env"])
        self.obs = self.env.reset()


class VLearner:
    """Owns the transition buffer and the twin critic; one ``update()`` is one critic gradient step."""

    def __init__(self, critic: nn.Module, head: CriticHead, policy: OffPolicyActor,
                 normalizer: RunningNormalizer, buffer: RingBuffer, cfg: AlgoConfig,
                 generator: torch.Generator) -> None:
        self.critic, self.head, self.policy, self.normalizer = critic, head, policy, normalizer
        self.target = copy.deepcopy(critic).requires_grad_(False)
        self.buffer, self.cfg, self.generator = buffer, cfg, generator
        self.optimizer = torch.optim.AdamW(critic.parameters(), lr=cfg.critic_lr)
        self._params = list(critic.parameters())
        self._target_params = list(self.target.parameters())

    def add(self, rows: torch.Tensor) -> torch.Tensor:
        """Store packed transitions ``[B, 2D + A + 2]`` (:meth:`Transitions.packed`); returns the buffer's storage."""
        return self.buffer.add_rows(rows)

    def state_dict(self) -> dict[str, Any]:
        """The V-learner's part of a checkpoint."""
        return {"critic": self.critic.state_dict(), "critic_target": self.target.state_dict(),
                "critic_optimizer": self.optimizer.state_dict(), "rng": {"v": self.generator.get_state()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.critic.load_state_dict(state["critic"])
        self.target.load_state_dict(state["critic_target"])
        self.optimizer.load_state_dict(state["critic_optimizer"])
        self.generator.set_state(state["rng"]["v"])

    def update(self) -> torch.Tensor:
        """One critic step on a sampled batch; returns the (detached) loss."""
        cfg = self.cfg
        batch = self.buffer.sample(cfg.batch_size, self.generator)
        obs, next_obs = self.normalizer(batch["obs"]), self.normalizer(batch["next_obs"])
        with torch.no_grad():
            next_action, bonus = self.policy.target_action(next_obs, self.generator, cfg.target_noise_std,
                                                           cfg.target_noise_clip)
            target_out = self.target(next_obs, next_action)
        loss = self.head.critic_loss(self.critic(obs, batch["action"]), target_out, batch["ret"], batch["discount"],
                                     bonus)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.max_grad_norm > 0:
            nn.utils.clip_grad_norm_(self._params, cfg.max_grad_norm)
        self.optimizer.step()
        with torch.no_grad():
            torch._foreach_lerp_(self._target_params, self._params, cfg.tau)
        return loss.detach()


class PLearner:
    """Owns the observation buffer and the policy; ``update()`` is one step of the algorithm's actor
    objective (:class:`~pql.algos.base.ActorObjective`) against its copy of the critic."""

    def __init__(self, policy: OffPolicyActor, head: CriticHead, critic: nn.Module, objective: ActorObjective,
                 normalizer: RunningNormalizer, buffer: RingBuffer, cfg: AlgoConfig,
                 generator: torch.Generator) -> None:
        self.policy, self.head, self.objective, self.normalizer = policy, head, objective, normalizer
        self.critic = critic.requires_grad_(False)
        self.buffer, self.cfg, self.generator = buffer, cfg, generator
        self._policy_params = objective.parameters()
        self.optimizer = torch.optim.AdamW(self._policy_params, lr=cfg.actor_lr)

    def add(self, rows: torch.Tensor) -> torch.Tensor:
        """Store the observations of packed transitions ``[B, >= D]`` (their first D columns); returns the
        buffer's storage."""
        return self.buffer.add_rows(rows[:, :self.buffer.width])

    def q(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """Q-values ``[2, B]`` of the critic copy at ``obs [B, D]``, ``action [B, A]``."""
        return self.head.q_values(self.critic(obs, action))

    def state_dict(self) -> dict[str, Any]:
        """The P-learner's part of a checkpoint."""
        return {"policy": self.policy.state_dict(), "policy_optimizer": self.optimizer.state_dict(),
                "objective": self.objective.state_dict(), "rng": {"p": self.generator.get_state()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.policy.load_state_dict(state["policy"])
        self.optimizer.load_state_dict(state["policy_optimizer"])
        self.objective.load_state_dict(state["objective"])
        self.generator.set_state(state["rng"]["p"])

    def update(self) -> torch.Tensor:
        """One policy step (then the objective's own, e.g. SAC's temperature) on sampled observations;
        returns the policy loss."""
        obs = self.normalizer(self.buffer.sample(self.cfg.batch_size, self.generator)["obs"])
        loss = self.objective.loss(obs, self.q, self.generator)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.max_grad_norm > 0:
            nn.utils.clip_grad_norm_(self._policy_params, self.cfg.max_grad_norm)
        self.optimizer.step()
        self.objective.after_step()
        return loss.detach()


class Evaluator:
    """Runs the deterministic policy (no noise) for one full episode on separate environments."""

    def __init__(self, env: VecEnv, policy: nn.Module, normalizer: RunningNormalizer, max_steps: int = 10_000) -> None:
        self.env, self.policy, self.normalizer = env, policy, normalizer
        self.max_steps = env.max_episode_steps or max_steps

    @torch.no_grad()
    def run(self) -> float:
        """Mean undiscounted return of the first episode of every evaluation env."""
        env = self.env
        obs = env.reset()
        returns = torch.zeros(env.num_envs, device=env.device, dtype=torch.float64)
        active = torch.ones(env.num_envs, device=env.device, dtype=torch.bool)
        for _ in range(self.max_steps):
            action = to_env_units(self.policy(self.normalizer(obs)), env.action_low, env.action_high)
            obs, reward, terminated, truncated, _ = env.step(action)
            returns += reward * active
            active &= ~(terminated | truncated)
        return float(returns.mean())
