"""What a launched job runs: one cell's training, resumed from its checkpoint when one exists.

``run_cell`` is the whole job for the local and debug launchers; on SLURM it runs
inside :class:`CellJob`, whose ``checkpoint`` (called by submitit on preemption
or timeout) saves the live trainer's state and asks for a requeue.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

from pql.config import ConfigError
from pql.interrupt import RunInterrupted
from pql.locks import locked_run
from pql.preload import preload_simulator

CELL_FILE = "cell.json"  # the cell's overrides, in its run directory; this module imports torch only in a job
_live: dict[str, Any] = {}  # the running trainer (a pql.run_loop.RunLoop), for checkpoint()
LAUNCHER_PID = "PQL_LAUNCHER_PID"  # set by the local launcher for its jobs
PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def cell_overrides(run: Path) -> dict[str, Any]:
    """The overrides that (re)start the cell in ``run``: resume if it holds a checkpoint that loads,
    else a fresh run. A checkpoint that does not load is set aside (``checkpoint.pt.corrupt-TIME``)
    with the run's other files, and the cell starts afresh."""
    from pql.run_dir import CheckpointError, RunDir

    run_dir = RunDir(run, create=False)
    if run_dir.checkpoint_path.exists() and (run / "config.yaml").exists():
        try:
            run_dir.load_checkpoint()
            return {"resume": str(run), "progress": "false"}
        except CheckpointError as err:
            aside = run_dir.set_checkpoint_aside()
            for name in ("metrics.csv", "status.json", "config.yaml"):
                (run / name).unlink(missing_ok=True)
            print(f"pql: {err}; set aside as {aside.name}, the cell starts afresh", file=sys.stderr, flush=True)
    cell = json.loads((run / CELL_FILE).read_text())
    return {**cell["overrides"], "out": str(run), "progress": "false"}


def run_cell(run_path: str) -> dict[str, Any]:
    """Train the cell whose ``cell.json`` is in ``run_path``, holding its run directory's lock;
    returns its final ``status.json``. RunLocked if another process has the cell."""
    run = Path(run_path)
    with locked_run(run):
        preload_simulator(json.loads((run / CELL_FILE).read_text())["overrides"].get("task", ""))
        from pql.train import resolve, run_training

        run_training(resolve(cell_overrides(run)), on_start=lambda trainer: _live.__setitem__("trainer", trainer))
        return json.loads((run / "status.json").read_text())


try:
    from submitit.helpers import Checkpointable, DelayedSubmission
except ImportError:  # submitit is needed only by the SLURM launcher
    Checkpointable = object  # type: ignore[assignment,misc]


class CellJob(Checkpointable):  # type: ignore[misc,valid-type]
    """A submitit job for one cell that checkpoints and requeues itself when preempted."""

    def __call__(self, run_path: str) -> dict[str, Any]:
        return run_cell(run_path)

    def checkpoint(self, run_path: str) -> DelayedSubmission:
        trainer = _live.get("trainer")
        if trainer is not None:
            trainer.checkpoint()
        return DelayedSubmission(self, run_path)


def _stop_with_launcher() -> None:
    """Ask Linux for a SIGTERM when the launching ``pql ablate`` dies, even by ``kill -9``: the run then
    checkpoints and stops as ``interrupted``, and is not left running unwatched."""
    launcher = os.environ.get(LAUNCHER_PID, "")
    if not sys.platform.startswith("linux") or not launcher.isdigit():
        return
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != int(launcher):  # it died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)


if __name__ == "__main__":  # the local launcher's subprocess: python -m pql.ablate.job RUN_DIR
    _stop_with_launcher()
    try:
        run_cell(sys.argv[1])
    except RunInterrupted as err:  # checkpointed, state interrupted: the launcher's next run resumes it
        print(f"pql: {err}", file=sys.stderr)
        sys.exit(err.exit_code)
    except ConfigError as err:
        print(f"pql: error: {err}", file=sys.stderr)
        sys.exit(2)
    except Exception as err:  # noqa: BLE001 - the run's status.json holds the traceback
        print(f"run failed: {type(err).__name__}: {err}", file=sys.stderr)
        sys.exit(1)
