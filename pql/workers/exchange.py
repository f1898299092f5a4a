"""Hand data from one worker to another by copying tensors, never by pickling modules or batches.

- A :class:`ModuleSlot` holds one versioned snapshot of a module's parameters and buffers.
  The owner ``publish``es after an update; a consumer ``pull``s into its own copy (possibly
  on another device) only when a newer version exists. Only the latest snapshot is kept.
- A :class:`TransitionRing` carries rows (the actor's n-step transitions) from one writer to
  one or more readers through K preallocated slots; the writer waits while all slots hold
  rows some reader has not taken, so nothing queues up without bound.

Both work inside one process (sync mode) and, after ``share_memory``, across processes
(async mode): CPU tensors move to shared memory, CUDA tensors travel by CUDA IPC, and the
counters are CPU tensors in shared memory. Across processes a counter is advanced only after
the copy it announces has completed (CUDA streams are synchronised first), so a reader never
sees a half-written slot; within one process the stream orders the copies and nothing waits.
"""

from __future__ import annotations

import threading
from typing import Any

import torch
from torch import nn


def _tensors(module: nn.Module) -> list[torch.Tensor]:
    return [t.data for t in module.parameters()] + list(module.buffers())


def settle(tensors: list[torch.Tensor]) -> None:
    """Wait until the copies queued on the CUDA devices of ``tensors`` are done (no-op on CPU)."""
    for device in {t.device for t in tensors if t.is_cuda}:
        torch.cuda.current_stream(device).synchronize()


class ModuleSlot:
    """The latest published state of a module, with a version counter."""

    def __init__(self, module: nn.Module) -> None:
        with torch.no_grad():
            self._snapshot = [t.detach().clone() for t in _tensors(module)]
        self._version = torch.zeros((), dtype=torch.int64)
        self._lock: Any = threading.Lock()
        self._shared = False  # only then must a copy be complete before the version says so

    def share_memory(self, lock: Any) -> ModuleSlot:
        """Make the slot usable from other processes; ``lock`` is a multiprocessing lock of their context."""
        for t in self._snapshot:
            if not t.is_cuda:
                t.share_memory_()
        self._version.share_memory_()
        self._lock, self._shared = lock, True
        return self

    @property
    def version(self) -> int:
        """How many times a module was published here."""
        return int(self._version)

    @torch.no_grad()
    def publish(self, module: nn.Module) -> None:
        """Copy ``module``'s current parameters and buffers into the slot."""
        with self._lock:
            torch._foreach_copy_(self._snapshot, _tensors(module))
            if self._shared:
                settle(self._snapshot)
            self._version += 1

    @torch.no_grad()
    def pull(self, module: nn.Module, seen: int) -> int:
        """Copy the snapshot into ``module`` if its version is newer than ``seen``; returns the version held."""
        if self.version == seen:
            return seen
        with self._lock:
            targets = _tensors(module)
            for dst, src in zip(targets, self._snapshot, strict=True):
                dst.copy_(src)
            if self._shared:
                settle(targets)
            return self.version


class TransitionRing:
    """K slots of R rows of width W (``storage [K, R, W]``) from one writer to ``readers`` readers.

    ``written`` counts the slots put so far, ``taken[i]`` the slots reader i has released;
    slot ``j`` lives at ``storage[j % K]``. The writer may put only while fewer than K slots
    are unreleased by some reader.
    """

    def __init__(self, slots: int, rows: int, width: int, readers: int, device: torch.device | str,
                 dtype: torch.dtype = torch.float32) -> None:
        self.slots = slots
        self.storage = torch.zeros(slots, rows, width, device=device, dtype=dtype)
        self.written = torch.zeros((), dtype=torch.int64)
        self.taken = torch.zeros(readers, dtype=torch.int64)

    def share_memory(self) -> TransitionRing:
        """Make the ring usable from other processes."""
        if not self.storage.is_cuda:
            self.storage.share_memory_()
        self.written.share_memory_()
        self.taken.share_memory_()
        return self

    def has_room(self) -> bool:
        """Whether :meth:`put` may write now."""
        return int(self.written) - min(self.taken.tolist()) < self.slots  # counters: CPU, shared

    def put(self, rows: torch.Tensor) -> None:
        """Write ``rows [R, W]`` into the next slot; call only when :meth:`has_room`."""
        slot = self.storage[int(self.written) % self.slots]
        slot.copy_(rows)
        settle([slot])
        self.written += 1

    def pending(self, reader: int) -> int:
        """Slots written that ``reader`` has not released."""
        return int(self.written) - int(self.taken[reader])

    def peek(self, reader: int) -> torch.Tensor:
        """The oldest slot ``reader`` has not released, ``[R, W]`` (a view: copy it, then :meth:`release`)."""
        return self.storage[int(self.taken[reader]) % self.slots]

    def release(self, reader: int, copies: list[torch.Tensor]) -> None:
        """``reader`` is done with its oldest slot once the ``copies`` made from it have completed."""
        settle(copies)
        self.taken[reader] += 1
