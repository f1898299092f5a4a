"""Benchmarks: env throughput, the V-learner's overhead over a bare critic step, sync vs async.

Run ``python -m pql.bench`` (``--help`` for the options). It prints three tables:

1. env-steps/s of batched tasks (the classic ones unless ``--tasks`` names others, e.g.
   ``playground/CartpoleBalance``) stepped with fixed random actions, compilation excluded;
2. ``SyncTrainer.v_update()`` updates/s against a bare TD step of copies of the same
   networks on a fixed, pre-normalised batch of the same size, timed in
   alternating blocks; the overhead is ``t_trainer / t_bare - 1``;
3. sync against async mode on the same config (:mod:`pql.bench_modes`): env-steps/s and
   V-updates/s of real runs, the ratios async held, sync's time split and the ceiling it
   implies for async.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

import torch
from torch.nn import functional as F

from pql.bench_modes import MODE_TASKS, available_cores, compare
from pql.config import build_config
from pql.envs import make_env, task_problem
from pql.training.run_dir import RunDir
from pql.training.sync import SyncTrainer

ENV_TASKS = "classic/pendulum,classic/mountaincar"
V_TASK = "classic/pendulum"
# (row name, overrides on top of the task preset)
V_ROWS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("pendulum preset", {}),
    ("paper default", {"algo.actor_hidden": "[512,256,128]", "algo.critic_hidden": "[512,256,128]",
                       "algo.batch_size": 8192}),
)


def resolve_device(name: str) -> torch.device:
    """``name`` as a torch device; 'auto' is cuda if available, else cpu."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def busy_cpus(interval_s: float = 0.3) -> float | None:
    """CPUs kept busy by other processes while this one sleeps ``interval_s`` (Linux /proc/stat; else None)."""

    def sample() -> tuple[int, int]:
        with open("/proc/stat") as fh:
            ticks = [int(x) for x in fh.readline().split()[1:]]
        return sum(ticks), ticks[3] + ticks[4]  # total, idle + iowait

    try:
        total0, idle0 = sample()
        time.sleep(interval_s)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    return (os.cpu_count() or 1) * (1 - (idle1 - idle0) / max(1, total1 - total0))


