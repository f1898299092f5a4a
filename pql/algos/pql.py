"""PQL: a deterministic policy and a twin scalar critic with clipped double-Q targets (the paper's main method)."""

from pql.algos.base import ACTOR_CRITIC_LEARNERS, DETERMINISTIC_ACTOR, Algorithm, DeterministicObjective, owned
from pql.algos.critic_heads import ScalarHead
from pql.nets import Actor

ALGORITHM = Algorithm(
    name="pql", label="PQL", color="#1f77b4", trainer="actor-critic",
    make_policy=lambda algo, obs_dim, act_dim: Actor(obs_dim, act_dim, algo.actor_hidden, algo.activation,
                                                    algo.actor_out_init_std),
    make_head=lambda algo, device: ScalarHead(),
    make_objective=DeterministicObjective, **owned(DETERMINISTIC_ACTOR, ACTOR_CRITIC_LEARNERS),
)
