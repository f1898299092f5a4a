"""``mode=async``: the actor, the V-learner and the P-learner, each in its own process.

The workers fork from torch.multiprocessing's fork server (:func:`worker_context`), which
imported torch once for all of them. Each process builds its
worker with the functions sync mode uses (:mod:`pql.training.sync`), on its own device
(``device.sim`` / ``v_learner`` / ``p_learner``) and with its own torch thread count.
Everything that crosses a process boundary is allocated by the parent before they start:

- a :class:`~pql.exchange.TransitionRing` carries the actor's packed n-step transitions to
  both learners, which copy them into their own replay buffers;
- :class:`~pql.exchange.ModuleSlot` s carry the latest policy (P-learner -> actor,
  V-learner, evaluator), critic (V-learner -> P-learner) and normaliser (actor -> learners);
- the :class:`~pql.balance.RatioController` 's counts and durations, which hold beta_a:v and
  beta_p:v across the processes;
- a :class:`Board` of control flags and statistics.

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
import ctypes
import io
import math
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing import forkserver as mp_forkserver
from multiprocessing.connection import Connection
from typing import Any

import torch
import torch.multiprocessing as mp

from pql.balance import RatioController, SharedTable
from pql.config import Config
from pql.devices import resolve_devices
from pql.envs import EnvFactory, env_factory, make_env
from pql.exchange import ModuleSlot, TransitionRing
from pql.speed import log_recompiles
from pql.training.loop import (
    NonFiniteLoss,
    PhaseClock,
    Progress,
    RunLoop,
    envs_compile_s,
    eval_slice,
    make_eval_env,
)
from pql.training.run_dir import RunDir
from pql.training.sync import (
    Networks,
    build_actor,
    build_p_learner,
    build_v_learner,
    initial_networks,
    load_run_state,
    merge_states,
    ratio_controller,
    run_state,
)
from pql.workers import Evaluator

ROLES = ("actor", "v", "p")
ROLE_NAMES = {"actor": "actor", "v": "V-learner", "p": "P-learner"}
RING_SLOTS = 8  # actor steps in flight between the actor and the slower learner
IDLE_S = 5e-4  # sleep of a worker with nothing to do
MAX_WAIT_S = 5e-3  # longest sleep before a waiting worker looks again
POLL_S = 2e-3  # the parent's polling interval
STOP_S = 5.0  # how long stopped workers may take to exit before they are killed
NAN_CHECK_EVERY = 50  # learner updates between checks of their losses (one host sync each)
STOP_GRACE_S = 20.0  # after a stop request, how long the parent waits for starting workers to park
STUCK_S = 1.0  # after a stop request, a started worker silent this long will not park: the parent stops waiting
NO_LIMIT = 2**62
PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
SIGNALS = (signal.SIGINT, signal.SIGTERM)
# What a worker can be doing, as its heartbeat records it (the watchdog names it when the worker stalls).
DOING = ("starting", "stepping the envs", "updating", "waiting for the others", "parked", "sending its state")
WORK = {"actor": "stepping the envs", "v": "updating", "p": "updating"}
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

    cfg: Config
    env_factory: EnvFactory
    obs_dim: int
    act_dim: int
    ring: TransitionRing
    policy: ModuleSlot
    critic: ModuleSlot
    normalizer: ModuleSlot
    controller: RatioController
    board: Board


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


def _to_bytes(state: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def _from_bytes(data: bytes) -> dict[str, Any]:
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def _networks(shared: Shared) -> Networks:
    """The run's current networks, read from the slots (the architectures are built, then overwritten)."""
    nets = initial_networks(shared.cfg, shared.obs_dim, shared.act_dim)
    shared.policy.pull(nets.policy, -1)
    shared.critic.pull(nets.critic, -1)
    shared.normalizer.pull(nets.normalizer, -1)
    return nets


