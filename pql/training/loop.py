"""What every trainer shares: the budget, metrics rows, loss checks and checkpoints of a run."""

from __future__ import annotations

import abc
import contextlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from pql.config import Config, config_to_dict
from pql.devices import set_generator_state
from pql.envs import VecEnv
from pql.speed import compilation_watched
from pql.store.run_dir import RunDir

DEVICE_ROLES = ("sim", "v_learner", "p_learner")  # the parts of a run placed on devices (trainer.devices)

class NonFiniteLoss(RuntimeError):
    """A learner produced a NaN or infinite loss."""

    def __init__(self, env_steps: int, losses: dict[str, float], worker: str | None = None) -> None:
        where = f" in the {worker}" if worker else ""
        super().__init__(f"non-finite loss{where} at env step {env_steps}: {losses}")
        self.env_steps, self.losses, self.worker = env_steps, losses, worker


@dataclass
class Progress:
    """Counters of a run; saved in the checkpoint and continued on resume. ``compile_s``: seconds spent
    compiling (torch's and JAX's) before the clock started, over all sessions; not in ``wall_s``."""

    actor_steps: int = 0
    env_steps: int = 0
    wall_s: float = 0.0
    next_eval: int = 0
    rows: int = 0
    compile_s: float = 0.0
    losses: dict[str, float] = field(default_factory=dict)


PHASES = ("collect", "learn")  # metrics.csv's collect_s and learn_s


