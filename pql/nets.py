"""Networks: the off-policy policy contract, the deterministic tanh policy, twin Q critics (scalar or
categorical). No env knowledge; the algorithms' own policies live in their modules under :mod:`pql.algos`."""

from __future__ import annotations

import math

import torch
from torch import nn

# The hidden layers' activation (``algo.activation``): ELU is the reference code's, ReLU FastTD3's.
ACTIVATIONS: dict[str, type[nn.Module]] = {"elu": nn.ELU, "relu": nn.ReLU, "silu": nn.SiLU, "tanh": nn.Tanh}


def mlp(sizes: list[int], out_act: nn.Module | None = None, activation: str = "elu",
        layer_norm: bool = False) -> nn.Sequential:
    """Linear layers of ``sizes`` with ``activation`` (a name in :data:`ACTIVATIONS`) between them, each hidden
    one followed by a LayerNorm first with ``layer_norm`` (FastSAC's order), and ``out_act`` after the last."""
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            if layer_norm:
                layers.append(nn.LayerNorm(sizes[i + 1]))
            layers.append(ACTIVATIONS[activation]())
    if out_act is not None:
        layers.append(out_act)
    return nn.Sequential(*layers)


class OffPolicyActor(nn.Module):
    """What the actor, V-learner and P-learner need of a policy: ``forward`` is the deterministic action
    ``[B, A]`` in [-1, 1] (evaluation, export); :meth:`explore` the actor's; :meth:`target_action` the
    V-learner's for the bootstrap."""

    def explore(self, obs: torch.Tensor, noise_std: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Exploration actions ``[B, A]`` for normalised ``obs [B, D]`` (``noise_std [B, 1]``: per-row std;
        ``noise [B, A]``: standard normal draws, made by the caller so that this stays a pure function)."""
        raise NotImplementedError

    def target_action(self, obs: torch.Tensor, noise: torch.Tensor, noise_std: float,
                      noise_clip: float) -> tuple[torch.Tensor, torch.Tensor | float]:
        """(next action ``[B, A]``, a bonus added to the target's value: ``[B]`` or 0.0), from standard
        normal ``noise [B, A]``."""
        raise NotImplementedError


class SampledActor(OffPolicyActor):
    """A stochastic policy whose entropy a learned temperature weighs (FastSAC's): :meth:`sample` draws
    reparameterised actions with their log-probabilities."""

    def sample(self, obs: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(action ``[B, A]``, log pi(action | obs) ``[B]``) for normalised ``obs [B, D]`` and standard normal
        ``eps [B, A]``, differentiable in the network."""
        raise NotImplementedError


class Temperature(nn.Module):
    """A learned entropy temperature alpha = exp(log_alpha), steered so that the policy's entropy tends to
    ``target_entropy``; carried by the critic when the V-learner learns it with every critic step (FastSAC's).
    ``weight_decay`` is its AdamW's (torch's default 0.01, which FastSAC's optimiser leaves as is)."""

    def __init__(self, init: float, target_entropy: float, weight_decay: float = 0.01) -> None:
        super().__init__()
        self.log_alpha = nn.Parameter(torch.tensor(math.log(init)))
        self.target_entropy, self.weight_decay = target_entropy, weight_decay

    def alpha(self) -> torch.Tensor:
        """The temperature ``[]``, detached: what the losses weigh the entropy by."""
        return self.log_alpha.exp().detach()

    def loss(self, log_prob: torch.Tensor) -> torch.Tensor:
        """``-alpha * (log pi + target entropy)`` averaged over ``log_prob [B]`` (detached): its gradient raises
        alpha while the entropy is below the target and lowers it above."""
        return -(self.log_alpha.exp() * (log_prob.detach() + self.target_entropy)).mean()


class Actor(OffPolicyActor):
    """Deterministic policy: normalised obs ``[B, D]`` -> action ``[B, A]`` in [-1, 1] (PQL, PQL-D, DDPG(n))."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: tuple[int, ...], activation: str = "elu",
                 out_init_std: float | None = None, layer_norm: bool = False) -> None:
        super().__init__()
        self.net = mlp([obs_dim, *hidden, act_dim], nn.Tanh(), activation, layer_norm)
        if out_init_std is not None:  # FastTD3's small last layer: actions start near 0 for every observation
            last = self.net[-2]
            nn.init.normal_(last.weight, 0.0, out_init_std)
            nn.init.zeros_(last.bias)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """The action ``[B, act_dim]`` in [-1, 1] for ``obs [B, obs_dim]``."""
        return self.net(obs)

    def pre_tanh(self, obs: torch.Tensor) -> torch.Tensor:
        """The last layer's output ``[B, A]`` before tanh: ``forward`` is its tanh."""
        return self.net[:-1](obs)

    def explore(self, obs: torch.Tensor, noise_std: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The policy's actions plus Gaussian noise of per-row std ``noise_std [B, 1]``, clamped to [-1, 1]."""
        return (self(obs) + noise * noise_std).clamp(-1.0, 1.0)

    def target_action(self, obs: torch.Tensor, noise: torch.Tensor, noise_std: float,
                      noise_clip: float) -> tuple[torch.Tensor, torch.Tensor | float]:
        """Target policy smoothing: action plus clipped noise, and no bonus (0)."""
        return (self(obs) + (noise * noise_std).clamp(-noise_clip, noise_clip)).clamp(-1.0, 1.0), 0.0


class EnsembleLinear(nn.Module):
    """E independent linear layers applied as one batched matmul: ``[E, B, in] -> [E, B, out]``."""

    def __init__(self, ensemble: int, in_features: int, out_features: int) -> None:
        super().__init__()
        bound = 1.0 / math.sqrt(in_features)
        self.weight = nn.Parameter(torch.empty(ensemble, in_features, out_features).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(ensemble, 1, out_features).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [B, in]`` (shared by every member) or ``[K, B, in]`` -> ``[K, B, out]``."""
        if x.dim() == 2:
            x = x.expand(self.weight.shape[0], *x.shape)
        return torch.baddbmm(self.bias, x, self.weight)


class EnsembleLayerNorm(nn.Module):
    """E independent LayerNorms over the last dimension: ``[E, B, F] -> [E, B, F]``, each member with its own
    scale (ones) and shift (zeros), as ``nn.LayerNorm(F)`` per member."""

    def __init__(self, ensemble: int, features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(ensemble, 1, features))
        self.bias = nn.Parameter(torch.zeros(ensemble, 1, features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [E, B, F]`` normalised over F, then scaled and shifted per member."""
        return nn.functional.layer_norm(x, x.shape[-1:], eps=self.eps) * self.weight + self.bias


class TwinCritic(nn.Module):
    """Two Q networks on concat(obs, action), stacked: ``(obs [B, D], act [B, A]) -> [2, B, out]``.

    ``out`` is 1 for the scalar critic (squeezed to ``[2, B]``) or the number of atoms
    for the categorical one (logits). A :class:`Temperature` it carries travels with it from the
    V-learner, which learns it, to the P-learner.
    """

    def __init__(self, obs_dim: int, act_dim: int, hidden: tuple[int, ...], out: int = 1,
                 activation: str = "elu", layer_norm: bool = False, temperature: Temperature | None = None) -> None:
        super().__init__()
        self.temperature = temperature  # learned by the V-learner, read by the P-learner through this critic
        sizes = [obs_dim + act_dim, *hidden, out]
        self.layers = nn.ModuleList(EnsembleLinear(2, sizes[i], sizes[i + 1]) for i in range(len(sizes) - 1))
        # with layer_norm, each hidden layer's output is normalised before the activation (FastSAC's order)
        self.norms = nn.ModuleList(EnsembleLayerNorm(2, width) for width in hidden) if layer_norm else None
        self.activation = ACTIVATIONS[activation]()
        self.out = out

    def q_parameters(self) -> list[nn.Parameter]:
        """The Q networks' parameters: all but the temperature's."""
        own = {id(p) for p in self.temperature.parameters()} if self.temperature is not None else set()
        return [p for p in self.parameters() if id(p) not in own]

    def forward(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        """``[K, B, out]``: every critic's output for ``obs [B, obs_dim]`` and ``act [B, act_dim]``."""
        x = torch.cat((obs, act), dim=-1)
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                if self.norms is not None:
                    x = self.norms[i](x)
                x = self.activation(x)
        return x.squeeze(-1) if self.out == 1 else x
