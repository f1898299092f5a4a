"""FastSAC (Amazon FAR 2025; github amazon-far/holosoma, read at commit fc600e7): SAC with twin C51 critics.

What makes it FastSAC here, beside its presets (``pql/presets.yaml``, each value's source named there):

- the policy (:class:`FastSACActor`): a Gaussian whose log std is tanh-rescaled into [-5, 0], heads initialised
  at zero, LayerNorm then SiLU in every hidden layer (``agents/fast_sac/fast_sac.py`` Actor);
- each critic regresses to its own target critic's projected distribution, no min (:class:`IndependentCategoricalHead`);
- the actor maximises the mean of the two critics, minus alpha log pi (``fast_sac_agent.py`` ``_update_pol``);
- the temperature is carried by the critic and stepped by the V-learner with every critic update, on the
  next-state log-probs of that update's target (``_update_main``), from alpha 0.001 toward the target entropy
  -|A| x ``algo.fast_sac.target_entropy_ratio`` (0).

Its other pieces are options of the shared workers: AdamW's weight decay and betas, per-env sampling of a per-env
sized buffer, warm-up with the policy, the normaliser folding in replay batches only (``algo.obs_norm_replay`` with
``algo.obs_norm_acting=false``). Differences left: the policy step follows critic updates 4 and 8 of a step (ours:
the ratio controller's order), theirs 2 and 6; theirs splits one per-env draw into 8 blocks of envs, ours draws each
update from every env; their normaliser adds 0.01 to the std and does not clip, ours adds 1e-8 to the variance and
clips at ``algo.obs_clip``. Their humanoid parts (symmetry augmentation, joint-limit action scaling, asymmetric
critic observations) are out of scope.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from pql.algos.base import ACTOR_CRITIC_LEARNERS, Algorithm, QFunction, owned
from pql.algos.critic_heads import IndependentCategoricalHead
from pql.algos.pql_d import atoms_problem, with_value_support
from pql.config import AlgoConfig, Range
from pql.nets import SampledActor, Temperature, TwinCritic, mlp


@dataclass(frozen=True)
class FastSACKeys:
    """FastSAC's own keys: ``algo.fast_sac.*``."""

    target_entropy_ratio: float = field(default=0.0, metadata={"help": "the temperature's target entropy is "
                                                               "-|A| x this (holosoma's 0.0; 0.5 in its WBT runs)"})


class FastSACActor(SampledActor):
    """FastSAC's tanh-squashed Gaussian policy: ``forward`` is tanh(mean) ``[B, A]`` (evaluation, export),
    :meth:`sample` a reparameterised draw with its log-probability, :meth:`explore` the draw (no other noise)."""

    log_std_min, log_std_max = -5.0, 0.0  # config_values/algo.py: log_std_min, log_std_max

    def __init__(self, obs_dim: int, act_dim: int, hidden: tuple[int, ...], activation: str = "silu",
                 layer_norm: bool = True) -> None:
        super().__init__()
        self.net = mlp([obs_dim, *hidden, 2 * act_dim], activation=activation, layer_norm=layer_norm)
        last = self.net[-1]
        nn.init.zeros_(last.weight)  # fc_mu and fc_logstd start at zero: mean 0, log std -2.5
        nn.init.zeros_(last.bias)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """The deterministic action ``[B, A]``: tanh of the Gaussian's mean."""
        return torch.tanh(self.net(obs).chunk(2, dim=-1)[0])

    def sample(self, obs: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(action ``[B, A]`` in (-1, 1), log pi(action | obs) ``[B]``) for standard normal ``eps [B, A]``; the
        squash correction as theirs, log(1 - tanh(u)^2 + 1e-6) (action scale 1)."""
        mean, raw = self.net(obs).chunk(2, dim=-1)
        log_std = self.log_std_min + 0.5 * (self.log_std_max - self.log_std_min) * (torch.tanh(raw) + 1.0)
        u = mean + eps * log_std.exp()
        action = torch.tanh(u)
        gaussian = -0.5 * eps**2 - log_std - 0.5 * math.log(2 * math.pi)
        return action, (gaussian - torch.log(1.0 - action.pow(2) + 1e-6)).sum(-1)

    def explore(self, obs: torch.Tensor, noise_std: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Sampled actions ``[B, A]``: FastSAC explores through its own entropy (``noise_std`` is not used)."""
        return self.sample(obs, noise)[0]


class MeanQObjective:
    """Minimise alpha * log pi(a|s) - mean(Q1, Q2)(s, a) at sampled actions, alpha being the temperature the
    critic copy carries (learned by the V-learner)."""

    stochastic = True

    def __init__(self, policy: FastSACActor, critic: nn.Module, cfg: AlgoConfig) -> None:
        assert isinstance(critic, TwinCritic) and critic.temperature is not None, "FastSAC's critic holds alpha"
        self.policy, self.temperature = policy, critic.temperature

    def parameters(self) -> list[nn.Parameter]:
        """The policy's parameters."""
        return list(self.policy.parameters())

    def loss(self, obs: torch.Tensor, q: QFunction, noise: torch.Tensor | None) -> tuple[torch.Tensor, None]:
        """``alpha * log pi(a|obs) - mean_k Q_k(obs, a)`` for actions sampled with ``noise``, averaged."""
        assert noise is not None, "FastSAC's objective samples actions"
        action, log_prob = self.policy.sample(obs, noise)
        return (self.temperature.alpha() * log_prob - q(obs, action).mean(0)).mean(), None

    def after_step(self, aux: torch.Tensor | None) -> None:
        """Nothing: the V-learner steps the temperature."""

    def optimizers(self) -> list[torch.optim.Optimizer]:
        """No optimisers of its own."""
        return []

    def state_dict(self) -> dict[str, Any] | None:
        """No state of its own (the temperature is the critic's)."""
        return None

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """No state of its own to restore."""


def fast_sac_actor(algo: AlgoConfig, obs_dim: int, act_dim: int) -> FastSACActor:
    """FastSAC's policy, as the config shapes it (widths, activation, LayerNorm)."""
    return FastSACActor(obs_dim, act_dim, algo.actor_hidden, algo.activation, algo.layer_norm)


def temperature(algo: AlgoConfig, act_dim: int) -> Temperature:
    """The critic's temperature: alpha from ``algo.init_temperature``, toward -|A| x the target entropy ratio."""
    return Temperature(algo.init_temperature, -act_dim * algo.fast_sac.target_entropy_ratio)  # type: ignore[attr-defined]


ALGORITHM = Algorithm(
    name="fast_sac", label="FastSAC", color="#e377c2", trainer="actor-critic",
    make_policy=fast_sac_actor,
    make_head=lambda algo, device: IndependentCategoricalHead(algo.num_atoms, algo.v_min, algo.v_max, device),
    make_objective=MeanQObjective,  # type: ignore[arg-type]  # its policy is a FastSACActor
    make_temperature=temperature,
    keys=FastSACKeys, key_ranges={"target_entropy_ratio": Range(0.0)},
    **owned(ACTOR_CRITIC_LEARNERS, {"owns": ("num_atoms", "v_min", "v_max", "init_temperature", "alpha_lr")}),
    check=atoms_problem, derive=with_value_support,
)
