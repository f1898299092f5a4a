"""The checks of ``make gpu-check`` (:mod:`pql.bench.gpu_check` runs each in its own process): each
appends its rows (check, result, verdict, figures) to ``rows.jsonl`` through :class:`Check`."""

from __future__ import annotations

import contextlib
import importlib
import json
import math
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator

import torch

from pql.bench.gpu_exchange import check_exchange
from pql.bench.gpu_rows import TINY, Check

TASK = "classic/pendulum"  # every check's task: the embedded simulator, on any device
V_UPDATES = 20  # updates whose losses are set against eager fp32's
# name -> (amp, compile, matmul precision, how far its losses may be from eager fp32's, relative)
V_VARIANTS: dict[str, tuple[str, str, str, float]] = {
    "fp32": ("off", "off", "highest", 0.0),
    "tf32": ("off", "off", "high", 2e-2),
    "bf16": ("bf16", "off", "highest", 1e-1),
    "compiled": ("off", "default", "highest", 1e-3),
    "cuda-graphs": ("off", "reduce-overhead", "highest", 1e-3),
    "cuda-graphs-bf16": ("bf16", "reduce-overhead", "highest", 1e-1),
}


# -- facts -------------------------------------------------------------------------------------
def _facts(c: Check) -> None:
    from pql.speed import bf16_supported, cpp_compiler

    shm = shutil.disk_usage("/dev/shm") if os.path.isdir("/dev/shm") else None
    versions = []
    for name in ("omegaconf", "submitit", "pandas", "yaml"):
        try:
            versions.append(f"{name} {importlib.import_module(name).__version__}")
        except ImportError:
            versions.append(f"{name} MISSING")
    c.row("python", f"{platform.python_version()}; torch {torch.__version__}; {', '.join(versions)}; "
          f"{os.cpu_count()} CPUs; C compiler {cpp_compiler() or 'none'}; /dev/shm "
          + (f"{shm.total / 2**30:.1f} GiB" if shm else "absent"))
    if not c.cuda:
        c.row("gpu", f"none used (--device {c.device})", "skipped")
        return
    torch.cuda.init()
    free, total = torch.cuda.mem_get_info(c.device)
    props = torch.cuda.get_device_properties(c.device)
    c.row("gpu", f"{props.name}, capability {props.major}.{props.minor}, {total / 2**30:.0f} GiB, CUDA "
          f"{torch.version.cuda}, {torch.cuda.device_count()} visible; native bf16 {bf16_supported(c.device)}; "
          f"TF32 matmul by default {torch.backends.cuda.matmul.allow_tf32} (precision "
          f"{torch.get_float32_matmul_precision()}); one CUDA context ~{(total - free) / 2**20:.0f} MiB "
          f"(device memory used after this process's init)", context_mib=(total - free) / 2**20)


# -- simulator ------------------------------------------------------------------------------------
def _sim(c: Check) -> None:
    from pql.bench.limits import calibrate, timed
    from pql.envs import make_env

    for n in ((64, 256) if c.quick else (4096, 16384, 65536)):
        env = make_env(TASK, n, device=c.device, seed=0)
        env.reset()
        actions = torch.zeros(n, env.act_dim, device=c.device)
        calls = calibrate(lambda env=env, a=actions: env.step(a), c.device, c.seconds(0.5))
        per_call = timed(lambda env=env, a=actions: env.step(a), calls, c.device) / calls
        c.row(f"sim {n} envs", f"{n / per_call / 1e6:.2f} M env-steps/s ({per_call * 1e6:.0f} us per step)",
              env_steps_per_s=n / per_call)


