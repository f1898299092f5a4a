"""The worker processes of an async run: the actor's and the learners' loops, and the fork server they start from.

The protocol between a worker and the parent (:class:`pql.training.parallel.ProcessTrainer`), all through the
:class:`~pql.training.board.Board`:

- ``work()``: one unit of the worker's job (an env step, or draining the ring then one update), returning how
  long to sleep before asking again (0: it did something);
- ``park()``: when the parent sets ``pause``, the worker stops at a step boundary, adds its statistics to the
  board and records the pause epoch it is parked at; the parent evaluates, logs and checkpoints only while every
  worker is parked, so a row or a checkpoint describes one moment;
- ``ready()`` / ``drain()`` (learners): whether its buffer holds enough to learn, and copying the ring's pending
  rows into its buffer, so the ring never fills while it waits;
- while parked, the worker answers the parent's ``"state"`` request on its pipe with its state dict;
- every loop beats a heartbeat (what it is doing), which the parent's watchdog reads.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import math
import signal
import sys
import time
import traceback
from multiprocessing import forkserver as mp_forkserver
from multiprocessing.connection import Connection
from typing import Any

import torch
import torch.multiprocessing as mp

from pql.devices import use_device
from pql.speed import compilation_watched, set_matmul_precision
from pql.training.board import ROLE_NAMES, ROLES, WORK, Parcel, Shared
from pql.training.loop import NonFiniteLoss, PhaseClock, envs_compile_s
from pql.training.placement import pin_process
from pql.workers.builders import Networks, build_actor, build_p_learner, build_v_learner, initial_networks

IDLE_S = 5e-4  # sleep of a worker with nothing to do
MAX_WAIT_S = 5e-3  # longest sleep before a waiting worker looks again
NAN_CHECK_EVERY = 50  # learner updates between checks of their losses (one host sync each)
PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
SIGNALS = (signal.SIGINT, signal.SIGTERM)


def state_to_bytes(state: dict[str, Any]) -> bytes:
    """A worker's state dict as bytes, to cross a pipe."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def state_from_bytes(data: bytes) -> dict[str, Any]:
    """The state dict of :func:`state_to_bytes` (loaded with ``weights_only``: tensors and plain data only)."""
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def _networks(shared: Shared) -> Networks:
    """The run's current networks, read from the slots (the architectures are built, then overwritten)."""
    nets = initial_networks(shared.plan, shared.obs_dim, shared.act_dim)
    shared.policy.pull(nets.policy, -1)
    if shared.critic is not None:  # the actor's bundle has none, and its worker no critic
        shared.critic.pull(nets.critic, -1)
    shared.normalizer.pull(nets.normalizer, -1)
    return nets


class ActorRole:
    """The actor process: steps the envs, puts transitions into the ring, publishes the normaliser (or, with
    ``algo.obs_norm_replay``, reads the V-learner's)."""

    def __init__(self, shared: Shared, device: torch.device, state: dict[str, Any] | None) -> None:
        cfg, self.shared = shared.plan.cfg, shared
        env = shared.env_factory(cfg.num_envs, device=device, seed=cfg.seed)
        self.worker = build_actor(shared.plan, env, _networks(shared))
        self.resumed = state is not None
        if state is not None:
            self.worker.load_state_dict(state)
        self.seen, self.seen_norm = shared.policy.version, shared.normalizer.version
        self.owns_normalizer = not shared.plan.cfg.algo.obs_norm_replay  # else the V-learner's, read here
        flags = shared.board.flags
        self.actor_steps, self.env_steps = flags["actor_steps"], flags["env_steps"]
        self.clock = PhaseClock(device)

    def warm_up(self) -> float:
        """Compile the envs and the actor's step; the seconds it took."""
        return envs_compile_s(self.worker.env) + self.worker.warm_up()

    def work(self) -> float:
        """One step of every env if due; returns how long to wait before asking again (0: stepped)."""
        s, w, cfg = self.shared, self.worker, self.shared.plan.cfg
        if self.env_steps >= s.board.flags["actor_limit"]:
            return IDLE_S
        counted = self.actor_steps >= s.board.flags["learn_from"] and w.emitting
        if counted and (wait := s.controller.wait_s("actor")) > 0:
            return min(wait, MAX_WAIT_S)
        if not s.ring.has_room():
            return IDLE_S
        self.seen = s.policy.pull(w.policy, self.seen)
        if not self.owns_normalizer:
            self.seen_norm = s.normalizer.pull(w.normalizer, self.seen_norm)
        if counted:
            s.controller.begin("actor")
        with self.clock.phase("collect"):
            warming = cfg.algo.warmup_random and self.actor_steps < cfg.algo.warmup_steps and not self.resumed
            transitions = w.step(random=warming)
        if transitions is not None:
            s.ring.put(transitions.packed())
        if self.owns_normalizer:
            s.normalizer.publish(w.normalizer)
        self.actor_steps += 1
        self.env_steps += cfg.num_envs
        s.board.flags["actor_steps"], s.board.flags["env_steps"] = self.actor_steps, self.env_steps
        if counted:
            s.controller.end("actor")
        return 0.0

    def park(self) -> None:
        """Add the collect time and the finished episodes' returns to the board."""
        stats = self.shared.board.stats
        stats["collect_s"] += self.clock.take()["collect_s"]
        for prefix, episodes in (("return", self.worker.episodes), ("eval", self.worker.eval_episodes)):
            total, count = episodes.take_totals()
            stats[f"{prefix}_sum"] += total
            stats[f"{prefix}_count"] += count

    def state_dict(self) -> dict[str, Any]:
        """The actor's part of a checkpoint (its normaliser, generators and any per-episode noise stds)."""
        return self.worker.state_dict()


