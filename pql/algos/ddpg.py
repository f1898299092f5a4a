"""DDPG(n): PQL's maths run as a sequential baseline (one process, updates between env steps)."""

from pql.algos.base import ACTOR_CRITIC_LEARNERS, DETERMINISTIC_ACTOR, Algorithm, DeterministicObjective, owned
from pql.algos.critic_heads import ScalarHead
from pql.nets import Actor

ALGORITHM = Algorithm(
    name="ddpg", label="DDPG(n)", color="#d62728", trainer="actor-critic", modes=("sync",),
    make_policy=lambda algo, obs_dim, act_dim: Actor(obs_dim, act_dim, algo.actor_hidden, algo.activation,
                                                    algo.actor_out_init_std),
    make_head=lambda algo, device: ScalarHead(),
    make_objective=DeterministicObjective, **owned(DETERMINISTIC_ACTOR, ACTOR_CRITIC_LEARNERS),
)