# -- V-updates --------------------------------------------------------------------------------------
def _v_variant(c: Check, name: str) -> None:
    from pql.bench.limits import build_trainer, calibrate, fill_until_learning, timed
    from pql.speed import compilation_summary, compilation_watched

    amp, mode, precision, tolerance = V_VARIANTS[name]
    check = f"V-update {name}"
    overrides = {**c.nets(), "amp": amp, "compile": mode, "matmul_precision": precision,
                 "seed": 0}
    with tempfile.TemporaryDirectory(prefix="pql-gpu-check-") as out:
        trainer = build_trainer(overrides, c.device, c.envs(4096), out)
        torch.set_float32_matmul_precision(precision)
        fill_until_learning(trainer)
        started = time.perf_counter()
        with compilation_watched(check, mode):
            trainer.v.warm_up(), trainer.p.warm_up()
        compile_s = time.perf_counter() - started
        if c.cuda:
            torch.cuda.reset_peak_memory_stats(c.device)
        losses: dict[str, list[float]] = {"v": [], "p": []}
        for _ in range(V_UPDATES):
            losses["v"].append(float(trainer.v.update()))
            losses["p"].append(float(trainer.p.update()))
        v_calls = calibrate(trainer.v.update, c.device, c.seconds(1.0))
        v_s = timed(trainer.v.update, v_calls, c.device) / v_calls
        p_calls = calibrate(trainer.p.update, c.device, c.seconds(0.5))
        p_s = timed(trainer.p.update, p_calls, c.device) / p_calls
        peak = torch.cuda.max_memory_allocated(c.device) / 2**20 if c.cuda else math.nan
    finite = all(math.isfinite(x) for xs in losses.values() for x in xs)
    reference = c.out / "losses-fp32.json"
    if name == "fp32":
        reference.write_text(json.dumps(losses))
        gap, verdict = 0.0, "ok" if finite else "FAIL"
    elif reference.exists():
        eager = json.loads(reference.read_text())
        gap = max(abs(a - b) / max(abs(b), 1e-6) for k in losses for a, b in zip(losses[k], eager[k], strict=True))
        verdict = "ok" if finite and gap <= tolerance else "FAIL"
    else:  # fp32 did not run in this check (--only)
        gap, verdict = math.nan, "ok" if finite else "FAIL"
    found = compilation_summary()
    c.row(check, f"{1 / v_s:,.0f} V-updates/s, {1 / p_s:,.0f} P-updates/s; losses of {V_UPDATES} updates vs eager "
          f"fp32: max rel. gap {gap:.1e} (limit {tolerance:.0e}); compile {compile_s:.1f} s, graphs "
          f"{found['graphs']}, graph breaks {found['graph_breaks']}, CUDA-graph skips {found['cudagraph_skips']}"
          + (f" ({'; '.join(found['break_reasons'])})" if found["break_reasons"] else "")
          + (f"; peak {peak:,.0f} MiB" if c.cuda else ""), verdict, v_updates_per_s=1 / v_s, gap=gap)


# -- sync vs async --------------------------------------------------------------------------------
@contextlib.contextmanager
def _gpu_memory_per_process(c: Check) -> Iterator[dict[int, float]]:
    """While the block runs, the most GPU memory (MiB) ``nvidia-smi`` saw used by each process."""
    peaks: dict[int, float] = {}
    done = threading.Event()

    def poll() -> None:
        while not done.wait(0.5):
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory",
                                      "--format=csv,noheader,nounits"], capture_output=True, text=True,
                                     timeout=5).stdout
                for line in out.strip().splitlines():
                    pid, mib = (x.strip() for x in line.split(","))
                    if pid.isdigit() and mib.replace(".", "").isdigit():
                        peaks[int(pid)] = max(peaks.get(int(pid), 0.0), float(mib))

    thread = threading.Thread(target=poll, daemon=True)
    if c.cuda and shutil.which("nvidia-smi"):
        thread.start()
    try:
        yield peaks
    finally:
        done.set()


def _modes(c: Check) -> None:
    from pql.ablate.memory import estimate
    from pql.ablate.memory_check import task_dims
    from pql.bench.modes import run_config, run_rates

    runs = [(n, mode, "off") for n in ((64,) if c.quick else (4096, 16384)) for mode in ("sync", "async")]
    if c.cuda:
        runs.append((4096, "async", "reduce-overhead"))  # CUDA graphs in every worker process
    rates = {}
    for n, mode, compile_mode in runs:
        overrides = {**c.nets(), "num_envs": n, "compile": compile_mode}
        name = f"{mode} {n} envs" + (f" compile={compile_mode}" if compile_mode != "off" else "")
        with _gpu_memory_per_process(c) as peaks:
            rates[name] = r = run_rates(TASK, str(c.device), overrides, mode, 12 if c.quick else 200)
        cfg = run_config(TASK, str(c.device), {**c.nets(), "num_envs": n, "mode": mode}, max_env_steps=1)
        est = estimate(cfg, task_dims(cfg)).device_bytes().get(str(c.device), 0) / 2**20
        used = sum(peaks.values())
        memory = (f"; GPU memory {used:,.0f} MiB in {len(peaks)} processes ("
                  + ", ".join(f"{m:,.0f}" for m in sorted(peaks.values(), reverse=True))
                  + f") against an estimate of {est:,.0f} MiB without CUDA contexts") if peaks else ""
        c.row(name, f"{r.env_steps_per_s:,.0f} env-steps/s, {r.v_updates_per_s:,.0f} V-updates/s; V per actor step "
              f"{r.beta_av:.2f} (preset {cfg.algo.critic_sample_ratio}), V per P {r.beta_pv:.2f} (preset "
              f"{cfg.algo.critic_actor_ratio})" + memory, env_steps_per_s=r.env_steps_per_s)
        if mode == "async" and compile_mode == "off":
            ratio = r.env_steps_per_s / rates[f"sync {n} envs"].env_steps_per_s
            c.row(f"async / sync {n} envs", f"{ratio:.2f}x env-steps/s")


