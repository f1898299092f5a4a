"""Wiring of the workers into a run: ``sync`` (one thread, interleaved by the ratios) or ``async``.

Both modes use the same workers, slots and controller. Sync is bit-for-bit
deterministic under a seed on CPU. Async runs actor, V-learner and P-learner in
three threads (torch releases the GIL inside its kernels); they exchange only
versioned parameter snapshots and share nothing else.
"""

from __future__ import annotations

import copy
import math
import platform
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from pql.algos.critic_heads import make_head
from pql.balance import RatioController
from pql.buffers import NStepWindow, observation_buffer, transition_buffer
from pql.config import Config, config_to_dict
from pql.envs import make_env
from pql.exchange import ModuleSlot
from pql.nets import TwinCritic, make_policy
from pql.normalizer import RunningNormalizer
from pql.run_dir import RunDir
from pql.workers import ActorWorker, Evaluator, PLearner, VLearner, exploration_std

EVAL_SEED_OFFSET = 1_000_003


class NonFiniteLoss(RuntimeError):
    """A learner produced a NaN or infinite loss."""

    def __init__(self, env_steps: int, losses: dict[str, float]) -> None:
        super().__init__(f"non-finite loss at env step {env_steps}: {losses}")
        self.env_steps, self.losses = env_steps, losses


def resolve_devices(cfg: Config) -> tuple[torch.device, torch.device, torch.device]:
    """(sim, v_learner, p_learner) devices, with 'auto' filled in from the GPUs present."""
    gpus = torch.cuda.device_count()
    sim = cfg.device.sim if cfg.device.sim != "auto" else ("cuda:0" if gpus else "cpu")
    v = cfg.device.v_learner if cfg.device.v_learner != "auto" else ("cuda:1" if gpus >= 2 else sim)
    p = cfg.device.p_learner if cfg.device.p_learner != "auto" else v
    return torch.device(sim), torch.device(v), torch.device(p)


