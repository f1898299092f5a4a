"""Launchers: where a study's cells run. One interface, three back-ends.

- ``local``: a bounded pool of ``python -m pql.ablate.job RUN_DIR`` processes.
- ``debug``: in this process, one after another (for pdb and tracebacks).
- ``slurm``: one submitit job array per study and GPU model, each task a
  checkpointable :class:`~pql.ablate.job.CellJob` that requeues on preemption.
"""

from __future__ import annotations

import abc
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pql.ablate.spec import Cell
from pql.config import ConfigError


class Launcher(abc.ABC):
    """Runs prepared cells (their run directories hold ``cell.json``)."""

    name: str

    @abc.abstractmethod
    def launch(self, cells: list[Cell], run_paths: list[Path], progress: bool = True) -> list[str]:
        """Run or submit the cells; returns one line per problem the launcher itself hit."""


class DebugLauncher(Launcher):
    """Runs every cell in this process, one after another."""

    name = "debug"

    def launch(self, cells: list[Cell], run_paths: list[Path], progress: bool = True) -> list[str]:
        from pql.ablate.job import run_cell

        problems = []
        for cell, path in zip(cells, run_paths, strict=True):
            try:
                run_cell(str(path))
            except Exception as err:  # noqa: BLE001 - recorded in the run's status.json, reported by the caller
                problems.append(f"{cell.run_id} ({cell.label}, seed {cell.seed}): {type(err).__name__}: {err}")
        return problems


class LocalLauncher(Launcher):
    """At most ``jobs`` training processes at once on this machine; logs go to RUN_DIR/train.log.

    Each process gets ``cpus // jobs`` torch threads: oversubscribed cores make torch's
    thread pools spin against each other and slow every run by an order of magnitude.
    """

    name = "local"

    def __init__(self, jobs: int = 1) -> None:
        if jobs < 1:
            raise ConfigError(f"--jobs must be >= 1, got {jobs}")
        self.jobs = jobs

    def launch(self, cells: list[Cell], run_paths: list[Path], progress: bool = True) -> list[str]:
        from tqdm import tqdm

        threads = max(1, (os.cpu_count() or 1) // self.jobs)
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        queue = list(zip(cells, run_paths, strict=True))
        running: list[tuple[Cell, subprocess.Popen[bytes], Any]] = []
        problems: list[str] = []
        bar = tqdm(total=len(queue), unit="run", desc="cells", disable=not progress, dynamic_ncols=True)
        try:
            while queue or running:
                while queue and len(running) < self.jobs:
                    cell, path = queue.pop(0)
                    log = open(path / "train.log", "ab")
                    proc = subprocess.Popen([sys.executable, "-m", "pql.ablate.job", str(path)], stdout=log,
                                            stderr=subprocess.STDOUT, env=env)
                    running.append((cell, proc, log))
                time.sleep(0.2)
                for item in list(running):
                    cell, proc, log = item
                    if proc.poll() is None:
                        continue
                    log.close()
                    running.remove(item)
                    bar.update(1)
                    if proc.returncode != 0:
                        problems.append(f"{cell.run_id} ({cell.label}, seed {cell.seed}): exit code {proc.returncode}")
                    now = ", ".join(f"{c.label} s{c.seed}" for c, _, _ in running)
                    bar.set_postfix_str(f"failed {len(problems)}" + (f"; running {now}" if now else ""))
        except KeyboardInterrupt:
            for _, proc, _ in running:
                proc.send_signal(2)  # SIGINT: each run checkpoints and can be resumed by a rerun
            for _, proc, log in running:
                proc.wait(timeout=60)
                log.close()
            raise
        finally:
            bar.close()
        return problems


@dataclass(frozen=True)
class ClusterProfile:
    """SLURM settings of one cluster (a YAML file such as ``ablations/clusters/default.yaml``)."""

    partition: str | None = None
    timeout_min: int = 60
    array_parallelism: int = 16
    cpus_per_task: int = 2
    mem_gb: float | None = None
    gpus_per_node: int | None = None
    setup: list[str] = field(default_factory=list)
    gpu_models: dict[str, dict[str, str]] = field(default_factory=dict)
    additional_parameters: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | Path) -> ClusterProfile:
        data = yaml.safe_load(Path(path).read_text()) or {}
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"{path}: unknown cluster key(s) {', '.join(sorted(unknown))}; known: "
                              f"{', '.join(sorted(known))}")
        for model, rule in (data.get("gpu_models") or {}).items():
            if not set(rule) <= {"gres", "constraint"}:
                raise ConfigError(f"{path}: gpu_models.{model} may set only gres and constraint")
        return cls(**data)

    def parameters(self, gpu_model: str | None) -> dict[str, Any]:
        """submitit ``update_parameters`` arguments for tasks that ask for ``gpu_model``."""
        params: dict[str, Any] = {"timeout_min": self.timeout_min, "slurm_array_parallelism": self.array_parallelism,
                                  "cpus_per_task": self.cpus_per_task, "tasks_per_node": 1, "nodes": 1}
        if self.partition:
            params["slurm_partition"] = self.partition
        if self.mem_gb is not None:
            params["mem_gb"] = self.mem_gb
        if self.gpus_per_node is not None:
            params["gpus_per_node"] = self.gpus_per_node
        if self.setup:
            params["slurm_setup"] = list(self.setup)
        extra = dict(self.additional_parameters)
        if gpu_model is not None:
            if gpu_model not in self.gpu_models:
                raise ConfigError(f"gpu_model={gpu_model} has no entry in the cluster profile's gpu_models "
                                  f"(known: {', '.join(self.gpu_models) or 'none'})")
            rule = self.gpu_models[gpu_model]
            if "gres" in rule:
                params["slurm_gres"] = rule["gres"]
                params.pop("gpus_per_node", None)
            if "constraint" in rule:
                params["slurm_constraint"] = rule["constraint"]
        if extra:
            params["slurm_additional_parameters"] = extra
        return params


