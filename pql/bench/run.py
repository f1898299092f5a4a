"""Benchmarks: env throughput, each worker against its bare limit, sync vs async.

Run ``python -m pql.bench`` (``--help`` for the options). It prints, in one run:

1. env-steps/s of batched tasks (the classic ones unless ``--tasks`` names others, e.g.
   ``playground/CartpoleBalance``) stepped with fixed random actions, compilation excluded;
2. each worker against its bare limit (:mod:`pql.bench.limits`): the embedded simulator against
   its dynamics kernel at 4096 envs; ``v_update()`` against a bare forward+backward+AdamW step of
   the same networks and batch, eager and compiled, with the GEMM floor that bounds what
   compilation can gain; the actor's step against a bare policy forward + env step;
3. sync against async mode on the same config (:mod:`pql.bench.modes`): env-steps/s and
   V-updates/s of real runs, the ratios async held, sync's time split and the ceiling it
   implies for async.

Compilation and warm-up happen before any timing. Every ratio compares two things measured in
alternating blocks of the same run.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from typing import Any

import torch

from pql.bench.limits import SIM_ENVS, actor_vs_bare, calibrate, sim_vs_kernel, timed, v_update_vs_bare
from pql.bench.modes import MODE_TASKS, available_cores, compare
from pql.envs import make_env, task_problem
from pql.speed import COMPILE_MODES

ENV_TASKS = "classic/pendulum,classic/mountaincar"
ACTOR_TASK = "classic/pendulum"
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


def format_table(headers: list[str], rows: list[list[str]]) -> str:
    """Plain-text table: first column left-aligned, the others right-aligned."""
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]

    def line(cells: list[str]) -> str:
        return "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True)))

    return "\n".join([line(headers), "  ".join("-" * w for w in widths), *map(line, rows)])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line of ``python -m pql.bench``."""
    p = argparse.ArgumentParser(
        prog="python -m pql.bench", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Benchmark env throughput, each worker against its bare limit (simulator vs its kernel, "
                    "V-update vs a bare step, eager and compiled, actor step vs a bare policy forward + env step), "
                    "and sync against async mode.")
    p.add_argument("--device", default="cpu",
                   help="device of envs, trainer and bare steps: cpu, cuda, cuda:N, or auto (cuda if available)")
    p.add_argument("--tasks", default=ENV_TASKS,
                   help="comma-separated tasks of the env-throughput table, any backend (e.g. "
                        "playground/CartpoleBalance; its JAX compilation happens in the untimed warm-up); the "
                        "embedded (classic/) ones also get a row in the simulator-vs-kernel table")
    p.add_argument("--envs", default="256,4096,65536",
                   help="comma-separated numbers of parallel envs for the env-throughput table")
    p.add_argument("--seconds", type=float, default=2.0,
                   help="target duration of each measurement: one env row, or each side of a pair "
                        "(e.g. trainer / bare) summed over its blocks; step counts come from a short timed probe")
    p.add_argument("--blocks", type=int, default=5,
                   help="alternating timing blocks per side of each pair; the median is reported")
    p.add_argument("--v-envs", type=int, default=1024, help="num_envs of the trainer built for the V-learner table")
    p.add_argument("--fill-steps", type=int, default=64,
                   help="trainer.actor_step() calls (warm-up included) that fill the buffers before timing")
    p.add_argument("--compile-modes", default=None,
                   help="comma-separated torch.compile modes measured against eager in the V-learner and actor "
                        "tables (none: eager only); default: 'default' on a CPU, 'default,reduce-overhead' on CUDA")
    p.add_argument("--amp", choices=("off", "bf16"), default="off", help="the learners' mixed precision in the "
                   "V-learner table (the bare step stays float32)")
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
    p.add_argument("--only", choices=("env", "sim", "v", "actor", "modes"), default=None,
                   help="run only one of the tables")
    args = p.parse_args(argv)
    args.env_counts = [int(x) for x in args.envs.split(",") if x.strip()]
    args.env_tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    unavailable = [f"{t}: {problem}" for t in args.env_tasks if (problem := task_problem(t))]
    if unavailable:
        p.error("; ".join(unavailable))
    args.mode_task_list = [t.strip() for t in args.mode_tasks.split(",") if t.strip()]
    device = resolve_device(args.device)
    if args.compile_modes is None:
        args.compile_modes = "default,reduce-overhead" if device.type == "cuda" else "default"
    args.compile_list = [m.strip() for m in args.compile_modes.split(",") if m.strip() and m.strip() != "off"]
    bad = [m for m in args.compile_list if m not in COMPILE_MODES]
    if bad:
        p.error(f"--compile-modes: unknown mode {', '.join(bad)}; known: {', '.join(COMPILE_MODES[1:])}")
    if (args.seconds <= 0 or args.threads < 0
            or min(args.blocks, args.v_envs, args.fill_steps, args.mode_steps, args.mode_reps) < 1
            or not args.env_counts or min(args.env_counts) < 1):
        p.error("need --seconds > 0, --threads >= 0, and --blocks, --v-envs, --fill-steps, --mode-steps, "
                "--mode-reps, every --envs >= 1")
    return args


def rate(seconds_per_call: float, per_call: float = 1.0) -> str:
    """A rate as a table prints it: calls (or ``per_call`` items) per second."""
    return f"{per_call / seconds_per_call:,.0f}" if per_call > 1 else f"{1 / seconds_per_call:,.1f}"


def main(argv: list[str] | None = None) -> None:
    """Run the benchmarks ``argv`` asks for and print their tables."""
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
                steps, r = env_throughput(task, n, device, args.seconds)
                rows.append([task, f"{n:,}", f"{steps:,}", f"{r:,.0f}", f"{n / r * 1e3:.3f}"])
                print(f"  {task} x{n}: {r:,.0f} env-steps/s", flush=True)
        print("\nEnv throughput (float32, fixed random actions in env units)")
        print(format_table(["task", "envs", "steps timed", "env-steps/s", "ms/step"], rows) + "\n")

    if args.only in (None, "sim"):
        print_sim_table([t for t in args.env_tasks if t.startswith("classic/")], device, args.seconds, args.blocks)
    if args.only in (None, "v"):
        print_v_table(args, device)
    if args.only in (None, "actor"):
        print_actor_table(args, device)
    if args.only in (None, "modes"):
        print_modes_table(args.mode_task_list, str(device), args.mode_steps, args.mode_reps)

    print(f"total {time.perf_counter() - start:.1f} s")


def print_sim_table(tasks: list[str], device: torch.device, seconds: float, blocks: int) -> None:
    """The simulator against its bare kernel (goal: >= 50%)."""
    rows = []
    for task in tasks:
        t = sim_vs_kernel(task, device, seconds, blocks)
        rows.append([task, f"{SIM_ENVS:,}", rate(t["env"], SIM_ENVS), rate(t["kernel"], SIM_ENVS),
                     f"{t['kernel'] / t['env']:.0%}"])
        print(f"  {task}: env.step at {t['kernel'] / t['env']:.0%} of its kernel", flush=True)
    if rows:
        print(f"\nSimulator vs its bare kernel ({device}, median of {blocks} alternating blocks; goal >= 50%)")
        print(format_table(["task", "envs", "env.step env-st/s", "kernel env-st/s", "of kernel"], rows))
        print("kernel = the task's dynamics and observation on a fixed state; env.step adds the time limit,\n"
              "auto-reset and the final observation.\n")


def print_v_table(args: argparse.Namespace, device: torch.device) -> None:
    """The V-learner against the bare step, eager and compiled, and the GEMM floor."""
    rows = []
    for name, overrides in V_ROWS:
        r = v_update_vs_bare(overrides, device, args.v_envs, args.fill_steps, args.seconds, args.blocks,
                             args.compile_list, args.amp)
        for mode in ["off", *args.compile_list]:
            trainer, bare = r[f"trainer_{mode}"], r[f"bare_{mode}"]
            rows.append([name, r["actor"], r["critic"], f"{r['batch']:,}", "eager" if mode == "off" else mode,
                         rate(trainer), rate(bare), f"{(trainer / bare - 1) * 100:+.1f}%",
                         f"{r['trainer_off'] / trainer:.2f}x", rate(r["gemm_off"]),
                         f"{r['bare_off'] / r['gemm_off']:.2f}x"])
            print(f"  {name} {mode}: trainer {1 / trainer:.1f} upd/s, bare {1 / bare:.1f} upd/s", flush=True)
    print(f"\nV-learner vs a bare step ({device}, amp={args.amp}, {args.v_envs} envs, {args.fill_steps} fill steps, "
          f"median of {args.blocks} alternating blocks; goals: overhead <= 10%, compiled >= 1.3x eager)")
    print(format_table(["config", "actor", "critic", "batch", "compile", "trainer upd/s", "bare upd/s", "overhead",
                        "vs eager", "GEMM-only upd/s", "fusion ceiling"], rows))
    print("trainer = SyncTrainer.v_update(): slot pulls, buffer sample, normalisation, target with noise, loss,\n"
          "backward, grad clip, AdamW step, soft target update, publish. bare = fixed pre-normalised batch,\n"
          "target without noise, MSE, backward, AdamW step (compiled the same way).\n"
          "overhead = t_trainer / t_bare - 1. "
          "vs eager = eager trainer time / this trainer time. GEMM-only = the step's matrix multiplications alone;\n"
          "fusion ceiling = bare eager time / GEMM-only time: the most any compilation can gain over the bare step.\n")


def print_actor_table(args: argparse.Namespace, device: torch.device) -> None:
    """The actor's step against a bare policy forward + env step."""
    n = args.v_envs
    r = actor_vs_bare(ACTOR_TASK, device, n, args.seconds, args.blocks, args.compile_list)
    rows = [[ACTOR_TASK, f"{n:,}", "eager" if mode == "off" else mode, rate(r[f"actor_{mode}"], n),
             rate(r["bare_off"], n), f"{r['bare_off'] / r[f'actor_{mode}']:.0%}",
             f"{r['actor_off'] / r[f'actor_{mode}']:.2f}x"] for mode in ["off", *args.compile_list]]
    print(f"\nActor vs a bare policy forward + env step ({device}, task preset networks, median of {args.blocks} "
          f"alternating blocks)")
    print(format_table(["task", "envs", "compile", "actor env-st/s", "bare env-st/s", "of bare", "vs eager"], rows))
    print("actor = ActorWorker.step(): normaliser update, policy with per-env noise, env step, episode returns,\n"
          "n-step window. bare = eager policy forward on the normalised observation and env step.\n")


def print_modes_table(tasks: list[str], device: str, steps: int, reps: int) -> None:
    """The sync-vs-async table (:mod:`pql.bench.modes`)."""
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
