"""The ``slurm`` launcher: one submitit job array per study, GPU model and number of GPUs, each task a
checkpointable :class:`~pql.ablate.job.CellJob` that requeues on preemption, settings from a cluster
profile (:class:`ClusterProfile`). A task asks for the GPUs its cell needs (:func:`pql.devices.gpus_needed`):
none for a CPU cell. The SLURM launcher records the job id in each run's ``status.json`` (``queued``) and
lets the job take the run's lock when it starts."""

from __future__ import annotations

import os
import shutil
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pql.ablate.launchers import Launcher
from pql.ablate.matrix import Cell
from pql.config import Config, ConfigError, read_yaml_mapping
from pql.devices import gpus_needed
from pql.store.locks import FileLock
from pql.store.run_dir import RunDir


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
        """The profile in the YAML file ``path``; ConfigError naming the file and any unknown key."""
        path = Path(path)
        data = read_yaml_mapping(path, f"--cluster {path}", "cluster keys")
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"{path}: unknown cluster key(s) {', '.join(sorted(unknown))}; known: "
                              f"{', '.join(sorted(known))}")
        for model, rule in (data.get("gpu_models") or {}).items():
            if not set(rule) <= {"gres", "constraint"}:
                raise ConfigError(f"{path}: gpu_models.{model} may set only gres and constraint")
        least = data.get("gpus_per_node")
        if least is not None and (isinstance(least, bool) or not isinstance(least, int) or least < 1):
            raise ConfigError(f"{path}: gpus_per_node must be null or an integer >= 1 (the least number of GPUs "
                              f"a cell that uses GPUs asks for), got {least!r}")
        return cls(**data)

    @classmethod
    def default_for(cls, spec: str | Path) -> tuple[ClusterProfile, str]:
        """The profile ``clusters/default.yaml`` beside the spec (or, where there is none, the built-in
        defaults), and where it came from: ``pql ablate`` works from any directory."""
        path = Path(spec).resolve().parent / "clusters" / "default.yaml"
        if path.is_file():
            return cls.load(path), str(path)
        return cls(), "built-in defaults (no clusters/default.yaml beside the spec)"

    def gpus(self, needed: int) -> int:
        """GPUs a task asks for when its cell needs ``needed``: none for a CPU cell (0), else ``needed`` or
        ``gpus_per_node`` where that is more (the profile's key is a floor for GPU cells, never a GPU for a
        CPU cell)."""
        return 0 if needed == 0 else max(needed, self.gpus_per_node or 0)

    def parameters(self, gpu_model: str | None, gpus: int | None = None) -> dict[str, Any]:
        """submitit ``SlurmExecutor.update_parameters`` arguments for tasks that ask for ``gpu_model`` and
        need ``gpus`` GPUs (:func:`pql.devices.gpus_needed`; None: none, and at least one with a model)."""
        params: dict[str, Any] = {"time": self.timeout_min, "array_parallelism": self.array_parallelism,
                                  "cpus_per_task": self.cpus_per_task, "ntasks_per_node": 1, "nodes": 1}
        if self.partition:
            params["partition"] = self.partition
        if self.mem_gb is not None:
            params["mem"] = f"{self.mem_gb:g}GB"
        count = self.gpus(max(gpus or 0, int(gpu_model is not None)))
        if count:
            params["gpus_per_node"] = count
        if self.setup:
            params["setup"] = list(self.setup)
        extra = dict(self.additional_parameters)
        if gpu_model is not None:
            if gpu_model not in self.gpu_models:
                raise ConfigError(f"gpu_model={gpu_model} has no entry in the cluster profile's gpu_models "
                                  f"(known: {', '.join(self.gpu_models) or 'none'})")
            rule = self.gpu_models[gpu_model]
            if "gres" in rule:
                params["gres"] = gres_with_count(rule["gres"], count)
                params.pop("gpus_per_node", None)
            if "constraint" in rule:
                params["constraint"] = rule["constraint"]
        if extra:
            params["additional_parameters"] = extra
        return params


def gres_with_count(gres: str, count: int) -> str:
    """``gres`` (SLURM's ``name[:type][:count]``, comma-separated) with the count of its ``gpu`` entry set to
    ``count``: ``gpu:rtx4090:1`` for two GPUs is ``gpu:rtx4090:2``; other entries are kept as written."""
    entries = []
    for entry in gres.split(","):
        fields = entry.split(":")
        if fields[0] == "gpu":
            if len(fields) > 1 and fields[-1].isdigit():
                fields = fields[:-1]
            entry = ":".join([*fields, str(count)])
        entries.append(entry)
    return ",".join(entries)


