"""SAC(n): a tanh-squashed Gaussian policy, an entropy bonus in the critic's target and in the policy's
objective, and a learned temperature alpha steered toward the target entropy ``-|A|``."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from pql.algos.base import ACTOR_CRITIC_LEARNERS, Algorithm, QFunction, owned
from pql.algos.critic_heads import ScalarHead
from pql.config import AlgoConfig
from pql.nets import OffPolicyActor, mlp


class GaussianActor(OffPolicyActor):
    """SAC's tanh-squashed Gaussian policy with its learned temperature ``log_alpha``.

    ``forward`` is the deterministic action tanh(mean) ``[B, A]`` (evaluation, export);
    ``sample`` draws reparameterised actions with their log-probabilities ``[B]``.
    """

    log_std_min, log_std_max = -5.0, 5.0  # the authors' bounds

    def __init__(self, obs_dim: int, act_dim: int, hidden: tuple[int, ...], init_temperature: float = 1.0,
                 activation: str = "elu", layer_norm: bool = False) -> None:
        super().__init__()
        self.act_dim = act_dim
        self.net = mlp([obs_dim, *hidden, 2 * act_dim], activation=activation, layer_norm=layer_norm)
        self.log_alpha = nn.Parameter(torch.tensor(math.log(init_temperature)))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """The deterministic action ``[B, A]``: tanh of the Gaussian's mean."""
        mean, _ = self.net(obs).chunk(2, dim=-1)
        return torch.tanh(mean)

    def sample(self, obs: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(action ``[B, A]`` in (-1, 1), log pi(action | obs) ``[B]``) reparameterised by standard normal
        ``eps [B, A]``, differentiable in the network."""
        mean, log_std = self.net(obs).chunk(2, dim=-1)
        log_std = log_std.clamp(self.log_std_min, self.log_std_max)
        u = mean + eps * log_std.exp()
        gaussian = -0.5 * eps**2 - log_std - 0.5 * math.log(2 * math.pi)
        # log|d tanh(u)/du| = log(1 - tanh(u)^2) = 2 (log 2 - u - softplus(-2u)), stable for large |u|
        squash = 2.0 * (math.log(2.0) - u - nn.functional.softplus(-2.0 * u))
        return torch.tanh(u), (gaussian - squash).sum(-1)

    def explore(self, obs: torch.Tensor, noise_std: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Sampled actions; SAC explores through its own entropy, so ``noise_std`` is not used."""
        return self.sample(obs, noise)[0]

    def target_action(self, obs: torch.Tensor, noise: torch.Tensor, noise_std: float,
                      noise_clip: float) -> tuple[torch.Tensor, torch.Tensor | float]:
        """A sampled next action and its entropy bonus -alpha * log pi ``[B]``."""
        action, log_prob = self.sample(obs, noise)
        return action, -self.log_alpha.exp() * log_prob


class EntropyRegularisedObjective:
    """Minimise alpha * log pi(a|s) - min(Q1, Q2)(s, a) at sampled actions; after each policy step, one
    AdamW step of log(alpha) on -log alpha * (log pi + target entropy), with that loss's log pi."""

    stochastic = True

    def __init__(self, policy: GaussianActor, critic: nn.Module, cfg: AlgoConfig) -> None:
        self.policy = policy
        self.target_entropy = -float(policy.act_dim)
        self.temperature_optimizer = torch.optim.AdamW([policy.log_alpha], lr=cfg.alpha_lr, weight_decay=0.0)

    def parameters(self) -> list[nn.Parameter]:
        """The policy network's parameters, without the temperature (it has its own optimiser)."""
        return list(self.policy.net.parameters())

    def loss(self, obs: torch.Tensor, q: QFunction, noise: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """``alpha * log pi(a|obs) - min_k Q_k(obs, a)`` for actions sampled with ``noise``, averaged; the log-probs
        (detached) go to :meth:`after_step`."""
        assert noise is not None, "SAC's objective samples actions"
        action, log_prob = self.policy.sample(obs, noise)
        alpha = self.policy.log_alpha.exp().detach()
        return (alpha * log_prob - q(obs, action).min(0).values).mean(), log_prob.detach()

    def after_step(self, log_prob: torch.Tensor | None) -> None:
        """One step of the temperature: ``log_alpha`` moved so the policy's entropy tends to ``-|A|``."""
        assert log_prob is not None, "after_step follows a loss"
        temperature_loss = -(self.policy.log_alpha * (log_prob + self.target_entropy)).mean()
        self.temperature_optimizer.zero_grad(set_to_none=True)
        temperature_loss.backward()
        self.temperature_optimizer.step()

    def optimizers(self) -> list[torch.optim.Optimizer]:
        """The temperature's optimiser (saved and restored with the P-learner's)."""
        return [self.temperature_optimizer]

    def state_dict(self) -> dict[str, Any] | None:
        """The temperature optimiser's state."""
        return self.temperature_optimizer.state_dict()

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """Restore the temperature optimiser's state."""
        assert state is not None, "a SAC checkpoint holds the temperature's optimiser"
        self.temperature_optimizer.load_state_dict(state)


ALGORITHM = Algorithm(
    name="sac", label="SAC(n)", color="#9467bd", trainer="actor-critic", modes=("sync",),
    make_policy=lambda algo, obs_dim, act_dim: GaussianActor(obs_dim, act_dim, algo.actor_hidden,
                                                            algo.init_temperature, algo.activation,
                                                            algo.layer_norm),
    make_head=lambda algo, device: ScalarHead(),
    make_objective=EntropyRegularisedObjective,  # type: ignore[arg-type]  # its policy is a GaussianActor
    **owned(ACTOR_CRITIC_LEARNERS, {"owns": ("init_temperature", "alpha_lr")}),
)
