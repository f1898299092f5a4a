"""The run directory: resolved config, metrics rows, status and checkpoint, all written safely.

Every file is written whole to a temporary name and renamed (atomic on POSIX), and
each metrics row is flushed and fsynced, so a crash or ``kill -9`` loses at most
the row being written and never leaves a half-written status or checkpoint.
"""

from __future__ import annotations

import csv
import json
import os
import time
from pathlib import Path
from typing import Any

import torch
import yaml

METRIC_COLUMNS = ("env_steps", "wall_s", "train_return", "eval_return", "critic_loss", "actor_loss",
                  "actor_steps", "v_updates", "p_updates", "env_steps_per_s")
CHECKPOINT = "checkpoint.pt"


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file and a rename."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class RunDir:
    """Files of one run under ``path``."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.csv"

    @property
    def checkpoint_path(self) -> Path:
        return self.path / CHECKPOINT

    def write_config(self, config: dict[str, Any]) -> None:
        atomic_write(self.path / "config.yaml", yaml.safe_dump(config, sort_keys=False).encode())

    def write_status(self, state: str, **fields: Any) -> None:
        """``state`` is running | done | failed; extra fields (error, step, losses...) go along."""
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

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        tmp = self.path / f".{CHECKPOINT}.tmp{os.getpid()}"
        torch.save(state, tmp)
        os.replace(tmp, self.checkpoint_path)

    def load_checkpoint(self, map_location: str | torch.device = "cpu") -> dict[str, Any]:
        return torch.load(self.checkpoint_path, map_location=map_location, weights_only=False)
