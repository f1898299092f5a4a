"""The workers of a PQL-family run built from its config, and ``mode=sync``: one thread, interleaved by the ratios.

``mode=async`` (:mod:`pql.training.parallel`) builds the same workers with the same functions,
one per process. Sync is bit-for-bit deterministic under a seed on CPU.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from pql.algos import algorithm
from pql.balance import RatioController, critic_sample_ratio
from pql.buffers import NStepWindow, observation_buffer, transition_buffer
from pql.config import Config
from pql.devices import resolve_devices, seeded_generator
from pql.envs import VecEnv, make_env
from pql.exchange import ModuleSlot
from pql.nets import OffPolicyActor, TwinCritic
from pql.normalizer import RunningNormalizer
from pql.speed import Speed
from pql.training.loop import (
    Progress,
    RunLoop,
    envs_compile_s,
    eval_slice,
    generator_state,
    make_eval_env,
    restore_generator,
)
from pql.training.run_dir import RunDir
from pql.workers import ActorWorker, Evaluator, PLearner, VLearner, exploration_std

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


def initial_networks(cfg: Config, obs_dim: int, act_dim: int) -> Networks:
    """The networks every worker starts from, drawn from the global torch generator (seed it first)."""
    algo, declared = cfg.algo, algorithm(cfg.algo.name)
    policy = declared.make_policy(algo, obs_dim, act_dim)
    assert isinstance(policy, OffPolicyActor), f"{algo.name}'s policy is not an off-policy actor"
    critic = TwinCritic(obs_dim, act_dim, algo.critic_hidden, declared.head(algo, "cpu").out_features)
    return Networks(policy, critic, RunningNormalizer(obs_dim, algo.obs_clip, enabled=algo.normalize_obs), obs_dim,
                    act_dim)


def build_actor(cfg: Config, env: VecEnv, nets: Networks) -> ActorWorker:
    """The actor on the env's device, with copies of ``nets``' policy and normaliser."""
    sim = env.device
    window = NStepWindow(cfg.algo.nstep, cfg.algo.gamma, cfg.num_envs, env.obs_dim, env.act_dim, sim)
    noise = exploration_std(cfg.noise.kind, cfg.num_envs, cfg.noise.sigma_min, cfg.noise.sigma_max,
                            cfg.noise.sigma, sim)
    return ActorWorker(env, copy.deepcopy(nets.policy).to(sim), copy.deepcopy(nets.normalizer).to(sim), noise,
                       window, cfg.algo.reward_scale, seeded_generator(sim, cfg.seed + ACTOR_SEED),
                       Speed(cfg.compile, "off", sim), eval_slice(cfg))


def build_v_learner(cfg: Config, nets: Networks, device: torch.device) -> VLearner:
    """The V-learner on ``device``: a copy of the critic to train, copies of the policy and normaliser to read."""
    return VLearner(copy.deepcopy(nets.critic).to(device), algorithm(cfg.algo.name).head(cfg.algo, device),
                    copy.deepcopy(nets.policy).to(device), copy.deepcopy(nets.normalizer).to(device),
                    transition_buffer(cfg.algo.buffer_size, nets.obs_dim, nets.act_dim, device), cfg.algo,
                    seeded_generator(device, cfg.seed + V_SEED), Speed(cfg.compile, cfg.amp, device))


def build_p_learner(cfg: Config, nets: Networks, device: torch.device) -> PLearner:
    """The P-learner on ``device``: a copy of the policy to train, copies of the critic and normaliser to read."""
    policy = copy.deepcopy(nets.policy).to(device)
    declared = algorithm(cfg.algo.name)
    return PLearner(policy, declared.head(cfg.algo, device), copy.deepcopy(nets.critic).to(device),
                    declared.objective(policy, cfg.algo), copy.deepcopy(nets.normalizer).to(device),
                    observation_buffer(cfg.algo.buffer_size, nets.obs_dim, device), cfg.algo,
                    seeded_generator(device, cfg.seed + P_SEED), Speed(cfg.compile, cfg.amp, device))


def ratio_controller(cfg: Config) -> RatioController:
    """The controller holding the run's beta_a:v and beta_p:v."""
    algo = cfg.algo
    return RatioController(critic_sample_ratio(algo.critic_sample_ratio, cfg.num_envs, algo.ratio_scale_envs),
                           algo.critic_actor_ratio)