class LearnerRole:
    """A learner process (``v`` or ``p``): drains the ring into its buffer, updates when the
    controller lets it, publishes its network, and checks its losses for NaN/inf."""

    def __init__(self, role: str, shared: Shared, device: torch.device, state: dict[str, Any] | None) -> None:
        self.role, self.shared, self.reader = role, shared, ROLES.index(role) - 1
        assert shared.critic is not None, "a learner's bundle holds the critic's slot"
        nets = _networks(shared)
        if role == "v":
            self.worker: Any = build_v_learner(shared.plan, nets)
            self.reads, self.publishes, self.loss = [(shared.policy, self.worker.policy)], shared.critic, "critic_loss"
            self.own = self.worker.critic
        else:
            self.worker = build_p_learner(shared.plan, nets)
            self.reads, self.publishes, self.loss = [(shared.critic, self.worker.critic)], shared.policy, "actor_loss"
            self.own = self.worker.policy
        self.publishes_normalizer = role == "v" and self.worker.owns_normalizer
        if not self.publishes_normalizer:
            self.reads.append((shared.normalizer, self.worker.normalizer))
        if state is not None:
            self.worker.load_state_dict(state)
        self.seen = [slot.version for slot, _ in self.reads]
        self.loss_sum = torch.zeros((), device=device)
        self.loss_count = 0
        self.clock = PhaseClock(device)

    def warm_up(self) -> float:
        """Compile the learner's update; the seconds it took."""
        return self.worker.warm_up()

    def drain(self) -> None:
        """Copy the ring's pending rows into this learner's buffer and release them; owning the normaliser, publish
        it with their observations folded in (the actor acts with it from its next step, warm-up included)."""
        ring, drained = self.shared.ring, False
        while ring.pending(self.reader):
            rows = ring.peek(self.reader)
            ring.release(self.reader, [rows, self.worker.add(rows)])
            drained = True
        if drained and self.publishes_normalizer:
            self.shared.normalizer.publish(self.worker.normalizer)

    def ready(self) -> bool:
        """Whether it may learn: its buffer holds data and (V) the warm-up is over or (P) the critic was updated."""
        if self.worker.buffer.size == 0:
            return False
        if self.role == "v":
            return self.shared.board.flags["actor_steps"] >= self.shared.board.flags["learn_from"]
        return self.shared.controller.counts["v"] > 0

    def work(self) -> float:
        """Drain the ring, then one update if the controller lets it; returns how long to wait (0: updated)."""
        self.drain()
        if not self.ready():
            return IDLE_S
        ctl = self.shared.controller
        if (wait := ctl.wait_s(self.role)) > 0:
            return min(wait, MAX_WAIT_S)
        for i, (slot, module) in enumerate(self.reads):
            self.seen[i] = slot.pull(module, self.seen[i])
        ctl.begin(self.role)
        with self.clock.phase("learn"):
            self.loss_sum += self.worker.update()
        ctl.end(self.role)
        self.publishes.publish(self.own)
        if self.publishes_normalizer:
            self.shared.normalizer.publish(self.worker.normalizer)
        self.loss_count += 1
        if self.loss_count % NAN_CHECK_EVERY == 0 and not math.isfinite(float(self.loss_sum)):
            raise NonFiniteLoss(self.shared.board.flags["env_steps"], {self.loss: math.nan}, ROLE_NAMES[self.role])
        return 0.0

    def park(self) -> None:
        """Drain the ring, then add the losses, learn time and diagnostics to the board."""
        self.drain()
        stats = self.shared.board.stats
        stats[f"{self.loss}_sum"] += float(self.loss_sum)
        stats[f"{self.loss}_count"] += self.loss_count
        stats[f"learn_s_{self.role}"] += self.clock.take()["learn_s"]
        if self.role == "v":
            for name, value in self.worker.diagnostics().items():
                stats[name], stats[f"{name}_count"] = value, 1
        self.loss_sum.zero_()
        self.loss_count = 0

    def state_dict(self) -> dict[str, Any]:
        """The learner's part of a checkpoint (its network, optimiser and generator)."""
        return self.worker.state_dict()


