"""Launchers: where a study's cells run. One interface, three back-ends (``slurm`` in
:mod:`pql.ablate.slurm_launcher`).

- ``local``: a bounded pool of ``python -m pql.ablate.job RUN_DIR`` processes, all but the first few
  forked warm from a server that imported torch once (:mod:`pql.ablate.warm_start`).
- ``debug``: in this process, one after another (for pdb and tracebacks).
- ``slurm``: one submitit job array per study, GPU model and number of GPUs, each task a
  checkpointable :class:`~pql.ablate.job.CellJob` that requeues on preemption. A task asks for
  the GPUs its cell needs (:func:`pql.devices.gpus_needed`): none for a CPU cell.

Each cell arrives with the lock of its run directory, taken by ``pql ablate`` when it
decided to run the cell: the local launcher hands it to the child process, the debug
launcher keeps it while the cell runs, the SLURM launcher records the job id in the run's
``status.json`` (``queued``) and lets the job take the lock when it starts.
"""

from __future__ import annotations

import abc
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from pql.ablate.gpu_share import GpuShare
from pql.ablate.job import LAUNCHER_PID
from pql.ablate.matrix import Cell
from pql.ablate.warm_start import WarmProcess, WarmStarter
from pql.config import ConfigError
from pql.store.locks import INHERITED_FD, FileLock
from pql.training.interrupt import RunInterrupted, StopSignals
from pql.training.placement import core_budget

STOP_GRACE_S = 120.0  # how long an interrupted launcher waits for its runs to checkpoint before killing them
# all that a job imports before its simulator (Isaac Gym must come before torch, JAX starts threads: see _warm)
JOB_PRELOAD = ("torch", "torch._dynamo", "pql.training.run", "pql.ablate.job")


class Launcher(abc.ABC):
    """Runs prepared cells (their run directories hold ``cell.json``)."""

    name: str

    @abc.abstractmethod
    def launch(self, cells: list[Cell], run_paths: list[Path], locks: list[FileLock],
               progress: bool = True) -> list[str]:
        """Run or submit the cells, each with its run directory's lock held by this process (released
        here once the run no longer needs it); returns one line per problem the launcher hit.
        Raises RunInterrupted when a signal stopped it, after its runs checkpointed."""


Job = subprocess.Popen[bytes] | WarmProcess  # a running cell: started cold, or forked warm


def _warm(cell: Cell) -> bool:
    """Whether the cell's job may fork from the warm-start server: not when its simulator must be imported
    before torch (Isaac Gym) or starts threads of its own (JAX: MuJoCo Playground)."""
    return not cell.config.task.startswith(("isaacgym/", "playground/"))


def cell_name(cell: Cell) -> str:
    """How a problem line names a cell: run id, label and seed."""
    return f"{cell.run_id} ({cell.label}, seed {cell.seed})"


class DebugLauncher(Launcher):
    """Runs every cell in this process, one after another."""

    name = "debug"

    def launch(self, cells: list[Cell], run_paths: list[Path], locks: list[FileLock],
               progress: bool = True) -> list[str]:
        """Run each cell here in turn; a cell's failure is recorded and the next one runs."""
        from pql.ablate.job import run_cell

        problems = []
        for cell, path, lock in zip(cells, run_paths, locks, strict=True):
            try:
                run_cell(str(path))
            except Exception as err:  # noqa: BLE001 - recorded in the run's status.json, reported by the caller
                problems.append(f"{cell_name(cell)}: {type(err).__name__}: {err}")
            finally:
                lock.release()
        return problems


