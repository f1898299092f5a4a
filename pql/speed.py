"""The speed path: torch.compile of a worker's hot step, bf16 autocast for the learners, and the
compilation time kept out of ``wall_s``.

A worker hands its pure tensor functions (no generators, no host syncs) to :meth:`Speed.compile`
and wraps its forward passes in :meth:`Speed.autocast`. Before the run's clock starts, it calls
them a few times on stand-in inputs inside :func:`state_kept`, so torch compiles (and, with
``reduce-overhead`` on CUDA, records its CUDA graphs) while nothing of the run changes; the
seconds that took are the worker's ``compile_s``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import torch
from torch import nn

COMPILE_MODES = ("off", "default", "reduce-overhead", "max-autotune")
AMP_MODES = ("off", "bf16")
MATMUL_PRECISIONS = ("auto", "highest", "high", "medium")  # torch.set_float32_matmul_precision's, and auto
# Calls of each compiled function in a warm-up: the first compiles, the second sees the optimiser
# state the first created (a second graph), the third lets reduce-overhead record its CUDA graph.
WARMUP_CALLS = 3

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")


def cpp_compiler() -> str | None:
    """The C++ compiler torch's inductor would use on a CPU (``$CXX``, else g++ or clang++), or None."""
    for name in (os.environ.get("CXX"), "g++", "clang++"):
        if name and shutil.which(name):
            return name
    return None


def bf16_supported(device: torch.device) -> bool:
    """Whether ``device`` computes in bfloat16 natively (CUDA: compute capability 8.0 or newer, asked of
    that device, not the current one; emulated bf16, as torch accepts on a V100 or T4, does not count;
    CPU: AVX512-BF16 or AMX)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).major >= 8
    if device.type == "cpu":
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


def speed_problem(compile_mode: str, amp: str, devices: Iterable[torch.device]) -> str | None:
    """Why ``compile=compile_mode`` and ``amp=amp`` cannot run on ``devices`` (None when they can)."""
    devices = list(devices)
    if compile_mode != "off":
        if compile_mode == "reduce-overhead" and any(d.type != "cuda" for d in devices):
            cpus = ", ".join(sorted({str(d) for d in devices if d.type != "cuda"}))
            return (f"compile=reduce-overhead replays CUDA graphs, and {cpus} has none; use compile=default "
                    f"or max-autotune there")
        if any(d.type == "cpu" for d in devices) and cpp_compiler() is None:
            return (f"compile={compile_mode} on a CPU needs a C++ compiler for torch's inductor (g++ or clang++ "
                    f"on PATH, or $CXX); none found: install one or use compile=off")
    if amp == "bf16":
        lacking = sorted({str(d) for d in devices if not bf16_supported(d)})
        if lacking:
            return (f"amp=bf16: {', '.join(lacking)} has no native bfloat16 (CUDA needs Ampere or newer, a CPU "
                    f"AVX512-BF16 or AMX); use amp=off")
    return None


def matmul_precision(setting: str, devices: Iterable[torch.device]) -> str:
    """The float32 matmul precision a process computing on ``devices`` runs at: ``setting``, with auto as
    high (TF32 tensor cores) when one of them is a CUDA device and highest (exact float32) otherwise."""
    if setting != "auto":
        return setting
    return "high" if any(torch.device(d).type == "cuda" for d in devices) else "highest"


def set_matmul_precision(setting: str, devices: Iterable[torch.device]) -> str:
    """Set this process's float32 matmul precision for ``devices`` (:func:`matmul_precision`); returns it."""
    resolved = matmul_precision(setting, devices)
    torch.set_float32_matmul_precision(resolved)
    return resolved


class Speed:
    """How one worker runs its hot functions on ``device``: compiled under ``compile_mode``, forward
    passes under bf16 autocast when ``amp`` is bf16."""

    def __init__(self, compile_mode: str = "off", amp: str = "off", device: torch.device | str = "cpu") -> None:
        assert compile_mode in COMPILE_MODES and amp in AMP_MODES, (compile_mode, amp)
        self.compile_mode, self.amp, self.device = compile_mode, amp, torch.device(device)

    @property
    def compiling(self) -> bool:
        """Whether functions are compiled (``compile`` is not off)."""
        return self.compile_mode != "off"

    @property
    def cuda_graphs(self) -> bool:
        """Whether compiled functions replay CUDA graphs (reduce-overhead, which only CUDA devices run)."""
        return self.compile_mode == "reduce-overhead"

    def compile(self, fn: F, graphs: bool = True) -> F:
        """``fn`` compiled by torch.compile in this mode (``fn`` itself when compile is off).

        ``graphs=False`` for a function that reads what another compiled function of the same step
        returned (an optimiser step reading the gradients of the compiled loss): under reduce-overhead it
        is compiled in the default mode, without CUDA graphs, because entering a second CUDA-graph function
        after the backward starts a new CUDA-graph generation, which frees the first one's outputs."""
        if not self.compiling:
            return fn
        mode = self.compile_mode if graphs or not self.cuda_graphs else "default"
        return torch.compile(fn, mode=mode)  # type: ignore[return-value]

    def fused_optimizer(self, step_compiled: bool) -> bool | None:
        """The ``fused`` argument of this worker's Adam(W): True (torch's fused kernel, one pass over every
        parameter where the default runs a dozen tensor ops per parameter, several times faster per step on a
        CPU) on a CPU when the step runs eagerly, i.e. it is not compiled (``step_compiled`` false, or compile
        off); else None, torch's default, which torch.compile fuses itself and CUDA runs as foreach (left as it
        was where no CPU could measure it)."""
        eager = not (step_compiled and self.compiling)
        return True if eager and self.device.type == "cpu" else None

    def begin_step(self) -> None:
        """Mark a new step for CUDA graphs (reduce-overhead): the outputs of the last step's graphs may be
        overwritten from here on. Call first in each step of a worker; nothing happens in other modes."""
        if self.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()

    def kept(self, value: T) -> T:
        """``value`` (a tensor or a tuple of tensors, e.g. a loss) safe to keep past the next step: under
        CUDA graphs a clone, since the next replay overwrites a graph's outputs; else ``value`` itself."""
        if not self.cuda_graphs:
            return value
        if isinstance(value, torch.Tensor):
            return value.clone()  # type: ignore[return-value]
        cloned = (t.clone() if isinstance(t, torch.Tensor) else t for t in value)  # type: ignore[attr-defined]
        return tuple(cloned) if type(value) is tuple else type(value)(*cloned)  # type: ignore[return-value]

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """bf16 autocast on this device when amp is bf16; else nothing."""
        if self.amp == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()