class ActorRole:
    """The actor process: steps the envs, puts transitions into the ring, publishes the normaliser."""

    def __init__(self, shared: Shared, device: torch.device, state: dict[str, Any] | None) -> None:
        cfg, self.shared = shared.cfg, shared
        env = shared.env_factory(cfg.num_envs, device=device, seed=cfg.seed)
        self.worker = build_actor(cfg, env, _networks(shared))
        self.resumed = state is not None
        if state is not None:
            self.worker.load_state_dict(state)
        self.seen = shared.policy.version
        flags = shared.board.flags
        self.actor_steps, self.env_steps = flags["actor_steps"], flags["env_steps"]
        self.clock = PhaseClock(device)

    def warm_up(self) -> float:
        return envs_compile_s(self.worker.env) + self.worker.warm_up()

    def work(self) -> float:
        """One step of every env if due; returns how long to wait before asking again (0: stepped)."""
        s, w, cfg = self.shared, self.worker, self.shared.cfg
        if self.env_steps >= s.board.flags["actor_limit"]:
            return IDLE_S
        counted = self.actor_steps >= s.board.flags["learn_from"] and w.emitting
        if counted and (wait := s.controller.wait_s("actor")) > 0:
            return min(wait, MAX_WAIT_S)
        if not s.ring.has_room():
            return IDLE_S
        self.seen = s.policy.pull(w.policy, self.seen)
        if counted:
            s.controller.begin("actor")
        with self.clock.phase("collect"):
            transitions = w.step(random=self.actor_steps < cfg.algo.warmup_steps and not self.resumed)
        if transitions is not None:
            s.ring.put(transitions.packed())
        s.normalizer.publish(w.normalizer)
        self.actor_steps += 1
        self.env_steps += cfg.num_envs
        s.board.flags["actor_steps"], s.board.flags["env_steps"] = self.actor_steps, self.env_steps
        if counted:
            s.controller.end("actor")
        return 0.0

    def park(self) -> None:
        stats = self.shared.board.stats
        stats["collect_s"] += self.clock.take()["collect_s"]
        for prefix, episodes in (("return", self.worker.episodes), ("eval", self.worker.eval_episodes)):
            total, count = episodes.take_totals()
            stats[f"{prefix}_sum"] += total
            stats[f"{prefix}_count"] += count

    def state_dict(self) -> dict[str, Any]:
        return self.worker.state_dict()


class LearnerRole:
    """A learner process (``v`` or ``p``): drains the ring into its buffer, updates when the
    controller lets it, publishes its network, and checks its losses for NaN/inf."""

    def __init__(self, role: str, shared: Shared, device: torch.device, state: dict[str, Any] | None) -> None:
        self.role, self.shared, self.reader = role, shared, ROLES.index(role) - 1
        nets = _networks(shared)
        if role == "v":
            self.worker: Any = build_v_learner(shared.cfg, nets, device)
            self.reads, self.publishes, self.loss = [(shared.policy, self.worker.policy)], shared.critic, "critic_loss"
            self.own = self.worker.critic
        else:
            self.worker = build_p_learner(shared.cfg, nets, device)
            self.reads, self.publishes, self.loss = [(shared.critic, self.worker.critic)], shared.policy, "actor_loss"
            self.own = self.worker.policy
        self.reads.append((shared.normalizer, self.worker.normalizer))
        if state is not None:
            self.worker.load_state_dict(state)
        self.seen = [slot.version for slot, _ in self.reads]
        self.loss_sum = torch.zeros((), device=device)
        self.loss_count = 0
        self.clock = PhaseClock(device)

    def warm_up(self) -> float:
        return self.worker.warm_up()

    def drain(self) -> None:
        ring = self.shared.ring
        while ring.pending(self.reader):
            rows = ring.peek(self.reader)
            ring.release(self.reader, [rows, self.worker.add(rows)])

    def ready(self) -> bool:
        if self.worker.buffer.size == 0:
            return False
        if self.role == "v":
            return self.shared.board.flags["actor_steps"] >= self.shared.board.flags["learn_from"]
        return self.shared.controller.counts["v"] > 0

    def work(self) -> float:
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
        self.loss_count += 1
        if self.loss_count % NAN_CHECK_EVERY == 0 and not math.isfinite(float(self.loss_sum)):
            raise NonFiniteLoss(self.shared.board.flags["env_steps"], {self.loss: math.nan}, ROLE_NAMES[self.role])
        return 0.0

    def park(self) -> None:
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
        return self.worker.state_dict()


