"""DDPG(n): PQL's maths run as a sequential baseline (one process, updates between env steps)."""

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
    name="ddpg", label="DDPG(n)", color="#d62728", trainer="actor-critic", modes=("sync",),
    make_policy=deterministic_actor,
    make_head=lambda algo, device: ScalarHead(),
    make_objective=DeterministicObjective, **owned(DETERMINISTIC_ACTOR, ACTOR_CRITIC_LEARNERS),
)
