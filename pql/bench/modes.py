"""Sync against async on one machine, in one run: throughput, sync's time split and async's ceiling.

For each task (its preset, every part on the CPU unless ``--device`` says otherwise):

1. **Sync split**: a sync :class:`~pql.training.sync.SyncTrainer` takes ``steps`` actor steps after its
   warm-up with each part timed (actor step, V-updates, P-updates); the shares of the sync
   step and its time per actor step.
2. **Each worker alone**, with the torch threads async mode gives it
   (:func:`pql.training.placement.thread_plan`): seconds per actor step of the actor, of beta_a:v
   V-updates and of beta_a:v / beta_p:v P-updates. Async cannot beat its slowest worker, nor
   the sum of the three spread over the cores, so the **ceiling** of the speed-up is
   sync time per actor step / max(slowest worker, sum / cores).
3. **Real runs**, ``pql train`` in sync then async mode, the same config and ratios
   (``reps`` times, alternating): env-steps/s and V-updates/s between the first metrics row
   after warm-up and the last, and the ratios async achieved over that span.
"""

from __future__ import annotations

import csv
import statistics
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from pql.bench.limits import timed
from pql.config import Config
from pql.resolve import build_config
from pql.store.run_dir import RunDir
from pql.training.board import ROLES
from pql.training.placement import core_budget, thread_plan
from pql.training.run import run_training
from pql.training.sync import SyncTrainer
from pql.workers.balance import critic_sample_ratio
from pql.workers.plan import plan_run

MODE_TASKS = "classic/pendulum,gym/Pendulum-v1,playground/CartpoleBalance"


def available_cores() -> int:
    """The cores a run here may use (:func:`pql.training.placement.core_budget`)."""
    return core_budget()[1]


@dataclass
class Split:
    """Seconds per actor step: of the sync step's parts, and of each worker alone at its async threads."""

    sync: dict[str, float]
    alone: dict[str, float]
    cores: int

    @property
    def sync_step_s(self) -> float:
        """Seconds per actor step of sync mode, all its parts."""
        return sum(self.sync.values())

    @property
    def bound_s(self) -> float:
        """The fastest async can take per actor step: its slowest worker, or all three over the cores."""
        return max(max(self.alone.values()), sum(self.alone.values()) / min(self.cores, len(ROLES)))

    @property
    def ceiling(self) -> float:
        """How much faster async could be: sync's seconds per step over async's bound."""
        return self.sync_step_s / self.bound_s


def run_config(task: str, device: str, overrides: dict[str, Any], **more: Any) -> Config:
    """A run of ``task`` with every part on ``device``, no progress bar, ``overrides`` and ``more`` on top."""
    return build_config({"task": task, "device.sim": device, "device.v_learner": device, "device.p_learner": device,
                         "progress": False, **overrides, **more})


def time_split(task: str, device: str, overrides: dict[str, Any], steps: int) -> Split:
    """Sync's parts over ``steps`` actor steps after warm-up, then each worker alone (see the module docstring)."""
    with tempfile.TemporaryDirectory(prefix="pql-bench-") as out:
        cfg = run_config(task, device, overrides, max_env_steps=1, out=out, mode="sync")
        trainer = SyncTrainer(plan_run(cfg), RunDir(out))
        while not trainer.learning():
            trainer.actor_step()
        spent = dict.fromkeys(ROLES, 0.0)
        device = dict(zip(ROLES, trainer.devices, strict=True))  # actor: the sim's; v, p: the learners'

        def part(name: str, fn: Callable[[], None]) -> None:
            spent[name] += timed(fn, 1, device[name])  # its device synchronised before and after (CUDA)

        for _ in range(steps):
            trainer.step(part)
        sync = {name: s / steps for name, s in spent.items()}
        beta_av = critic_sample_ratio(cfg.algo.critic_sample_ratio, cfg.num_envs, cfg.algo.ratio_scale_envs)
        per_actor_step = {"actor": 1.0, "v": beta_av, "p": beta_av / cfg.algo.critic_actor_ratio}
        threads = thread_plan(dict(zip(ROLES, trainer.devices, strict=True)), available_cores())
        fns = {"actor": trainer.actor_step, "v": trainer.v_update, "p": trainer.p_update}
        default_threads = torch.get_num_threads()
        alone = {}
        for name, fn in fns.items():
            torch.set_num_threads(threads[name])
            fn()
            calls = max(3, round(steps * per_actor_step[name] / 4))
            alone[name] = timed(fn, calls, device[name]) / calls * per_actor_step[name]
        torch.set_num_threads(default_threads)
        return Split(sync, alone, available_cores())


@dataclass
class RunRates:
    """What one run achieved between its first row after warm-up and its last."""

    env_steps_per_s: float
    v_updates_per_s: float
    beta_av: float
    beta_pv: float


def run_rates(task: str, device: str, overrides: dict[str, Any], mode: str, steps: int) -> RunRates:
    """Train ``steps`` actor steps after warm-up in ``mode``; the rates between the row after warm-up and the last."""
    with tempfile.TemporaryDirectory(prefix="pql-bench-") as out:
        probe = run_config(task, device, overrides, max_env_steps=1)
        n, warmup = probe.num_envs, probe.algo.warmup_steps + probe.algo.nstep
        every = max(1, steps // 4) * n
        first = (warmup // (every // n) + 1) * every  # the first row after warm-up
        cfg = run_config(task, device, overrides, mode=mode, out=out, eval_envs=1, eval_every_env_steps=every,
                         eval_max_share=0,  # rows exactly where this span needs them, whatever they cost
                         max_env_steps=first + steps * n, max_time_s="null")
        with open(run_training(cfg).metrics_path) as fh:
            rows = [r for r in csv.DictReader(fh) if int(r["env_steps"]) >= first]
    a, b = rows[0], rows[-1]
    d = {k: float(b[k]) - float(a[k]) for k in ("env_steps", "wall_s", "actor_steps", "v_updates", "p_updates")}
    return RunRates(d["env_steps"] / d["wall_s"], d["v_updates"] / d["wall_s"], d["v_updates"] / d["actor_steps"],
                    d["v_updates"] / max(1.0, d["p_updates"]))


def compare(task: str, device: str, overrides: dict[str, Any], steps: int, reps: int) -> dict[str, Any]:
    """One row of the modes table (see the module docstring)."""
    split = time_split(task, device, overrides, max(10, steps // 4))
    runs: dict[str, list[RunRates]] = {"sync": [], "async": []}
    for _ in range(reps):
        for mode in runs:
            runs[mode].append(run_rates(task, device, overrides, mode, steps))

    def median(mode: str, field: str) -> float:
        return statistics.median(getattr(r, field) for r in runs[mode])

    out = {f"{mode}_{field}": median(mode, field) for mode in runs for field in ("env_steps_per_s", "v_updates_per_s")}
    out.update(async_beta_av=median("async", "beta_av"), async_beta_pv=median("async", "beta_pv"),
               sync_beta_av=median("sync", "beta_av"), split=split,
               speedup=out["async_env_steps_per_s"] / out["sync_env_steps_per_s"])
    return out