def job_threads(jobs: int) -> int:
    """Torch threads for each of ``jobs`` runs at once: the CPUs this process may use (its affinity, or
    ``OMP_NUM_THREADS`` where that says fewer) split between them, at least one."""
    return max(1, core_budget()[1] // jobs)


class LocalLauncher(Launcher):
    """At most ``jobs`` training processes at once on this machine; logs go to RUN_DIR/train.log.

    Each process gets ``cpus // jobs`` torch threads, cpus being those this process may run on (its CPU
    affinity: taskset, a cgroup, SLURM's allocation), or ``OMP_NUM_THREADS`` where it says fewer:
    oversubscribed cores make torch's thread pools spin against each other and slow every run by an order
    of magnitude.
    The cells after the first ``jobs`` fork from a warm-start server (their parent, which dies with
    this launcher) instead of importing torch again.
    """

    name = "local"

    def __init__(self, jobs: int = 1) -> None:
        if jobs < 1:
            raise ConfigError(f"--jobs must be >= 1, got {jobs}")
        self.jobs = jobs
        self._starter: WarmStarter | None = None

    def launch(self, cells: list[Cell], run_paths: list[Path], locks: list[FileLock],
               progress: bool = True) -> list[str]:
        """Run the cells as child processes, ``jobs`` at a time, with a progress bar; SIGINT / SIGTERM stop
        them (they checkpoint) and raise RunInterrupted."""
        from tqdm import tqdm

        threads = job_threads(self.jobs)
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        try:
            gpus = GpuShare(cells, self.jobs, env)
        except ConfigError:
            for lock in locks:
                lock.release()
            raise
        given: dict[int, dict[str, str]] = {}  # a running job's id -> the GPUs it was given
        queue = list(zip(cells, run_paths, locks, strict=True))
        running: list[tuple[Cell, Job, FileLock]] = []
        problems: list[str] = []
        bar = tqdm(total=len(queue), unit="run", desc="cells", disable=not progress, dynamic_ncols=True)
        # more cells than jobs: a server imports torch while the first ones start cold, the others fork from it
        self._starter = WarmStarter(JOB_PRELOAD, env) if any(_warm(c) for c in cells[self.jobs:]) else None
        try:
            with StopSignals():  # SIGINT / SIGTERM here: stop the runs (they checkpoint), then re-raise
                while queue or running:
                    while queue and len(running) < self.jobs:
                        cell, path, lock = queue.pop(0)
                        warm = len(queue) < len(cells) - self.jobs and _warm(cell)
                        mine = gpus.take(cell)
                        running.append((cell, job := self._start(path, lock, {**env, **mine}, warm), lock))
                        given[id(job)] = mine
                    time.sleep(0.2)
                    for item in list(running):
                        if item[1].poll() is None:
                            continue
                        self._ended(item, problems)
                        gpus.give_back(given.pop(id(item[1])))
                        running.remove(item)
                        bar.update(1)
                        now = ", ".join(f"{c.label} s{c.seed}" for c, _, _ in running)
                        bar.set_postfix_str(f"failed {len(problems)}" + (f"; running {now}" if now else ""))
        except RunInterrupted as err:
            self._stop(running, err.signum, problems)
            for _, _, lock in queue:
                lock.release()
            for line in problems:
                print(f"pql: {line}", file=sys.stderr)
            raise RunInterrupted(err.signum, f"interrupted by {err.signal_name}: {len(running)} running cell(s) "
                                             "checkpointed and stopped; the same pql ablate resumes them") from None
        finally:
            bar.close()
            if self._starter is not None:
                self._starter.close()
                self._starter = None
        return problems

    def _start(self, path: Path, lock: FileLock, env: dict[str, str], warm: bool) -> Job:
        """The cell's job in its own session (a terminal's Ctrl-C reaches only this launcher, which
        passes it on once), inheriting the run directory's locked descriptor; it gets SIGTERM if its
        parent (this launcher, or the warm-start server that dies with it) dies."""
        assert lock.fd is not None
        with open(path / "train.log", "ab") as log:
            if warm and self._starter is not None:
                try:
                    return self._starter.popen("pql.ablate.job", str(path), stdout=log, stderr=subprocess.STDOUT,
                                               env={**env, INHERITED_FD: str(lock.fd),
                                                    LAUNCHER_PID: str(self._starter.server.pid)},
                                               pass_fds=(lock.fd,), start_new_session=True)
                except OSError as err:
                    print(f"pql: warning: the next cells start cold ({err})", file=sys.stderr)
                    self._starter.close()
                    self._starter = None
            return subprocess.Popen([sys.executable, "-m", "pql.ablate.job", str(path)], stdout=log,
                                    stderr=subprocess.STDOUT,
                                    env={**env, INHERITED_FD: str(lock.fd), LAUNCHER_PID: str(os.getpid())},
                                    pass_fds=(lock.fd,), start_new_session=True)

    @staticmethod
    def _ended(item: tuple[Cell, Job, FileLock], problems: list[str]) -> None:
        cell, proc, lock = item
        lock.release()
        code = proc.returncode
        if code in (128 + signal.SIGINT, 128 + signal.SIGTERM):
            problems.append(f"{cell_name(cell)}: interrupted by {signal.Signals(code - 128).name}; "
                            "the next pql ablate resumes it")
        elif code != 0:
            problems.append(f"{cell_name(cell)}: exit code {code} (its train.log and status.json say why)")

    @staticmethod
    def _stop(running: list[tuple[Cell, Job, FileLock]], signum: int,
              problems: list[str]) -> None:
        """Pass ``signum`` to every running job once and wait for them to checkpoint and exit; a job
        still running after STOP_GRACE_S, or when a second signal comes, is killed."""
        for _, proc, _ in running:
            proc.send_signal(signum)
        deadline = time.monotonic() + STOP_GRACE_S
        try:
            with StopSignals():
                for _, proc, _ in running:
                    try:
                        proc.wait(timeout=max(0.1, deadline - time.monotonic()))
                    except subprocess.TimeoutExpired:
                        proc.kill()
        except RunInterrupted:
            for _, proc, _ in running:
                proc.kill()
        for item in running:
            item[1].wait()
            LocalLauncher._ended(item, problems)
