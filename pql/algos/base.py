"""What an algorithm declares, and the actor objective shared by the deterministic-policy algorithms.

An :class:`Algorithm` is data: its name, how figures show it, the modes it runs in, which
trainer runs it, the keys it owns, its checks and derived values, and the factories of its
policy, critic head and actor objective. Validation, the memory estimate, the workers and
the trainers ask the registry (:mod:`pql.algos`) for these and never branch on an
algorithm's name or kind.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

from pql.config import AlgoConfig, Config
from pql.nets import Actor, Temperature

# Which run loop trains an algorithm: the actor / V-learner / P-learner workers (sync or
# async), or on-policy rollouts (PPO's).
TRAINERS = ("actor-critic", "on-policy")

QFunction = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (obs [B, D], action [B, A]) -> Q [2, B]


class CriticHead(Protocol):
    """How a twin critic's raw output ``[2, B]`` or ``[2, B, K]`` becomes Q-values and a TD loss."""

    out_features: int

    def q_values(self, out: torch.Tensor) -> torch.Tensor:
        """``[2, B]`` Q-values of a critic output."""
        ...

    def critic_loss(self, pred: torch.Tensor, target_out: torch.Tensor, ret: torch.Tensor, discount: torch.Tensor,
                    bonus: torch.Tensor | float = 0.0) -> torch.Tensor:
        """TD loss of both critics against ret + discount * (target value + bonus)."""
        ...

    def diagnostics(self, target_out: torch.Tensor, ret: torch.Tensor, discount: torch.Tensor,
                    bonus: torch.Tensor | float = 0.0) -> dict[str, torch.Tensor]:
        """Scalars worth a metrics column, of a batch's target (e.g. C51's edge mass); {} if none."""
        ...


class ActorObjective(Protocol):
    """The P-learner's loss for its policy, and whatever else it learns alongside (SAC's temperature).

    :meth:`loss` is a pure function of its tensors (the P-learner may compile it): a stochastic
    objective gets its standard normal draws as ``noise``.
    """

    stochastic: bool  # loss() takes noise [B, A]; otherwise it gets None

    def parameters(self) -> list[nn.Parameter]:
        """The parameters the policy optimiser steps (gradient-clipped)."""
        ...

    def loss(self, obs: torch.Tensor, q: QFunction,
             noise: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(scalar loss of normalised observations ``obs [B, D]``, differentiable in :meth:`parameters`;
        a detached tensor :meth:`after_step` gets, or None)."""
        ...

    def after_step(self, aux: torch.Tensor | None) -> None:
        """Called after each policy step with the loss's ``aux`` (e.g. SAC's temperature step)."""
        ...

    def optimizers(self) -> list[torch.optim.Optimizer]:
        """The optimisers :meth:`after_step` steps, besides the policy's."""
        ...

    def state_dict(self) -> dict[str, Any] | None:
        """Optimiser state beyond the policy's own, for checkpoints (None if there is none)."""
        ...

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """Restore the state of :meth:`state_dict`."""
        ...


class DeterministicObjective:
    """Maximise min(Q1, Q2) at the policy's own action: PQL, PQL-D and DDPG(n); with ``algo.preact_penalty``
    > 0, minus that weight times the mean squared pre-tanh output (tanh passes almost no gradient once
    its input is large, so an actor that has saturated would otherwise stay saturated)."""

    stochastic = False

    def __init__(self, policy: Actor, critic: nn.Module, cfg: AlgoConfig) -> None:
        self.policy, self.preact_penalty = policy, cfg.preact_penalty

    def parameters(self) -> list[nn.Parameter]:
        """The parameters the P-learner's optimiser trains: the policy's."""
        return list(self.policy.parameters())

    def loss(self, obs: torch.Tensor, q: QFunction, noise: torch.Tensor | None) -> tuple[torch.Tensor, None]:
        """``-min_k Q_k(obs, pi(obs))`` averaged over the batch, plus the pre-tanh penalty when set; no auxiliary
        output (``noise`` is unused: the policy is deterministic)."""
        pre = self.policy.pre_tanh(obs)
        loss = -q(obs, torch.tanh(pre)).min(0).values.mean()
        if self.preact_penalty:
            loss = loss + self.preact_penalty * pre.pow(2).mean()
        return loss, None

    def after_step(self, aux: torch.Tensor | None) -> None:
        """Nothing to do after the policy's step."""
        pass

    def optimizers(self) -> list[torch.optim.Optimizer]:
        """No optimisers of its own."""
        return []

    def state_dict(self) -> dict[str, Any] | None:
        """No state of its own."""
        return None

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """No state of its own to restore."""
        pass


