"""What a launched job runs: one cell's training, resumed from its checkpoint when one exists.

``run_cell`` is the whole job for the local and debug launchers; on SLURM it runs
inside :class:`CellJob`, whose ``checkpoint`` (called by submitit on preemption
or timeout) saves the live trainer's state and asks for a requeue.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from types import FrameType
from typing import Any

from pql.config import Config, ConfigError, config_from_dict
from pql.preload import preload_simulator
from pql.resolve import apply_overrides
from pql.store.locks import locked_run
from pql.store.run_dir import CELL, RunDir
from pql.training.failures import failure_recorded
from pql.training.interrupt import RunInterrupted

_live: dict[str, Any] = {}  # the running trainer (a pql.training.loop.RunLoop), for checkpoint()
LAUNCHER_PID = "PQL_LAUNCHER_PID"  # set by the local launcher for its jobs
PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def cell_config(run_dir: RunDir) -> Config:
    """What the cell in ``run_dir`` runs: its run resumed from the checkpoint where one loads (see
    :meth:`RunDir.resumable`), else exactly the resolved config ``pql ablate`` wrote to ``cell.json``
    (the one its run id hashes), with no presets or defaults applied again."""
    where = {"out": str(run_dir.path), "progress": "false"}
    if run_dir.resumable():
        return apply_overrides(run_dir.read_config(), {**where, "resume": str(run_dir.path)})
    return apply_overrides(config_from_dict(run_dir.read_cell()["config"], str(run_dir.path / CELL)), where)


def run_cell(run_path: str) -> dict[str, Any]:
    """Train the cell whose ``cell.json`` is in ``run_path``, holding its run directory's lock;
    returns its final ``status.json``. RunLocked if another process has the cell; a failure before
    training (its config no longer validates, ...) is recorded as ``failed`` too."""
    run_dir = RunDir(run_path, create=False)
    with locked_run(run_dir.path), failure_recorded(run_dir.path):
        preload_simulator(run_dir.read_cell()["config"]["task"])
        from pql.training.run import run_training

        run_training(cell_config(run_dir), on_start=lambda trainer: _live.__setitem__("trainer", trainer))
        return run_dir.read_status()


try:
    from submitit.helpers import Checkpointable, DelayedSubmission
except ImportError:  # submitit is needed only by the SLURM launcher
    Checkpointable = object  # type: ignore[assignment,misc]


class CellJob(Checkpointable):  # type: ignore[misc,valid-type]
    """A submitit job for one cell that checkpoints and requeues itself when preempted."""

    def __call__(self, run_path: str) -> dict[str, Any]:
        """Run the cell (submitit calls this in the SLURM task)."""
        return run_cell(run_path)

    def checkpoint(self, run_path: str) -> DelayedSubmission:
        """On preemption or timeout: checkpoint the live run and requeue this job with the same cell."""
        trainer = _live.get("trainer")
        if trainer is not None:
            trainer.checkpoint()
        return DelayedSubmission(self, run_path)


def _stop_with_launcher() -> None:
    """Stop this job once when the launching ``pql ablate`` dies, even by ``kill -9``: the run then
    checkpoints and stops as ``interrupted``, and is not left running unwatched.

    Linux sends the parent-death signal each time the job is handed to another thread of the dying
    launcher, so a launcher with N threads can deliver it N times, and a second SIGTERM would stop the
    run at once, without its checkpoint. So the parent-death signal is SIGHUP (the job has no terminal
    of its own, so nothing else sends it), and its first delivery turns into exactly one SIGTERM."""
    launcher = os.environ.get(LAUNCHER_PID, "")
    if not sys.platform.startswith("linux") or not launcher.isdigit():
        return
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    died = False

    def launcher_died(signum: int, frame: FrameType | None) -> None:
        nonlocal died
        if not died:
            died = True
            prctl(PR_SET_PDEATHSIG, 0)
            os.kill(os.getpid(), signal.SIGTERM)

    signal.signal(signal.SIGHUP, launcher_died)
    prctl(PR_SET_PDEATHSIG, signal.SIGHUP)
    if os.getppid() != int(launcher):  # it died before the request took effect
        launcher_died(signal.SIGHUP, None)


def _job_main(run_path: str) -> int:
    """The local launcher's job: the cell trained; its exit code (128 + signal: interrupted, checkpointed)."""
    _stop_with_launcher()
    try:
        run_cell(run_path)
    except RunInterrupted as err:  # checkpointed, state interrupted: the launcher's next run resumes it
        print(f"pql: {err}", file=sys.stderr)
        return err.exit_code
    except ConfigError as err:
        print(f"pql: error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # noqa: BLE001 - the run's status.json holds the traceback
        print(f"run failed: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # the local launcher's subprocess: python -m pql.ablate.job RUN_DIR
    from pql.exiting import end_process

    end_process(_job_main(sys.argv[1]))