# -- host reads -----------------------------------------------------------------------------------
def _host_reads(c: Check) -> None:
    from pql.bench.host_reads import async_loop, count_host_reads, sync_loop

    for mode, loop_of, rounds in (("sync", sync_loop, 10), ("async", async_loop, 60)):
        with tempfile.TemporaryDirectory(prefix="pql-gpu-check-") as out:
            sites, steps, updates = count_host_reads(loop_of(c.nets(), c.device, c.envs(4096), out), c.device, rounds)
        reads = sum(sites.values())
        where = ", ".join(f"{site} x{n}" for site, n in sites.most_common(6))
        c.row(f"host reads per actor step ({mode})", f"{reads / max(steps, 1):.1f} ({reads} in {steps} actor steps "
              f"and {updates} updates{'; at ' + where if where else ''}; "
              f"{'CUDA sync debug mode' if c.cuda else 'counted by a torch function mode'})",
              "ok" if not reads else "info", per_step=reads / max(steps, 1))


# -- resume across device types, PQL-D ------------------------------------------------------------
def _resume(c: Check) -> None:
    from pql.training.run import resolve, run_training

    with tempfile.TemporaryDirectory(prefix="pql-gpu-check-") as out:
        cpu = {f"device.{k}": "cpu" for k in ("sim", "v_learner", "p_learner")}
        base = {**TINY, **cpu, "task": TASK, "mode": "sync", "num_envs": 64, "max_env_steps": 1280,
                "progress": False, "out": f"{out}/run", "algo.warmup_steps": 4}
        run_training(resolve(base))
        gpu = {f"device.{k}": str(c.device) for k in ("sim", "v_learner", "p_learner")}
        run = run_training(resolve({"resume": f"{out}/run", "max_env_steps": 2560, **gpu})).path
        status = json.loads((run / "status.json").read_text())
    ok = status["state"] == "done" and status["env_steps"] >= 2560 and bool(status.get("resume_note"))
    c.row("resume cpu -> cuda", f"{status['state']} at {status['env_steps']} env steps; note: "
          f"{status.get('resume_note')}", "ok" if ok else "FAIL")


def _pql_d(c: Check) -> None:
    from pql.bench.modes import run_config
    from pql.training.run import run_training

    with tempfile.TemporaryDirectory(prefix="pql-gpu-check-") as out:
        length = ({"mode": "sync", "max_env_steps": 2560, "algo.warmup_steps": 4} if c.quick
                  else {"mode": "async", "max_time_s": 10})
        run = run_training(run_config(TASK, str(c.device), c.nets(), algo="pql-d", num_envs=c.envs(4096),
                                      out=f"{out}/run", **length)).path
        status = json.loads((run / "status.json").read_text())
    losses = status.get("losses", {})
    ok = status["state"] == "done" and losses and all(math.isfinite(v) for v in losses.values())
    c.row(f"PQL-D {'sync' if c.quick else 'async'}", f"{status['state']}, {status['env_steps']:,} env steps in "
          f"{status['wall_s']} s, losses { {k: round(v, 3) for k, v in losses.items()} }", "ok" if ok else "FAIL")


# the row a skipped check writes under its own name
CHECK_ROWS = {"resume": "resume cpu -> cuda",
              **{f"v-{name}": f"V-update {name}" for name in V_VARIANTS}}
# name -> (function, seconds allowed on a GPU, in a quick CPU check)
CHECKS: dict[str, tuple[Callable[..., None], float, float]] = {  # the most telling first, for a short budget
    "facts": (_facts, 30, 20),
    "exchange": (check_exchange, 60, 30),
    "sim": (_sim, 30, 20),
    **{f"v-{name}": (lambda c, name=name: _v_variant(c, name), 45, 20) for name in ("fp32", "tf32", "bf16")},
    "v-cuda-graphs": (lambda c: _v_variant(c, "cuda-graphs"), 120, 20),
    "v-compiled": (lambda c: _v_variant(c, "compiled"), 90, 20),
    "modes": (_modes, 200, 60),
    "host-reads": (_host_reads, 45, 20),
    "resume": (_resume, 45, 20),
    "pql-d": (_pql_d, 60, 30),
    "v-cuda-graphs-bf16": (lambda c: _v_variant(c, "cuda-graphs-bf16"), 120, 20),
}


