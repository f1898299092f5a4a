"""FastTD3 (Seo et al. 2025; github younggyoseo/FastTD3, read at commit 229ed59): TD3 with twin C51 critics.

What makes it FastTD3 here, beside its presets (``pql/presets.yaml``, each value's source named there):

- the clipped double-Q pick after the projection (``CategoricalHead(pick_after_projection=True)``: train.py:447-455);
- exploration ``action + noise`` without a clamp (fast_td3.py:327-328): the env clamps what it applies, the buffer
  keeps the action as drawn and the critic learns on it;
- PQL-D's atoms, their check and their derivation from the task's reward bounds (:mod:`pql.algos.pql_d`).

Its other pieces are options of the shared workers, set by its presets: ReLU networks with a small last actor
layer, AdamW's weight decay, per-episode noise, per-env sampling of a per-env sized buffer, exploring warm-up
steps, and the normaliser folding in replay batches (``algo.obs_norm_replay``).
"""

from __future__ import annotations

import torch

from pql.algos.base import (
    ACTOR_CRITIC_LEARNERS,
    DETERMINISTIC_ACTOR,
    Algorithm,
    DeterministicObjective,
    owned,
)
from pql.algos.critic_heads import CategoricalHead
from pql.algos.pql_d import atoms_problem, with_value_support
from pql.config import AlgoConfig
from pql.nets import Actor


class UnclampedActor(Actor):
    """FastTD3's deterministic tanh policy: its exploring action is not clamped to [-1, 1]."""

    def explore(self, obs: torch.Tensor, noise_std: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The policy's actions ``[B, A]`` plus Gaussian noise of per-row std ``noise_std [B, 1]``, unclamped."""
        return self(obs) + noise * noise_std


def unclamped_actor(algo: AlgoConfig, obs_dim: int, act_dim: int) -> UnclampedActor:
    """FastTD3's policy, as the config shapes it (widths, activation, last layer's init)."""
    return UnclampedActor(obs_dim, act_dim, algo.actor_hidden, algo.activation, algo.actor_out_init_std,
                          algo.layer_norm)


ALGORITHM = Algorithm(
    name="fast_td3", label="FastTD3", color="#8c564b", trainer="actor-critic",
    make_policy=unclamped_actor,
    make_head=lambda algo, device: CategoricalHead(algo.num_atoms, algo.v_min, algo.v_max, device,
                                                   pick_after_projection=True),
    make_objective=DeterministicObjective,
    **owned(DETERMINISTIC_ACTOR, ACTOR_CRITIC_LEARNERS, {"owns": ("num_atoms", "v_min", "v_max")}),
    check=atoms_problem, derive=with_value_support,
)
