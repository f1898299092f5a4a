"""The run directory: resolved config, metrics rows, status and checkpoint, all written safely.

Every file is written whole to a temporary name and renamed (atomic on POSIX), and
each metrics row is flushed and fsynced, so a crash or ``kill -9`` loses at most
the row being written and never leaves a half-written status or checkpoint. A write
that fails (a full disk, a file size limit) removes its temporary file.

This module imports torch only to save or load a checkpoint: a study's job reads its run
directory before it loads a simulator that must come before torch (Isaac Gym).

Checkpoints hold only tensors, numbers, strings and containers of them, and are read
with ``weights_only=True``: a crafted ``checkpoint.pt`` cannot run code when loaded.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from pql.config import Config, ConfigError, config_to_dict, load_config

if TYPE_CHECKING:
    import torch

METRIC_COLUMNS = ("env_steps", "wall_s", "train_return", "eval_return", "critic_loss", "actor_loss",
                  "actor_steps", "v_updates", "p_updates", "env_steps_per_s", "collect_s", "learn_s",
                  "edge_mass")
# The columns every metrics.csv has; a file with more (or, from an older version, fewer of the rest) is valid.
REQUIRED_METRIC_COLUMNS = METRIC_COLUMNS[:4]
# The files of a run, by name.
CONFIG, METRICS, STATUS, CHECKPOINT, MANIFEST = "config.yaml", "metrics.csv", "status.json", "checkpoint.pt", \
    "manifest.json"
CELL = "cell.json"  # a study's cell: its resolved config, written by pql ablate for the job to run
RESULT_FILES = (METRICS, STATUS, CONFIG, CHECKPOINT, MANIFEST)
STATES = ("running", "done", "failed", "interrupted", "queued")


class CheckpointError(ConfigError):
    """A checkpoint that cannot be loaded: truncated, not a checkpoint, or holding code."""


def atomic_write(path: Path, data: bytes | memoryview) -> None:
    """Write ``data`` to ``path`` via a temporary file and a rename; on any failure the temporary file
    is removed and ``path`` is left as it was."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):  # the original error is the one to report
            tmp.unlink()
        raise


MANIFEST_SCHEMA = 1