ArrayKey = tuple[str | None, int]  # what one job array asks for: (gpu_model, GPUs per task)


def array_key(cfg: Config) -> ArrayKey:
    """The job array a cell of ``cfg`` goes into: its ``gpu_model`` and the GPUs it needs."""
    return cfg.gpu_model, gpus_needed(cfg)


def array_groups(cells: list[Cell]) -> dict[ArrayKey, list[int]]:
    """Indices of ``cells`` per job array (:func:`array_key`), in order of first appearance."""
    groups: dict[ArrayKey, list[int]] = {}
    for i, cell in enumerate(cells):
        groups.setdefault(array_key(cell.config), []).append(i)
    return groups


def _slurm_executor(folder: Path, preview: bool) -> Any:
    """A submitit SlurmExecutor; ``preview``: one that only renders sbatch scripts, on any machine."""
    try:
        import submitit
    except ImportError as err:
        raise ConfigError("--launcher slurm needs submitit: pip install submitit") from err
    if preview:

        class SbatchPreview(submitit.SlurmExecutor):
            """Never submits, so it needs no ``srun`` on this machine."""

            @classmethod
            def affinity(cls) -> int:
                return 1

        return SbatchPreview(folder=folder)
    missing = [tool for tool in ("sbatch", "srun") if shutil.which(tool) is None]
    if missing:
        raise ConfigError(f"--launcher slurm: {' and '.join(missing)} not found on this machine's PATH; run "
                          "pql ablate on a SLURM login node (preview the scripts here with --dry-run)")
    return submitit.SlurmExecutor(folder=folder)


class SlurmLauncher(Launcher):
    """Submits one job array per study, GPU model and number of GPUs; ``wait`` blocks until every task ended."""

    name = "slurm"

    def __init__(self, profile: ClusterProfile, folder: Path, job_name: str, wait: bool = False,
                 poll_s: float = 2.0) -> None:
        self.profile, self.folder, self.job_name = profile, folder, job_name
        self.wait, self.poll_s = wait, poll_s
        self.jobs: list[Any] = []

    def launch(self, cells: list[Cell], run_paths: list[Path], locks: list[FileLock],
               progress: bool = True) -> list[str]:
        """Submit the cells as job arrays, one per GPU model and GPU count, recording each job id in its run's
        ``status.json`` (``queued``); with ``wait``, wait for them and return their problems."""
        from pql.ablate.job import CellJob

        try:
            for (gpu_model, gpus), indices in array_groups(cells).items():
                paths = [run_paths[i] for i in indices]
                jobs = self.executor(gpu_model, gpus).map_array(CellJob(), [str(p) for p in paths])
                self.jobs.extend(jobs)
                for path, job in zip(paths, jobs, strict=True):  # until the job starts, its run reads as queued
                    RunDir(path, create=False).write_status("queued", slurm_job_id=job.job_id,
                                                            host=socket.gethostname(), pid=os.getpid())
                if progress:
                    print(f"submitted array {jobs[0].job_id.split('_')[0]} ({len(jobs)} tasks"
                          f"{', gpu_model=' + gpu_model if gpu_model else ''}, "
                          f"{self.profile.gpus(gpus)} GPU(s) each)", flush=True)
        finally:
            for lock in locks:  # each job takes its run's lock when it starts
                lock.release()
        return self._wait() if self.wait else []

    def executor(self, gpu_model: str | None, gpus: int | None = None, preview: bool = False) -> Any:
        """A submitit executor configured for the tasks of one GPU model that need ``gpus`` GPUs (see
        :meth:`ClusterProfile.parameters`; ``preview``: never submits)."""
        executor = _slurm_executor(self.folder / "%j", preview)
        executor.update_parameters(job_name=self.job_name, **self.profile.parameters(gpu_model, gpus))
        return executor

    def sbatch_script(self, gpu_model: str | None, num_tasks: int, gpus: int | None = None) -> str:
        """The sbatch script of an array of ``num_tasks`` tasks of ``gpu_model`` needing ``gpus`` GPUs (None:
        none, and at least one with a model), as submitit would write it (submitit's own renderer, so the preview
        cannot drift from what is submitted; submitit is pinned to the 1.5 series in pyproject.toml for
        this, and golden tests watch the output)."""
        from submitit.slurm.slurm import _make_sbatch_string

        slurm = self.executor(gpu_model, gpus, preview=True)
        return _make_sbatch_string(command="python -u -m submitit.core._submit FOLDER", folder=slurm.folder,
                                   **{**slurm.parameters, "map_count": num_tasks})

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
