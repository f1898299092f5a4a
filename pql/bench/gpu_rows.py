"""What a check of ``make gpu-check`` writes: its rows (check, result, verdict, figures) appended to
``rows.jsonl``, and the sizes it runs at (the paper's on a GPU, tiny in a quick check)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

ROWS = "rows.jsonl"
TABLE = "table.md"
PAPER = {"algo.actor_hidden": "[512,256,128]", "algo.critic_hidden": "[512,256,128]", "algo.batch_size": 8192}
TINY = {"algo.actor_hidden": "[16,16]", "algo.critic_hidden": "[16,16]", "algo.batch_size": 64}


class Check:
    """What one check process needs: the device, the sizes, and where its rows go."""

    def __init__(self, device: torch.device, quick: bool, out: Path) -> None:
        self.device, self.quick, self.out = device, quick, out
        self.cuda = device.type == "cuda"

    def envs(self, full: int) -> int:
        """``full`` envs on a GPU, 64 (or fewer) in a quick check."""
        return min(full, 64) if self.quick else full

    def seconds(self, full: float) -> float:
        """A timing's ``full`` seconds, a tenth in a quick check."""
        return full / 10 if self.quick else full

    def nets(self) -> dict[str, Any]:
        """The paper's network and batch sizes, or tiny ones in a quick check."""
        return TINY if self.quick else PAPER

    def row(self, check: str, result: str, verdict: str = "info", **data: Any) -> None:
        """Append one row of the table (``verdict``: ok, FAIL, info or skipped)."""
        with open(self.out / ROWS, "a") as fh:
            fh.write(json.dumps({"check": check, "result": result, "verdict": verdict, **data}) + "\n")
