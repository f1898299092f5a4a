"""An algorithm registered from outside the package, for the registry's tests: PQL whose actor maximises the mean of
its two critics minus ``algo.cautious.gap_weight`` times their gap. Everything it brings is here: its keys, their
range, its own check and its declaration; ``PQL_ALGORITHMS=cautious_pql`` registers it (no file of ``pql`` changes).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from pql.algos.base import (
    ACTOR_CRITIC_LEARNERS,
    DETERMINISTIC_ACTOR,
    Algorithm,
    DeterministicObjective,
    QFunction,
    deterministic_actor,
    owned,
)
from pql.algos.critic_heads import ScalarHead
from pql.config import AlgoConfig, Config, Range
from pql.nets import Actor


@dataclass(frozen=True)
class CautiousKeys:
    """The keys of ``algo.cautious.*``."""

    gap_weight: float = 0.5  # how much the critics' disagreement counts against an action
    max_gap_weight: float = 1.0  # the largest gap_weight this objective is meant for


class CautiousObjective(DeterministicObjective):
    """``-(mean_k Q_k - gap_weight * |Q_1 - Q_2|)`` at the policy's own action, averaged over the batch."""

    def __init__(self, policy: Actor, critic: nn.Module, cfg: AlgoConfig) -> None:
        super().__init__(policy, critic, cfg)
        self.gap_weight = cfg.cautious.gap_weight  # type: ignore[attr-defined]  # the section this module adds

    def loss(self, obs: torch.Tensor, q: QFunction, noise: torch.Tensor | None) -> tuple[torch.Tensor, None]:
        """The cautious value of the policy's action ``[B, A]`` for ``obs [B, D]``, negated."""
        values = q(obs, self.policy(obs))
        return -(values.mean(0) - self.gap_weight * (values[0] - values[1]).abs()).mean(), None


def gap_problem(cfg: Config) -> str | None:
    """The gap weight may not exceed the largest one the objective is meant for."""
    own = cfg.algo.cautious  # type: ignore[attr-defined]
    if own.gap_weight > own.max_gap_weight:
        return (f"algo.cautious.gap_weight ({own.gap_weight}) exceeds algo.cautious.max_gap_weight "
                f"({own.max_gap_weight})")
    return None


ALGORITHM = Algorithm(
    name="cautious", label="Cautious PQL", color="#8c564b", trainer="actor-critic",
    make_policy=deterministic_actor,
    make_head=lambda algo, device: ScalarHead(),
    make_objective=CautiousObjective,
    keys=CautiousKeys, key_ranges={"gap_weight": Range(0), "max_gap_weight": Range(0)},
    check=gap_problem, **owned(DETERMINISTIC_ACTOR, ACTOR_CRITIC_LEARNERS),
)
