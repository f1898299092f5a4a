"""Devices: which ones a run uses, what hardware they are, seeded generators on them."""

from __future__ import annotations

import hashlib
import platform

import torch

from pql.config import Config

GPU_BACKENDS = ("isaacgym/", "isaaclab/")  # task prefixes whose simulator runs on an NVIDIA GPU only


def resolve_devices(cfg: Config) -> tuple[torch.device, torch.device, torch.device]:
    """(sim, v_learner, p_learner) devices, with 'auto' filled in from the GPUs present."""
    gpus = torch.cuda.device_count()
    sim = cfg.device.sim if cfg.device.sim != "auto" else ("cuda:0" if gpus else "cpu")
    v = cfg.device.v_learner if cfg.device.v_learner != "auto" else ("cuda:1" if gpus >= 2 else sim)
    p = cfg.device.p_learner if cfg.device.p_learner != "auto" else v
    return torch.device(sim), torch.device(v), torch.device(p)


def use_device(device: torch.device) -> None:
    """Make ``device`` this process's current CUDA device (``cuda`` without an index is ``cuda:0``, as
    everywhere in torch); nothing for other devices."""
    if device.type == "cuda":
        torch.cuda.set_device(0 if device.index is None else device.index)


def named_gpus(cfg: Config) -> int:
    """One more than the highest CUDA index the ``device.*`` keys name (``cuda`` is index 0); 0 for none."""
    named = [torch.device(d) for d in (cfg.device.sim, cfg.device.v_learner, cfg.device.p_learner) if d != "auto"]
    return max((1 + (d.index or 0) for d in named if d.type == "cuda"), default=0)


def missing_gpus(cfg: Config) -> str | None:
    """Why this machine cannot place ``cfg``'s devices (a ``cuda:K`` beyond the GPUs torch counts here), or None."""
    need, have = named_gpus(cfg), torch.cuda.device_count()
    if need > have:
        return f"device.* names cuda:{need - 1}, and this machine shows {have} GPU(s)"
    return None


def gpus_needed(cfg: Config) -> int:
    """How many GPUs a run of ``cfg`` asks a scheduler for: one more than the highest CUDA index its
    ``device.*`` keys name (``cuda`` is index 0, so ``cuda:1`` asks for 2), and at least one when it sets
    ``gpu_model`` or its backend runs on a GPU only (:data:`GPU_BACKENDS`); 0 for a CPU run (``auto``
    names no device: with no GPU given, it resolves to the CPU)."""
    count = named_gpus(cfg)
    if cfg.gpu_model is not None or cfg.task.startswith(GPU_BACKENDS):
        count = max(count, 1)
    return count


def device_name(device: torch.device) -> str:
    """A readable name of the hardware behind ``device`` (the GPU model for CUDA devices)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{device.type} ({platform.processor() or platform.machine()})"


def gpu_mismatch(gpu_model: str | None, devices: tuple[torch.device, ...]) -> str | None:
    """Why ``devices`` do not satisfy ``gpu_model`` (None when they do or when any device will do)."""
    if gpu_model is None:
        return None
    want = gpu_model.lower().replace(" ", "").replace("-", "")
    names = [device_name(d) for d in devices]
    if all(want in n.lower().replace(" ", "").replace("-", "") for n in names):
        return None
    return f"gpu_model={gpu_model} asked for, but this machine offers {', '.join(sorted(set(names)))}"


def seeded_generator(device: torch.device, seed: int) -> torch.Generator:
    """A torch.Generator on ``device`` seeded with ``seed``."""
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return g


def set_generator_state(generator: torch.Generator, state: torch.Tensor) -> None:
    """Restore ``generator`` to a saved ``state``. A state saved on another device type does not fit (a CPU
    generator's mt19937 state is 5056 bytes, a CUDA one's Philox seed and offset 16): the generator is then
    seeded from that state's bytes instead, so a run resumed on another device type continues, the same way
    each time it is resumed from the same checkpoint (``status.json`` says so: see RunLoop.load_state_dict)."""
    if state.numel() == generator.get_state().numel():
        generator.set_state(state)
        return
    digest = hashlib.sha256(state.cpu().numpy().tobytes()).digest()
    generator.manual_seed(int.from_bytes(digest[:8], "little") >> 1)
