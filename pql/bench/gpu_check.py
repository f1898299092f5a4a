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
- **host-reads**: host reads per actor step in sync and in async mode (``torch.cuda.set_sync_debug_mode`` on a
  GPU, a torch function mode on a CPU: :mod:`pql.bench.host_reads`);
- **resume**: a run saved on the CPU resumed on the GPU; **pql-d**: a short PQL-D run on the device.

``--device cpu --quick`` runs every check that a CPU can at tiny sizes (the default suite runs it).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from pql.bench.gpu_checks import CHECK_ROWS, CHECKS, V_VARIANTS
from pql.bench.gpu_rows import ROWS, TABLE, Check


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
    if name == "resume" and device.type != "cuda":
        return "needs a GPU (a run saved on the CPU resumed there)"
    return None


CHECK_PRELOAD = ("torch", "torch._dynamo")  # third-party only: the server starts without PYTHONPATH


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