def sync(device: torch.device) -> None:
    """Wait for queued kernels on ``device`` (no-op on cpu)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], n: int, device: torch.device) -> float:
    """Wall-clock seconds of ``n`` calls of ``fn``, with the device synchronised before and after."""
    sync(device)
    start = time.perf_counter()
    for _ in range(n):
        fn()
    sync(device)
    return time.perf_counter() - start


def calibrate(fn: Callable[[], object], device: torch.device, target_s: float) -> int:
    """Number of calls of ``fn`` that take about ``target_s``: one warm-up call, then a doubling probe."""
    timed(fn, 1, device)
    probe_s = min(0.25, target_s / 4)
    n = 1
    while (elapsed := timed(fn, n, device)) < probe_s:
        n *= 2
    return max(1, round(n * target_s / elapsed))


def env_throughput(task: str, num_envs: int, device: torch.device, seconds: float,
                   warmup: int = 5) -> tuple[int, float]:
    """(steps timed, env-steps/s) of ``task`` with ``num_envs`` float32 envs and one fixed random action batch."""
    env = make_env(task, num_envs, device=device, seed=0)
    env.reset()
    gen = torch.Generator(device=device).manual_seed(0)
    u = torch.rand(num_envs, env.act_dim, generator=gen, device=device)
    actions = env.action_low + u * (env.action_high - env.action_low)  # env units

    def step() -> None:
        env.step(actions)

    timed(step, warmup, device)
    n = calibrate(step, device, seconds)
    return n, num_envs * n / timed(step, n, device)


class BareCriticStep:
    """The TD step alone, on deep copies of a trainer's V-learner networks and a fixed batch.

    No sampling, normalisation, target noise, clipping, target update or publishing:
    target = ret + discount * min(Q1', Q2')(next_obs, policy(next_obs)), MSE, AdamW step.
    """

    def __init__(self, trainer: SyncTrainer, seed: int = 1) -> None:
        v = trainer.v
        self.critic = copy.deepcopy(v.critic)
        self.target = copy.deepcopy(v.target)
        self.policy = copy.deepcopy(v.policy)
        self.optimizer = torch.optim.AdamW(self.critic.parameters(), lr=v.cfg.critic_lr)
        device = next(self.critic.parameters()).device
        with torch.no_grad():
            batch = v.buffer.sample(v.cfg.batch_size, torch.Generator(device=device).manual_seed(seed))
            self.obs, self.next_obs = v.normalizer(batch["obs"]), v.normalizer(batch["next_obs"])
        self.action, self.ret, self.discount = batch["action"], batch["ret"], batch["discount"]

    def __call__(self) -> None:
        with torch.no_grad():
            next_action = self.policy(self.next_obs).clamp(-1.0, 1.0)
            y = self.ret + self.discount * self.target(self.next_obs, next_action).min(0).values
        pred = self.critic(self.obs, self.action)
        loss = F.mse_loss(pred, y.expand_as(pred))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()


def interleaved(fns: dict[str, Callable[[], object]], device: torch.device, seconds: float,
                blocks: int) -> dict[str, float]:
    """Median seconds per call of each function, timed in alternating blocks of about ``seconds / blocks``.

    The order flips every block (A B, B A, ...) so neither side always runs first.
    """
    counts = {name: calibrate(fn, device, seconds / blocks) for name, fn in fns.items()}
    per_call: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    for b in range(blocks):
        for name in names if b % 2 == 0 else reversed(names):
            per_call[name].append(timed(fns[name], counts[name], device) / counts[name])
    return {name: statistics.median(ts) for name, ts in per_call.items()}


def build_trainer(overrides: dict[str, Any], device: torch.device, num_envs: int, out: str) -> SyncTrainer:
    """A real SyncTrainer for ``V_TASK`` with its preset plus ``overrides``, every part on ``device``."""
    dev = str(device)
    cfg = build_config({"task": V_TASK, "num_envs": num_envs, "max_time_s": 1, "progress": False, "out": out,
                        "device.sim": dev, "device.v_learner": dev, "device.p_learner": dev, **overrides})
    return SyncTrainer(cfg, RunDir(out))


def v_overhead(overrides: dict[str, Any], device: torch.device, num_envs: int, fill_steps: int,
               seconds: float, blocks: int) -> dict[str, Any]:
    """SyncTrainer vs bare per-update seconds for one network configuration, plus its sizes."""
    with tempfile.TemporaryDirectory(prefix="pql-bench-") as out:
        trainer = build_trainer(overrides, device, num_envs, out)
        for _ in range(fill_steps):
            trainer.actor_step()
        bare = BareCriticStep(trainer)
        t = interleaved({"trainer": trainer.v_update, "bare": bare}, device, seconds, blocks)
        algo, d, a = trainer.cfg.algo, trainer.env.obs_dim, trainer.env.act_dim
        return {"batch": algo.batch_size, "buffer": trainer.v.buffer.size,
                "actor": "-".join(map(str, (d, *algo.actor_hidden, a))),
                "critic": "2x " + "-".join(map(str, (d + a, *algo.critic_hidden, 1))), **t}


def format_table(headers: list[str], rows: list[list[str]]) -> str:
    """Plain-text table: first column left-aligned, the others right-aligned."""
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]

    def line(cells: list[str]) -> str:
        return "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True)))

    return "\n".join([line(headers), "  ".join("-" * w for w in widths), *map(line, rows)])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m pql.bench", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Benchmark classic-env throughput (env-steps/s) and the V-learner overhead: "
                    "SyncTrainer.v_update() against a bare critic TD step of the same networks and batch size.")
    p.add_argument("--device", default="cpu",
                   help="device of envs, trainer and bare step: cpu, cuda, cuda:N, or auto (cuda if available)")
    p.add_argument("--tasks", default=ENV_TASKS,
                   help="comma-separated tasks of the env-throughput table, any backend (e.g. "
                        "playground/CartpoleBalance; its JAX compilation happens in the untimed warm-up)")
    p.add_argument("--envs", default="256,4096,65536",
                   help="comma-separated numbers of parallel envs for the env-throughput table")
    p.add_argument("--seconds", type=float, default=2.0,
                   help="target duration of each measurement: one env row, or each side (trainer / bare) "
                        "of a V row summed over its blocks; step counts come from a short timed probe")
    p.add_argument("--blocks", type=int, default=5,
                   help="alternating timing blocks per side in the V-learner table; the median is reported")
    p.add_argument("--v-envs", type=int, default=1024, help="num_envs of the trainer built for the V-learner table")
    p.add_argument("--fill-steps", type=int, default=64,
                   help="trainer.actor_step() calls (warm-up included) that fill the buffers before timing")
    p.add_argument("--threads", type=int, default=0,
                   help="torch intra-op CPU threads (torch.set_num_threads); 0 keeps torch's default. On a small, "
                        "shared CPU, 1 avoids threads stalling each other when another process competes for cores")
    p.add_argument("--mode-tasks", default=MODE_TASKS,
                   help="comma-separated tasks of the sync-vs-async table (their presets); tasks whose backend is "
                        "not installed are named and skipped")
    p.add_argument("--mode-steps", type=int, default=200,
                   help="actor steps after warm-up of each sync and async run in the sync-vs-async table")
    p.add_argument("--mode-reps", type=int, default=2,
                   help="sync/async run pairs per task (alternating); the medians are reported")
    p.add_argument("--only", choices=("env", "v", "modes"), default=None, help="run only one of the tables")
    args = p.parse_args(argv)
    args.env_counts = [int(x) for x in args.envs.split(",") if x.strip()]
    args.env_tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    unavailable = [f"{t}: {problem}" for t in args.env_tasks if (problem := task_problem(t))]
    if unavailable:
        p.error("; ".join(unavailable))
    args.mode_task_list = [t.strip() for t in args.mode_tasks.split(",") if t.strip()]
    if (args.seconds <= 0 or args.threads < 0
            or min(args.blocks, args.v_envs, args.fill_steps, args.mode_steps, args.mode_reps) < 1
            or not args.env_counts or min(args.env_counts) < 1):
        p.error("need --seconds > 0, --threads >= 0, and --blocks, --v-envs, --fill-steps, --mode-steps, "
                "--mode-reps, every --envs >= 1")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    busy = busy_cpus()
    start = time.perf_counter()
    print(f"pql.bench: torch {torch.__version__}, device {device}, {torch.get_num_threads()} torch threads, "
          f"python {platform.python_version()}, ~{args.seconds:g} s per measurement, "
          f"{os.cpu_count()} cpus, {'?' if busy is None else f'{busy:.1f}'} of them busy with other processes\n")
    if device.type == "cpu" and torch.get_num_threads() > 1 and busy is not None and busy > 0.25:
        print("note: other processes are using the CPU; multi-threaded torch ops can then stall for whole\n"
              "scheduler slices (10-100x slower). Compare with --threads 1 before trusting these numbers.\n")

    if args.only in (None, "env"):
        rows = []
        for task in args.env_tasks:
            for n in args.env_counts:
                steps, rate = env_throughput(task, n, device, args.seconds)
                rows.append([task, f"{n:,}", f"{steps:,}", f"{rate:,.0f}", f"{n / rate * 1e3:.3f}"])
                print(f"  {task} x{n}: {rate:,.0f} env-steps/s", flush=True)
        print("\nEnv throughput (float32, fixed random actions in env units)")
        print(format_table(["task", "envs", "steps timed", "env-steps/s", "ms/step"], rows) + "\n")

    if args.only in (None, "v"):
        rows = []
        for name, overrides in V_ROWS:
            r = v_overhead(overrides, device, args.v_envs, args.fill_steps, args.seconds, args.blocks)
            overhead = (r["trainer"] / r["bare"] - 1) * 100
            rows.append([name, r["actor"], r["critic"], f"{r['batch']:,}", f"{1 / r['trainer']:,.1f}",
                         f"{1 / r['bare']:,.1f}", f"{overhead:+.1f}%"])
            print(f"  {name}: trainer {1 / r['trainer']:.1f} upd/s, bare {1 / r['bare']:.1f} upd/s", flush=True)
        print(f"\nV-learner overhead ({V_TASK}, {args.v_envs} envs, {args.fill_steps} fill steps, "
              f"median of {args.blocks} alternating blocks per side)")
        print(format_table(["config", "actor", "critic", "batch", "trainer upd/s", "bare upd/s", "overhead"], rows))
        print("trainer = SyncTrainer.v_update(): slot pulls, buffer sample, normalisation, target with noise, loss,\n"
              "backward, grad clip, AdamW step, soft target update, publish. bare = fixed pre-normalised batch,\n"
              "target without noise, MSE, backward, AdamW step. overhead = t_trainer / t_bare - 1.\n")

    if args.only in (None, "modes"):
        print_modes_table(args.mode_task_list, str(device), args.mode_steps, args.mode_reps)

    print(f"total {time.perf_counter() - start:.1f} s")


def print_modes_table(tasks: list[str], device: str, steps: int, reps: int) -> None:
    """The sync-vs-async table (:mod:`pql.bench_modes`)."""
    rows = []
    for task in tasks:
        if problem := task_problem(task):
            print(f"  {task}: skipped ({problem})", flush=True)
            continue
        r = compare(task, device, {}, steps, reps)
        split = r["split"]
        shares = "/".join(f"{split.sync[k] / split.sync_step_s:.0%}" for k in ("actor", "v", "p"))
        alone = "/".join(f"{split.alone[k] * 1e3:.1f}" for k in ("actor", "v", "p"))
        rows.append([task, f"{r['sync_env_steps_per_s']:,.0f}", f"{r['async_env_steps_per_s']:,.0f}",
                     f"{r['sync_v_updates_per_s']:,.0f}", f"{r['async_v_updates_per_s']:,.0f}",
                     f"{r['async_beta_av']:.2f}", f"{r['async_beta_pv']:.2f}", f"{split.sync_step_s * 1e3:.1f}",
                     shares, alone, f"{r['speedup']:.2f}x", f"{split.ceiling:.2f}x",
                     f"{r['speedup'] / split.ceiling:.0%}"])
        print(f"  {task}: async {r['speedup']:.2f}x sync, ceiling {split.ceiling:.2f}x", flush=True)
    if not rows:
        return
    print(f"\nSync vs async (task presets, {device}, {available_cores()} cores, {steps} actor steps per run after "
          f"warm-up, median of {reps} alternating pairs)")
    print(format_table(["task", "sync env-st/s", "async env-st/s", "sync V-upd/s", "async V-upd/s", "async b_av",
                        "async b_pv", "sync ms/step", "sync a/V/P", "alone ms a/V/P", "speed-up", "ceiling",
                        "of ceiling"], rows))
    print("sync a/V/P = share of a sync step spent in the actor step, the V-updates and the P-updates it makes due.\n"
          "alone = each worker by itself at the torch threads async gives it, ms per actor step (beta_a:v V-updates,\n"
          "beta_a:v/beta_p:v P-updates). ceiling = sync ms/step / max(slowest worker, sum of the three / cores).\n")


if __name__ == "__main__":
    main()
