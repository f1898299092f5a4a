"""PQL: a deterministic policy and a twin scalar critic with clipped double-Q targets (the paper's main method)."""

from pql.algos.base import (
    ACTOR_CRITIC_LEARNERS,
    DETERMINISTIC_ACTOR,
    Algorithm,
    DeterministicObjective,
    deterministic_actor,
    owned,
)
from pql.algos.critic_heads import ScalarHead

ALGORITHM = Algorithm(
    name="pql", label="PQL", color="#1f77b4", trainer="actor-critic",
    make_policy=deterministic_actor,
    make_head=lambda algo, device: ScalarHead(),
    make_objective=DeterministicObjective, **owned(DETERMINISTIC_ACTOR, ACTOR_CRITIC_LEARNERS),
)