# Keys an algorithm owns as part of a family (merged into its declaration by :func:`owned`), with the values at
# which runs from before each key existed keep their ids. The deterministic tanh actor (pql.nets.Actor) and its
# DeterministicObjective: the pre-tanh penalty, which others must leave off, and the last layer's init.
DETERMINISTIC_ACTOR: dict[str, Any] = {
    "owns": ("preact_penalty", "actor_out_init_std"), "exclusive": {"preact_penalty": 0.0},
    "identity_defaults": {"algo.preact_penalty": "0.0", "algo.actor_out_init_std": "null"},
}
# The actor-critic trainer's learners and actor (pql.workers): the learners' AdamW, at torch's defaults unless set,
# how they sample their buffers, how the actor warms up, and which observations the normaliser folds in.
ACTOR_CRITIC_LEARNERS: dict[str, Any] = {
    "owns": ("weight_decay", "adam_beta1", "adam_beta2", "per_env_sampling", "warmup_random", "obs_norm_replay",
             "obs_norm_acting"),
    "identity_defaults": {"algo.weight_decay": "0.01", "algo.adam_beta1": "0.9", "algo.adam_beta2": "0.999",
                          "algo.per_env_sampling": "False", "algo.warmup_random": "True",
                          "algo.obs_norm_replay": "False", "algo.obs_norm_acting": "True"},
}


def deterministic_actor(algo: AlgoConfig, obs_dim: int, act_dim: int) -> Actor:
    """The deterministic tanh policy of PQL, PQL-D and DDPG(n), as the config shapes it (widths, activation,
    last layer's init)."""
    return Actor(obs_dim, act_dim, algo.actor_hidden, algo.activation, algo.actor_out_init_std, algo.layer_norm)


def owned(*families: dict[str, Any]) -> dict[str, Any]:
    """The ``owns``, ``exclusive`` and ``identity_defaults`` of several key families, merged, as keyword
    arguments of :class:`Algorithm`."""
    return {"owns": tuple(k for f in families for k in f.get("owns", ())),
            "exclusive": {k: v for f in families for k, v in f.get("exclusive", {}).items()},
            "identity_defaults": {k: v for f in families for k, v in f.get("identity_defaults", {}).items()}}


@dataclass(frozen=True)
class Algorithm:
    """One algorithm's declaration: what it is, the keys it owns, what it checks and derives, how it is built.

    Register it with a line in :mod:`pql.algos` (or, for a module outside the package, by naming the module in
    ``PQL_ALGORITHMS``). Keys: the shared ones of :class:`~pql.config.AlgoConfig` it ``owns`` (listed with
    their owners by ``pql train --help``; several algorithms may own one), and its own ``keys``, a frozen
    dataclass whose fields become ``algo.<name>.*`` with their ``key_ranges``. The registry pickles a
    declaration by its name, so a spawned worker finds it in its own registry.
    """

    name: str  # the value of algo.name
    label: str  # in figures, legends and reports
    color: str  # its line colour in every figure
    trainer: str  # one of TRAINERS
    make_policy: Callable[[AlgoConfig, int, int], nn.Module]  # (algo config, obs dim, act dim) -> policy
    make_head: Callable[[AlgoConfig, torch.device | str], CriticHead] | None = None  # actor-critic only
    # actor-critic only: (policy, the P-learner's critic copy, algo config) -> its objective
    make_objective: Callable[[nn.Module, nn.Module, AlgoConfig], ActorObjective] | None = None
    # actor-critic only: (algo config, act dim) -> a temperature the critic carries and the V-learner learns
    # with every critic step (FastSAC's; pql.nets.Temperature), or None
    make_temperature: Callable[[AlgoConfig, int], Temperature] | None = None
    modes: tuple[str, ...] = ("sync", "async")  # ("sync",): a sequential baseline
    owns: tuple[str, ...] = ()  # shared algo.* keys only this algorithm (and others owning them) reads
    exclusive: dict[str, Any] = field(default_factory=dict)  # owned keys others must leave at this value
    keys: type | None = None  # a frozen dataclass of its own keys: algo.<name>.*
    key_ranges: dict[str, Any] = field(default_factory=dict)  # its own numeric keys' ranges (pql.config.Range)
    check: Callable[[Config], str | None] | None = None  # why a resolved config cannot run it, or None
    derive: Callable[[Config], Config] | None = None  # the config with the values it derives filled in
    # Keys added since run-id schema 2 that it owns, each with the value (as text) at which a run computes
    # what it did before the key existed: at that value the key stays out of the run id.
    identity_defaults: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        assert self.trainer in TRAINERS, self.trainer
        assert self.trainer != "actor-critic" or (self.make_head and self.make_objective), self.name
        assert set(self.exclusive) <= set(self.owns), self.name

    @property
    def sequential(self) -> bool:
        """A baseline that runs with mode=sync only."""
        return self.modes == ("sync",)

    def head(self, algo: AlgoConfig, device: torch.device | str) -> CriticHead:
        """The critic head of an actor-critic algorithm."""
        assert self.make_head is not None, f"{self.name} has no critic head"
        return self.make_head(algo, device)

    def temperature(self, algo: AlgoConfig, act_dim: int) -> Temperature | None:
        """The temperature its critic carries, if it learns one with the critic (else None)."""
        return self.make_temperature(algo, act_dim) if self.make_temperature is not None else None

    def objective(self, policy: nn.Module, critic: nn.Module, algo: AlgoConfig) -> ActorObjective:
        """The actor objective of an actor-critic algorithm, for ``policy`` against the P-learner's copy of the
        critic (which may carry what the objective reads, e.g. FastSAC's temperature)."""
        assert self.make_objective is not None, f"{self.name} has no actor objective"
        return self.make_objective(policy, critic, algo)