def device_name(device: torch.device) -> str:
    """A readable name of the hardware behind ``device`` (the GPU model for CUDA devices)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{device.type} ({platform.processor() or platform.machine()})"


def gpu_mismatch(gpu_model: str | None, devices: tuple[torch.device, ...]) -> str | None:
    """Why ``devices`` do not satisfy ``gpu_model`` (None when they do or when any device will do)."""
    if gpu_model is None:
        return None
    want = gpu_model.lower().replace(" ", "").replace("-", "")
    names = [device_name(d) for d in devices]
    if all(want in n.lower().replace(" ", "").replace("-", "") for n in names):
        return None
    return f"gpu_model={gpu_model} asked for, but this machine offers {', '.join(sorted(set(names)))}"


def _generator(device: torch.device, seed: int) -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return g


@dataclass
class Progress:
    """Counters of a run; saved in the checkpoint and continued on resume."""

    actor_steps: int = 0
    env_steps: int = 0
    wall_s: float = 0.0
    next_eval: int = 0
    rows: int = 0
    losses: dict[str, float] = field(default_factory=dict)


class Trainer:
    """One PQL / PQL-D run, from a validated config to a finished run directory."""

    def __init__(self, cfg: Config, run_dir: RunDir, on_row: Callable[[dict[str, float]], None] | None = None) -> None:
        self.cfg, self.run_dir, self.on_row = cfg, run_dir, on_row
        algo = cfg.algo
        torch.manual_seed(cfg.seed)
        sim, vdev, pdev = self.devices = resolve_devices(cfg)
        self.env = make_env(cfg.task, cfg.num_envs, device=sim, seed=cfg.seed)
        self.eval_env = make_env(cfg.task, cfg.eval_envs, device=sim, seed=cfg.seed + EVAL_SEED_OFFSET)
        d, a = self.env.obs_dim, self.env.act_dim
        head_v, head_p = make_head(algo, vdev), make_head(algo, pdev)

        policy = make_policy(algo.name, d, a, algo.actor_hidden, algo.init_temperature).to(pdev)
        critic = TwinCritic(d, a, algo.critic_hidden, head_v.out_features).to(vdev)
        normalizer = RunningNormalizer(d, algo.obs_clip, enabled=algo.normalize_obs).to(sim)
        self.policy_slot, self.critic_slot = ModuleSlot(policy), ModuleSlot(critic)
        self.norm_slot = ModuleSlot(normalizer)

        window = NStepWindow(algo.nstep, algo.gamma, cfg.num_envs, d, a, sim)
        noise = exploration_std(cfg.noise.kind, cfg.num_envs, cfg.noise.sigma_min, cfg.noise.sigma_max,
                                cfg.noise.sigma, sim)
        self.actor = ActorWorker(self.env, copy.deepcopy(policy).to(sim), normalizer, noise, window,
                                 algo.reward_scale, _generator(sim, cfg.seed + 1))
        self.v = VLearner(critic, head_v, copy.deepcopy(policy).to(vdev), copy.deepcopy(normalizer).to(vdev),
                          transition_buffer(algo.buffer_size, d, a, vdev), algo, _generator(vdev, cfg.seed + 2))
        self.p = PLearner(policy, head_p, copy.deepcopy(critic).to(pdev), copy.deepcopy(normalizer).to(pdev),
                          observation_buffer(algo.buffer_size, d, pdev), algo, _generator(pdev, cfg.seed + 3))
        self.evaluator = Evaluator(self.eval_env, copy.deepcopy(policy).to(sim), copy.deepcopy(normalizer))
        self.controller = RatioController(algo.critic_sample_ratio, algo.critic_actor_ratio)
        self.seen = {"actor_policy": 0, "eval_policy": 0, "v_policy": 0, "p_critic": 0, "v_norm": 0, "p_norm": 0,
                     "eval_norm": 0}
        self.progress = Progress()
        self.resumed = False
        self._loss_sums = {"critic_loss": torch.zeros((), device=vdev), "actor_loss": torch.zeros((), device=pdev)}
        self._loss_counts = {"critic_loss": 0, "actor_loss": 0}
        self._last_row_time = 0.0
        self._last_row_steps = 0
        self._last_checkpoint = time.monotonic()

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
        self._loss_sums["critic_loss"] += self.v.update()
        self._loss_counts["critic_loss"] += 1
        self.critic_slot.publish(self.v.critic)

    def p_update(self) -> None:
        self.seen["p_critic"] = self.critic_slot.pull(self.p.critic, self.seen["p_critic"])
        self.seen["p_norm"] = self.norm_slot.pull(self.p.normalizer, self.seen["p_norm"])
        self._loss_sums["actor_loss"] += self.p.update()
        self._loss_counts["actor_loss"] += 1
        self.policy_slot.publish(self.p.policy)

    # -- budget, rows, checkpoints ------------------------------------------------------
    def done(self) -> bool:
        cfg, pr = self.cfg, self.progress
        return ((cfg.max_env_steps is not None and pr.env_steps >= cfg.max_env_steps)
                or (cfg.max_time_s is not None and pr.wall_s >= cfg.max_time_s))

    def take_losses(self) -> dict[str, float]:
        """Mean losses since the last call (NaN where no update ran); raises NonFiniteLoss on NaN/inf."""
        losses = {k: float(self._loss_sums[k]) / self._loss_counts[k] if self._loss_counts[k] else float("nan")
                  for k in self._loss_sums}
        ran = {k: self._loss_counts[k] > 0 for k in self._loss_sums}
        for k in self._loss_sums:
            self._loss_sums[k].zero_()
            self._loss_counts[k] = 0
        self.progress.losses = losses
        if any(ran[k] and not math.isfinite(v) for k, v in losses.items()):
            raise NonFiniteLoss(self.progress.env_steps, losses)
        return losses

    def evaluate_and_log(self, losses: dict[str, float] | None = None) -> dict[str, float]:
        """Evaluate the latest policy and append a metrics row (losses taken now unless given)."""
        pr = self.progress
        losses = self.take_losses() if losses is None else losses
        self.seen["eval_policy"] = self.policy_slot.pull(self.evaluator.policy, self.seen["eval_policy"])
        self.seen["eval_norm"] = self.norm_slot.pull(self.evaluator.normalizer, self.seen["eval_norm"])
        eval_return = self.evaluator.run()
        dt = pr.wall_s - self._last_row_time
        row = {
            "env_steps": pr.env_steps, "wall_s": round(pr.wall_s, 4), "train_return": self.actor.take_train_return(),
            "eval_return": eval_return, **losses, "actor_steps": pr.actor_steps,
            "v_updates": self.controller.counts["v"], "p_updates": self.controller.counts["p"],
            "env_steps_per_s": (pr.env_steps - self._last_row_steps) / dt if dt > 0 else float("nan"),
        }
        self._last_row_time, self._last_row_steps = pr.wall_s, pr.env_steps
        self.run_dir.append_metrics(row)
        pr.rows += 1
        pr.next_eval = pr.env_steps + self.cfg.eval_every_env_steps
        if self.on_row is not None:
            self.on_row(row)
        return row

    def state_dict(self) -> dict[str, Any]:
        pr = self.progress
        return {
            "config": config_to_dict(self.cfg),
            "progress": {"actor_steps": pr.actor_steps, "env_steps": pr.env_steps, "wall_s": pr.wall_s,
                         "next_eval": pr.next_eval, "rows": pr.rows},
            "controller": dict(self.controller.counts),
            "policy": self.p.policy.state_dict(), "policy_optimizer": self.p.optimizer.state_dict(),
            "critic": self.v.critic.state_dict(), "critic_target": self.v.target.state_dict(),
            "critic_optimizer": self.v.optimizer.state_dict(), "normalizer": self.actor.normalizer.state_dict(),
            "rng": {"torch": torch.get_rng_state(), "actor": self.actor.generator.get_state(),
                    "v": self.v.generator.get_state(), "p": self.p.generator.get_state(),
                    "env": self.env.generator.get_state(), "eval_env": self.eval_env.generator.get_state()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pr = state["progress"]
        self.progress = Progress(pr["actor_steps"], pr["env_steps"], pr["wall_s"], pr["next_eval"], pr["rows"])
        self._last_row_time, self._last_row_steps = pr["wall_s"], pr["env_steps"]
        self.controller.counts.update(state["controller"])
        self.p.policy.load_state_dict(state["policy"])
        self.p.optimizer.load_state_dict(state["policy_optimizer"])
        self.v.critic.load_state_dict(state["critic"])
        self.v.target.load_state_dict(state["critic_target"])
        self.v.optimizer.load_state_dict(state["critic_optimizer"])
        self.actor.normalizer.load_state_dict(state["normalizer"])
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        for gen, key in ((self.actor.generator, "actor"), (self.v.generator, "v"), (self.p.generator, "p"),
                         (self.env.generator, "env"), (self.eval_env.generator, "eval_env")):
            gen.set_state(rng[key])
        self.policy_slot.publish(self.p.policy)
        self.critic_slot.publish(self.v.critic)
        self.norm_slot.publish(self.actor.normalizer)
        self.actor.obs = self.env.reset()
        self.resumed = True

    def checkpoint(self) -> None:
        self.run_dir.save_checkpoint(self.state_dict())
        self._last_checkpoint = time.monotonic()

    def _checkpoint_due(self) -> bool:
        return time.monotonic() - self._last_checkpoint >= self.cfg.checkpoint_every_s

    # -- the two modes ------------------------------------------------------------------
    def run(self) -> Progress:
        """Train until the budget is spent; returns the final counters. Raises on failure."""
        if self.progress.rows == 0:
            self.evaluate_and_log()  # the untrained policy's row at step 0
        if self.cfg.mode == "async":
            self._run_async()
        else:
            self._run_sync()
        if self.progress.env_steps > self._last_row_steps:
            self.evaluate_and_log()
        self.checkpoint()
        return self.progress

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
            if pr.env_steps >= pr.next_eval and not self.done():
                paused = time.monotonic()
                self.evaluate_and_log()
                if self._checkpoint_due():
                    self.checkpoint()
                start += time.monotonic() - paused  # evaluation and checkpoints are not training time

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
                    if self._checkpoint_due():
                        with locks["actor"], locks["v"], locks["p"]:
                            self.checkpoint()
        finally:
            stop.set()
            for t in workers:
                t.join()
            pr.wall_s = time.monotonic() - start
        if errors:
            raise errors[0]
