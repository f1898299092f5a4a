"""The evaluation: the deterministic policy, without noise, for one episode on separate environments, or the
first envs of the training batch acting without noise where a simulator runs one simulation per process."""

from __future__ import annotations

import torch
from torch import nn

from pql.config import Config
from pql.envs import ONE_SIMULATION_PER_PROCESS, VecEnv, make_env
from pql.normalizer import RunningNormalizer
from pql.workers.actor import to_env_units

EVAL_SEED_OFFSET = 1_000_003  # evaluation environments are seeded apart from the training ones


def eval_slice(cfg: Config) -> int:
    """How many of the training envs act without noise as the evaluation: ``cfg.eval_envs`` for a simulator
    with one simulation per process (no separate evaluation envs can be made), else 0."""
    return cfg.eval_envs if cfg.task.startswith(ONE_SIMULATION_PER_PROCESS) else 0


def make_eval_env(cfg: Config, device: torch.device) -> VecEnv | None:
    """The separate, separately seeded evaluation environments; None when ``cfg.eval_envs`` is 0 or the
    evaluation is a slice of the training envs (:func:`eval_slice`)."""
    if cfg.eval_envs == 0 or eval_slice(cfg):
        return None
    return make_env(cfg.task, cfg.eval_envs, device=device, seed=cfg.seed + EVAL_SEED_OFFSET)


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
