"""``make gpu-check``: one command, one table, of what the GPU path does on this machine.

Each check runs in its own process under its own time limit, and its rows are appended to
``rows.jsonl`` (and the table to ``table.md``) in ``--out`` as it finishes, so a check that hangs
or a run stopped early still leaves the rows before it. The checks:

- **facts**: torch, CUDA, the GPU and its capability, native bf16, TF32, memory of one CUDA context,
  ``/dev/shm``, the C compiler, the pure-Python dependencies;
- **exchange**: the transition ring and a module slot across processes on the device, every slot
  and version checked, with a control (a writer that announces a slot half written) the check must catch;
- **sim**: ``classic/pendulum`` env-steps/s at 4096, 16384 and 65536 envs;
- **v-updates**: the V-update at the paper's sizes (512-256-128 nets, batch 8192) eager in fp32, TF32
  and bf16, compiled (default) and under CUDA graphs (reduce-overhead): updates/s, and the V- and
  P-losses of 20 updates against eager fp32's on the same batches;
- **modes**: ``pql train`` sync against async at 4096 and 16384 envs: env-steps/s, V-updates/s, the
  ratios held, GPU memory per process against :mod:`pql.ablate.memory`'s estimate;
- **host-reads**: host reads per actor step in sync mode (``torch.cuda.set_sync_debug_mode``);
- **resume**: a run saved on the CPU resumed on the GPU; **pql-d**: a short PQL-D run on the device.

``--device cpu --quick`` runs every check that a CPU can at tiny sizes (the default suite runs it).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

ROWS = "rows.jsonl"
TABLE = "table.md"
V_UPDATES = 20  # updates whose losses are set against eager fp32's
PAPER = {"algo.actor_hidden": "[512,256,128]", "algo.critic_hidden": "[512,256,128]", "algo.batch_size": 8192}
TINY = {"algo.actor_hidden": "[16,16]", "algo.critic_hidden": "[16,16]", "algo.batch_size": 64}
# name -> (amp, compile, matmul precision, how far its losses may be from eager fp32's, relative)
V_VARIANTS: dict[str, tuple[str, str, str, float]] = {
    "fp32": ("off", "off", "highest", 0.0),
    "tf32": ("off", "off", "high", 2e-2),
    "bf16": ("bf16", "off", "highest", 1e-1),
    "compiled": ("off", "default", "highest", 1e-3),
    "cuda-graphs": ("off", "reduce-overhead", "highest", 1e-3),
    "cuda-graphs-bf16": ("bf16", "reduce-overhead", "highest", 1e-1),
}


class Check:
    """What one check process needs: the device, the sizes, and where its rows go."""

    def __init__(self, device: torch.device, quick: bool, out: Path) -> None:
        self.device, self.quick, self.out = device, quick, out
        self.cuda = device.type == "cuda"

    def envs(self, full: int) -> int:
        """``full`` envs on a GPU, 64 (or fewer) in a quick check."""
        return min(full, 64) if self.quick else full

    def seconds(self, full: float) -> float:
        """A timing's ``full`` seconds, a tenth in a quick check."""
        return full / 10 if self.quick else full

    def nets(self) -> dict[str, Any]:
        """The paper's network and batch sizes, or tiny ones in a quick check."""
        return TINY if self.quick else PAPER

    def row(self, check: str, result: str, verdict: str = "info", **data: Any) -> None:
        """Append one row of the table (``verdict``: ok, FAIL, info or skipped)."""
        with open(self.out / ROWS, "a") as fh:
            fh.write(json.dumps({"check": check, "result": result, "verdict": verdict, **data}) + "\n")

    def config(self, **overrides: Any) -> dict[str, Any]:
        """Overrides of a run with every part on the device."""
        dev = str(self.device)
        return {"task": "classic/pendulum", "progress": False, "device.sim": dev, "device.v_learner": dev,
                "device.p_learner": dev, **self.nets(), **overrides}


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


