"""Local study jobs on a machine with GPUs: each running job gets GPUs of its own through
``CUDA_VISIBLE_DEVICES``, so ``--jobs J`` never stacks J runs (4J CUDA contexts in async mode) on one GPU.

A cell needs as many GPUs as :func:`pql.devices.gpus_needed` says (one more than the highest ``cuda:K`` its
``device.*`` keys name, one for ``gpu_model`` or a GPU-only backend), and one where a device is ``auto`` and
GPUs are visible (auto then resolves to ``cuda:0``). Inside its job the GPUs it was given are ``cuda:0``,
``cuda:1``, ... in that order, so the names in its config keep their meaning.
"""

from __future__ import annotations

import torch

from pql.ablate.matrix import Cell
from pql.config import ConfigError
from pql.devices import gpus_needed

VISIBLE = "CUDA_VISIBLE_DEVICES"


def visible_gpus(env: dict[str, str]) -> list[str]:
    """The GPUs a job started with ``env`` may see, as ``CUDA_VISIBLE_DEVICES`` entries (its own list where
    set, else every GPU torch counts here)."""
    if VISIBLE in env:
        return [g.strip() for g in env[VISIBLE].split(",") if g.strip()]
    return [str(i) for i in range(torch.cuda.device_count())]


def gpus_for(cell: Cell, gpus_visible: bool) -> int:
    """How many GPUs ``cell``'s job needs here (see the module docstring)."""
    cfg = cell.config
    auto = "auto" in (cfg.device.sim, cfg.device.v_learner, cfg.device.p_learner)
    return max(gpus_needed(cfg), int(auto and gpus_visible))


class GpuShare:
    """The GPUs of ``env`` shared out among ``jobs`` concurrent jobs; ConfigError, naming the numbers, when
    ``jobs`` runs of the largest cell's GPUs cannot each have their own."""

    def __init__(self, cells: list[Cell], jobs: int, env: dict[str, str]) -> None:
        self.free = visible_gpus(env)
        self.need = {c.run_id: gpus_for(c, bool(self.free)) for c in cells}
        most = max(self.need.values(), default=0)
        self.active = jobs > 1 and most > 0  # one job at a time keeps every GPU, as a lone pql train would
        if self.active and jobs * most > len(self.free):
            shown = f"{len(self.free)} ({VISIBLE}={','.join(self.free)})" if self.free else "none"
            raise ConfigError(f"--jobs {jobs} runs {jobs} cells at once, each with GPUs of its own, and a cell here "
                              f"needs {most}: that is {jobs * most} GPUs, and this machine shows {shown}; use "
                              f"--jobs {max(1, len(self.free) // most)}")

    def take(self, cell: Cell) -> dict[str, str]:
        """What to add to the environment of ``cell``'s job: the GPUs it gets (nothing when not sharing)."""
        k = self.need[cell.run_id] if self.active else 0
        if k == 0:
            return {}
        mine, self.free = self.free[:k], self.free[k:]
        return {VISIBLE: ",".join(mine)}

    def give_back(self, taken: dict[str, str]) -> None:
        """Return the GPUs of a :meth:`take` whose job has ended."""
        if VISIBLE in taken:
            self.free += taken[VISIBLE].split(",")
