"""The W&B sink in W&B's offline mode (no network): what it logged, read back from W&B's own run file."""

import json
import struct
import zlib
from pathlib import Path

import pytest

from pql.training.run import resolve, run_training

wandb = pytest.importorskip("wandb", reason="wandb is not installed: pip install wandb")
from wandb.proto import wandb_internal_pb2  # noqa: E402

BLOCK, HEADER = 32768, 7  # W&B's run file is a LevelDB-style log: 32 KiB blocks, 7-byte record headers
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def read_records(path: Path) -> list[wandb_internal_pb2.Record]:
    """Every record of a ``run-*.wandb`` file (file header ':W&B', then CRC-checked chunks)."""
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    records, pending, pos = [], b"", HEADER
    while pos + HEADER <= len(data):
        if BLOCK - pos % BLOCK < HEADER:  # the tail of a block too short for a header is padding
            pos += BLOCK - pos % BLOCK
            continue
        crc, length, kind = struct.unpack("<IHB", data[pos: pos + HEADER])
        if kind == 0 and length == 0:
            break
        chunk = data[pos + HEADER: pos + HEADER + length]
        assert zlib.crc32(bytes([kind]) + chunk) & 0xFFFFFFFF == crc, "corrupt W&B record"
        pending = chunk if kind in (FULL, FIRST) else pending + chunk
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
        pos += HEADER + length
    return records


def items(entries) -> dict:
    return {e.key or "/".join(e.nested_key): json.loads(e.value_json) for e in entries}


def test_wandb_offline_logs_the_config_and_every_metrics_row(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = run_training(resolve({**tiny, "wandb": "true", "wandb_project": "pql-test"}))
    (log,) = (run.path / "wandb").glob("wandb/offline-run-*/run-*.wandb")
    records = read_records(log)
    config = {}
    for r in records:  # the config comes with the run record, later changes as config records
        kind = r.WhichOneof("record_type")
        if kind in ("run", "config"):
            config.update(items((r.run.config if kind == "run" else r.config).update))
    assert config["task"] == "classic/pendulum" and config["num_envs"] == 32 and config["algo"]["batch_size"] == 64
    logged = [items(r.history.item) for r in records if r.WhichOneof("record_type") == "history"]
    rows = (run.path / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    assert [h["env_steps"] for h in logged] == [int(r.split(",")[0]) for r in rows[1:]]
    last = dict(zip(header, rows[-1].split(","), strict=True))
    assert logged[-1]["eval_return"] == pytest.approx(float(last["eval_return"]))
    assert logged[-1]["critic_loss"] == pytest.approx(float(last["critic_loss"]))