# -- exchange -------------------------------------------------------------------------------------
def _ring_writer(ring: Any, slots: int, half_written: bool, pace_s: float) -> None:
    """Put ``slots`` slots, slot k filled with k + 1; ``half_written``: announce each slot after writing
    its first half (the broken writer the control must catch)."""
    from pql.workers.exchange import settle

    rows, width = ring.storage.shape[1:]
    for k in range(slots):
        while not ring.has_room():
            time.sleep(1e-5)
        value = torch.full((rows, width), float(k + 1), device=ring.storage.device)
        slot = ring.storage[k % ring.slots]
        if half_written:
            slot[: rows // 2].copy_(value[: rows // 2])
            settle([slot])
            ring.written += 1
            time.sleep(pace_s)
            slot[rows // 2:].copy_(value[rows // 2:])
            settle([slot])
        else:
            ring.put(value)
            time.sleep(pace_s * (k % 2))


def _ring_reader(ring: Any, reader: int, slots: int, found: Any) -> None:
    """Take ``slots`` slots as ``reader``; ``found[reader]``: slots torn or out of order."""
    bad = 0
    for k in range(slots):
        deadline = time.monotonic() + 60
        while ring.pending(reader) == 0:
            if time.monotonic() > deadline:
                found[reader] = -1
                return
            time.sleep(1e-5)
        copy = ring.peek(reader).clone()
        ring.release(reader, [copy])
        bad += int(not bool((copy == k + 1).all()))
    found[reader] = bad


def _slot_publisher(slot: Any, module: torch.nn.Module, versions: int) -> None:
    """Publish ``module`` ``versions`` times, every tensor filled with its version."""
    for v in range(1, versions + 1):
        with torch.no_grad():
            for t in module.parameters():
                t.fill_(float(v))
        slot.publish(module)


def _slot_consumer(slot: Any, module: torch.nn.Module, versions: int, found: Any) -> None:
    """Pull until ``versions``; ``found[0]``: snapshots torn (mixed values) or not the version announced,
    ``found[1]``: versions going back."""
    seen, torn, back = 0, 0, 0
    deadline = time.monotonic() + 60
    while seen < versions and time.monotonic() < deadline:
        held = slot.pull(module, seen)
        if held != seen:
            values = torch.cat([t.detach().flatten() for t in module.parameters()])
            torn += int(not bool((values == values[0]).all())) + int(float(values[0]) != held)
            back += int(held < seen)
            seen = held
    found[0], found[1] = torn, back


def _exchange(c: Check) -> None:
    from pql.training.processes import worker_context
    from pql.workers.exchange import ModuleSlot, TransitionRing

    ctx = worker_context()
    slots, rows, width = (30, 64, 16) if c.quick else (300, 16384, 130)
    for control in (False, True):
        ring = TransitionRing(4, rows, width, readers=2, device=c.device).share_memory()
        found = torch.zeros(2, dtype=torch.int64).share_memory_()
        procs = [ctx.Process(target=_ring_writer, args=(ring, slots, control, 2e-3 if control else 1e-3)),
                 *(ctx.Process(target=_ring_reader, args=(ring, r, slots, found)) for r in range(2))]
        for p in procs:
            p.start()
        for p in procs:
            p.join(120)
        torn, exits = found.tolist(), [p.exitcode for p in procs]
        name = "ring control (half-written slots)" if control else "ring across processes"
        if control:
            verdict = "ok" if min(torn) > 0 else "FAIL"
            c.row(name, f"torn slots seen by the 2 readers: {torn} of {slots} (must be > 0, else the check is "
                  f"blind); exits {exits}", verdict)
        else:
            verdict = "ok" if torn == [0, 0] and exits == [0, 0, 0] else "FAIL"
            c.row(name, f"{slots} slots of {rows}x{width} on {c.device}, 1 writer 2 readers: torn or out of order "
                  f"{torn}; exits {exits}", verdict)
    versions = 50 if c.quick else 300
    module = torch.nn.Linear(256, 256).to(c.device)
    slot = ModuleSlot(module).share_memory(ctx.Lock())
    found = torch.zeros(2, dtype=torch.int64).share_memory_()
    procs = [ctx.Process(target=_slot_publisher, args=(slot, module, versions)),
             ctx.Process(target=_slot_consumer, args=(slot, torch.nn.Linear(256, 256).to(c.device), versions, found))]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    torn, back = found.tolist()
    exits = [p.exitcode for p in procs]
    c.row("module slot across processes", f"{versions} versions of a 256x256 Linear: torn or mislabelled {torn}, "
          f"going back {back}; exits {exits}", "ok" if torn == back == 0 and exits == [0, 0] else "FAIL")


# -- simulator ------------------------------------------------------------------------------------
def _sim(c: Check) -> None:
    from pql.bench.limits import calibrate, timed
    from pql.envs import make_env

    for n in ((64, 256) if c.quick else (4096, 16384, 65536)):
        env = make_env("classic/pendulum", n, device=c.device, seed=0)
        env.reset()
        actions = torch.zeros(n, env.act_dim, device=c.device)
        calls = calibrate(lambda env=env, a=actions: env.step(a), c.device, c.seconds(0.5))
        per_call = timed(lambda env=env, a=actions: env.step(a), calls, c.device) / calls
        c.row(f"sim {n} envs", f"{n / per_call / 1e6:.2f} M env-steps/s ({per_call * 1e6:.0f} us per step)",
              env_steps_per_s=n / per_call)


# -- V-updates --------------------------------------------------------------------------------------
def _v_variant(c: Check, name: str) -> None:
    from pql.bench.limits import build_trainer, calibrate, timed
    from pql.speed import compilation_summary

    amp, mode, precision, tolerance = V_VARIANTS[name]
    check = f"V-update {name}"
    overrides = {**c.nets(), "amp": amp, "compile": mode, "matmul_precision": precision,
                 "seed": 0}
    with tempfile.TemporaryDirectory(prefix="pql-gpu-check-") as out:
        trainer = build_trainer(overrides, c.device, c.envs(4096), out)
        torch.set_float32_matmul_precision(precision)
        while not trainer.learning() or trainer.v.buffer.size < trainer.cfg.algo.batch_size:
            trainer.actor_step()
        started = time.perf_counter()
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
    else:
        gap, verdict = math.nan, "ok" if finite else "FAIL"
    found = compilation_summary()
    c.row(check, f"{1 / v_s:,.0f} V-updates/s, {1 / p_s:,.0f} P-updates/s; losses of {V_UPDATES} updates vs eager "
          f"fp32: max rel. gap {gap:.1e} (limit {tolerance:.0e}); compile {compile_s:.1f} s, graphs "
          f"{found['graphs']}, graph breaks {found['graph_breaks']}, CUDA-graph skips {found['cudagraph_skips']}"
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
    from pql.bench.modes import run_rates
    from pql.resolve import build_config

    for n in ((64,) if c.quick else (4096, 16384)):
        overrides = {**c.nets(), "num_envs": n}
        rates = {}
        for mode in ("sync", "async"):
            with _gpu_memory_per_process(c) as peaks:
                rates[mode] = run_rates("classic/pendulum", str(c.device), overrides, mode, 12 if c.quick else 200)
            cfg = build_config(c.config(num_envs=n, mode=mode, max_env_steps=1))
            est = estimate(cfg, task_dims(cfg)).device_bytes().get(str(c.device), 0) / 2**20
            used = sum(peaks.values())
            memory = (f"; GPU memory {used:,.0f} MiB in {len(peaks)} processes ("
                      + ", ".join(f"{m:,.0f}" for m in sorted(peaks.values(), reverse=True))
                      + f") against an estimate of {est:,.0f} MiB without CUDA contexts") if peaks else ""
            r = rates[mode]
            c.row(f"{mode} {n} envs", f"{r.env_steps_per_s:,.0f} env-steps/s, {r.v_updates_per_s:,.0f} V-updates/s; "
                  f"V per actor step {r.beta_av:.2f} (preset {cfg.algo.critic_sample_ratio}), V per P "
                  f"{r.beta_pv:.2f} (preset {cfg.algo.critic_actor_ratio})" + memory,
                  env_steps_per_s=r.env_steps_per_s)
        c.row(f"async / sync {n} envs", f"{rates['async'].env_steps_per_s / rates['sync'].env_steps_per_s:.2f}x "
              "env-steps/s")


# -- host reads -----------------------------------------------------------------------------------
def _host_reads(c: Check) -> None:
    from pql.bench.limits import build_trainer

    with tempfile.TemporaryDirectory(prefix="pql-gpu-check-") as out:
        trainer = build_trainer(c.nets(), c.device, c.envs(4096), out)
        while not trainer.learning() or trainer.v.buffer.size < trainer.cfg.algo.batch_size:
            trainer.actor_step()
        steps = 10
        torch.cuda.synchronize(c.device)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                for _ in range(steps):
                    trainer.step(lambda name, fn: fn())
            finally:
                torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    where = sorted({f"{Path(w.filename).name}:{w.lineno}" for w in syncs})
    c.row("host reads per actor step (sync)", f"{len(syncs) / steps:.1f} ({len(syncs)} in {steps} sync steps"
          + (f"; at {', '.join(where[:6])}" if where else "") + ")", "ok" if not syncs else "info",
          per_step=len(syncs) / steps)


# -- resume across device types, PQL-D ------------------------------------------------------------
def _resume(c: Check) -> None:
    from pql.training.run import resolve, run_training

    with tempfile.TemporaryDirectory(prefix="pql-gpu-check-") as out:
        base = {**TINY, "task": "classic/pendulum", "mode": "sync", "num_envs": 64, "max_env_steps": 1280,
                "progress": False, "out": f"{out}/run", "algo.warmup_steps": 4}
        run_training(resolve(base))
        gpu = {f"device.{k}": str(c.device) for k in ("sim", "v_learner", "p_learner")}
        run = run_training(resolve({"resume": f"{out}/run", "max_env_steps": 2560, **gpu})).path
        status = json.loads((run / "status.json").read_text())
    ok = status["state"] == "done" and status["env_steps"] >= 2560
    c.row("resume cpu -> cuda", f"{status['state']} at {status['env_steps']} env steps; note: "
          f"{status.get('resume_note')}", "ok" if ok else "FAIL")


def _pql_d(c: Check) -> None:
    from pql.training.run import resolve, run_training

    with tempfile.TemporaryDirectory(prefix="pql-gpu-check-") as out:
        length = ({"mode": "sync", "max_env_steps": 2560, "algo.warmup_steps": 4} if c.quick
                  else {"mode": "async", "max_time_s": 10})
        run = run_training(resolve(c.config(algo="pql-d", num_envs=c.envs(4096), out=f"{out}/run", **length))).path
        status = json.loads((run / "status.json").read_text())
    losses = status.get("losses", {})
    ok = status["state"] == "done" and losses and all(math.isfinite(v) for v in losses.values())
    c.row(f"PQL-D {'sync' if c.quick else 'async'}", f"{status['state']}, {status['env_steps']:,} env steps in "
          f"{status['wall_s']} s, losses { {k: round(v, 3) for k, v in losses.items()} }", "ok" if ok else "FAIL")


# the row a skipped check writes under its own name
CHECK_ROWS = {"host-reads": "host reads per actor step (sync)", "resume": "resume cpu -> cuda",
              **{f"v-{name}": f"V-update {name}" for name in V_VARIANTS}}
# name -> (function, seconds allowed on a GPU, in a quick CPU check)
CHECKS: dict[str, tuple[Callable[..., None], float, float]] = {  # the most telling first, for a short budget
    "facts": (_facts, 30, 20),
    "exchange": (_exchange, 60, 30),
    "sim": (_sim, 30, 20),
    **{f"v-{name}": (lambda c, name=name: _v_variant(c, name), 45, 20) for name in ("fp32", "tf32", "bf16")},
    "v-cuda-graphs": (lambda c: _v_variant(c, "cuda-graphs"), 120, 20),
    "v-compiled": (lambda c: _v_variant(c, "compiled"), 90, 20),
    "modes": (_modes, 150, 60),
    "host-reads": (_host_reads, 45, 20),
    "resume": (_resume, 45, 20),
    "pql-d": (_pql_d, 60, 30),
    "v-cuda-graphs-bf16": (lambda c: _v_variant(c, "cuda-graphs-bf16"), 120, 20),
}


def table(out: Path) -> str:
    """The markdown table of the rows in ``out`` so far."""
    lines = ["| check | result | verdict |", "|---|---|---|"]
    for line in (out / ROWS).read_text().splitlines() if (out / ROWS).exists() else []:
        r = json.loads(line)
        lines.append(f"| {r['check']} | {r['result'].replace('|', '/')} | {r['verdict']} |")
    return "\n".join(lines) + "\n"


def skip_reason(name: str, device: torch.device, quick: bool) -> str | None:
    """Why check ``name`` cannot run on ``device`` (None when it can), decided before starting its process."""
    if name.startswith("v-"):
        amp, mode, _, _ = V_VARIANTS[name[2:]]
        from pql.speed import speed_problem

        if problem := speed_problem(mode, amp, [device]):
            return problem.split(";")[0]
        if quick and mode != "off":
            return "not compiled in a quick check"
    if name in ("host-reads", "resume") and device.type != "cuda":
        return "needs a GPU (host reads: CUDA's sync debug mode; the CPU test counts them with a torch function mode)"
    return None


CHECK_PRELOAD = ("torch", "torch._dynamo", "pql.bench.limits", "pql.bench.modes", "pql.training.run",
                 "pql.training.processes")


def _run_checks(args: argparse.Namespace) -> int:
    from pql.ablate.warm_start import WarmStarter

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / ROWS).unlink(missing_ok=True)
    names = args.only.split(",") if args.only else list(CHECKS)
    if unknown := [n for n in names if n not in CHECKS]:
        sys.exit(f"gpu-check: unknown check(s) {', '.join(unknown)}; the checks are {', '.join(CHECKS)}")
    device = torch.device(args.device)
    row = Check(device, args.quick, out).row
    deadline = time.monotonic() + args.budget_s
    starter = WarmStarter(CHECK_PRELOAD)  # each check forks from it: no torch import per check
    shown = 0
    try:
        for name in names:
            started, limit = time.perf_counter(), CHECKS[name][2 if args.quick else 1]
            left = deadline - time.monotonic()
            if reason := skip_reason(name, device, args.quick):
                row(CHECK_ROWS.get(name, name), reason, "skipped")
            elif left < min(limit, 10):
                row(name, f"not run: {left:.0f} s of the --budget-s left", "skipped")
            else:
                _run_one(starter, name, args, out, min(limit, left), row)
            text = table(out)
            (out / TABLE).write_text(text)
            added = text.splitlines()[2 + shown:]
            shown += len(added)
            print(f"[{time.perf_counter() - started:5.1f} s] {name}\n" + "\n".join(added), flush=True)
    finally:
        starter.close()
    rows = [json.loads(line) for line in (out / ROWS).read_text().splitlines()]
    failed = sum(r["verdict"] == "FAIL" for r in rows)
    print(f"\n{table(out)}\n{failed} check(s) failed; rows in {out / ROWS}, table in {out / TABLE}")
    return 1 if failed else 0


def _run_one(starter: Any, name: str, args: argparse.Namespace, out: Path, limit: float,
             row: Callable[..., None]) -> None:
    """Check ``name`` in a process of its own, stopped after ``limit`` seconds; its output in ``name.log``."""
    log = out / f"{name}.log"
    with open(log, "wb") as fh:
        proc = starter.popen("pql.bench.gpu_check", "--check", name, "--device", args.device, "--out", str(out),
                             *(["--quick"] if args.quick else []), stdout=fh, stderr=subprocess.STDOUT)
        try:
            code = proc.wait(limit)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            row(name, f"stopped at its limit of {limit:.0f} s (output in {log.name})", "FAIL")
            return
    if code != 0:
        last = (log.read_text(errors="replace").strip().splitlines() or ["no output"])[-1]
        row(name, f"exited with {code}: {last[:300]} (output in {log.name})", "FAIL")
    elif not log.read_text(errors="replace").strip():
        log.unlink()


def main(argv: list[str] | None = None) -> int:
    """Run the checks (or, with ``--check``, one of them in this process)."""
    parser = argparse.ArgumentParser(prog="python -m pql.bench.gpu_check", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="the device checked: cuda (the default where one is visible) or cpu")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, no compilation: seconds on a CPU")
    parser.add_argument("--out", default="results/gpu-check", help="where rows.jsonl and table.md go")
    parser.add_argument("--only", default="", help=f"comma-separated checks to run, of: {', '.join(CHECKS)}")
    parser.add_argument("--budget-s", type=float, default=300,
                        help="stop starting checks once this many seconds have passed (default 300)")
    parser.add_argument("--check", help=argparse.SUPPRESS)  # one check, in this process (what the driver starts)
    args = parser.parse_args(argv)
    if args.check:
        CHECKS[args.check][0](Check(torch.device(args.device), args.quick, Path(args.out)))
        return 0
    return _run_checks(args)


if __name__ == "__main__":
    sys.exit(main())