def _die_with_parent() -> None:
    """Ask Linux to kill this process when its parent dies (even by ``kill -9``)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def worker_process(role: str, shared: Shared, device: torch.device, threads: int, cores: set[int] | None,
                   conn: Connection, checkpoint: bytes | None) -> None:
    """The body of a worker process: build the worker on ``device`` with ``threads`` torch threads
    (pinned to ``cores`` unless None), then step it until told to stop. While the parent pauses the run,
    park at a step boundary and answer its requests for the worker's state."""
    _die_with_parent()
    for sig in SIGNALS:  # inherited ignored from the fork server (see worker_context); also where another
        signal.signal(sig, signal.SIG_IGN)  # module started that server
    torch.set_num_threads(threads)
    if cores:
        os.sched_setaffinity(0, cores)
    try:
        state = None if checkpoint is None else _from_bytes(checkpoint)
        worker = ActorRole(shared, device, state) if role == "actor" else LearnerRole(role, shared, device, state)
        shared.board.stats[f"compile_s_{role}"] = worker.warm_up()  # before the first park: off the clock
        if shared.cfg.compile != "off":
            log_recompiles()
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
                    conn.send(("state", _to_bytes(worker.state_dict())))
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

    def __init__(self, cfg: Config, run_dir: RunDir, on_row: Callable[[dict[str, float]], None] | None = None) -> None:
        self.ctx = worker_context()  # its server imports torch while this process builds the run
        self.devices = resolve_devices(cfg)
        sim, cpu = self.devices[0], torch.device("cpu")
        super().__init__(cfg, run_dir, on_row, {"critic_loss": cpu, "actor_loss": cpu})
        torch.manual_seed(cfg.seed)
        self.eval_env = make_eval_env(cfg, sim)
        probe = self.eval_env or make_env(cfg.task, 1, device=sim, seed=cfg.seed)  # for the sizes only
        self.obs_dim, self.act_dim = probe.obs_dim, probe.act_dim
        del probe
        self.nets = initial_networks(cfg, self.obs_dim, self.act_dim)
        self.evaluator = None if self.eval_env is None else Evaluator(
            self.eval_env, copy.deepcopy(self.nets.policy).to(sim), copy.deepcopy(self.nets.normalizer).to(sim))
        self.controller = ratio_controller(cfg).share_memory()
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
        if eval_slice(self.cfg):
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
        return self._diagnostics

    def take_train_return(self) -> float:
        total, count = self._returns
        self._returns = [0.0, 0]
        return total / count if count else math.nan

    def update_counts(self) -> tuple[int, int]:
        return self.controller.counts["v"], self.controller.counts["p"]

    def model_state(self) -> dict[str, Any]:
        parts = []
        with self._parked():
            for role in ROLES:  # one at a time: a reply is read only from the worker asked
                self.workers[role][1].send("state")
                parts.append(self._receive_state(role))
        return merge_states(run_state(self.controller, self.eval_env), *parts)

    def load_model_state(self, state: dict[str, Any]) -> None:
        load_run_state(state, self.controller, self.eval_env)
        self.nets.policy.load_state_dict(state["policy"])
        self.nets.critic.load_state_dict(state["critic"])
        self.nets.normalizer.load_state_dict(state["normalizer"])
        self._checkpoint = _to_bytes(state)

    def checkpoint(self) -> None:
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
        critic and normaliser (whose modules move to the P-learner's, V-learner's and sim device)."""
        cfg, (sim, vdev, pdev) = self.cfg, self.devices
        width = 2 * self.obs_dim + self.act_dim + 2
        nets = self.nets
        return Shared(
            cfg, env_factory(cfg.task), self.obs_dim, self.act_dim,
            TransitionRing(RING_SLOTS, cfg.num_envs, width, readers=2, device=sim).share_memory(),
            ModuleSlot(nets.policy.to(pdev)).share_memory(ctx.Lock()),
            ModuleSlot(nets.critic.to(vdev)).share_memory(ctx.Lock()),
            ModuleSlot(nets.normalizer.to(sim)).share_memory(ctx.Lock()),
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
                               args=(role, self.shared, devices[role], threads[role], pins.get(role), there,
                                     self._checkpoint))
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
                    return _from_bytes(message[1])
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
