"""Networks: deterministic tanh policy, twin Q critics (scalar or categorical). No env knowledge."""

from __future__ import annotations

import math

import torch
from torch import nn

from pql.config import AlgoConfig


def mlp(sizes: list[int], out_act: nn.Module | None = None) -> nn.Sequential:
    """Linear layers of ``sizes`` with ELU between them and ``out_act`` after the last."""
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(nn.ELU())
    if out_act is not None:
        layers.append(out_act)
    return nn.Sequential(*layers)


class Actor(nn.Module):
    """Deterministic policy: normalised obs ``[B, D]`` -> action ``[B, A]`` in [-1, 1] (PQL, PQL-D, DDPG(n))."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: tuple[int, ...]) -> None:
        super().__init__()
        self.net = mlp([obs_dim, *hidden, act_dim], nn.Tanh())

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(obs)

    def explore(self, obs: torch.Tensor, noise_std: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Exploration actions ``[B, A]``: the policy's plus Gaussian noise of per-row std ``noise_std [B, 1]``."""
        action = self(obs)
        noise = torch.randn(action.shape, generator=generator, device=action.device) * noise_std
        return (action + noise).clamp(-1.0, 1.0)

    def target_action(self, obs: torch.Tensor, generator: torch.Generator, noise_std: float,
                      noise_clip: float) -> tuple[torch.Tensor, torch.Tensor | float]:
        """Target policy smoothing: action plus clipped noise, and no entropy bonus (0)."""
        action = self(obs)
        noise = torch.randn(action.shape, generator=generator, device=action.device) * noise_std
        return (action + noise.clamp(-noise_clip, noise_clip)).clamp(-1.0, 1.0), 0.0


class GaussianActor(nn.Module):
    """SAC's tanh-squashed Gaussian policy with its learned temperature ``log_alpha``.

    ``forward`` is the deterministic action tanh(mean) ``[B, A]`` (evaluation, export);
    ``sample`` draws reparameterised actions with their log-probabilities ``[B]``.
    """

    log_std_min, log_std_max = -5.0, 2.0

    def __init__(self, obs_dim: int, act_dim: int, hidden: tuple[int, ...], init_temperature: float = 1.0) -> None:
        super().__init__()
        self.act_dim = act_dim
        self.net = mlp([obs_dim, *hidden, 2 * act_dim])
        self.log_alpha = nn.Parameter(torch.tensor(math.log(init_temperature)))

    def policy_parameters(self) -> list[nn.Parameter]:
        """The network's parameters, without the temperature."""
        return list(self.net.parameters())

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        mean, _ = self.net(obs).chunk(2, dim=-1)
        return torch.tanh(mean)

    def sample(self, obs: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(action ``[B, A]`` in (-1, 1), log pi(action | obs) ``[B]``), differentiable in the network."""
        mean, log_std = self.net(obs).chunk(2, dim=-1)
        log_std = log_std.clamp(self.log_std_min, self.log_std_max)
        eps = torch.randn(mean.shape, generator=generator, device=mean.device)
        u = mean + eps * log_std.exp()
        gaussian = -0.5 * eps**2 - log_std - 0.5 * math.log(2 * math.pi)
        # log|d tanh(u)/du| = log(1 - tanh(u)^2) = 2 (log 2 - u - softplus(-2u)), stable for large |u|
        squash = 2.0 * (math.log(2.0) - u - nn.functional.softplus(-2.0 * u))
        return torch.tanh(u), (gaussian - squash).sum(-1)

    def explore(self, obs: torch.Tensor, noise_std: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Sampled actions; SAC explores through its own entropy, so ``noise_std`` is not used."""
        return self.sample(obs, generator)[0]

    def target_action(self, obs: torch.Tensor, generator: torch.Generator, noise_std: float,
                      noise_clip: float) -> tuple[torch.Tensor, torch.Tensor | float]:
        """A sampled next action and its entropy bonus -alpha * log pi ``[B]``."""
        action, log_prob = self.sample(obs, generator)
        return action, -self.log_alpha.exp() * log_prob


class PPOPolicy(nn.Module):
    """PPO's Gaussian policy: mean from an MLP, a state-independent log std; ``forward`` is the
    deterministic action clamp(mean, -1, 1) ``[B, A]`` (actions are clipped only for the env)."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: tuple[int, ...], init_log_std: float = 0.0) -> None:
        super().__init__()
        self.net = mlp([obs_dim, *hidden, act_dim])
        self.log_std = nn.Parameter(torch.full((act_dim,), init_log_std))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(obs).clamp(-1.0, 1.0)

    def distribution(self, obs: torch.Tensor) -> torch.distributions.Normal:
        """The action distribution, ``[B, A]`` independent Gaussians."""
        mean = self.net(obs)
        return torch.distributions.Normal(mean, self.log_std.exp().expand_as(mean))


Policy = Actor | GaussianActor


def make_policy(algo: AlgoConfig, obs_dim: int, act_dim: int) -> Policy | PPOPolicy:
    """The policy network of ``algo.name``: Gaussian for sac and ppo, deterministic otherwise."""
    if algo.name == "sac":
        return GaussianActor(obs_dim, act_dim, algo.actor_hidden, algo.init_temperature)
    if algo.name == "ppo":
        return PPOPolicy(obs_dim, act_dim, algo.actor_hidden, algo.ppo.init_log_std)
    return Actor(obs_dim, act_dim, algo.actor_hidden)


class EnsembleLinear(nn.Module):
    """E independent linear layers applied as one batched matmul: ``[E, B, in] -> [E, B, out]``."""

    def __init__(self, ensemble: int, in_features: int, out_features: int) -> None:
        super().__init__()
        bound = 1.0 / math.sqrt(in_features)
        self.weight = nn.Parameter(torch.empty(ensemble, in_features, out_features).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(ensemble, 1, out_features).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            x = x.expand(self.weight.shape[0], *x.shape)
        return torch.baddbmm(self.bias, x, self.weight)


class TwinCritic(nn.Module):
    """Two Q networks on concat(obs, action), stacked: ``(obs [B, D], act [B, A]) -> [2, B, out]``.

    ``out`` is 1 for the scalar critic (squeezed to ``[2, B]``) or the number of atoms
    for the categorical one (logits).
    """

    def __init__(self, obs_dim: int, act_dim: int, hidden: tuple[int, ...], out: int = 1) -> None:
        super().__init__()
        sizes = [obs_dim + act_dim, *hidden, out]
        self.layers = nn.ModuleList(EnsembleLinear(2, sizes[i], sizes[i + 1]) for i in range(len(sizes) - 1))
        self.out = out

    def forward(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        x = torch.cat((obs, act), dim=-1)
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = nn.functional.elu(x)
        return x.squeeze(-1) if self.out == 1 else x
