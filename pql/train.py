"""Run one training job end to end: run directory, status, progress display, failures."""

from __future__ import annotations

import math
import os
import socket
import time
import traceback
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from pql.config import Config, ConfigError, build_config, config_to_dict, dotted_overrides, load_config
from pql.devices import device_name, gpu_mismatch, resolve_devices
from pql.ppo_trainer import PPOTrainer
from pql.run_dir import RunDir
from pql.run_loop import NonFiniteLoss, RunLoop
from pql.trainer import Trainer

# Keys a resumed run may change: they alter the budget or the display, not the experiment.
RESUMABLE_KEYS = {"resume", "max_time_s", "max_env_steps", "progress", "tensorboard", "checkpoint_every_s",
                  "device.sim", "device.v_learner", "device.p_learner"}


class WrongHardware(ConfigError):
    """The run asks for a GPU model this machine does not have."""


def default_out(cfg: Config) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return str(Path("results") / "runs" / f"{cfg.task.replace('/', '-')}-{cfg.algo.name}-s{cfg.seed}-{stamp}")


def resolve(overrides: dict[str, Any]) -> Config:
    """The config of a new run, or of the run named by ``resume=`` with the allowed changes applied."""
    if "resume" not in overrides or overrides["resume"] in (None, "", "null"):
        cfg = build_config(overrides)
        return cfg if cfg.out else replace(cfg, out=default_out(cfg))
    run = Path(str(overrides["resume"]))
    if not (run / "config.yaml").exists():
        raise ConfigError(f"resume={run}: no config.yaml there, so it is not a run directory")
    if not (run / "checkpoint.pt").exists():
        raise ConfigError(f"resume={run}: no checkpoint.pt there to resume from")
    changed = sorted(set(overrides) - RESUMABLE_KEYS)
    if changed:
        raise ConfigError(f"cannot change {', '.join(changed)} when resuming; only {', '.join(sorted(RESUMABLE_KEYS))}")
    saved = dotted_overrides(config_to_dict(load_config(str(run / "config.yaml"))))
    cfg = build_config({**saved, **overrides})
    return replace(cfg, out=str(run), resume=str(run))


class ProgressDisplay:
    """A tqdm bar over the run's budget (time or env steps) showing returns and env-steps/s."""

    def __init__(self, cfg: Config, enabled: bool) -> None:
        self.bar = None
        if not enabled:
            return
        from tqdm import tqdm

        self.by_time = cfg.max_env_steps is None
        total = cfg.max_time_s if self.by_time else cfg.max_env_steps
        unit = "s" if self.by_time else "step"
        layout = "{l_bar}{bar}| {n:.0f}/{total:.0f} {unit} [{elapsed}<{remaining}{postfix}]"
        self.bar = tqdm(total=total, unit=unit, desc=f"{cfg.task} {cfg.algo.name}", dynamic_ncols=True,
                        bar_format=layout)

    def __call__(self, row: dict[str, float]) -> None:
        if self.bar is None:
            return
        self.bar.n = row["wall_s"] if self.by_time else row["env_steps"]
        fmt = lambda x: "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.1f}"  # noqa: E731
        self.bar.set_postfix_str(f"eval {fmt(row['eval_return'])} train {fmt(row['train_return'])} "
                                 f"{row['env_steps_per_s'] or 0:,.0f} env-steps/s", refresh=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class TensorBoardSink:
    """Writes every metrics row as scalars against env steps, to RUN_DIR/tb."""

    def __init__(self, path: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:
            raise ConfigError("tensorboard=true needs the tensorboard package: pip install tensorboard") from err
        self.writer = SummaryWriter(str(path))

    def __call__(self, row: dict[str, float]) -> None:
        for key, value in row.items():
            if key != "env_steps" and isinstance(value, (int, float)) and not math.isnan(value):
                self.writer.add_scalar(key, value, int(row["env_steps"]))
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def run_training(cfg: Config, on_start: Callable[[RunLoop], None] | None = None) -> RunDir:
    """Train ``cfg`` (new or resumed) in its run directory; the directory's status tells how it ended.

    Raises the run's error after recording it in ``status.json``. ``on_start`` receives the
    trainer before training begins (a scheduler's preemption handler uses it to checkpoint).
    """
    assert cfg.out is not None
    mismatch = gpu_mismatch(cfg.gpu_model, resolve_devices(cfg))
    if mismatch is not None:
        raise WrongHardware(mismatch)
    run_dir = RunDir(cfg.out)
    sinks: list[Any] = [ProgressDisplay(cfg, cfg.progress)]
    if cfg.tensorboard:
        sinks.append(TensorBoardSink(run_dir.path / "tb"))

    def on_row(row: dict[str, float]) -> None:
        for sink in sinks:
            sink(row)

    trainer = (PPOTrainer if cfg.algo.name == "ppo" else Trainer)(cfg, run_dir, on_row=on_row)
    if cfg.resume:
        state = run_dir.load_checkpoint()
        trainer.load_state_dict(state)
        run_dir.truncate_metrics(state["progress"]["env_steps"])
    else:
        run_dir.write_config(config_to_dict(cfg))
    host = {"host": socket.gethostname(), "pid": os.getpid(), "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
            "devices": {name: device_name(d) for name, d in zip(("sim", "v_learner", "p_learner"), trainer.devices,
                                                                   strict=True)}}
    run_dir.write_status("running", env_steps=trainer.progress.env_steps, **host)
    if on_start is not None:
        on_start(trainer)
    try:
        progress = trainer.run()
    except NonFiniteLoss as err:
        run_dir.write_status("failed", error=str(err), env_steps=err.env_steps, losses=err.losses, **host)
        raise
    except SystemExit:  # a scheduler's preemption/timeout handler checkpointed and exits for a requeue
        run_dir.write_status("running", note="exited for a requeue; resumes from its checkpoint",
                             env_steps=trainer.progress.env_steps, **host)
        raise
    except KeyboardInterrupt:
        trainer.checkpoint()
        run_dir.write_status("failed", error="interrupted; resume with pql train resume=" + str(run_dir.path),
                             env_steps=trainer.progress.env_steps, **host)
        raise
    except BaseException as err:
        run_dir.write_status("failed", error=f"{type(err).__name__}: {err}", traceback=traceback.format_exc(),
                             env_steps=trainer.progress.env_steps, **host)
        raise
    finally:
        for sink in sinks:
            sink.close()
    run_dir.write_status("done", env_steps=progress.env_steps, wall_s=round(progress.wall_s, 3),
                         losses=progress.losses, **host)
    return run_dir


def train(overrides: dict[str, Any]) -> RunDir:
    """Resolve ``overrides`` (dotted keys) into a config and train it."""
    return run_training(resolve(overrides))
