"""Run one training job end to end: its config, run directory, status, sinks and failures."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from pql.config import Config, ConfigError
from pql.devices import device_name, gpu_mismatch
from pql.resolve import apply_overrides, build_config
from pql.speed import matmul_precision, set_matmul_precision, speed_problem
from pql.store.locks import locked_run
from pql.store.manifest import session
from pql.store.run_dir import CHECKPOINT, CONFIG, RunDir
from pql.training.interrupt import RunInterrupted, StopSignals
from pql.training.loop import DEVICE_ROLES, NonFiniteLoss, RunLoop
from pql.training.on_policy import PPOTrainer
from pql.training.parallel import ProcessTrainer, WorkerFailed, WorkersDidNotPark
from pql.training.sinks import ProgressDisplay, TensorBoardSink, WandbSink
from pql.training.sync import SyncTrainer
from pql.workers.plan import RunPlan, plan_run

# Keys a resumed run may change: they alter the budget or the display, not the experiment.
RESUMABLE_KEYS = {"resume", "max_time_s", "max_env_steps", "progress", "tensorboard", "wandb", "wandb_project",
                  "checkpoint_every_s", "watchdog_s", "check_memory",
                  "device.sim", "device.v_learner", "device.p_learner"}


class WrongHardware(ConfigError):
    """The run asks for a GPU model this machine does not have."""


# The run loop of each trainer an algorithm may declare (pql.algos.base.TRAINERS), by mode.
TRAINERS: dict[str, dict[str, type[RunLoop]]] = {
    "actor-critic": {"sync": SyncTrainer, "async": ProcessTrainer},  # the workers in one process, or three
    "on-policy": {"sync": PPOTrainer},
}


def trainer_class(plan: RunPlan) -> type[RunLoop]:
    """The run loop of the plan's algorithm's trainer in its mode."""
    return TRAINERS[plan.algorithm.trainer][plan.cfg.mode]


def default_out(cfg: Config) -> str:
    """A fresh run directory's path: ``results/runs/TASK-ALGO-sSEED-TIMESTAMP``."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return str(Path("results") / "runs" / f"{cfg.task.replace('/', '-')}-{cfg.algo.name}-s{cfg.seed}-{stamp}")


def resolve(overrides: dict[str, Any]) -> Config:
    """The config of a new run, or of the run named by ``resume=`` with the allowed changes applied."""
    if "resume" not in overrides or overrides["resume"] in (None, "", "null"):
        cfg = build_config(overrides)
        return cfg if cfg.out else replace(cfg, out=default_out(cfg))
    run = RunDir(str(overrides["resume"]), create=False)
    if not run.config_path.exists():
        raise ConfigError(f"resume={run.path}: no {CONFIG} there, so it is not a run directory")
    if not run.checkpoint_path.exists():
        raise ConfigError(f"resume={run.path}: no {CHECKPOINT} there to resume from")
    changed = sorted(set(overrides) - RESUMABLE_KEYS)
    if changed:
        raise ConfigError(f"cannot change {', '.join(changed)} when resuming; only {', '.join(sorted(RESUMABLE_KEYS))}")
    return apply_overrides(run.read_config(), {**overrides, "out": str(run.path), "resume": str(run.path)})


def _record(run_dir: RunDir, signals: StopSignals, state: str, **fields: Any) -> None:
    """Write ``status.json``, holding ``signals`` (a signal now must not leave it saying ``running``);
    where that fails (a full disk) remove it rather than leave one that is no longer true, and say so on
    the terminal."""
    try:
        with signals.held():
            run_dir.write_status(state, **fields)
    except OSError as err:
        print(f"pql: could not write {run_dir.path / 'status.json'} ({err.strerror}); removed it so that it "
              f"does not claim the run is still running", file=sys.stderr)
        with contextlib.suppress(OSError):
            run_dir.clear_status()


