"""Wiring of the workers into a run: ``sync`` (one thread, interleaved by the ratios) or ``async``.

Both modes use the same workers, slots and controller. Sync is bit-for-bit
deterministic under a seed on CPU. Async runs actor, V-learner and P-learner in
three threads (torch releases the GIL inside its kernels); they exchange only
versioned parameter snapshots and share nothing else.
"""

from __future__ import annotations

import copy
import math
import threading
import time
from collections.abc import Callable
from typing import Any

import torch

from pql.algos.critic_heads import make_head
from pql.balance import RatioController, critic_sample_ratio
from pql.buffers import NStepWindow, observation_buffer, transition_buffer
from pql.config import Config
from pql.devices import resolve_devices, seeded_generator
from pql.envs import make_env
from pql.exchange import ModuleSlot
from pql.nets import TwinCritic, make_policy
from pql.normalizer import RunningNormalizer
from pql.run_dir import RunDir
from pql.run_loop import Progress, RunLoop, generator_state, make_eval_env, restore_generator
from pql.workers import ActorWorker, Evaluator, PLearner, VLearner, exploration_std


class Trainer(RunLoop):
    """One PQL / PQL-D / DDPG(n) / SAC(n) run: actor, V-learner and P-learner wired together."""

    def __init__(self, cfg: Config, run_dir: RunDir, on_row: Callable[[dict[str, float]], None] | None = None) -> None:
        sim, vdev, pdev = self.devices = resolve_devices(cfg)
        super().__init__(cfg, run_dir, on_row, {"critic_loss": vdev, "actor_loss": pdev})
        algo = cfg.algo
        torch.manual_seed(cfg.seed)
        self.env = make_env(cfg.task, cfg.num_envs, device=sim, seed=cfg.seed)
        self.eval_env = make_eval_env(cfg, sim)
        d, a = self.env.obs_dim, self.env.act_dim
        head_v, head_p = make_head(algo, vdev), make_head(algo, pdev)

        policy = make_policy(algo, d, a).to(pdev)
        critic = TwinCritic(d, a, algo.critic_hidden, head_v.out_features).to(vdev)
        normalizer = RunningNormalizer(d, algo.obs_clip, enabled=algo.normalize_obs).to(sim)
        self.policy_slot, self.critic_slot = ModuleSlot(policy), ModuleSlot(critic)
        self.norm_slot = ModuleSlot(normalizer)

        window = NStepWindow(algo.nstep, algo.gamma, cfg.num_envs, d, a, sim)
        noise = exploration_std(cfg.noise.kind, cfg.num_envs, cfg.noise.sigma_min, cfg.noise.sigma_max,
                                cfg.noise.sigma, sim)
        self.actor = ActorWorker(self.env, copy.deepcopy(policy).to(sim), normalizer, noise, window,
                                 algo.reward_scale, seeded_generator(sim, cfg.seed + 1))
        self.v = VLearner(critic, head_v, copy.deepcopy(policy).to(vdev), copy.deepcopy(normalizer).to(vdev),
                          transition_buffer(algo.buffer_size, d, a, vdev), algo, seeded_generator(vdev, cfg.seed + 2))
        self.p = PLearner(policy, head_p, copy.deepcopy(critic).to(pdev), copy.deepcopy(normalizer).to(pdev),
                          observation_buffer(algo.buffer_size, d, pdev), algo, seeded_generator(pdev, cfg.seed + 3))
        self.evaluator = None if self.eval_env is None else \
            Evaluator(self.eval_env, copy.deepcopy(policy).to(sim), copy.deepcopy(normalizer))
        self.controller = RatioController(critic_sample_ratio(algo.critic_sample_ratio, cfg.num_envs,
                                                              algo.ratio_scale_envs), algo.critic_actor_ratio)
        self.seen = {"actor_policy": 0, "eval_policy": 0, "v_policy": 0, "p_critic": 0, "v_norm": 0, "p_norm": 0,
                     "eval_norm": 0}

    # -- one step of each worker, shared by both modes --------------------------------
    def actor_step(self) -> None:
        self.seen["actor_policy"] = self.policy_slot.pull(self.actor.policy, self.seen["actor_policy"])
        random = self.progress.actor_steps < self.cfg.algo.warmup_steps and not self.resumed
        transitions = self.actor.step(random=random)
        if transitions is not None:
            self.v.add(transitions)
            self.p.add(transitions.obs)
        self.norm_slot.publish(self.actor.normalizer)
        self.progress.actor_steps += 1
        self.progress.env_steps += self.cfg.num_envs

    def learning(self) -> bool:
        """Learners start once warm-up is over and the buffers hold data."""
        return self.progress.actor_steps >= self.cfg.algo.warmup_steps and self.v.buffer.size > 0

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
    def evaluate(self) -> float:
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
        return {
            "controller": dict(self.controller.counts),
            "policy": self.p.policy.state_dict(), "policy_optimizer": self.p.optimizer.state_dict(),
            "critic": self.v.critic.state_dict(), "critic_target": self.v.target.state_dict(),
            "critic_optimizer": self.v.optimizer.state_dict(), "normalizer": self.actor.normalizer.state_dict(),
            "temperature_optimizer": None if self.p.temperature_optimizer is None
            else self.p.temperature_optimizer.state_dict(),
            "rng": {"torch": torch.get_rng_state(), "actor": self.actor.generator.get_state(),
                    "v": self.v.generator.get_state(), "p": self.p.generator.get_state(),
                    "env": self.env.generator.get_state(), "eval_env": generator_state(self.eval_env)},
        }

    def load_model_state(self, state: dict[str, Any]) -> None:
        self.controller.counts.update(state["controller"])
        self.p.policy.load_state_dict(state["policy"])
        self.p.optimizer.load_state_dict(state["policy_optimizer"])
        self.v.critic.load_state_dict(state["critic"])
        self.v.target.load_state_dict(state["critic_target"])
        self.v.optimizer.load_state_dict(state["critic_optimizer"])
        if self.p.temperature_optimizer is not None:
            self.p.temperature_optimizer.load_state_dict(state["temperature_optimizer"])
        self.actor.normalizer.load_state_dict(state["normalizer"])
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        for gen, key in ((self.actor.generator, "actor"), (self.v.generator, "v"), (self.p.generator, "p"),
                         (self.env.generator, "env")):
            gen.set_state(rng[key])
        restore_generator(self.eval_env, rng["eval_env"])
        self.policy_slot.publish(self.p.policy)
        self.critic_slot.publish(self.v.critic)
        self.norm_slot.publish(self.actor.normalizer)
        self.actor.obs = self.env.reset()

    # -- the two modes ------------------------------------------------------------------
    def run(self) -> Progress:
        """Train until the budget is spent; returns the final counters. Raises on failure."""
        if self.progress.rows == 0:
            self.evaluate_and_log()  # the untrained policy's row at step 0
        if self.cfg.mode == "async":
            self._run_async()
        else:
            self._run_sync()
        return self.finish()

    def _run_sync(self) -> None:
        ctl, pr = self.controller, self.progress
        start = time.monotonic() - pr.wall_s
        while not self.done():
            learning = self.learning()
            if learning:
                ctl.counts["actor"] += 1
            self.actor_step()
            if self.learning():
                while ctl.v_due():
                    self.v_update()
                    ctl.counts["v"] += 1
                    while ctl.p_due():
                        self.p_update()
                        ctl.counts["p"] += 1
            pr.wall_s = time.monotonic() - start
            start = self.log_if_due(start)

    def _run_async(self) -> None:
        ctl, pr = self.controller, self.progress
        stop = threading.Event()
        errors: list[BaseException] = []
        locks = {name: threading.Lock() for name in ("actor", "v", "p")}  # held during a worker's step
        bodies = {"actor": self.actor_step, "v": self.v_update, "p": self.p_update}

        def loop(name: str) -> None:
            try:
                while not stop.is_set():
                    learning = self.learning()
                    if name != "actor" and not learning:
                        time.sleep(1e-3)
                        continue
                    wait = ctl.wait_s(name) if learning else 0.0
                    if wait > 0:
                        time.sleep(min(wait, 0.01))
                        continue
                    with locks[name]:
                        if learning:
                            ctl.begin(name)
                        bodies[name]()
                        if learning:
                            ctl.end(name)
            except BaseException as err:  # noqa: BLE001 - re-raised by the monitor below
                errors.append(err)
                stop.set()

        workers = [threading.Thread(target=loop, args=(name,), daemon=True, name=f"pql-{name}") for name in bodies]
        start = time.monotonic() - pr.wall_s
        for t in workers:
            t.start()
        try:
            while not stop.is_set():
                time.sleep(0.01)
                pr.wall_s = time.monotonic() - start
                if self.done():
                    break
                if pr.env_steps >= pr.next_eval:
                    with locks["actor"], locks["v"], locks["p"]:
                        losses = self.take_losses()
                    self.evaluate_and_log(losses)
                    if self.checkpoint_due():
                        with locks["actor"], locks["v"], locks["p"]:
                            self.checkpoint()
        finally:
            stop.set()
            for t in workers:
                t.join()
            pr.wall_s = time.monotonic() - start
        if errors:
            raise errors[0]
