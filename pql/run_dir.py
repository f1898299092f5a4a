"""The run directory: resolved config, metrics rows, status and checkpoint, all written safely.

Every file is written whole to a temporary name and renamed (atomic on POSIX), and
each metrics row is flushed and fsynced, so a crash or ``kill -9`` loses at most
the row being written and never leaves a half-written status or checkpoint. A write
that fails (a full disk, a file size limit) removes its temporary file.

Checkpoints hold only tensors, numbers, strings and containers of them, and are read
with ``weights_only=True``: a crafted ``checkpoint.pt`` cannot run code when loaded.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from pql.config import ConfigError

METRIC_COLUMNS = ("env_steps", "wall_s", "train_return", "eval_return", "critic_loss", "actor_loss",
                  "actor_steps", "v_updates", "p_updates", "env_steps_per_s")
CHECKPOINT = "checkpoint.pt"
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
    """Files of one run under ``path``."""

    def __init__(self, path: str | Path, create: bool = True) -> None:
        self.path = Path(path)
        if create:
            try:
                self.path.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise ConfigError(f"cannot create the run directory {self.path}: {err.strerror}") from err

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.csv"

    @property
    def checkpoint_path(self) -> Path:
        return self.path / CHECKPOINT

    def write_config(self, config: dict[str, Any]) -> None:
        atomic_write(self.path / "config.yaml", yaml.safe_dump(config, sort_keys=False).encode())

    def record_session(self, facts: dict[str, Any], resumed: bool) -> None:
        """Write ``manifest.json``: the facts of the session that started the run (code, packages, host,
        hardware: :func:`pql.manifest.session`), and those of each session that resumed it under ``resumes``."""
        path = self.path / "manifest.json"
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
        atomic_write(self.path / "status.json", json.dumps(body, indent=2, default=str).encode())

    def read_status(self) -> dict[str, Any]:
        return json.loads((self.path / "status.json").read_text())

    def append_metrics(self, row: dict[str, float]) -> None:
        """Append one row (columns ``METRIC_COLUMNS``), writing the header first if the file is new."""
        new = not self.metrics_path.exists() or self.metrics_path.stat().st_size == 0
        with open(self.metrics_path, "a", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=METRIC_COLUMNS)
            if new:
                writer.writeheader()
            writer.writerow({k: row.get(k, "") for k in METRIC_COLUMNS})
            fh.flush()
            os.fsync(fh.fileno())

    def truncate_metrics(self, max_env_steps: int) -> None:
        """Keep only the rows up to ``max_env_steps`` (the checkpoint's), so a resume adds no duplicates."""
        if not self.metrics_path.exists():
            return
        with open(self.metrics_path, newline="") as fh:
            rows = [r for r in csv.DictReader(fh) if r.get("env_steps") and int(float(r["env_steps"])) <= max_env_steps]
        buf = [",".join(METRIC_COLUMNS)]
        buf += [",".join(r.get(k, "") or "" for k in METRIC_COLUMNS) for r in rows]
        atomic_write(self.metrics_path, ("\n".join(buf) + "\n").encode())

    def clear_status(self) -> None:
        """Remove ``status.json`` where a true one cannot be written (a full disk): a status that says
        ``running`` for a process that is gone must not stay behind."""
        (self.path / "status.json").unlink(missing_ok=True)

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        """Serialised in memory first (networks and optimisers only: small), so that a full disk shows
        as the operating system's error, not as torch's zip writer's."""
        buf = io.BytesIO()
        torch.save(state, buf)
        atomic_write(self.checkpoint_path, buf.getbuffer())

    def load_checkpoint(self, map_location: str | torch.device = "cpu") -> dict[str, Any]:
        """The checkpoint's contents; CheckpointError naming the file if it is missing, truncated,
        not a checkpoint, or holds anything but tensors, numbers, strings and containers."""
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
