"""Where the workers of an async run go: torch threads per worker and the CPUs each is pinned to."""

from __future__ import annotations

import os

import torch

from pql.training.board import ROLES

TASKS = "/proc/self/task"  # one entry per thread of this process (Linux)


def core_budget() -> tuple[list[int], int]:
    """(the CPUs this process may run on, how many of them this run may use): all of them, or fewer where
    ``OMP_NUM_THREADS`` says so (``pql ablate --jobs J`` gives each run cpus / J)."""
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    limit = os.environ.get("OMP_NUM_THREADS", "")
    return cores, min(len(cores), int(limit)) if limit.isdigit() and int(limit) > 0 else len(cores)


def thread_plan(devices: dict[str, torch.device], cores: int) -> dict[str, int]:
    """Torch threads per worker: the cores split between the workers on the CPU (the V-learner gets
    what does not divide evenly), one for a worker on a GPU; never more threads than cores in all,
    except one each when there are fewer cores than workers."""
    on_cpu = [r for r in ROLES if devices[r].type == "cpu"]
    share = max(1, cores // max(1, len(on_cpu)))
    plan = {r: share if r in on_cpu else 1 for r in ROLES}
    if "v" in on_cpu:
        plan["v"] = max(1, cores - share * (len(on_cpu) - 1))
    return plan


def core_plan(threads: dict[str, int], cores: list[int]) -> dict[str, set[int]]:
    """CPUs to pin each worker to: the V-learner gets cores of its own (it is the busiest worker on a CPU),
    the actor and the P-learner split the rest, sharing it when it is too small. Measured on 2 cores
    (classic/pendulum preset): 3-6% more env-steps/s than leaving placement to the scheduler."""
    if len(cores) < 2:
        return {role: set(cores) for role in ROLES}
    own = min(threads["v"], len(cores) - 1)
    plan = {"v": set(cores[:own])}
    rest = cores[own:]
    if len(rest) < threads["actor"] + threads["p"]:
        plan["actor"] = plan["p"] = set(rest)
    else:
        plan["actor"], plan["p"] = set(rest[:threads["actor"]]), set(rest[threads["actor"]:])
    return plan


def pin_process(cores: set[int]) -> None:
    """Pin every thread of this process to ``cores`` (a thread's CPUs are its own: ``sched_setaffinity(0, ...)``
    pins the calling thread and the threads it starts later, not torch's intra-op threads already running).
    Threads that end meanwhile are skipped."""
    tids = [int(t) for t in os.listdir(TASKS)] if os.path.isdir(TASKS) else [0]
    for tid in tids:
        try:
            os.sched_setaffinity(tid, cores)
        except ProcessLookupError:
            continue
