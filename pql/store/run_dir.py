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
import itertools
import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from pql.config import Config, ConfigError, config_to_dict, load_config
from pql.store.states import RUN_STATES

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
STATUS_TIME = "%Y-%m-%dT%H:%M:%S%z"  # status.json's ``updated``: local time with its UTC offset
TEMPORARY = ".*.tmp[0-9]*"  # the temporary files of atomic_write: a writer killed mid-write leaves one


def row_order_problem(previous: tuple[int, float] | None, row: tuple[int, float]) -> str | None:
    """Why a metrics row with ``(env_steps, wall_s)`` ``row`` cannot follow one with ``previous`` in the same
    run, or None when it can. The one rule for a run's rows, kept by the run loop as it writes them and
    checked by the store and the report as they read them.

    One writer's rows move forward: env steps never go back, training time never goes back, and each row
    is later than the last in env steps or in training time (rows written by time may repeat the env steps
    of the last one when the actor has not stepped since, on a busy machine). A second writer shows as a row
    that goes back in env steps or training time, or one that repeats the last row's moment exactly.
    """
    if previous is None:
        return None
    (steps0, wall0), (steps1, wall1) = previous, row
    if steps1 < steps0:
        return f"env_steps go backwards ({steps0} then {steps1}; two processes wrote it?)"
    if wall1 < wall0:
        return f"wall_s goes backwards ({wall0} then {wall1} at env step {steps1}; two processes wrote it?)"
    if (steps1, wall1) == (steps0, wall0):
        return f"a row repeats env step {steps1} at wall_s {wall1} (two processes wrote it?)"
    return None


def rows_order_problem(keys: list[tuple[int, float]]) -> str | None:
    """:func:`row_order_problem` over a run's rows in file order (None: every row may follow the one before)."""
    for previous, row in itertools.pairwise(keys):
        problem = row_order_problem(previous, row)
        if problem is not None:
            return problem
    return None


def row_key(row: dict[str, Any]) -> tuple[int, float]:
    """A metrics row's ``(env_steps, wall_s)``, as the order rule reads it (ValueError if they do not parse)."""
    return int(float(row["env_steps"])), float(row["wall_s"])


class MetricsOrderError(RuntimeError):
    """A row the run was about to write would break the order rule (a bug, never a user's error)."""


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
        self._last_row: tuple[int, float] | None = None  # (env_steps, wall_s) of the last row written or kept
        self._rows_read = False
        if create:
            try:
                self.path.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise ConfigError(f"cannot create the run directory {self.path}: {err.strerror}") from err

    @property
    def metrics_path(self) -> Path:
        """``metrics.csv``."""
        return self.path / METRICS

    @property
    def checkpoint_path(self) -> Path:
        """``checkpoint.pt``."""
        return self.path / CHECKPOINT

    @property
    def config_path(self) -> Path:
        """``config.yaml``."""
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
        """``cell.json``: the cell ``pql ablate`` prepared here, with its resolved config."""
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
        hardware: :func:`pql.store.manifest.session`), and those of each session that resumed it under ``resumes``."""
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
        """``state`` is one of RUN_STATES; extra fields (error, signal, step, losses...) go along."""
        assert state in RUN_STATES, state
        body = {"state": state, "updated": time.strftime(STATUS_TIME), **fields}
        atomic_write(self.path / STATUS, json.dumps(body, indent=2, default=str).encode())

    def read_status(self) -> dict[str, Any]:
        """``status.json``."""
        return json.loads((self.path / STATUS).read_text())

    def refresh_status(self, **fields: Any) -> None:
        """Rewrite a ``running`` status with a new ``updated`` time and ``fields`` (e.g. env_steps): the run's
        claim, renewed at every metrics row and checkpoint, so its age tells another host whether the
        claim is still alive. Does nothing when the status no longer says ``running``."""
        with contextlib.suppress(OSError, ValueError):
            status = self.read_status()
            if status.get("state") == "running":
                del status["state"], status["updated"]
                self.write_status("running", **{**status, **fields})

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
        if not self._rows_read:
            rows = [] if new else self._metrics_rows()[1]
            self._last_row = row_key(rows[-1]) if rows else None
            self._rows_read = True
        key = row_key(row)
        problem = row_order_problem(self._last_row, key)
        if problem is not None:
            raise MetricsOrderError(f"{self.metrics_path}: refusing a row that breaks the order rule: {problem}")
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
        self._last_row = key

    def truncate_metrics(self, rows: int) -> None:
        """Keep only the first ``rows`` rows (the checkpoint's ``progress.rows``: those written before it), so a
        resume continues the curve from the checkpoint's moment and adds no duplicates."""
        if not self.metrics_path.exists():
            return
        header, kept = self._metrics_rows()
        kept = kept[:rows]
        self._write_metrics(header or list(METRIC_COLUMNS), kept)
        self._last_row, self._rows_read = (row_key(kept[-1]) if kept else None), True

    def sweep_temporary(self) -> list[str]:
        """Remove the temporary files that a writer killed mid-write left (``.NAME.tmpPID``); call with the
        run's lock held, when no other writer can be at work. Returns the names removed."""
        swept = []
        for item in self.path.glob(TEMPORARY):
            with contextlib.suppress(OSError):
                item.unlink()
                swept.append(item.name)
        return swept

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
