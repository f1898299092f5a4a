"""The exchange check of ``make gpu-check``: the transition ring and a module slot across processes on the
device (the async workers' data path), every slot and version checked, and a control that proves the check
can see a torn slot."""

from __future__ import annotations

import time
from typing import Any

import torch

from pql.bench.gpu_rows import Check


def _ring_writer(ring: Any, slots: int, half_written: bool, pace_s: float) -> None:
    """Put ``slots`` slots, slot k filled with k + 1; ``half_written``: announce each slot after writing
    its first half (the broken writer the control must catch)."""
    from pql.workers.exchange import settle

    rows, width = ring.storage.shape[1:]
    for k in range(slots):
        while not ring.has_room():
            time.sleep(1e-5)
        value = torch.full((rows, width), float(k + 1), device=ring.storage.device)
        slot = ring.storage[k % ring.slots]
        if half_written:
            slot[: rows // 2].copy_(value[: rows // 2])
            settle([slot])
            ring.written += 1
            time.sleep(pace_s)
            slot[rows // 2:].copy_(value[rows // 2:])
            settle([slot])
        else:
            ring.put(value)
            time.sleep(pace_s * (k % 2))


def _ring_reader(ring: Any, reader: int, slots: int, found: Any) -> None:
    """Take ``slots`` slots as ``reader``; ``found[reader]``: slots torn or out of order."""
    bad = 0
    for k in range(slots):
        deadline = time.monotonic() + 60
        while ring.pending(reader) == 0:
            if time.monotonic() > deadline:
                found[reader] = -1
                return
            time.sleep(1e-5)
        copy = ring.peek(reader).clone()
        ring.release(reader, [copy])
        bad += int(not bool((copy == k + 1).all()))
    found[reader] = bad


def _slot_publisher(slot: Any, module: torch.nn.Module, versions: int) -> None:
    """Publish ``module`` ``versions`` times, every tensor filled with its version."""
    for v in range(1, versions + 1):
        with torch.no_grad():
            for t in module.parameters():
                t.fill_(float(v))
        slot.publish(module)


def _slot_consumer(slot: Any, module: torch.nn.Module, versions: int, found: Any) -> None:
    """Pull until ``versions``; ``found[0]``: snapshots torn (mixed values) or not the version announced,
    ``found[1]``: versions going back."""
    seen, torn, back = 0, 0, 0
    deadline = time.monotonic() + 60
    while seen < versions and time.monotonic() < deadline:
        held = slot.pull(module, seen)
        if held != seen:
            values = torch.cat([t.detach().flatten() for t in module.parameters()])
            torn += int(not bool((values == values[0]).all())) + int(float(values[0]) != held)
            back += int(held < seen)
            seen = held
    found[0], found[1] = torn, back


def check_exchange(c: Check) -> None:
    """The ring and a module slot across processes on ``c.device``, and the control the ring check must catch."""
    from pql.training.processes import worker_context
    from pql.workers.exchange import ModuleSlot, TransitionRing

    ctx = worker_context()
    slots, rows, width = (30, 64, 16) if c.quick else (300, 16384, 130)
    for control in (False, True):
        ring = TransitionRing(4, rows, width, readers=2, device=c.device).share_memory()
        found = torch.zeros(2, dtype=torch.int64).share_memory_()
        procs = [ctx.Process(target=_ring_writer, args=(ring, slots, control, 2e-3 if control else 1e-3)),
                 *(ctx.Process(target=_ring_reader, args=(ring, r, slots, found)) for r in range(2))]
        for p in procs:
            p.start()
        for p in procs:
            p.join(120)
        torn, exits = found.tolist(), [p.exitcode for p in procs]
        name = "ring control (half-written slots)" if control else "ring across processes"
        if control:
            verdict = "ok" if min(torn) > 0 else "FAIL"
            c.row(name, f"torn slots seen by the 2 readers: {torn} of {slots} (must be > 0, else the check is "
                  f"blind); exits {exits}", verdict)
        else:
            verdict = "ok" if torn == [0, 0] and exits == [0, 0, 0] else "FAIL"
            c.row(name, f"{slots} slots of {rows}x{width} on {c.device}, 1 writer 2 readers: torn or out of order "
                  f"{torn}; exits {exits}", verdict)
    versions = 50 if c.quick else 300
    module = torch.nn.Linear(256, 256).to(c.device)
    slot = ModuleSlot(module).share_memory(ctx.Lock())
    found = torch.zeros(2, dtype=torch.int64).share_memory_()
    procs = [ctx.Process(target=_slot_publisher, args=(slot, module, versions)),
             ctx.Process(target=_slot_consumer, args=(slot, torch.nn.Linear(256, 256).to(c.device), versions, found))]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    torn, back = found.tolist()
    exits = [p.exitcode for p in procs]
    c.row("module slot across processes", f"{versions} versions of a 256x256 Linear: torn or mislabelled {torn}, "
          f"going back {back}; exits {exits}", "ok" if torn == back == 0 and exits == [0, 0] else "FAIL")


