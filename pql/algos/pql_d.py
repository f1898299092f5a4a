"""PQL-D: PQL with C51 categorical critics (a distribution over ``algo.num_atoms`` returns in [v_min, v_max])."""

from __future__ import annotations

from dataclasses import replace

from pql.algos.base import (
    ACTOR_CRITIC_LEARNERS,
    DETERMINISTIC_ACTOR,
    Algorithm,
    DeterministicObjective,
    deterministic_actor,
    owned,
)
from pql.algos.critic_heads import CategoricalHead
from pql.config import Config, atom_range, value_support


def with_value_support(cfg: Config) -> Config:
    """``cfg`` with a null ``algo.v_min`` / ``algo.v_max`` filled from the task's discounted return bounds
    (:func:`~pql.config.value_support`), widened by :func:`~pql.config.atom_range`."""
    a = cfg.algo
    support = value_support(cfg)
    if (a.v_min is not None and a.v_max is not None) or support is None:
        return cfg
    low, high = atom_range(support)
    return replace(cfg, algo=replace(a, v_min=low if a.v_min is None else a.v_min,
                                     v_max=high if a.v_max is None else a.v_max))


def atoms_problem(cfg: Config) -> str | None:
    """Why the atoms [v_min, v_max] cannot serve ``cfg``'s task: unset without reward bounds to derive them
    from, out of order, or too narrow for the task's returns."""
    a = cfg.algo
    if a.v_min is None or a.v_max is None:
        return (f"algo={a.name} needs algo.v_min and algo.v_max: {cfg.task} has no reward bounds in presets.yaml "
                f"to derive them from (the authors used -10 and 10 on Isaac Gym)")
    if a.v_min >= a.v_max:
        return f"algo.v_min ({a.v_min}) must be below algo.v_max ({a.v_max})"
    support = value_support(cfg)
    if support is not None and (a.v_min > support[0] or a.v_max < support[1]):
        return (f"algo.v_min/v_max [{a.v_min}, {a.v_max}] cannot hold {cfg.task}'s returns: at gamma {a.gamma} "
                f"and reward_scale {a.reward_scale} they lie in {list(support)}; widen the range or leave "
                f"v_min and v_max null to use that")
    return None


ALGORITHM = Algorithm(
    name="pql-d", label="PQL-D", color="#ff7f0e", trainer="actor-critic",
    make_policy=deterministic_actor,
    make_head=lambda algo, device: CategoricalHead(algo.num_atoms, algo.v_min, algo.v_max, device,
                                                   algo.cdq_after_projection),
    make_objective=DeterministicObjective,
    **owned(DETERMINISTIC_ACTOR, ACTOR_CRITIC_LEARNERS,
            {"owns": ("num_atoms", "v_min", "v_max", "cdq_after_projection"),
             "identity_defaults": {"algo.cdq_after_projection": "False"}}),
    check=atoms_problem, derive=with_value_support,
)