def _die_with_parent() -> None:
    """Ask Linux to kill this process when its parent dies (even by ``kill -9``)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def start_worker(role: str, parcel: Parcel, device: torch.device, threads: int, cores: set[int] | None,
                 checkpoint: bytes | None) -> tuple[ActorRole | LearnerRole, Shared]:
    """Build ``role``'s worker on ``device`` with ``threads`` torch threads from what the parent shared
    (``parcel``, opened here) and its part of ``checkpoint``, compile it, and only then pin the process to
    ``cores`` (unless None): compiling unpinned lets inductor's compile workers, which inherit this process's
    CPUs, use all of them. Returns the worker and the shared bundle."""
    use_device(device)  # first: what asks for the current device (events, bf16, allocations) gets ours
    torch.set_num_threads(threads)
    shared: Shared = parcel.open()
    set_matmul_precision(shared.plan.cfg.matmul_precision, [device])
    state = None if checkpoint is None else state_from_bytes(checkpoint)
    worker = ActorRole(shared, device, state) if role == "actor" else LearnerRole(role, shared, device, state)
    with compilation_watched(f"the {role} worker", shared.plan.cfg.compile):
        shared.board.stats[f"compile_s_{role}"] = worker.warm_up()  # before the first park: off the clock
    if cores:
        pin_process(cores)
    return worker, shared


def worker_process(role: str, parcel: Parcel, device: torch.device, threads: int, cores: set[int] | None,
                   conn: Connection, checkpoint: bytes | None) -> None:
    """The body of a worker process: start the worker (:func:`start_worker`), then step it until told to
    stop. While the parent pauses the run, park at a step boundary and answer its requests for the worker's
    state."""
    _die_with_parent()
    for sig in SIGNALS:  # inherited ignored from the fork server (see worker_context); also where another
        signal.signal(sig, signal.SIG_IGN)  # module started that server
    try:  # everything inside: a worker that fails while starting reports its own error to the parent
        worker, shared = start_worker(role, parcel, device, threads, cores, checkpoint)
        board = shared.board
        flags, parked = board.flags, f"parked_{role}"
        while not flags["stop"]:
            if flags["pause"]:
                board.beat(role, "parked")
                if flags[parked] != flags["epoch"]:
                    worker.park()
                    flags[parked] = flags["epoch"]
                if conn.poll(IDLE_S) and conn.recv() == "state":
                    board.beat(role, "sending its state")
                    conn.send(("state", state_to_bytes(worker.state_dict())))
                continue
            board.beat(role, WORK[role])
            wait = worker.work()
            if wait > 0:
                board.beat(role, "waiting for the others")
                time.sleep(wait)
    except NonFiniteLoss as err:
        conn.send(("nonfinite", err.env_steps, err.losses, traceback.format_exc()))
        sys.exit(1)
    except BaseException as err:  # noqa: BLE001 - reported to the parent, which fails the run
        with contextlib.suppress(OSError):
            conn.send(("failed", f"{type(err).__name__}: {err}", traceback.format_exc()))
        sys.exit(1)


def worker_context() -> Any:
    """The multiprocessing context the workers start in, its fork server running: a process that imported
    this module (torch, the trainers) and torch._dynamo (which every optimiser imports) once, from which each
    worker forks in milliseconds instead of importing them again (4 s each on a busy 2-core CPU); safe with
    CUDA, as nothing in it touches a device.
    The server starts with SIGINT and SIGTERM ignored (inherited), so a signal to the whole process group
    (a cancelled SLURM job) leaves it and the workers it forks, which start ignoring them: the parent alone
    handles it and stops the run. The server exits with this process."""
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload([__name__, "torch._dynamo"])
    # Blocked first: a blocked signal is never discarded as ignored, so one arriving meanwhile waits for the
    # parent's handler.
    signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    handlers = {sig: signal.signal(sig, signal.SIG_IGN) for sig in SIGNALS}
    try:
        mp_forkserver.ensure_running()
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)
    return ctx
