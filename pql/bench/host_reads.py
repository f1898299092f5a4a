"""Host reads in the hot loop: every time a worker reads a value of a tensor on its compute device back to
Python (``.item()``, ``bool``, ``float``, ``int``, ``.tolist()``, ``.cpu()``, ``.numpy()``), a GPU run waits for
the device to finish what it queued. Counted two ways over the same loops (:func:`sync_loop`,
:func:`async_loop`):

- on a CPU, by a torch function mode (:class:`HostReads`), the default suite's check (tests/test_workers.py);
- on a GPU, by CUDA's own sync debug mode, ``make gpu-check``'s ``host-reads`` rows.

Left out on a CPU: tensors in shared memory (the async board, controller, ring counters, slot versions) and the
bookkeeping tensors that stay on the CPU on any device (:func:`bookkeeping`: optimiser step counters, the sync
controller's table, slot versions): reading those never waits for a GPU.
"""

from __future__ import annotations

import collections
import contextlib
import traceback
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

READS = {"item", "__bool__", "__float__", "__int__", "__index__", "tolist", "cpu", "numpy"}
NOT_A_SITE = ("/tests/", "/bench/")  # frames that count or drive the loop, not the loop's own code


def _site() -> str:
    """``file:line`` (relative to the package) of the innermost frame of pql's own code on the stack."""
    ours = [f for f in traceback.extract_stack() if "/pql/" in f.filename
            and not any(part in f.filename for part in NOT_A_SITE)]
    return f"{ours[-1].filename.rsplit('/pql/', 1)[-1]}:{ours[-1].lineno}" if ours else "torch"


class HostReads(TorchFunctionMode):
    """Counts host reads of tensors that are not shared and not ``excluded`` (nor views of those);
    ``sites``: reads per ``file:line`` of the innermost pql frame."""

    def __init__(self, excluded: Iterable[torch.Tensor]) -> None:
        super().__init__()
        self.excluded = {id(t) for t in excluded}
        self.sites: collections.Counter[str] = collections.Counter()

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        tensor = args[0] if args else None
        if (getattr(func, "__name__", "") in READS and isinstance(tensor, torch.Tensor) and not tensor.is_shared()
                and id(tensor) not in self.excluded and id(tensor._base) not in self.excluded):  # a view of one
            self.sites[_site()] += 1
        return func(*args, **(kwargs or {}))


def bookkeeping(optimizers: Iterable[torch.optim.Optimizer], *others: torch.Tensor) -> list[torch.Tensor]:
    """The CPU-only tensors of a worker: each optimiser's step counters (AdamW keeps them on the CPU unless
    capturable), and ``others``."""
    steps = [s["step"] for opt in optimizers for s in opt.state.values() if torch.is_tensor(s.get("step"))]
    return steps + list(others)


@dataclass
class HotLoop:
    """A run's workers stepped in this process, past their warm-up (every optimiser has stepped).
    ``round()``: one turn of each worker; ``actor_steps()`` and ``updates()`` (V + P) count what they did;
    ``excluded``: the CPU-only bookkeeping tensors (see :func:`bookkeeping`)."""

    round: Callable[[], None]
    actor_steps: Callable[[], int]
    updates: Callable[[], int]
    excluded: list[torch.Tensor]


def sync_loop(overrides: dict[str, Any], device: torch.device, num_envs: int, out: str) -> HotLoop:
    """``mode=sync``: a round is one sync step (an actor step and the updates it makes due)."""
    from pql.bench.limits import build_trainer, fill_until_learning

    t = build_trainer(overrides, device, num_envs, out)
    fill_until_learning(t)
    t.step()  # the optimisers' states exist from here
    tables = (t.controller.counts.tensor, t.controller.durations.tensor)
    versions = [s._version for s in (t.policy_slot, t.critic_slot, t.norm_slot)]
    return HotLoop(t.step, lambda: t.progress.actor_steps, lambda: sum(t.update_counts()),
                   bookkeeping([t.v.optimizer, t.p.optimizer], *tables, *versions))


def async_loop(overrides: dict[str, Any], device: torch.device, num_envs: int, out: str) -> HotLoop:
    """``mode=async``'s three workers (the actor's and both learners' ``work()``), built as their processes build
    them but stepped here in turn; a round is one ``work()`` of each."""
    import torch.multiprocessing as mp

    from pql.bench.modes import run_config
    from pql.store.run_dir import RunDir
    from pql.training.parallel import ProcessTrainer
    from pql.training.processes import ActorRole, LearnerRole
    from pql.workers.plan import plan_run

    cfg = run_config("classic/pendulum", str(device), overrides, mode="async", num_envs=num_envs,
                     out=str(Path(out, "run")), **{"algo.warmup_steps": 2})
    parent = ProcessTrainer(plan_run(cfg), RunDir(Path(out, "run")))
    shared = parent.shared = parent.share(mp.get_context("spawn"))
    shared.board.flags.update(pause=0, actor_limit=2**62, learn_from=2)
    actor = ActorRole(shared.for_role("actor"), device, None)
    v, p = LearnerRole("v", shared, device, None), LearnerRole("p", shared, device, None)

    def one_round() -> None:
        for role in (actor, v, p):
            role.work()

    while v.loss_count < 2 or p.loss_count < 2:  # every optimiser has stepped
        one_round()
    return HotLoop(one_round, lambda: actor.actor_steps, lambda: v.loss_count + p.loss_count,
                   bookkeeping([v.worker.optimizer, p.worker.optimizer]))


@contextlib.contextmanager
def cuda_syncs(device: torch.device) -> Iterator[collections.Counter[str]]:
    """Inside: every synchronising call CUDA's sync debug mode reports, counted per pql site."""
    sites: collections.Counter[str] = collections.Counter()

    def seen(message: Any, *_: Any, **__: Any) -> None:
        if "synchroniz" in str(message):
            sites[_site()] += 1

    torch.cuda.synchronize(device)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = seen
        torch.cuda.set_sync_debug_mode("warn")
        try:
            yield sites
        finally:
            torch.cuda.set_sync_debug_mode("default")


def count_host_reads(loop: HotLoop, device: torch.device, rounds: int) -> tuple[collections.Counter[str], int, int]:
    """Host reads per site over ``rounds`` rounds of ``loop`` (CUDA's sync debug mode on a GPU, :class:`HostReads`
    elsewhere), and the actor steps and updates those rounds made."""
    steps, updates = loop.actor_steps(), loop.updates()

    def run() -> None:
        for _ in range(rounds):
            loop.round()

    if device.type == "cuda":
        with cuda_syncs(device) as sites:
            run()
    else:
        with HostReads(loop.excluded) as mode:
            run()
        sites = mode.sites
    return sites, loop.actor_steps() - steps, loop.updates() - updates
