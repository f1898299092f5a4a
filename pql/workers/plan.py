"""A run's plan: what its trainer and builders need besides the config, resolved once when the run starts."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pql.algos import algorithm
from pql.algos.base import Algorithm
from pql.config import Config
from pql.devices import resolve_devices
from pql.workers.evaluation import eval_slice


@dataclass(frozen=True)
class RunPlan:
    """The resolved config, the devices of the three roles (sim, V-learner, P-learner), the declared algorithm
    and the evaluation slice (:func:`~pql.workers.evaluation.eval_slice`); made by :func:`plan_run`, handed to
    the trainer, its builders and (pickled, the algorithm by name) its worker processes."""

    cfg: Config
    devices: tuple[torch.device, torch.device, torch.device]
    algorithm: Algorithm
    eval_slice: int

    @property
    def sim(self) -> torch.device:
        """The simulation's and the actor's device."""
        return self.devices[0]


def plan_run(cfg: Config) -> RunPlan:
    """The plan of a run of ``cfg``: its devices resolved (``auto`` from the GPUs present), its algorithm looked
    up in the registry."""
    return RunPlan(cfg, resolve_devices(cfg), algorithm(cfg.algo.name), eval_slice(cfg))