class RunDir:
    """Files of one run under ``path``, and the decision whether it starts afresh or resumes."""

    def __init__(self, path: str | Path, create: bool = True) -> None:
        self.path = Path(path)
        if create:
            try:
                self.path.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise ConfigError(f"cannot create the run directory {self.path}: {err.strerror}") from err

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS

    @property
    def checkpoint_path(self) -> Path:
        return self.path / CHECKPOINT

    @property
    def config_path(self) -> Path:
        return self.path / CONFIG

    def write_config(self, cfg: Config) -> None:
        """``config.yaml``: the resolved config, every key."""
        atomic_write(self.config_path, yaml.safe_dump(config_to_dict(cfg), sort_keys=False).encode())

    def read_config(self) -> Config:
        """The run's ``config.yaml`` (ConfigError naming the file if it is missing or not a config)."""
        return load_config(str(self.config_path))

    def write_cell(self, body: dict[str, Any]) -> None:
        """``cell.json``: a study cell's identity and resolved config (``config``), for the job to run as is."""
        atomic_write(self.path / CELL, json.dumps(body, indent=2, default=str).encode())

    def read_cell(self) -> dict[str, Any]:
        return json.loads((self.path / CELL).read_text())

    def resumable(self) -> bool:
        """Whether the run continues from its checkpoint: one is there with its config and loads. A
        checkpoint that does not load is set aside (``checkpoint.pt.corrupt-TIME``) with the run's
        other results removed, so the run starts afresh; the reason goes to stderr."""
        if not (self.checkpoint_path.exists() and self.config_path.exists()):
            return False
        try:
            self.load_checkpoint()
            return True
        except CheckpointError as err:
            aside = self.set_checkpoint_aside()
            self.start_fresh()
            print(f"pql: {err}; set aside as {aside.name}, the run starts afresh", file=sys.stderr, flush=True)
            return False

    def start_fresh(self) -> None:
        """Remove the run's results (metrics, status, config, checkpoint, manifest); other files stay."""
        for name in RESULT_FILES:
            (self.path / name).unlink(missing_ok=True)

    def set_aside(self, why: str, keep: tuple[str, ...] = ()) -> Path:
        """Move every file of the run except ``keep`` into a sibling ``NAME.WHY-TIME/`` (kept for a look,
        never aggregated); returns that directory."""
        aside = self.path.with_name(f"{self.path.name}.{why}-{time.strftime('%Y%m%d-%H%M%S')}")
        aside.mkdir(exist_ok=True)
        for item in self.path.iterdir():
            if item.name not in keep:
                item.rename(aside / item.name)
        return aside

    def record_session(self, facts: dict[str, Any], resumed: bool) -> None:
        """Write ``manifest.json``: the facts of the session that started the run (code, packages, host,
        hardware: :func:`pql.manifest.session`), and those of each session that resumed it under ``resumes``."""
        path = self.path / MANIFEST
        manifest: dict[str, Any] = {"schema": MANIFEST_SCHEMA, **facts, "resumes": []}
        if resumed:
            try:
                manifest = json.loads(path.read_text())
                manifest.setdefault("resumes", []).append(facts)
            except (OSError, ValueError):  # a run from before manifests, or a damaged one: start afresh
                manifest["resumed_without_manifest"] = True
        atomic_write(path, json.dumps(manifest, indent=2, default=str).encode())

    def write_status(self, state: str, **fields: Any) -> None:
        """``state`` is one of STATES; extra fields (error, signal, step, losses...) go along."""
        assert state in STATES, state
        body = {"state": state, "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **fields}
        atomic_write(self.path / STATUS, json.dumps(body, indent=2, default=str).encode())

    def read_status(self) -> dict[str, Any]:
        return json.loads((self.path / STATUS).read_text())

    def _metrics_rows(self) -> tuple[list[str], list[dict[str, str]]]:
        with open(self.metrics_path, newline="") as fh:
            reader = csv.DictReader(fh)
            rows = list(reader)
            return list(reader.fieldnames or ()), rows

    def _write_metrics(self, columns: list[str], rows: list[dict[str, str]]) -> None:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write(self.metrics_path, buf.getvalue().encode())

    def append_metrics(self, row: dict[str, float]) -> None:
        """Append one row (columns ``METRIC_COLUMNS``), writing the header first if the file is new. A file
        from an older version whose header lacks some of the columns is first rewritten with them (empty
        in its old rows); columns it has beyond them stay."""
        new = not self.metrics_path.exists() or self.metrics_path.stat().st_size == 0
        columns = list(METRIC_COLUMNS)
        if not new:
            with open(self.metrics_path, newline="") as fh:
                header = next(csv.reader(fh), [])
            columns = header + [c for c in METRIC_COLUMNS if c not in header]
            if columns != header:  # once per run at most: an older file gets this version's columns
                self._write_metrics(columns, self._metrics_rows()[1])
        with open(self.metrics_path, "a", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=columns)
            if new:
                writer.writeheader()
            writer.writerow({k: row.get(k, "") for k in columns})
            fh.flush()
            os.fsync(fh.fileno())

    def truncate_metrics(self, max_env_steps: int) -> None:
        """Keep only the rows up to ``max_env_steps`` (the checkpoint's), so a resume adds no duplicates."""
        if not self.metrics_path.exists():
            return
        header, rows = self._metrics_rows()
        self._write_metrics(header or list(METRIC_COLUMNS),
                            [r for r in rows if r.get("env_steps") and int(float(r["env_steps"])) <= max_env_steps])

    def clear_status(self) -> None:
        """Remove ``status.json`` where a true one cannot be written (a full disk): a status that says
        ``running`` for a process that is gone must not stay behind."""
        (self.path / STATUS).unlink(missing_ok=True)

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        """Serialised in memory first (networks and optimisers only: small), so that a full disk shows
        as the operating system's error, not as torch's zip writer's."""
        import torch  # here: a job imports this module before its simulator, which must precede torch

        buf = io.BytesIO()
        torch.save(state, buf)
        atomic_write(self.checkpoint_path, buf.getbuffer())

    def load_checkpoint(self, map_location: str | torch.device = "cpu") -> dict[str, Any]:
        """The checkpoint's contents; CheckpointError naming the file if it is missing, truncated,
        not a checkpoint, or holds anything but tensors, numbers, strings and containers."""
        import torch

        path = self.checkpoint_path
        try:
            state = torch.load(path, map_location=map_location, weights_only=True)
        except FileNotFoundError as err:
            raise CheckpointError(f"{path}: no checkpoint there") from err
        except Exception as err:  # torch raises many kinds for a bad file; all mean unusable
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            if "weights_only" in str(err) or "Unsupported global" in str(err):
                reason = "it holds objects other than tensors, numbers and containers (refused: loading it " \
                         "could run code)"
            raise CheckpointError(f"{path} cannot be loaded: {reason}") from err
        if not isinstance(state, dict) or "progress" not in state:
            raise CheckpointError(f"{path} is not a pql checkpoint (no 'progress' entry)")
        return state

    def set_checkpoint_aside(self) -> Path:
        """Rename an unusable ``checkpoint.pt`` to ``checkpoint.pt.corrupt-TIME``; returns the new path."""
        aside = self.path / f"{CHECKPOINT}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}"
        os.replace(self.checkpoint_path, aside)
        return aside
