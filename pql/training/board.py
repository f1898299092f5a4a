"""What the processes of an async run share: the roles, the board of control flags, statistics and heartbeats
in shared memory, and the bundle of shared objects (:class:`Shared`) the parent hands to every worker."""

from __future__ import annotations

import dataclasses
import pickle
import time
from dataclasses import dataclass
from multiprocessing.reduction import ForkingPickler
from typing import Any

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
    """What the parent hands to the worker processes."""

    plan: RunPlan
    env_factory: EnvFactory
    obs_dim: int
    act_dim: int
    ring: TransitionRing
    policy: ModuleSlot
    critic: ModuleSlot | None  # None in the actor's bundle (see for_role)
    normalizer: ModuleSlot
    controller: RatioController
    board: Board

    def for_role(self, role: str) -> Shared:
        """The part ``role``'s process uses: all of it for the learners, all but the critic's slot for the
        actor. A process maps every CUDA tensor it receives (a CUDA context on that tensor's GPU, ~0.5 GiB),
        so it receives only what it reads or writes."""
        return dataclasses.replace(self, critic=None) if role == "actor" else self


class SharedNotReceived(RuntimeError):
    """A worker process could not map what the parent shared with it (e.g. a container that refuses CUDA IPC)."""


class Parcel:
    """An object sent to a process that starts, as bytes opened by the process's own code: a failure to
    rebuild its shared tensors (CUDA IPC refused, shared memory exhausted) then raises where the worker reports
    its errors to the parent, instead of killing the process before its code runs ("exited with code 1").
    The bytes are made while the process starts (``__reduce__`` runs inside ``Process.start``), so file
    descriptors, CUDA IPC handles and locks cross as they would as a plain argument."""

    def __init__(self, content: Any, what: str) -> None:
        self._content, self._data, self.what = content, b"", what

    def __reduce__(self) -> tuple[Any, tuple[bytes, str]]:
        return Parcel._arrived, (bytes(ForkingPickler.dumps(self._content)), self.what)

    @staticmethod
    def _arrived(data: bytes, what: str) -> Parcel:
        parcel = Parcel(None, what)
        parcel._data = data
        return parcel

    def open(self) -> Any:
        """The content, rebuilt in this process (the object itself in the process that made the parcel).
        Raises :class:`SharedNotReceived` naming what it holds and why it could not be rebuilt."""
        if not self._data:
            return self._content
        try:
            return pickle.loads(self._data)
        except Exception as err:
            raise SharedNotReceived(f"could not receive {self.what} from the parent process: "
                                    f"{type(err).__name__}: {err}") from err
