"""``mode=sync``: the workers of a PQL-family run (:mod:`pql.workers.builders`) in one thread, interleaved by the
ratios. ``mode=async`` (:mod:`pql.training.parallel`) builds the same workers with the same functions, one per
process. Sync is bit-for-bit deterministic under a seed on CPU.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from typing import Any

import torch

from pql.envs import VecEnv, make_env
from pql.store.run_dir import RunDir
from pql.training.loop import Progress, RunLoop, envs_compile_s, generator_state, restore_generator
from pql.workers.balance import RatioController
from pql.workers.builders import (
    build_actor,
    build_p_learner,
    build_v_learner,
    initial_networks,
    ratio_controller,
)
from pql.workers.evaluation import Evaluator, make_eval_env
from pql.workers.exchange import ModuleSlot
from pql.workers.plan import RunPlan


class SyncTrainer(RunLoop):
    """A PQL / PQL-D / DDPG(n) / SAC(n) run in sync mode: actor, V-learner and P-learner in one thread."""

    def __init__(self, plan: RunPlan, run_dir: RunDir,
                 on_row: Callable[[dict[str, float]], None] | None = None) -> None:
        cfg, (sim, vdev, pdev) = plan.cfg, plan.devices
        self.devices = plan.devices
        super().__init__(cfg, run_dir, on_row, {"critic_loss": vdev, "actor_loss": pdev})
        torch.manual_seed(cfg.seed)
        self.env = make_env(cfg.task, cfg.num_envs, device=sim, seed=cfg.seed)
        self.eval_env = make_eval_env(cfg, sim)
        nets = initial_networks(plan, self.env.obs_dim, self.env.act_dim)
        self.actor = build_actor(plan, self.env, nets)
        self.v = build_v_learner(plan, nets)
        self.p = build_p_learner(plan, nets)
        self.policy_slot, self.critic_slot = ModuleSlot(self.p.policy), ModuleSlot(self.v.critic)
        # The normaliser's owner folds observations in and publishes it; the other workers read copies.
        self.norm_owner = self.v if self.v.owns_normalizer else self.actor
        self.norm_slot = ModuleSlot(self.norm_owner.normalizer)
        self.evaluator = None if self.eval_env is None else \
            Evaluator(self.eval_env, copy.deepcopy(nets.policy).to(sim), copy.deepcopy(nets.normalizer).to(sim))
        self.controller = ratio_controller(plan)
        self.seen = {"actor_policy": 0, "eval_policy": 0, "v_policy": 0, "p_critic": 0, "v_norm": 0, "p_norm": 0,
                     "eval_norm": 0, "actor_norm": 0}

    # -- one step of each worker, shared by both modes --------------------------------
    def actor_step(self) -> None:
        """One actor step with the latest policy; its transitions go to both learners' buffers."""
        self.seen["actor_policy"] = self.policy_slot.pull(self.actor.policy, self.seen["actor_policy"])
        if self.norm_owner is not self.actor:
            self.seen["actor_norm"] = self.norm_slot.pull(self.actor.normalizer, self.seen["actor_norm"])
        algo = self.cfg.algo
        random = algo.warmup_random and self.progress.actor_steps < algo.warmup_steps and not self.resumed
        transitions = self.actor.step(random=random)
        if transitions is not None:
            rows = transitions.packed()
            self.v.add(rows)
            self.p.add(rows)
        self.norm_slot.publish(self.norm_owner.normalizer)
        self.progress.actor_steps += 1
        self.progress.env_steps += self.cfg.num_envs

    def learning(self) -> bool:
        """Learners start once warm-up (or a resumed run's refill) is over and the buffers hold data."""
        return self.progress.actor_steps >= self.learn_from and self.v.buffer.size > 0

    def v_update(self) -> None:
        """One V-update with the latest policy and normaliser (which it publishes when it owns it)."""
        self.seen["v_policy"] = self.policy_slot.pull(self.v.policy, self.seen["v_policy"])
        if self.norm_owner is not self.v:
            self.seen["v_norm"] = self.norm_slot.pull(self.v.normalizer, self.seen["v_norm"])
        self.add_loss("critic_loss", self.v.update())
        self.critic_slot.publish(self.v.critic)
        if self.norm_owner is self.v:
            self.norm_slot.publish(self.v.normalizer)

    def p_update(self) -> None:
        """One P-update with the latest critic and normaliser."""
        self.seen["p_critic"] = self.critic_slot.pull(self.p.critic, self.seen["p_critic"])
        self.seen["p_norm"] = self.norm_slot.pull(self.p.normalizer, self.seen["p_norm"])
        self.add_loss("actor_loss", self.p.update())
        self.policy_slot.publish(self.p.policy)

    # -- what the run loop needs ----------------------------------------------------------
    def warm_up(self) -> float:
        """Compile the envs and every worker; the seconds it took."""
        return envs_compile_s(self.env, self.eval_env) + self.actor.warm_up() + self.v.warm_up() + self.p.warm_up()

    def diagnostics(self) -> dict[str, float]:
        """The V-learner's diagnostics."""
        return self.v.diagnostics()

    def evaluate(self) -> float:
        """The mean return of the noise-free slice's episodes, or one episode of the evaluation envs."""
        if self.actor.eval_slice:
            return self.actor.eval_episodes.take_mean()
        if self.evaluator is None:
            return math.nan
        self.seen["eval_policy"] = self.policy_slot.pull(self.evaluator.policy, self.seen["eval_policy"])
        self.seen["eval_norm"] = self.norm_slot.pull(self.evaluator.normalizer, self.seen["eval_norm"])
        return self.evaluator.run()

    def take_train_return(self) -> float:
        """Mean return of the training episodes finished since the last call."""
        return self.actor.episodes.take_mean()

    def update_counts(self) -> tuple[int, int]:
        """(V-updates, P-updates) so far."""
        return self.controller.counts["v"], self.controller.counts["p"]

    def model_state(self) -> dict[str, Any]:
        """The controller's and every worker's state, merged."""
        return merge_states(run_state(self.controller, self.eval_env), self.actor.state_dict(),
                            self.v.state_dict(), self.p.state_dict())

    def load_model_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`model_state`."""
        load_run_state(state, self.controller, self.eval_env)
        self.actor.load_state_dict(state)
        self.v.load_state_dict(state)
        self.p.load_state_dict(state)
        self.policy_slot.publish(self.p.policy)
        self.critic_slot.publish(self.v.critic)
        self.norm_slot.publish(self.norm_owner.normalizer)

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
