"""Counting host reads (``.item()``, ``bool``, ``float``, ``int``, ``.tolist()``, ``.cpu()``, ``.numpy()``) of
the tensors that live on a worker's compute device in a GPU run, by a torch function mode, on the CPU.

Left out: tensors in shared memory (the async board, controller, ring counters, slot versions) and the
bookkeeping tensors that stay on the CPU on any device (``excluded``: optimiser step counters, the sync
controller's table, slot versions): reading those never waits for a GPU.
"""

import collections
import traceback
from collections.abc import Iterable

import torch
from torch.overrides import TorchFunctionMode

READS = {"item", "__bool__", "__float__", "__int__", "__index__", "tolist", "cpu", "numpy"}


class HostReads(TorchFunctionMode):
    """``sites``: reads counted per ``file:line`` of the innermost pql frame."""

    def __init__(self, excluded: Iterable[torch.Tensor]) -> None:
        super().__init__()
        self.excluded = {id(t) for t in excluded}
        self.sites: collections.Counter[str] = collections.Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        tensor = args[0] if args else None
        if (getattr(func, "__name__", "") in READS and isinstance(tensor, torch.Tensor) and not tensor.is_shared()
                and id(tensor) not in self.excluded and id(tensor._base) not in self.excluded):  # a view of one
            ours = [f for f in traceback.extract_stack() if "/pql/" in f.filename and "/tests/" not in f.filename]
            self.sites[f"{ours[-1].filename.rsplit('/pql/', 1)[-1]}:{ours[-1].lineno}" if ours else "?"] += 1
        return func(*args, **(kwargs or {}))


def bookkeeping(optimizers: Iterable[torch.optim.Optimizer], *others: torch.Tensor) -> list[torch.Tensor]:
    """The CPU-only tensors of a worker: each optimiser's step counters (AdamW keeps them on the CPU unless
    capturable), and ``others``."""
    steps = [s["step"] for opt in optimizers for s in opt.state.values() if torch.is_tensor(s.get("step"))]
    return steps + list(others)
