"""What the processes of an async run share: the roles, the board of control flags, statistics and heartbeats
in shared memory, and the bundle of shared objects (:class:`Shared`) the parent hands to every worker."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from pql.envs import EnvFactory
from pql.workers.balance import RatioController, SharedTable
from pql.workers.exchange import ModuleSlot, TransitionRing
from pql.workers.plan import RunPlan

ROLES = ("actor", "v", "p")
ROLE_NAMES = {"actor": "actor", "v": "V-learner", "p": "P-learner"}
# What a worker can be doing, as its heartbeat records it (the watchdog names it when the worker stalls).
DOING = ("starting", "stepping the envs", "updating", "waiting for the others", "parked", "sending its state")
WORK = {"actor": "stepping the envs", "v": "updating", "p": "updating"}


class Board:
    """Control flags and statistics in shared memory. The parent writes ``stop``, ``pause``,
    ``epoch`` and ``actor_limit``; each worker writes only its own ``parked_*`` (the pause epoch it
    is parked at) and statistics; the actor writes the step counters."""

    FLAGS = ("stop", "pause", "epoch", "actor_limit", "actor_steps", "env_steps", "learn_from", "parked_actor",
             "parked_v", "parked_p", "doing_actor", "doing_v", "doing_p")
    STATS = ("critic_loss_sum", "critic_loss_count", "actor_loss_sum", "actor_loss_count", "return_sum",
             "return_count", "collect_s", "learn_s_v", "learn_s_p", "compile_s_actor", "compile_s_v", "compile_s_p",
             "edge_mass", "edge_mass_count", "eval_sum", "eval_count")

    def __init__(self) -> None:
        self.flags = SharedTable(self.FLAGS, torch.int64)
        self.stats = SharedTable(self.STATS, torch.float64)
        self.beats = SharedTable(ROLES, torch.float64)  # each worker's last heartbeat (time.monotonic); NaN: starting
        self.stats.tensor.zero_()
        for table in (self.flags, self.stats, self.beats):
            table.tensor.share_memory_()

    def beat(self, role: str, doing: str) -> None:
        """``role``'s heartbeat: it is alive, at the top of its loop, about to be ``doing`` (one of DOING)."""
        self.flags[f"doing_{role}"] = DOING.index(doing)
        self.beats[role] = time.monotonic()  # CLOCK_MONOTONIC: one clock for every process of the machine

    def stalled(self, silent_s: float, roles: tuple[str, ...] = ROLES) -> tuple[str, float, str] | None:
        """The first of ``roles`` whose heartbeat is older than ``silent_s`` (started workers only): its role,
        the seconds since its last beat and what it was doing then; None when every one is alive."""
        now = time.monotonic()
        for role in roles:
            beat = self.beats[role]
            if beat is not None and now - beat > silent_s:
                return role, now - beat, DOING[int(self.flags[f"doing_{role}"])]
        return None


@dataclass
class Shared:
    """What the parent hands to every worker process."""

    plan: RunPlan
    env_factory: EnvFactory
    obs_dim: int
    act_dim: int
    ring: TransitionRing
    policy: ModuleSlot
    critic: ModuleSlot
    normalizer: ModuleSlot
    controller: RatioController
    board: Board
