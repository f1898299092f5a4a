"""Hand networks from one worker to another by copying tensors, never by pickling modules.

A :class:`ModuleSlot` holds one versioned snapshot of a module's parameters and
buffers. The owner ``publish``es after an update; a consumer ``pull``s into its
own copy (possibly on another device) only when a newer version exists. Only the
latest snapshot is kept, so nothing queues up.
"""

from __future__ import annotations

import threading

import torch
from torch import nn


def _tensors(module: nn.Module) -> list[torch.Tensor]:
    return [t.data for t in module.parameters()] + list(module.buffers())


class ModuleSlot:
    """The latest published state of a module, with a version counter."""

    def __init__(self, module: nn.Module) -> None:
        with torch.no_grad():
            self._snapshot = [t.detach().clone() for t in _tensors(module)]
        self.version = 0
        self._lock = threading.Lock()

    @torch.no_grad()
    def publish(self, module: nn.Module) -> None:
        """Copy ``module``'s current parameters and buffers into the slot."""
        with self._lock:
            torch._foreach_copy_(self._snapshot, _tensors(module))
            self.version += 1

    @torch.no_grad()
    def pull(self, module: nn.Module, seen: int) -> int:
        """Copy the snapshot into ``module`` if its version is newer than ``seen``; returns the version held."""
        if self.version == seen:
            return seen
        with self._lock:
            for dst, src in zip(_tensors(module), self._snapshot, strict=True):
                dst.copy_(src)
            return self.version
