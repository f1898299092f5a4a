"""SIGINT and SIGTERM: one interruption, whichever arrives, and always resumable.

The first signal asks the current run to stop at its next step boundary, write a checkpoint
and record ``state: interrupted`` with the signal; a second one stops it at once. Signals
whose handler someone else installed are left to them: inside a SLURM job submitit ignores
SIGTERM on purpose (preemption sends it before USR2, on which it checkpoints and requeues).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class RunInterrupted(BaseException):
    """A run or a study stopped by a signal; ``exit_code`` is the shell's 128 + signal number."""

    def __init__(self, signum: int, message: str = "") -> None:
        self.signum = signum
        self.signal_name = signal.Signals(signum).name
        super().__init__(message or f"interrupted by {self.signal_name}")

    @property
    def exit_code(self) -> int:
        """The exit code of a process stopped by this signal: 128 + its number."""
        return 128 + self.signum


def _ours(handler: Any) -> bool:
    return getattr(handler, "_pql_stop_signals", False)


class StopSignals:
    """Handles SIGINT and SIGTERM in the main thread while it is entered.

    ``on_first`` (set or replaced at any time) receives the first signal's number and should
    make the work stop soon; without it, or at a second signal, :class:`RunInterrupted` is
    raised where the main thread is.
    """

    def __init__(self, on_first: Callable[[int], None] | None = None) -> None:
        self.on_first = on_first
        self.signum: int | None = None
        self._saved: dict[int, Any] = {}
        self._held = False

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        first = self.signum is None
        self.signum = self.signum or signum
        if self._held:
            return
        if first and self.on_first is not None:
            self.on_first(signum)
            return
        raise RunInterrupted(signum)

    _handle._pql_stop_signals = True  # type: ignore[attr-defined]  # marks handlers a nested StopSignals may replace

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """While entered, a signal is only noted in ``signum``: for the brief work that must not be cut
        short, such as writing down how a run ended."""
        self._held = True
        try:
            yield
        finally:
            self._held = False

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is not threading.main_thread():
            return self
        for sig in SIGNALS:
            current = signal.getsignal(sig)
            if current in (signal.SIG_DFL, signal.default_int_handler) or _ours(current):
                self._saved[sig] = current
                signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, previous in self._saved.items():
            signal.signal(sig, previous)
        self._saved.clear()
