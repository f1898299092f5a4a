"""The speed-ratio controller that keeps actor, V-learner and P-learner balanced.

Progress is counted in V-update units: an actor step is worth ``critic_sample_ratio``
(beta_a:v) V-updates, a P-update ``critic_actor_ratio`` (beta_p:v) V-updates. In sync
mode the trainer asks which worker is due; in async mode each worker asks how long
to sleep, an estimate from the measured durations of the worker it waits for.
The class does no sleeping and reads time only through the injected ``clock``.

Its counts and durations live in tensors (:class:`SharedTable`): after
:meth:`RatioController.share_memory` a copy passed to another process reads and
writes the same numbers. Each worker writes only its own entries, so no lock is needed.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, MutableMapping

import torch

WORKERS = ("actor", "v", "p")


class SharedTable(MutableMapping[str, float]):
    """Fixed names mapped to numbers stored in one tensor ``[len(names)]``; a float table reads an unset
    (NaN) entry as None. Pickled with its tensor, so a shared-memory table stays shared across processes."""

    def __init__(self, names: tuple[str, ...], dtype: torch.dtype) -> None:
        self.names = names
        self.tensor = torch.full((len(names),), math.nan, dtype=dtype) if dtype.is_floating_point \
            else torch.zeros(len(names), dtype=dtype)

    def __getitem__(self, name: str) -> float | None:  # type: ignore[override]
        value = self.tensor[self.names.index(name)].item()
        return None if isinstance(value, float) and math.isnan(value) else value

    def __setitem__(self, name: str, value: float | None) -> None:
        self.tensor[self.names.index(name)] = math.nan if value is None else value

    def __delitem__(self, name: str) -> None:
        raise TypeError("the names of a SharedTable are fixed")

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)

    def __repr__(self) -> str:
        return repr(dict(self))


def critic_sample_ratio(base: float, num_envs: int, scale_envs: int | None) -> float:
    """beta_a:v for ``num_envs`` environments: ``base``, or with ``scale_envs`` = N0, ``base`` times
    num_envs / N0 above N0 envs, so that each transition is replayed as often as with N0 envs.

    Measured on Pendulum (CPU preset, base 8): at 16384 envs the fixed ratio solved one seed of
    two within 20M env steps, the scaled one (128) both at 1.2M; below N0 the base is kept,
    because there fewer updates cost samples without saving time (see the README).
    """
    if scale_envs is None:
        return base
    return base * max(1.0, num_envs / scale_envs)


class RatioController:
    """Counts steps of the three workers and says who is due or how long to wait."""

    def __init__(self, critic_sample_ratio: float = 8.0, critic_actor_ratio: float = 2.0,
                 clock: Callable[[], float] = time.monotonic, smoothing: float = 0.1) -> None:
        self.beta_av = critic_sample_ratio
        self.beta_pv = critic_actor_ratio
        self.clock = clock
        self.smoothing = smoothing
        self.counts = SharedTable(WORKERS, torch.int64)
        self.durations = SharedTable(WORKERS, torch.float64)
        self._started: dict[str, float] = {}

    def share_memory(self) -> RatioController:
        """Move the counts and durations to shared memory (before the copy goes to other processes)."""
        self.counts.tensor.share_memory_()
        self.durations.tensor.share_memory_()
        return self

    # -- bookkeeping -----------------------------------------------------------------
    def begin(self, worker: str) -> None:
        """Mark the start of one step of ``worker`` (for its duration estimate)."""
        self._started[worker] = self.clock()

    def end(self, worker: str) -> None:
        """Mark the end of the step begun by :meth:`begin` and count it."""
        elapsed = self.clock() - self._started.pop(worker)
        old = self.durations[worker]
        self.durations[worker] = elapsed if old is None else old + self.smoothing * (elapsed - old)
        self.counts[worker] += 1

    def progress(self, worker: str) -> float:
        """Steps of ``worker`` in V-update units."""
        scale = {"actor": self.beta_av, "v": 1.0, "p": self.beta_pv}[worker]
        return self.counts[worker] * scale

    # -- sync schedule ---------------------------------------------------------------
    def v_due(self) -> bool:
        """The V-learner owes updates for the actor steps taken so far."""
        return self.progress("v") < self.progress("actor")

    def p_due(self) -> bool:
        """The P-learner owes an update for the V-updates done so far."""
        return self.progress("p") + self.beta_pv <= self.progress("v")

    # -- async waits -----------------------------------------------------------------
    def wait_s(self, worker: str) -> float:
        """Seconds ``worker`` should sleep before its next step (0 if it may go on).

        The actor and the V-learner may each lead the other by one actor step's worth
        of V-updates; the V-learner and the P-learner may each lead the other by one
        P-update's worth. A worker that leads by more waits for the time its partner
        needs to catch up (the V-learner for the longer of its two partners).
        """
        if worker == "actor":
            return self._wait(self.progress("actor") - self.progress("v") - self.beta_av, self.durations["v"], 1.0)
        if worker == "p":
            return self._wait(self.progress("p") - self.progress("v"), self.durations["v"], 1.0)
        return max(self._wait(self.progress("v") - self.progress("actor") - self.beta_av, self.durations["actor"],
                              self.beta_av),
                   self._wait(self.progress("v") - self.progress("p") - self.beta_pv, self.durations["p"],
                              self.beta_pv))

    @staticmethod
    def _wait(lead: float, partner_s: float | None, partner_units: float) -> float:
        """The time a partner taking ``partner_s`` per step worth ``partner_units`` V-updates needs to make
        up ``lead`` V-updates (1 ms per V-update while its duration is unknown)."""
        if lead <= 0:
            return 0.0
        return lead * (1e-3 if partner_s is None else partner_s / partner_units)