def run_training(cfg: Config, on_start: Callable[[RunLoop], None] | None = None) -> RunDir:
    """Train ``cfg`` (new or resumed) in its run directory; the directory's status tells how it ended.

    The run directory is locked for the whole run (RunLocked if another process has it).
    SIGINT or SIGTERM stops the run at its next step with a checkpoint and ``state:
    interrupted``, then raises :class:`RunInterrupted`; other errors are recorded in
    ``status.json`` and raised. ``on_start`` receives the trainer before training begins
    (a scheduler's preemption handler uses it to checkpoint).
    """
    assert cfg.out is not None
    plan = plan_run(cfg)
    mismatch = gpu_mismatch(cfg.gpu_model, plan.devices)
    if mismatch is not None:
        raise WrongHardware(mismatch)
    problem = speed_problem(cfg.compile, cfg.amp, plan.devices)
    if problem is not None:
        raise ConfigError(problem)
    run_dir = RunDir(cfg.out)
    with locked_run(run_dir.path), StopSignals() as signals:
        return _train_locked(plan, run_dir, signals, on_start)


def _train_locked(plan: RunPlan, run_dir: RunDir, signals: StopSignals,
                  on_start: Callable[[RunLoop], None] | None) -> RunDir:
    cfg, trainer = plan.cfg, _prepare(plan, run_dir, signals)
    sinks = _open_sinks(cfg, run_dir, trainer)

    def on_row(row: dict[str, float]) -> None:
        for sink in sinks:
            sink(row)

    trainer.on_row = on_row
    host = _host_facts(trainer)
    run_dir.write_status("running", env_steps=trainer.progress.env_steps, **host)
    if on_start is not None:
        on_start(trainer)

    def facts() -> dict[str, Any]:  # the run's host, devices and workers, and where its last checkpoint is
        return {**host, "checkpoint_env_steps": trainer.checkpoint_env_steps}

    try:
        progress = trainer.run()
    except NonFiniteLoss as err:
        _record(run_dir, signals, "failed", error=str(err), cause="nonfinite", resumable=False,
                env_steps=err.env_steps, losses=err.losses, **({"worker": err.worker} if err.worker else {}), **facts())
        raise
    except SystemExit:  # a scheduler's preemption/timeout handler checkpointed and exits for a requeue
        _record(run_dir, signals, "queued", note="requeued by the scheduler; resumes from its checkpoint",
                env_steps=trainer.progress.env_steps, **facts())
        raise
    except (RunInterrupted, KeyboardInterrupt, WorkersDidNotPark) as err:  # stopped at once, no new checkpoint
        signum = signals.signum if isinstance(err, WorkersDidNotPark) else \
            err.signum if isinstance(err, RunInterrupted) else signal.SIGINT
        note = str(err) if isinstance(err, WorkersDidNotPark) else \
            "stopped at once by a second signal; resumes from its last checkpoint"
        _record(run_dir, signals, "interrupted", signal=signal.Signals(signum).name, note=note,
                env_steps=trainer.progress.env_steps, **facts())
        raise RunInterrupted(signum, _resume_hint(run_dir, signum, trainer.progress.env_steps)) from None
    except WorkerFailed as err:
        _record(run_dir, signals, "failed", error=f"{type(err).__name__}: {err}", cause=err.cause,
                resumable=err.resumable, worker=err.worker, traceback=err.worker_traceback or traceback.format_exc(),
                env_steps=trainer.progress.env_steps, **facts())
        raise
    except BaseException as err:
        _record(run_dir, signals, "failed", error=f"{type(err).__name__}: {err}", cause="error", resumable=False,
                traceback=traceback.format_exc(), env_steps=trainer.progress.env_steps, **facts())
        raise
    else:  # recorded before the sinks close, which a second signal may cut short
        ended = {"env_steps": progress.env_steps, "wall_s": round(progress.wall_s, 3),
                 "compile_s": round(progress.compile_s, 3), **facts()}
        if trainer.stop_signal is not None:
            _record(run_dir, signals, "interrupted", signal=signal.Signals(trainer.stop_signal).name, **ended)
        else:
            _record(run_dir, signals, "done", losses=progress.losses, **ended)
    finally:
        for sink in sinks:
            sink.close()
    if trainer.stop_signal is not None:
        raise RunInterrupted(trainer.stop_signal, _resume_hint(run_dir, trainer.stop_signal, progress.env_steps))
    return run_dir


