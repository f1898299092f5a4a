"""PPO as Isaac Gym users know it (rl_games style): its Gaussian policy, GAE, the clipped losses, the
adaptive learning rate. The rollouts and updates are :class:`pql.training.on_policy.PPOTrainer`'s.

Shapes: H horizon steps, N environments, A action size, M minibatch rows.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

from pql.algos.base import Algorithm
from pql.config import Config
from pql.envs import ONE_SIMULATION_PER_PROCESS
from pql.nets import mlp


class PPOPolicy(nn.Module):
    """PPO's Gaussian policy: mean from an MLP, a state-independent log std; ``forward`` is the
    deterministic action clamp(mean, -1, 1) ``[B, A]`` (actions are clipped only for the env)."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: tuple[int, ...], init_log_std: float = 0.0,
                 activation: str = "elu", layer_norm: bool = False) -> None:
        super().__init__()
        self.net = mlp([obs_dim, *hidden, act_dim], activation=activation, layer_norm=layer_norm)
        self.log_std = nn.Parameter(torch.full((act_dim,), init_log_std))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """The mean action ``[B, A]``, clamped to [-1, 1] (the deterministic action)."""
        return self.net(obs).clamp(-1.0, 1.0)

    def distribution(self, obs: torch.Tensor) -> torch.distributions.Normal:
        """The action distribution, ``[B, A]`` independent Gaussians."""
        mean = self.net(obs)
        return torch.distributions.Normal(mean, self.log_std.exp().expand_as(mean))


class Advantages(NamedTuple):
    """GAE's output for a rollout: the advantages and the value targets, each ``[H, N]``."""
    advantages: torch.Tensor  # [H, N]
    returns: torch.Tensor  # [H, N], the value targets: advantages + values


def bootstrap_truncated(rewards: torch.Tensor, truncated: torch.Tensor, terminated: torch.Tensor,
                        final_values: torch.Tensor, gamma: float) -> torch.Tensor:
    """Rewards ``[H, N]`` with gamma * V(true final obs) added where the time limit cut an episode
    (and it did not also terminate): a truncation is not the end of the task, so its value is kept."""
    return rewards + gamma * final_values * (truncated & ~terminated).to(rewards.dtype)


def gae(rewards: torch.Tensor, values: torch.Tensor, next_value: torch.Tensor, done: torch.Tensor,
        gamma: float, lam: float) -> Advantages:
    """Generalised advantage estimation over a rollout.

    rewards, values ``[H, N]``; next_value ``[N]`` the value of the observation after the last
    step; done ``[H, N]`` bool, the episode ended at step t (terminated or truncated; a
    truncation's value is already in its reward, see :func:`bootstrap_truncated`).
    """
    advantages = torch.zeros_like(rewards)
    last = torch.zeros_like(next_value)
    for t in reversed(range(rewards.shape[0])):
        following = next_value if t == rewards.shape[0] - 1 else values[t + 1]
        alive = (~done[t]).to(rewards.dtype)
        delta = rewards[t] + gamma * following * alive - values[t]
        last = delta + gamma * lam * alive * last
        advantages[t] = last
    return Advantages(advantages, advantages + values)


class Losses(NamedTuple):
    """PPO's loss terms for one minibatch, each a scalar tensor."""
    policy: torch.Tensor
    value: torch.Tensor
    entropy: torch.Tensor
    bounds: torch.Tensor
    total: torch.Tensor
    kl: torch.Tensor


SOFT_BOUND = 1.1  # rl_games': the policy mean may pass the action clip at +-1 by this much before it costs


def bounds_loss(mean: torch.Tensor) -> torch.Tensor:
    """rl_games' bounds loss of policy means ``[M, A]``: the squared distance beyond +-SOFT_BOUND, summed over
    actions and averaged over rows. Without it nothing holds a clipped Gaussian's mean near the action
    range: once it is far outside, every sampled action clips to the same bound and the advantages no
    longer say which way to move it."""
    beyond = (mean - SOFT_BOUND).clamp(min=0.0) ** 2 + (mean + SOFT_BOUND).clamp(max=0.0) ** 2
    return beyond.sum(-1).mean()


def ppo_losses(dist: torch.distributions.Normal, old_mean: torch.Tensor, old_std: torch.Tensor,
               actions: torch.Tensor, old_log_prob: torch.Tensor, advantages: torch.Tensor,
               values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, clip: float,
               value_clip: bool, value_coef: float, entropy_coef: float, bounds_coef: float) -> Losses:
    """Clipped surrogate, (clipped) value loss, the entropy bonus and the bounds loss on one minibatch of M rows.

    ``total = policy + value_coef * value - entropy_coef * entropy + bounds_coef * bounds``: a positive
    ``entropy_coef`` rewards a wider policy (the reference code subtracted a constant instead).
    """
    log_prob = dist.log_prob(actions).sum(-1)
    ratio = torch.exp(log_prob - old_log_prob)
    policy = torch.max(-advantages * ratio, -advantages * ratio.clamp(1.0 - clip, 1.0 + clip)).mean()
    if value_clip:
        clipped = old_values + (values - old_values).clamp(-clip, clip)
        value = torch.max((values - returns) ** 2, (clipped - returns) ** 2).mean()
    else:
        value = ((values - returns) ** 2).mean()
    entropy = dist.entropy().sum(-1).mean()
    bounds = bounds_loss(dist.mean)
    with torch.no_grad():
        old = torch.distributions.Normal(old_mean, old_std)
        kl = torch.distributions.kl_divergence(old, dist).sum(-1).mean()
    total = policy + value_coef * value - entropy_coef * entropy + bounds_coef * bounds
    return Losses(policy, value, entropy, bounds, total, kl)


def adapt_learning_rate(lr: float, kl: float, threshold: float, low: float = 1e-6, high: float = 1e-2) -> float:
    """rl_games' adaptive schedule: divide by 1.5 when KL > 2 threshold, multiply when KL < threshold / 2."""
    if math.isfinite(kl) and kl > 2.0 * threshold:
        return max(lr / 1.5, low)
    if math.isfinite(kl) and kl < 0.5 * threshold:
        return min(lr * 1.5, high)
    return lr


def minibatch_problem(cfg: Config) -> str | None:
    """Why ``algo.ppo.minibatch_size`` cannot be drawn from a rollout: it holds more rows than the rollout
    (horizon x the exploring envs; with one simulation per process the evaluation slice does not explore)."""
    ppo = cfg.algo.ppo
    evals = cfg.eval_envs if cfg.task.startswith(ONE_SIMULATION_PER_PROCESS) else 0
    explorers = cfg.num_envs - evals
    if ppo.minibatch_size <= ppo.horizon * explorers:
        return None
    return (f"algo.ppo.minibatch_size ({ppo.minibatch_size}) is larger than a rollout (algo.ppo.horizon x "
            f"{'the exploring envs' if evals else 'num_envs'} = {ppo.horizon * explorers})")


ALGORITHM = Algorithm(
    name="ppo", label="PPO", color="#2ca02c", trainer="on-policy", modes=("sync",),
    make_policy=lambda algo, obs_dim, act_dim: PPOPolicy(obs_dim, act_dim, algo.actor_hidden, algo.ppo.init_log_std,
                                                         algo.activation, algo.layer_norm),
    owns=("ppo",), check=minibatch_problem,
    identity_defaults={"algo.ppo.bounds_loss_coef": "0.0", "algo.ppo.stagger_episodes": "False"},
)
