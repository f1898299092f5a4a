"""``pql train``'s memory check: a run that cannot fit its devices' memory is refused before it allocates.

The need is :func:`pql.ablate.memory.estimate` (what ``pql ablate --dry-run`` prints: the persistent parts plus
one update's activations, so it leans high; the simulator's own memory only for ``classic/`` tasks, no
CUDA context or allocator cache). The figure it is held against is each device's **total** memory, not
what is free at the moment: the host's (or, where lower, the memory limit of this process's cgroup: a
SLURM job's ``--mem``, a container's), and a GPU's total. So the check refuses only what can never run
here (``num_envs=100000000``, ``algo.buffer_size=1000000000000``), never a run that other processes
crowd out for now. ``check_memory=false`` skips it.

Isaac Gym and Isaac Lab make one simulation per process, so their task cannot be built once just to read
its sizes: their estimate takes one observation and one action dimension, a lower bound of the need.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch

from pql.ablate.memory import Capacity, TaskDims, estimate, misfits, probe_task
from pql.config import Config, ConfigError
from pql.envs import ONE_SIMULATION_PER_PROCESS

# cgroup v2, then v1: the memory limit of this process's group ("max" or a huge number: none)
CGROUP_LIMITS = (Path("/sys/fs/cgroup/memory.max"), Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"))


def host_capacity() -> Capacity | None:
    """The total memory this process may use on the host: the machine's, or its cgroup's limit where that
    is lower; None where neither can be read."""
    total = None
    with contextlib.suppress(OSError, ValueError, AttributeError):
        total = Capacity(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "host memory (total)")
    for path in CGROUP_LIMITS:
        with contextlib.suppress(OSError, ValueError):
            limit = int(path.read_text().strip())  # "max" (no limit) raises ValueError
            if total is None or limit < total.nbytes:
                total = Capacity(limit, f"the memory limit of this process's cgroup ({path})")
            break
    return total


def local_capacity(device: str) -> Capacity | None:
    """The total memory of ``device`` on this machine: :func:`host_capacity` for the CPU, a GPU's total for a
    CUDA device present here; None otherwise (not checked)."""
    dev = torch.device(device)
    if dev.type == "cpu":
        return host_capacity()
    if dev.type == "cuda" and (dev.index or 0) < torch.cuda.device_count():
        props = torch.cuda.get_device_properties(dev.index or 0)
        return Capacity(props.total_memory, f"{props.name} (total)")
    return None


def task_dims(cfg: Config) -> TaskDims:
    """The task's sizes for the check: one environment built on the CPU, or for a backend that allows one
    simulation per process, one observation and one action dimension (a lower bound)."""
    if cfg.task.startswith(ONE_SIMULATION_PER_PROCESS):
        return TaskDims(1, 1)
    return probe_task(cfg.task)


def check_fits(cfg: Config) -> None:
    """ConfigError (exit code 2) when a run of ``cfg`` needs more memory on one of its devices than that
    device has in total, naming the device, both sizes, the biggest part and the key that lowers it. A task
    whose sizes are unknown (its backend fails to build) is not checked: the run then fails on its own."""
    problems = misfits(estimate(cfg, task_dims(cfg)), local_capacity)
    if problems:
        bound = " at least" if cfg.task.startswith(ONE_SIMULATION_PER_PROCESS) else ""
        raise ConfigError(f"the run cannot fit in memory: it{bound} {'; it'.join(problems)} (pql/ablate/memory.py's "
                          f"estimate: the persistent parts plus one update's activations, against each device's "
                          f"total memory); lower that, or skip this check with check_memory=false")