class PhaseClock:
    """Seconds spent in each of :data:`PHASES` since the last :meth:`take`.

    On a CUDA device the phases are timed by CUDA events on that device's current stream, so timing costs no
    host synchronisation per phase (only one at :meth:`take`); elsewhere by ``time.perf_counter``.
    """

    def __init__(self, device: torch.device) -> None:
        self.device, self.cuda = device, device.type == "cuda"
        self.seconds = dict.fromkeys(PHASES, 0.0)
        self.events: dict[str, list[tuple[Any, Any]]] = {name: [] for name in PHASES}

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time the block as phase ``name`` (CUDA events on a GPU, so the host is not synchronised)."""
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            stream = torch.cuda.current_stream(self.device)  # the clock's device, whichever is current
            start.record(stream)
            yield
            end.record(stream)
            self.events[name].append((start, end))
        else:
            begun = time.perf_counter()
            yield
            self.seconds[name] += time.perf_counter() - begun

    def add(self, name: str, seconds: float) -> None:
        """Count ``seconds`` measured elsewhere (another process) in phase ``name``."""
        self.seconds[name] += seconds

    def take(self) -> dict[str, float]:
        """``{"collect_s": ..., "learn_s": ...}`` since the last call; resets."""
        for name, pairs in self.events.items():
            if pairs:
                pairs[-1][1].synchronize()
                self.seconds[name] += sum(a.elapsed_time(b) for a, b in pairs) / 1e3
                pairs.clear()
        out = {f"{name}_s": round(self.seconds[name], 4) for name in PHASES}
        self.seconds = dict.fromkeys(PHASES, 0.0)
        return out


class RunLoop(abc.ABC):
    """The bookkeeping around an algorithm's training loop.

    A subclass builds its workers, calls :meth:`add_loss` after each update, keeps
    ``progress`` counting, and provides evaluation, the train return, its update
    counts and its state for checkpoints.
    """

    devices: tuple[torch.device, torch.device, torch.device]  # set by the subclass: see DEVICE_ROLES

    def __init__(self, cfg: Config, run_dir: RunDir, on_row: Callable[[dict[str, float]], None] | None,
                 loss_devices: dict[str, torch.device]) -> None:
        self.cfg, self.run_dir, self.on_row = cfg, run_dir, on_row
        self.progress = Progress()
        # Learning starts at this actor step: after the warm-up, and after a resume once the empty
        # replay buffers hold another warm-up's worth of transitions from the current policy.
        self.learn_from = cfg.algo.warmup_steps
        self.clock = PhaseClock(next(iter(loss_devices.values())))
        self.resumed = False
        self.resume_note: str | None = None  # set when resumed on other device types
        self.stop_signal: int | None = None  # set by request_stop: the run ends at its next step boundary
        self._loss_sums = {k: torch.zeros((), device=d) for k, d in loss_devices.items()}
        self._loss_counts = dict.fromkeys(loss_devices, 0)
        self._last_row_time = 0.0
        self._last_row_steps = 0
        self._last_rate = math.nan  # env steps per second of training between the last two rows
        self._next_eval_s = cfg.eval_every_s or math.inf  # the training time of the next time-driven row
        self._last_checkpoint = time.monotonic()
        self.checkpoint_env_steps: int | None = None  # where the last checkpoint (this session's or resumed) is

    # -- what a subclass provides -------------------------------------------------------
    @abc.abstractmethod
    def evaluate(self) -> float:
        """Mean return of the deterministic policy on the evaluation environments."""

    @abc.abstractmethod
    def take_train_return(self) -> float:
        """Mean return of training episodes finished since the last call (NaN if none)."""

    @abc.abstractmethod
    def update_counts(self) -> tuple[int, int]:
        """(critic or value updates, policy updates) so far."""

    @abc.abstractmethod
    def model_state(self) -> dict[str, Any]:
        """Networks, optimisers, normalisers and RNG states for the checkpoint."""

    @abc.abstractmethod
    def load_model_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`model_state` saved."""

    def diagnostics(self) -> dict[str, float]:
        """Extra metrics of the critic for this row (e.g. PQL-D's ``edge_mass``); {} if none."""
        return {}

    def warm_up(self) -> float:
        """Compile what the run will compile, before its clock starts; returns the seconds it took
        (0 for a run that compiles nothing)."""
        return 0.0

    # -- shared -------------------------------------------------------------------------
    def start_clock(self) -> float:
        """Warm up (its seconds go to ``progress.compile_s``), then the ``time.monotonic()`` the run's
        ``wall_s`` counts from."""
        with compilation_watched("the trainer", self.cfg.compile):
            self.progress.compile_s += self.warm_up()
        return time.monotonic() - self.progress.wall_s

    def add_loss(self, name: str, loss: torch.Tensor | float, count: int = 1) -> None:
        """Tally a (detached) loss, or the sum of ``count`` of them, for the next metrics row, without a host sync."""
        self._loss_sums[name] += loss
        self._loss_counts[name] += count

    def request_stop(self, signum: int) -> None:
        """Stop at the next step boundary and checkpoint (a signal handler calls this)."""
        self.stop_signal = signum

    def done(self) -> bool:
        """Whether the run ends: a stop signal came, or a budget (env steps, seconds) is spent."""
        cfg, pr = self.cfg, self.progress
        return (self.stop_signal is not None
                or (cfg.max_env_steps is not None and pr.env_steps >= cfg.max_env_steps)
                or (cfg.max_time_s is not None and pr.wall_s >= cfg.max_time_s))

    def take_losses(self) -> dict[str, float]:
        """Mean losses since the last call (NaN where no update ran); raises NonFiniteLoss on NaN/inf."""
        losses = {k: float(self._loss_sums[k]) / self._loss_counts[k] if self._loss_counts[k] else float("nan")
                  for k in self._loss_sums}
        ran = {k: self._loss_counts[k] > 0 for k in self._loss_sums}
        for k in self._loss_sums:
            self._loss_sums[k].zero_()
            self._loss_counts[k] = 0
        self.progress.losses = losses
        if any(ran[k] and not math.isfinite(v) for k, v in losses.items()):
            raise NonFiniteLoss(self.progress.env_steps, losses)
        return losses

    def evaluate_and_log(self, losses: dict[str, float] | None = None) -> dict[str, float]:
        """Evaluate the latest policy and append a metrics row (losses taken now unless given)."""
        pr = self.progress
        losses = self.take_losses() if losses is None else losses
        eval_return = self.evaluate()
        v_updates, p_updates = self.update_counts()
        dt = pr.wall_s - self._last_row_time
        row = {
            "env_steps": pr.env_steps, "wall_s": round(pr.wall_s, 4), "train_return": self.take_train_return(),
            "eval_return": eval_return, **losses, "actor_steps": pr.actor_steps,
            "v_updates": v_updates, "p_updates": p_updates,
            "env_steps_per_s": (pr.env_steps - self._last_row_steps) / dt if dt > 0 else float("nan"),
            **self.clock.take(), **self.diagnostics(),
        }
        self._last_row_time, self._last_row_steps, self._last_rate = pr.wall_s, pr.env_steps, row["env_steps_per_s"]
        self.run_dir.append_metrics(row)
        pr.rows += 1
        self.run_dir.refresh_status(env_steps=pr.env_steps)  # the claim renewed: this run is alive
        pr.next_eval = pr.env_steps + self.cfg.eval_every_env_steps
        self._next_eval_s = pr.wall_s + (self.cfg.eval_every_s or math.inf)
        if self.on_row is not None:
            self.on_row(row)
        return row

    def state_dict(self) -> dict[str, Any]:
        """The checkpoint: config, progress, generators and the trainer's :meth:`model_state`."""
        pr = self.progress
        return {"config": config_to_dict(self.cfg),
                "device_types": dict(zip(DEVICE_ROLES, (d.type for d in self.devices), strict=True)),
                "progress": {"actor_steps": pr.actor_steps, "env_steps": pr.env_steps, "wall_s": pr.wall_s,
                             "next_eval": pr.next_eval, "rows": pr.rows, "compile_s": pr.compile_s},
                **self.model_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint: counters, then the subclass's models; marks the run resumed."""
        pr = state["progress"]
        self.progress = Progress(pr["actor_steps"], pr["env_steps"], pr["wall_s"], pr["next_eval"], pr["rows"],
                                 pr.get("compile_s", 0.0))
        self._last_row_time, self._last_row_steps = pr["wall_s"], pr["env_steps"]
        self._next_eval_s = pr["wall_s"] + (self.cfg.eval_every_s or math.inf)
        self.load_model_state(state)
        self.resumed = True
        now = dict(zip(DEVICE_ROLES, (d.type for d in self.devices), strict=True))
        before = state.get("device_types", now)  # checkpoints before it was recorded: the same, or unknown
        moved = {role: f"{before[role]} -> {now[role]}" for role in DEVICE_ROLES if before[role] != now[role]}
        if moved:
            self.resume_note = (f"resumed on other device types ({', '.join(f'{k} {v}' for k, v in moved.items())}): "
                                "their random generators were seeded from their saved states")
        self.checkpoint_env_steps = self.progress.env_steps
        self.learn_from = self.progress.actor_steps + self.cfg.algo.warmup_steps

    def space_rows(self, cost_s: float) -> None:
        """Move the next row due by env steps later when the last row cost ``cost_s`` seconds of real time
        (evaluation, parking, writing, a checkpoint) and rows every ``eval_every_env_steps`` would take more
        than ``eval_max_share`` of it: that row comes after ``cost_s * (1 - share) / share`` seconds of
        training at least, in env steps at the last interval's rate, so that cost / (cost + training) stays
        within the share at any env count. Rows by time (``eval_every_s``, a budget's resolution) stay as due."""
        share = self.cfg.eval_max_share
        if share <= 0 or cost_s <= 0:
            return
        gap_s = cost_s * (1 - share) / share
        if math.isfinite(self._last_rate) and self._last_rate > 0:
            steps = self._last_row_steps + math.ceil(gap_s * self._last_rate)
            self.progress.next_eval = max(self.progress.next_eval, steps)

    def eval_due(self) -> bool:
        """Whether the next row is due: ``eval_every_env_steps`` env steps or ``eval_every_s`` seconds of training
        since the last one."""
        return self.progress.env_steps >= self.progress.next_eval or self.progress.wall_s >= self._next_eval_s

    def checkpoint(self) -> None:
        """Write the checkpoint now and record its env steps in ``status.json``."""
        self.run_dir.save_checkpoint(self.state_dict())
        self.checkpoint_env_steps = self.progress.env_steps
        self.run_dir.refresh_status(checkpoint_env_steps=self.checkpoint_env_steps)
        self._last_checkpoint = time.monotonic()

    def checkpoint_due(self) -> bool:
        """Whether ``checkpoint_every_s`` has passed since the last checkpoint."""
        return time.monotonic() - self._last_checkpoint >= self.cfg.checkpoint_every_s

    def log_if_due(self, start: float) -> float:
        """In a single-threaded loop: evaluate, log and checkpoint when due. Returns the loop's clock
        start moved by the time that took, so evaluation and checkpoints are not training time."""
        if not self.eval_due() or self.done():
            return start
        paused = time.monotonic()
        self.evaluate_and_log()
        if self.checkpoint_due():
            self.checkpoint()
        self.space_rows(time.monotonic() - paused)
        return start + time.monotonic() - paused

    def finish(self) -> Progress:
        """The last metrics row (if steps were taken since the previous one and the run was not
        interrupted, so that a stop is quick) and checkpoint."""
        if self.progress.env_steps > self._last_row_steps and self.stop_signal is None:
            self.evaluate_and_log()
        self.checkpoint()
        return self.progress


def envs_compile_s(*envs: VecEnv | None) -> float:
    """Seconds the given environments (None: absent) spent compiling their simulation."""
    return sum(env.compile_s for env in envs if env is not None)


def generator_state(env: VecEnv | None) -> torch.Tensor | None:
    """The state of ``env``'s reset generator, for a checkpoint (None without the env)."""
    return None if env is None else env.generator.get_state()


def restore_generator(env: VecEnv | None, state: torch.Tensor | None) -> None:
    """Undo :func:`generator_state`."""
    if env is not None and state is not None:
        set_generator_state(env.generator, state)
