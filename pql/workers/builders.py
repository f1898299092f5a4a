"""The workers of a PQL-family run, built from its config: the initial networks, then the actor, the V-learner,
the P-learner and the ratio controller, each on its own device. ``mode=sync`` builds them in one process,
``mode=async`` one per process, with the same functions."""

from __future__ import annotations

import copy
from dataclasses import dataclass

from torch import nn

from pql.buffers import NStepWindow, observation_buffer, transition_buffer
from pql.devices import seeded_generator
from pql.envs import VecEnv
from pql.nets import OffPolicyActor, TwinCritic
from pql.normalizer import RunningNormalizer
from pql.speed import Speed
from pql.workers.actor import ActorWorker, exploration_std
from pql.workers.balance import RatioController, critic_sample_ratio
from pql.workers.learners import PLearner, VLearner
from pql.workers.plan import RunPlan

# Seeds of the workers' generators, offsets from cfg.seed.
ACTOR_SEED, V_SEED, P_SEED = 1, 2, 3


@dataclass
class Networks:
    """The initial policy, critic and observation normaliser of a run (built on the CPU)."""

    policy: OffPolicyActor
    critic: nn.Module
    normalizer: RunningNormalizer
    obs_dim: int
    act_dim: int


def initial_networks(plan: RunPlan, obs_dim: int, act_dim: int) -> Networks:
    """The networks every worker starts from, drawn from the global torch generator (seed it first)."""
    algo, declared = plan.cfg.algo, plan.algorithm
    policy = declared.make_policy(algo, obs_dim, act_dim)
    assert isinstance(policy, OffPolicyActor), f"{algo.name}'s policy is not an off-policy actor"
    critic = TwinCritic(obs_dim, act_dim, algo.critic_hidden, declared.head(algo, "cpu").out_features,
                        algo.activation, algo.layer_norm, declared.temperature(algo, act_dim))
    return Networks(policy, critic, RunningNormalizer(obs_dim, algo.obs_clip, enabled=algo.normalize_obs), obs_dim,
                    act_dim)


def build_actor(plan: RunPlan, env: VecEnv, nets: Networks) -> ActorWorker:
    """The actor on the env's device, with copies of ``nets``' policy and normaliser."""
    cfg, sim = plan.cfg, env.device
    window = NStepWindow(cfg.algo.nstep, cfg.algo.gamma, cfg.num_envs, env.obs_dim, env.act_dim, sim)
    generator, n = seeded_generator(sim, cfg.seed + ACTOR_SEED), cfg.noise
    noise = exploration_std(n.kind, cfg.num_envs, n.sigma_min, n.sigma_max, n.sigma, sim, generator)
    return ActorWorker(env, copy.deepcopy(nets.policy).to(sim), copy.deepcopy(nets.normalizer).to(sim), noise,
                       window, cfg.algo.reward_scale, generator, Speed(cfg.compile, "off", sim), plan.eval_slice,
                       (n.sigma_min, n.sigma_max) if n.kind == "per_episode" else None,
                       fold_obs=not cfg.algo.obs_norm_replay, correlation=n.correlation)


def build_v_learner(plan: RunPlan, nets: Networks) -> VLearner:
    """The V-learner on its device: a copy of the critic to train, copies of the policy and normaliser to read."""
    cfg, device = plan.cfg, plan.devices[1]
    return VLearner(copy.deepcopy(nets.critic).to(device), plan.algorithm.head(cfg.algo, device),
                    copy.deepcopy(nets.policy).to(device), copy.deepcopy(nets.normalizer).to(device),
                    transition_buffer(cfg.algo.buffer_size, nets.obs_dim, nets.act_dim, device, _sampled_envs(plan)),
                    cfg.algo,
                    seeded_generator(device, cfg.seed + V_SEED), Speed(cfg.compile, cfg.amp, device))


def build_p_learner(plan: RunPlan, nets: Networks) -> PLearner:
    """The P-learner on its device: a copy of the policy to train, copies of the critic and normaliser to read."""
    cfg, device, declared = plan.cfg, plan.devices[2], plan.algorithm
    policy, critic = copy.deepcopy(nets.policy).to(device), copy.deepcopy(nets.critic).to(device)
    return PLearner(policy, declared.head(cfg.algo, device), critic,
                    declared.objective(policy, critic, cfg.algo), copy.deepcopy(nets.normalizer).to(device),
                    observation_buffer(cfg.algo.buffer_size, nets.obs_dim, device, _sampled_envs(plan)), cfg.algo,
                    seeded_generator(device, cfg.seed + P_SEED), Speed(cfg.compile, cfg.amp, device))


def _sampled_envs(plan: RunPlan) -> int:
    """How many envs the learners' buffers sample equally (``algo.per_env_sampling``), else 1 (uniformly)."""
    return plan.cfg.num_envs if plan.cfg.algo.per_env_sampling else 1


def ratio_controller(plan: RunPlan) -> RatioController:
    """The controller holding the run's beta_a:v and beta_p:v."""
    cfg, algo = plan.cfg, plan.cfg.algo
    return RatioController(critic_sample_ratio(algo.critic_sample_ratio, cfg.num_envs, algo.ratio_scale_envs),
                           algo.critic_actor_ratio)
