"""PQL-D: PQL with C51 categorical critics (a distribution over ``algo.num_atoms`` returns in [v_min, v_max])."""

from pql.algos.base import Algorithm, DeterministicObjective
from pql.algos.critic_heads import CategoricalHead
from pql.nets import Actor

ALGORITHM = Algorithm(
    name="pql-d", label="PQL-D", color="#ff7f0e", sequential=False, trainer="actor-critic",
    make_policy=lambda algo, obs_dim, act_dim: Actor(obs_dim, act_dim, algo.actor_hidden),
    make_head=lambda algo, device: CategoricalHead(algo.num_atoms, algo.v_min, algo.v_max, device),
    make_objective=DeterministicObjective, categorical=True,
)