class SlurmLauncher(Launcher):
    """Submits one job array per study and GPU model; ``wait`` blocks until every task ended."""

    name = "slurm"

    def __init__(self, profile: ClusterProfile, folder: Path, job_name: str, wait: bool = False,
                 poll_s: float = 2.0) -> None:
        self.profile, self.folder, self.job_name = profile, folder, job_name
        self.wait, self.poll_s = wait, poll_s
        self.jobs: list[Any] = []

    def launch(self, cells: list[Cell], run_paths: list[Path], progress: bool = True) -> list[str]:
        from pql.ablate.job import CellJob

        groups: dict[str | None, list[Path]] = {}
        for cell, path in zip(cells, run_paths, strict=True):
            groups.setdefault(cell.config.gpu_model, []).append(path)
        for gpu_model, paths in groups.items():
            jobs = self.executor(gpu_model).map_array(CellJob(), [str(p) for p in paths])
            self.jobs.extend(jobs)
            if progress:
                print(f"submitted array {jobs[0].job_id.split('_')[0]} ({len(jobs)} tasks"
                      f"{', gpu_model=' + gpu_model if gpu_model else ''})", flush=True)
        return self._wait() if self.wait else []

    def executor(self, gpu_model: str | None) -> Any:
        """A submitit executor configured for the tasks of one GPU model."""
        try:
            import submitit
        except ImportError as err:
            raise ConfigError("--launcher slurm needs submitit: pip install submitit") from err
        executor = submitit.AutoExecutor(folder=self.folder / "%j", cluster="slurm")
        executor.update_parameters(name=self.job_name, **self.profile.parameters(gpu_model))
        return executor

    def sbatch_script(self, gpu_model: str | None, num_tasks: int) -> str:
        """The sbatch script submitit writes for an array of ``num_tasks`` tasks of ``gpu_model``."""
        slurm = self.executor(gpu_model)._executor
        params = {**slurm.parameters, "map_count": num_tasks}
        from submitit.slurm.slurm import _make_sbatch_string

        return _make_sbatch_string(command="python -u -m submitit.core._submit FOLDER", folder=slurm.folder,
                                   **params)

    def _wait(self) -> list[str]:
        problems = []
        while not all(job.done(force_check=True) for job in self.jobs):
            time.sleep(self.poll_s)
        for job in self.jobs:
            try:
                job.result()
            except Exception as err:  # noqa: BLE001 - FailedJobError carries the remote traceback
                problems.append(f"job {job.job_id}: {err}")
        return problems
