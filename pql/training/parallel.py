"""``mode=async``: the actor, the V-learner and the P-learner, each in its own process.

This module is the parent, the monitor of the run. The workers fork from torch.multiprocessing's fork
server (:func:`pql.training.processes.worker_context`), which imported torch once for all of them. Each
process (:mod:`pql.training.processes`) builds its worker with the functions sync mode uses
(:mod:`pql.workers.builders`), on its own device (``device.sim`` / ``v_learner`` / ``p_learner``) and with
its own torch thread count and CPUs (:mod:`pql.training.placement`).
Everything that crosses a process boundary is allocated by the parent before they start:

- a :class:`~pql.workers.exchange.TransitionRing` carries the actor's packed n-step transitions to
  both learners, which copy them into their own replay buffers;
- :class:`~pql.workers.exchange.ModuleSlot` s carry the latest policy (P-learner -> actor,
  V-learner, evaluator), critic (V-learner -> P-learner) and normaliser (actor -> learners; with
  ``algo.obs_norm_replay`` V-learner -> actor, P-learner);
- the :class:`~pql.workers.balance.RatioController` 's counts and durations, which hold beta_a:v and
  beta_p:v across the processes;
- a :class:`~pql.training.board.Board` of control flags, statistics and heartbeats.

The parent process is the monitor. It evaluates, logs and checkpoints only while every
worker is parked at a step boundary, so a metrics row or a checkpoint describes one moment,
and that time is left out of ``wall_s`` as in sync mode. The actor stops at the next
evaluation's env step until the parent has evaluated, so rows fall on the same env steps as
in sync mode. A worker that raises reports it through its pipe; one that dies (``kill -9``)
is seen by its exit code; either way the others are stopped within seconds and the run fails
naming the worker, its last checkpoint kept. Workers ignore SIGINT and SIGTERM (the parent
handles them, checkpoints and stops the workers) and are killed by the kernel if the parent
dies (the fork server exits with it).
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import signal
import time
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection
from typing import Any

import torch

from pql.envs import env_factory, make_env
from pql.store.run_dir import RunDir
from pql.training.board import ROLE_NAMES, ROLES, Board, Parcel, Shared
from pql.training.loop import NonFiniteLoss, Progress, RunLoop, envs_compile_s
from pql.training.placement import core_budget, core_plan, thread_plan
from pql.training.processes import state_from_bytes, state_to_bytes, worker_context, worker_process
from pql.training.sync import load_run_state, merge_states, run_state
from pql.workers.builders import (
    initial_networks,
    ratio_controller,
)
from pql.workers.evaluation import Evaluator, make_eval_env
from pql.workers.exchange import ModuleSlot, TransitionRing
from pql.workers.plan import RunPlan

RING_SLOTS = 8  # actor steps in flight between the actor and the slower learner
POLL_S = 2e-3  # the parent's polling interval
STOP_S = 5.0  # how long stopped workers may take to exit before they are killed
STOP_GRACE_S = 20.0  # after a stop request, how long the parent waits for starting workers to park
STUCK_S = 1.0  # after a stop request, a started worker silent this long will not park: the parent stops waiting
NO_LIMIT = 2**62
# How a worker can fail (status.json's ``cause``: error, killed, watchdog), and those after which the run
# resumes from its checkpoint.
RESUMABLE_CAUSES = ("killed", "watchdog")


class WorkerFailed(RuntimeError):
    """A worker process raised, died or stalled; names the worker and carries its traceback when it had one.
    ``cause`` says how (``error``, ``killed`` or ``watchdog``), ``resumable`` whether the run may continue from
    its last checkpoint: a worker killed by a signal (the out-of-memory killer's SIGKILL among them) or stopped
    by the watchdog leaves a run that is fine up to its checkpoint; one that raised would raise again."""

    def __init__(self, role: str, pid: int | None, reason: str, worker_traceback: str | None = None,
                 cause: str = "error") -> None:
        super().__init__(f"the {ROLE_NAMES[role]} (pid {pid}) {reason}")
        self.worker, self.worker_traceback, self.cause = ROLE_NAMES[role], worker_traceback, cause
        self.resumable = cause in RESUMABLE_CAUSES


def _exit_reason(code: int) -> tuple[str, str]:
    """Why a worker that exited with ``code`` ended, and its cause (``killed`` by a signal, else ``error``)."""
    if code < 0:
        with contextlib.suppress(ValueError):
            name = signal.Signals(-code).name
            oom = " (the kernel's out-of-memory killer sends it: see dmesg)" if -code == signal.SIGKILL else ""
            return f"was killed by {name}{oom}", "killed"
    return f"exited with code {code}", "error"


class WorkersDidNotPark(RuntimeError):
    """After a stop request a worker did not park: it was stuck (silent for STUCK_S), or still starting after
    STOP_GRACE_S. The run stops without a new checkpoint (the last one stays, and the run resumes from it)."""


class ProcessTrainer(RunLoop):
    """A PQL / PQL-D run in async mode: the parent of three worker processes (see the module docstring)."""

    def __init__(self, plan: RunPlan, run_dir: RunDir,
                 on_row: Callable[[dict[str, float]], None] | None = None) -> None:
        self.ctx = worker_context()  # its server imports torch while this process builds the run
        cfg, self.plan, self.devices = plan.cfg, plan, plan.devices
        sim, cpu = self.devices[0], torch.device("cpu")
        super().__init__(cfg, run_dir, on_row, {"critic_loss": cpu, "actor_loss": cpu})
        torch.manual_seed(cfg.seed)
        self.eval_env = make_eval_env(cfg, sim)
        probe = self.eval_env or make_env(cfg.task, 1, device=sim, seed=cfg.seed)  # for the sizes only
        self.obs_dim, self.act_dim = probe.obs_dim, probe.act_dim
        del probe
        self.nets = initial_networks(plan, self.obs_dim, self.act_dim)
        self.evaluator = None if self.eval_env is None else Evaluator(
            self.eval_env, copy.deepcopy(self.nets.policy).to(sim), copy.deepcopy(self.nets.normalizer).to(sim))
        self.controller = ratio_controller(plan).share_memory()
        self.board = Board()
        self.shared: Shared | None = None
        self.workers: dict[str, tuple[Any, Connection]] = {}
        self.worker_pids: dict[str, int] = {}
        self._checkpoint: bytes | None = None
        self._returns = [0.0, 0]
        self._eval_returns = [0.0, 0]  # the noise-free slice's episodes (one simulation per process)
        self._seen = {"policy": -1, "normalizer": -1}
        self._pause_depth = 0
        self._diagnostics: dict[str, float] = {}
        self._stop_asked_at: float | None = None
        self._stuck: set[str] = set()  # workers found stuck: killed at once when the run stops

    # -- what the run loop needs ----------------------------------------------------------
    def evaluate(self) -> float:
        """The mean return of the noise-free slice's episodes, or one episode of the evaluation envs with the
        latest policy."""
        if self.plan.eval_slice:
            total, count = self._eval_returns
            self._eval_returns = [0.0, 0]
            return total / count if count else math.nan
        if self.evaluator is None or self.shared is None:
            return math.nan
        self._seen["policy"] = self.shared.policy.pull(self.evaluator.policy, self._seen["policy"])
        self._seen["normalizer"] = self.shared.normalizer.pull(self.evaluator.normalizer, self._seen["normalizer"])
        return self.evaluator.run()

    def warm_up(self) -> float:
        """The evaluation envs' compilation; the workers warm up in their processes (see :meth:`_collect`)."""
        return envs_compile_s(self.eval_env)

    def diagnostics(self) -> dict[str, float]:
        """The V-learner's diagnostics, as of the last park."""
        return self._diagnostics

    def take_train_return(self) -> float:
        """Mean return of the training episodes the actor finished since the last call."""
        total, count = self._returns
        self._returns = [0.0, 0]
        return total / count if count else math.nan

    def update_counts(self) -> tuple[int, int]:
        """(V-updates, P-updates) so far, from the shared controller."""
        return self.controller.counts["v"], self.controller.counts["p"]

    def model_state(self) -> dict[str, Any]:
        """Every worker's state, asked of each while they are parked, with the run's."""
        parts = []
        with self._parked():
            for role in ROLES:  # one at a time: a reply is read only from the worker asked
                self.workers[role][1].send("state")
                parts.append(self._receive_state(role))
        return merge_states(run_state(self.controller, self.eval_env), *parts)

    def load_model_state(self, state: dict[str, Any]) -> None:
        """Restore the run's state here; the workers get theirs when they start."""
        load_run_state(state, self.controller, self.eval_env)
        self.nets.policy.load_state_dict(state["policy"])
        self.nets.critic.load_state_dict(state["critic"])
        self.nets.normalizer.load_state_dict(state["normalizer"])
        self._checkpoint = state_to_bytes(state)

    def checkpoint(self) -> None:
        """Checkpoint while every worker is parked, so the checkpoint is one moment."""
        with self._parked():
            super().checkpoint()

    def request_stop(self, signum: int) -> None:
        """Stop at the next step boundary; the workers get :data:`STOP_GRACE_S` from now to park."""
        self._stop_asked_at = time.monotonic()
        super().request_stop(signum)

    # -- the processes ------------------------------------------------------------------
    def run(self) -> Progress:
        """Start the workers, train until the budget is spent, stop them; returns the final counters."""
        try:
            self._start()
            with self._parked():  # every worker is built and waiting
                if self.progress.rows == 0:
                    self.evaluate_and_log()  # the untrained policy's row at step 0
            self._train()
            with self._parked():
                return self.finish()
        finally:
            self._stop()

    def share(self, ctx: Any) -> Shared:
        """What the workers share, allocated here (``ctx``: the multiprocessing context they start in):
        the transition ring ``[RING_SLOTS, N, 2D + A + 2]`` on the sim device, and the slots of the policy,
        critic and normaliser (whose modules move to the P-learner's, V-learner's and the normaliser owner's device:
        the sim's, or the V-learner's with ``algo.obs_norm_replay``)."""
        cfg, (sim, vdev, pdev) = self.cfg, self.devices
        width = 2 * self.obs_dim + self.act_dim + 2
        nets = self.nets
        return Shared(
            self.plan, env_factory(cfg.task), self.obs_dim, self.act_dim,
            TransitionRing(RING_SLOTS, cfg.num_envs, width, readers=2, device=sim).share_memory(),
            ModuleSlot(nets.policy.to(pdev)).share_memory(ctx.Lock()),
            ModuleSlot(nets.critic.to(vdev)).share_memory(ctx.Lock()),
            ModuleSlot(nets.normalizer.to(vdev if cfg.algo.obs_norm_replay else sim)).share_memory(ctx.Lock()),
            self.controller, self.board)

    def _start(self) -> None:
        ctx = self.ctx
        self.shared = self.share(ctx)
        flags = self.board.flags
        flags.update(pause=1, epoch=0, stop=0, actor_limit=self._actor_limit(), actor_steps=self.progress.actor_steps,
                     env_steps=self.progress.env_steps, learn_from=self.learn_from)
        devices = dict(zip(ROLES, self.devices, strict=True))
        cores, budget = core_budget()
        threads = thread_plan(devices, budget)
        # Pin only a run that has every CPU it sees: runs sharing a machine would pin onto the same cores.
        pins = core_plan(threads, cores) if budget == len(cores) and hasattr(os, "sched_setaffinity") else {}
        for role in ROLES:
            here, there = ctx.Pipe()
            proc = ctx.Process(target=worker_process, name=f"pql-{role}", daemon=True,
                               args=(role, Parcel(self.shared.for_role(role), "the shared ring, slots and board"),
                                     devices[role], threads[role], pins.get(role), there, self._checkpoint))
            proc.start()
            there.close()
            self.workers[role] = (proc, here)
            self.worker_pids[role] = proc.pid
        self.run_dir.refresh_status(workers=self.worker_pids)  # for top, py-spy, or a kill

    def _train(self) -> None:
        pr, flags = self.progress, self.board.flags
        start = self.start_clock()
        while True:
            self._check_workers()
            pr.actor_steps, pr.env_steps = flags["actor_steps"], flags["env_steps"]
            pr.wall_s = time.monotonic() - start
            if self.done():
                return
            if self.eval_due():
                paused = time.monotonic()
                with self._parked():
                    self.evaluate_and_log()
                    if self.checkpoint_due():
                        self.checkpoint()
                    self.space_rows(time.monotonic() - paused)  # here: the actor's limit is set on leaving
                start += time.monotonic() - paused
                continue
            time.sleep(POLL_S)

    def _actor_limit(self) -> int:
        limit = self.progress.next_eval if self.progress.rows else self.progress.env_steps
        return min(limit, self.cfg.max_env_steps or NO_LIMIT)

    @contextlib.contextmanager
    def _parked(self) -> Iterator[None]:
        """Every worker parked at a step boundary, their statistics collected, while inside."""
        if self._pause_depth:
            yield
            return
        self._pause_depth += 1
        flags = self.board.flags
        try:
            flags["epoch"] += 1
            flags["pause"] = 1
            while waiting := tuple(r for r in ROLES if flags[f"parked_{r}"] != flags["epoch"]):
                self._check_workers()
                self._give_up_if_stopping(waiting)
                time.sleep(POLL_S)
            self._collect()
            yield
        finally:
            self._pause_depth -= 1
            flags["actor_limit"] = self._actor_limit()
            flags["pause"] = 0

    def _give_up_if_stopping(self, waiting: tuple[str, ...]) -> None:
        """After a stop request, stop waiting for the ``waiting`` workers to park when one of them is stuck
        (started, and silent for STUCK_S) or STOP_GRACE_S have passed (e.g. still compiling): raise
        :class:`WorkersDidNotPark`, so a signal ends the run promptly without a new checkpoint."""
        if self._stop_asked_at is None:
            return
        stuck = self.board.stalled(STUCK_S, waiting)
        if stuck is None and time.monotonic() - self._stop_asked_at <= STOP_GRACE_S:
            return
        self._stuck.update(waiting)
        why = f"the {ROLE_NAMES[stuck[0]]} was stuck {stuck[2]}" if stuck else \
            f"the {', '.join(ROLE_NAMES[r] for r in waiting)} did not park within {STOP_GRACE_S:g} s"
        raise WorkersDidNotPark(f"{why} when the stop came; stopped without a new checkpoint, resumes from the "
                                "last one")

    def _collect(self) -> None:
        stats = self.board.stats
        for name in ("critic_loss", "actor_loss"):
            if stats[f"{name}_count"]:
                self.add_loss(name, stats[f"{name}_sum"], int(stats[f"{name}_count"]))
        self._returns[0] += stats["return_sum"]
        self._returns[1] += int(stats["return_count"])
        self._eval_returns[0] += stats["eval_sum"]
        self._eval_returns[1] += int(stats["eval_count"])
        self.clock.add("collect", stats["collect_s"])
        self.clock.add("learn", stats["learn_s_v"] + stats["learn_s_p"])
        self._diagnostics = {"edge_mass": stats["edge_mass"]} if stats["edge_mass_count"] else {}
        # The workers compile at the same time, each before it first parks: the run waits for the slowest.
        self.progress.compile_s += max(stats[f"compile_s_{role}"] for role in ROLES)
        stats.tensor.zero_()
        self.progress.actor_steps = self.board.flags["actor_steps"]
        self.progress.env_steps = self.board.flags["env_steps"]

    def _receive_state(self, role: str) -> dict[str, Any]:
        conn = self.workers[role][1]
        while True:
            self._check_workers(role)
            with contextlib.suppress(EOFError, OSError):  # a dead worker: the next check raises
                message = conn.recv() if conn.poll(POLL_S) else None
                if message is None:
                    continue
                if message[0] == "state":
                    return state_from_bytes(message[1])
                self._raise(role, message)

    def _check_workers(self, skip: str | None = None) -> None:
        """Raise if a worker reported a failure, died, or stalled: no heartbeat for ``watchdog_s`` once
        started (``skip``: a worker whose pipe the caller reads)."""
        stalled = self.board.stalled(self.cfg.watchdog_s) if self.cfg.watchdog_s else None
        if stalled is not None:
            role, silent_s, doing = stalled
            self._stuck.add(role)
            raise WorkerFailed(role, self.workers[role][0].pid, f"made no progress for {silent_s:.0f} s (watchdog_s="
                               f"{self.cfg.watchdog_s:g}); it was {doing}", cause="watchdog")
        for role, (proc, conn) in self.workers.items():
            if role == skip and proc.exitcode is None:
                continue
            try:
                message = conn.recv() if conn.poll() else None
            except (EOFError, OSError):  # its end of the pipe closed: it died
                proc.join(1.0)
                message = None
            if message is not None:
                self._raise(role, message)
            if proc.exitcode is not None:
                with contextlib.suppress(EOFError, OSError):
                    if conn.poll(0.5):  # its report may still be on the way
                        self._raise(role, conn.recv())
                reason, cause = _exit_reason(proc.exitcode)
                raise WorkerFailed(role, proc.pid, reason, cause=cause)

    def _raise(self, role: str, message: tuple[Any, ...]) -> None:
        proc = self.workers[role][0]
        if message[0] == "nonfinite":
            self.progress.env_steps = message[1]
            raise NonFiniteLoss(message[1], message[2], ROLE_NAMES[role])
        if message[0] == "failed":
            raise WorkerFailed(role, proc.pid, f"failed: {message[1]}", message[2])
        raise WorkerFailed(role, proc.pid, f"sent an unexpected message {message[0]!r}")

    def _stop(self) -> None:
        """Tell the workers to stop; kill those found stuck at once, and the others that do not exit within
        STOP_S seconds."""
        self.board.flags.update(stop=1, pause=0)
        deadline = time.monotonic() + STOP_S
        for role, (proc, conn) in self.workers.items():
            proc.join(0.0 if role in self._stuck else max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                proc.kill()
                proc.join()
            conn.close()
        self.workers.clear()