@contextlib.contextmanager
def state_kept(modules: Iterable[nn.Module], optimizers: Iterable[torch.optim.Optimizer]) -> Iterator[None]:
    """Leave the parameters and buffers of ``modules`` and the states of ``optimizers`` as they were,
    whatever runs inside; restored in place (the same tensors, so compiled code keeps its guards).
    Optimiser state first created inside is zeroed, which is a fresh AdamW/Adam state; gradients are
    dropped."""
    modules, optimizers = list(modules), list(optimizers)
    tensors = [t for m in modules for t in (*m.parameters(), *m.buffers())]
    saved = [t.detach().clone() for t in tensors]
    before = [{id(p): {k: v.clone() if torch.is_tensor(v) else v for k, v in s.items()} for p, s in opt.state.items()}
              for opt in optimizers]
    try:
        yield
    finally:
        with torch.no_grad():
            for t, s in zip(tensors, saved, strict=True):
                t.copy_(s)
            for opt, old in zip(optimizers, before, strict=True):
                for p, state in opt.state.items():
                    for k, v in state.items():
                        if not torch.is_tensor(v):
                            continue
                        if id(p) in old:
                            v.copy_(old[id(p)][k])
                        else:
                            v.zero_()
                for group in opt.param_groups:
                    for p in group["params"]:
                        p.grad = None


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Restore ``state`` into ``optimizer``, keeping the implementation it was built with (``fused``,
    ``foreach``): torch would take the saved run's, which may have computed on another device or compiled."""
    built = [{key: group.get(key) for key in ("fused", "foreach")} for group in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, flags in zip(optimizer.param_groups, built, strict=True):
        group.update(flags)


def compilation_summary() -> dict[str, Any]:
    """This process's graph breaks (their count and reasons), CUDA-graph skips (functions replayed eagerly
    under reduce-overhead) and compiled graphs so far, from dynamo's and inductor's counters."""
    from torch._dynamo.utils import counters

    return {"graph_breaks": sum(counters["graph_break"].values()),
            "break_reasons": [f"{n}x {reason.splitlines()[0][:120]}" for reason, n in counters["graph_break"].items()],
            "cudagraph_skips": int(counters["inductor"]["cudagraph_skips"]),
            "graphs": int(counters["stats"]["unique_graphs"])}


@contextlib.contextmanager
def compilation_watched(who: str, compile_mode: str) -> Iterator[None]:
    """Around ``who``'s warm-up under ``compile_mode``: log graph breaks and functions left without CUDA
    graphs (with the reason) from its start, recompilations only after it (a warm-up's are expected, e.g.
    each optimiser's step compiles once for its own state); then say on stderr when compiled code broke
    into pieces or runs without its CUDA graphs, so a fall-back is never silent. Nothing when compile is off."""
    if compile_mode == "off":
        yield
        return
    torch._logging.set_logs(graph_breaks=True, cudagraphs=True)
    yield
    torch._logging.set_logs(graph_breaks=True, cudagraphs=True, recompiles=True)
    found = compilation_summary()
    if found["graph_breaks"] or found["cudagraph_skips"]:
        print(f"pql: {who}: compile={compile_mode} has {found['graph_breaks']} graph break(s) "
              f"({'; '.join(found['break_reasons'])}) and {found['cudagraph_skips']} CUDA-graph skip(s) (those "
              "parts run eagerly; the reasons are logged above)", file=sys.stderr, flush=True)


def timed_warm_up(calls: Iterable[Callable[[], Any]], device: torch.device) -> float:
    """Seconds taken by ``WARMUP_CALLS`` rounds of ``calls`` (device synchronised at the end)."""
    calls = list(calls)
    start = time.perf_counter()
    for _ in range(WARMUP_CALLS):
        for call in calls:
            call()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start