def _prepare(plan: RunPlan, run_dir: RunDir, signals: StopSignals) -> RunLoop:
    """The trainer of ``plan``, built in ``run_dir`` (whose lock is held) and resumed from its checkpoint when
    ``cfg.resume``, with this session recorded; RunInterrupted if a signal came while it was built."""
    cfg = plan.cfg
    swept = run_dir.sweep_temporary()  # ours to sweep: the lock is held, so their writers are gone
    if swept:
        print(f"pql: removed {', '.join(swept)} from {run_dir.path}, left by a write that was killed", file=sys.stderr)
    state = run_dir.load_checkpoint() if cfg.resume else None
    set_matmul_precision(cfg.matmul_precision, plan.devices)  # this process's part (async workers: their own)
    trainer = trainer_class(plan)(plan, run_dir)
    signals.on_first = trainer.request_stop
    if signals.signum is not None:  # a signal came while the trainer was being built
        if run_dir.config_path.exists():
            _record(run_dir, signals, "interrupted", signal=signal.Signals(signals.signum).name,
                    note="stopped before training began", env_steps=trainer.progress.env_steps)
        raise RunInterrupted(signals.signum)
    if state is not None:
        trainer.load_state_dict(state)
        run_dir.truncate_metrics(state["progress"]["rows"])
    else:
        run_dir.write_config(cfg)
    run_dir.record_session(session(dict(zip(("sim", "v_learner", "p_learner"), trainer.devices, strict=True))),
                           resumed=state is not None)
    return trainer


def _host_facts(trainer: RunLoop) -> dict[str, Any]:
    """Where the run runs, for ``status.json``: host, pid, SLURM job, device names and the async workers' pids."""
    roles = DEVICE_ROLES
    host: dict[str, Any] = {"host": socket.gethostname(), "pid": os.getpid(),
                            "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
                            "devices": {name: device_name(d) for name, d in zip(roles, trainer.devices, strict=True)}}
    if trainer.resume_note is not None:
        host["resume_note"] = trainer.resume_note
    setting, devices = trainer.cfg.matmul_precision, trainer.devices
    if isinstance(trainer, ProcessTrainer):
        host["workers"] = trainer.worker_pids  # filled in when the workers start
        host["matmul_precision"] = {n: matmul_precision(setting, [d]) for n, d in zip(roles, devices, strict=True)}
    else:  # one process: set when the trainer was built, for all its devices
        host["matmul_precision"] = dict.fromkeys(roles, matmul_precision(setting, devices))
    return host


def _open_sinks(cfg: Config, run_dir: RunDir, trainer: RunLoop) -> list[Any]:
    """Where the run's rows go besides ``metrics.csv``: the progress bar, and TensorBoard and W&B when asked."""
    sinks: list[Any] = [ProgressDisplay(cfg, cfg.progress, trainer.progress)]
    if cfg.tensorboard:
        sinks.append(TensorBoardSink(run_dir.path / "tb"))
    if cfg.wandb:
        sinks.append(WandbSink(cfg, run_dir.path / "wandb"))
    return sinks


def _resume_hint(run_dir: RunDir, signum: int, env_steps: int) -> str:
    return (f"interrupted by {signal.Signals(signum).name} at env step {env_steps:,}; resume with "
            f"pql train resume={run_dir.path} (pql ablate resumes it by itself)")


def train(overrides: dict[str, Any]) -> RunDir:
    """Resolve ``overrides`` (dotted keys) into a config and train it."""
    return run_training(resolve(overrides))