class SyncTrainer(RunLoop):
    """A PQL / PQL-D / DDPG(n) / SAC(n) run in sync mode: actor, V-learner and P-learner in one thread."""

    def __init__(self, cfg: Config, run_dir: RunDir, on_row: Callable[[dict[str, float]], None] | None = None) -> None:
        sim, vdev, pdev = self.devices = resolve_devices(cfg)
        super().__init__(cfg, run_dir, on_row, {"critic_loss": vdev, "actor_loss": pdev})
        torch.manual_seed(cfg.seed)
        self.env = make_env(cfg.task, cfg.num_envs, device=sim, seed=cfg.seed)
        self.eval_env = make_eval_env(cfg, sim)
        nets = initial_networks(cfg, self.env.obs_dim, self.env.act_dim)
        self.actor = build_actor(cfg, self.env, nets)
        self.v = build_v_learner(cfg, nets, vdev)
        self.p = build_p_learner(cfg, nets, pdev)
        self.policy_slot, self.critic_slot = ModuleSlot(self.p.policy), ModuleSlot(self.v.critic)
        self.norm_slot = ModuleSlot(self.actor.normalizer)
        self.evaluator = None if self.eval_env is None else \
            Evaluator(self.eval_env, copy.deepcopy(nets.policy).to(sim), copy.deepcopy(nets.normalizer).to(sim))
        self.controller = ratio_controller(cfg)
        self.seen = {"actor_policy": 0, "eval_policy": 0, "v_policy": 0, "p_critic": 0, "v_norm": 0, "p_norm": 0,
                     "eval_norm": 0}

    # -- one step of each worker, shared by both modes --------------------------------
    def actor_step(self) -> None:
        self.seen["actor_policy"] = self.policy_slot.pull(self.actor.policy, self.seen["actor_policy"])
        random = self.progress.actor_steps < self.cfg.algo.warmup_steps and not self.resumed
        transitions = self.actor.step(random=random)
        if transitions is not None:
            rows = transitions.packed()
            self.v.add(rows)
            self.p.add(rows)
        self.norm_slot.publish(self.actor.normalizer)
        self.progress.actor_steps += 1
        self.progress.env_steps += self.cfg.num_envs

    def learning(self) -> bool:
        """Learners start once warm-up (or a resumed run's refill) is over and the buffers hold data."""
        return self.progress.actor_steps >= self.learn_from and self.v.buffer.size > 0

    def v_update(self) -> None:
        self.seen["v_policy"] = self.policy_slot.pull(self.v.policy, self.seen["v_policy"])
        self.seen["v_norm"] = self.norm_slot.pull(self.v.normalizer, self.seen["v_norm"])
        self.add_loss("critic_loss", self.v.update())
        self.critic_slot.publish(self.v.critic)

    def p_update(self) -> None:
        self.seen["p_critic"] = self.critic_slot.pull(self.p.critic, self.seen["p_critic"])
        self.seen["p_norm"] = self.norm_slot.pull(self.p.normalizer, self.seen["p_norm"])
        self.add_loss("actor_loss", self.p.update())
        self.policy_slot.publish(self.p.policy)

    # -- what the run loop needs ----------------------------------------------------------
    def warm_up(self) -> float:
        return envs_compile_s(self.env, self.eval_env) + self.actor.warm_up() + self.v.warm_up() + self.p.warm_up()

    def diagnostics(self) -> dict[str, float]:
        return self.v.diagnostics()

    def evaluate(self) -> float:
        if self.actor.eval_slice:
            return self.actor.eval_episodes.take_mean()
        if self.evaluator is None:
            return math.nan
        self.seen["eval_policy"] = self.policy_slot.pull(self.evaluator.policy, self.seen["eval_policy"])
        self.seen["eval_norm"] = self.norm_slot.pull(self.evaluator.normalizer, self.seen["eval_norm"])
        return self.evaluator.run()

    def take_train_return(self) -> float:
        return self.actor.episodes.take_mean()

    def update_counts(self) -> tuple[int, int]:
        return self.controller.counts["v"], self.controller.counts["p"]

    def model_state(self) -> dict[str, Any]:
        return merge_states(run_state(self.controller, self.eval_env), self.actor.state_dict(),
                            self.v.state_dict(), self.p.state_dict())

    def load_model_state(self, state: dict[str, Any]) -> None:
        load_run_state(state, self.controller, self.eval_env)
        self.actor.load_state_dict(state)
        self.v.load_state_dict(state)
        self.p.load_state_dict(state)
        self.policy_slot.publish(self.p.policy)
        self.critic_slot.publish(self.v.critic)
        self.norm_slot.publish(self.actor.normalizer)

    # -- the loop ----------------------------------------------------------------------
    def run(self) -> Progress:
        """Train until the budget is spent; returns the final counters. Raises on failure."""
        if self.progress.rows == 0:
            self.evaluate_and_log()  # the untrained policy's row at step 0
        pr = self.progress
        start = self.start_clock()
        while not self.done():
            self.step()
            pr.wall_s = time.monotonic() - start
            start = self.log_if_due(start)
        return self.finish()

    def step(self, call: Callable[[str, Callable[[], None]], None] = lambda _, fn: fn()) -> None:
        """One actor step, then the V- and P-updates it makes due (the sync schedule). ``call(worker, fn)``
        runs each part (a benchmark passes one that times them)."""
        ctl = self.controller
        if self.learning():
            ctl.counts["actor"] += 1
        with self.clock.phase("collect"):
            call("actor", self.actor_step)
        if self.learning():
            with self.clock.phase("learn"):
                while ctl.v_due():
                    call("v", self.v_update)
                    ctl.counts["v"] += 1
                    while ctl.p_due():
                        call("p", self.p_update)
                        ctl.counts["p"] += 1


def run_state(controller: RatioController, eval_env: VecEnv | None) -> dict[str, Any]:
    """The parts of a checkpoint that belong to no worker: the controller's counts and the generators of
    the process (torch's global one) and of the evaluation envs."""
    return {"controller": dict(controller.counts),
            "rng": {"torch": torch.get_rng_state(), "eval_env": generator_state(eval_env)}}


def load_run_state(state: dict[str, Any], controller: RatioController, eval_env: VecEnv | None) -> None:
    """Undo :func:`run_state`."""
    controller.counts.update(state["controller"])
    torch.set_rng_state(state["rng"]["torch"])
    restore_generator(eval_env, state["rng"]["eval_env"])


def merge_states(*parts: dict[str, Any]) -> dict[str, Any]:
    """One checkpoint from the workers' parts: their keys side by side, their ``rng`` dicts merged."""
    merged: dict[str, Any] = {"rng": {}}
    for part in parts:
        for key, value in part.items():
            if key == "rng":
                merged["rng"].update(value)
            else:
                merged[key] = value
    return merged
