"""How much memory a run will need on each of its devices, from its config and its task's sizes.

A pure count of what the builders allocate (:mod:`pql.training.sync`, :mod:`pql.training.parallel`,
:mod:`pql.training.on_policy`), in float32 (4 bytes) unless said otherwise. D = observation size,
A = action size, N = ``num_envs``, C = ``algo.buffer_size``, B = ``algo.batch_size``,
W = 2D + A + 2 (a packed n-step transition, :meth:`pql.buffers.Transitions.packed`).

Persistent parts (held for the whole run): the V-learner's replay buffer ``[C, W]`` and the
P-learner's observation buffer ``[C, D]``; every network and its copies (weights, target,
gradients, the optimiser's two moments, the :class:`~pql.workers.exchange.ModuleSlot` snapshots, the
copies of the other workers and the evaluator, and in ``mode=async`` the parent's); the n-step
window ``[n, N, ...]``; the :class:`~pql.workers.exchange.TransitionRing` ``[8, N, W]`` (async only); the
actor's observations, noise and returns ``[N, ...]``; PPO's rollout ``[horizon x N, ...]``; and
the simulator's state, for the embedded ``classic/`` tasks only.

Transient parts (one update, one actor step): the activations a forward pass keeps for its
backward (each layer's input, each hidden layer before and after its ELU, the output; the
twin critic twice), doubled for the gradients the backward pass holds; the sampled batch.
Transient parts are added to the persistent ones although their peaks need not coincide, so
the total leans high.

On each GPU, a CUDA context per process that touches it (:data:`CUDA_CONTEXT_BYTES`): one process in
sync mode and PPO's; in ``mode=async`` the parent and the three workers, each of which maps every shared
tensor, so four on every GPU the run uses.

Not counted: the simulator of the other backends (MuJoCo Playground / JAX, Isaac Gym, Isaac
Lab, gymnasium), whose memory the config does not tell; the allocator's caching and fragmentation;
Python and its libraries.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import pairwise

import torch
from torch import nn

from pql.algos import algorithm
from pql.algos.base import Algorithm
from pql.buffers import batch_rows
from pql.config import Config
from pql.devices import resolve_devices
from pql.nets import TwinCritic
from pql.training.parallel import RING_SLOTS

FLOAT = 4  # bytes of a float32
BACKWARD = 2  # the backward pass holds about as many gradient floats as the forward pass kept activations
ROLES = ("sim", "v_learner", "p_learner")
GIB = 2**30
# One process's CUDA context on one GPU: 527 MiB measured on an H200 with torch 2.11 and CUDA 13 (make gpu-check,
# README); it varies with the CUDA version, the GPU and the kernels loaded.
CUDA_CONTEXT_BYTES = 512 * 2**20

# GPU memory by model (``gpu_model`` of a cell), in GiB, and a note where the model comes in several sizes.
GPU_MEMORY_GIB: dict[str, tuple[float, str]] = {
    "A100": (80, "40 or 80 GB: taken as 80"),
    "H100": (80, ""),
    "H200": (141, ""),
    "V100": (32, "16 or 32 GB: taken as 32"),
    "RTX4090": (24, ""),
    "RTX3090": (24, ""),
    "L40S": (48, ""),
    "A6000": (48, ""),
}


@dataclass(frozen=True)
class TaskDims:
    """What the estimate needs to know of a task, read from one instance of it built on the CPU."""

    obs_dim: int | None = None
    act_dim: int | None = None
    sim_bytes_per_env: int | None = None  # state the simulator holds per env; None: not estimated
    problem: str | None = None  # why the task's sizes are unknown (the backend is not installed, ...)


def probe_task(task: str) -> TaskDims:
    """The sizes of ``task``, from one environment built on the CPU; never raises (a failure is the
    ``problem``). The simulator's own memory per environment is known for the ``classic/`` tasks only."""
    from pql.envs import make_env
    from pql.envs.classic import TorchClassicEnv

    try:
        env = make_env(task, 1, device="cpu")
    except Exception as err:  # noqa: BLE001 - any backend failure leaves the sizes unknown, never the dry run failed
        first = str(err).splitlines()[0] if str(err) else ""
        return TaskDims(problem=f"{type(err).__name__}: {first}")
    per_env = env.bytes_per_env if isinstance(env, TorchClassicEnv) else None
    return TaskDims(env.obs_dim, env.act_dim, per_env)


@dataclass(frozen=True)
class Component:
    """One allocation (or group of like allocations) of a worker role."""

    role: str  # sim (simulator, actor, evaluator), v_learner or p_learner
    name: str
    nbytes: int
    hint: str  # what lowers it
    transient: bool = False  # activations of one update or one step, not held between them


@dataclass(frozen=True)
class MemoryEstimate:
    """A run's memory: its components, and the device of each role (roles on one device add up)."""

    devices: dict[str, str]  # role -> device, e.g. {"sim": "cpu", "v_learner": "cuda:1", ...}
    components: tuple[Component, ...] = ()
    simulator_estimated: bool = True  # False: the simulator's own memory is not in the sim role
    problem: str | None = None  # why nothing could be estimated

    def role_bytes(self, role: str, transient: bool = True) -> int:
        """Bytes of ``role``; ``transient=False``: only its persistent parts."""
        return sum(c.nbytes for c in self.components if c.role == role and (transient or not c.transient))

    def device_bytes(self) -> dict[str, int]:
        """Bytes per device, the roles on one device added up (empty when nothing could be estimated)."""
        totals: dict[str, int] = {}
        if self.problem is None:
            for role, device in self.devices.items():
                totals[device] = totals.get(device, 0) + self.role_bytes(role)
        return totals

    def biggest(self, device: str) -> Component:
        """The largest component on ``device``."""
        return max((c for c in self.components if self.devices[c.role] == device), key=lambda c: c.nbytes)


def mlp_params(sizes: Sequence[int], layer_norm: bool = False) -> int:
    """Parameters of :func:`pql.nets.mlp` (linear layers of ``sizes``, with biases; with ``layer_norm`` a scale
    and a shift per hidden unit)."""
    return sum(a * b + b for a, b in pairwise(sizes)) + (2 * sum(sizes[1:-1]) if layer_norm else 0)


# Floats per hidden unit a LayerNorm adds to what an MLP's forward keeps (measured with autograd's saved-tensor
# hooks, tests/test_memory.py): torch's fused nn.LayerNorm its output, pql.nets.EnsembleLayerNorm (a functional
# layer_norm, then its members' scales and shifts) its normalised and its scaled output; a frozen copy's only
# the scaled one.
LAYER_NORM_FLOATS = {"mlp": 1, "ensemble": 2, "frozen ensemble": 1}


def train_floats(rows: int, sizes: Sequence[int], ensemble: int = 1, frozen: bool = False,
                 norm_floats: int = 0) -> int:
    """Floats a forward pass keeps for its backward through an MLP of ``sizes`` with ELU between layers, for
    ``rows`` inputs and ``ensemble`` stacked copies: the input, each hidden layer's output before and after
    its ELU, and the output; for a ``frozen`` MLP (gradients for its input only, not its weights), only each
    hidden layer's output before its ELU. A LayerNorm before each activation keeps ``norm_floats`` more per
    hidden unit (:data:`LAYER_NORM_FLOATS`) and a mean and inverse std per row of each hidden layer."""
    hidden = sizes[1:-1]
    norms = ensemble * rows * (norm_floats * sum(hidden) + 2 * len(hidden)) if norm_floats else 0
    if frozen:
        return ensemble * rows * sum(hidden) + norms
    return ensemble * rows * (sizes[0] + 2 * sum(hidden) + sizes[-1]) + norms


def inference_floats(rows: int, sizes: Sequence[int]) -> int:
    """Peak floats of a forward pass without gradients: two consecutive layers' outputs at a time."""
    return rows * max(a + b for a, b in pairwise(sizes))


def normalizer_bytes(obs_dim: int) -> int:
    """A :class:`~pql.normalizer.RunningNormalizer`: mean and var ``[D]`` float32, count float64."""
    return 2 * obs_dim * FLOAT + 8


@dataclass(frozen=True)
class TrainerMemory:
    """What a trainer (``Algorithm.trainer``) holds: the roles it places, the exploration noise std its actor
    keeps per env, and its parts beyond the simulator's."""

    roles: tuple[str, ...]
    noise_bytes_per_env: int
    parts: Callable[[Config, Algorithm, int, int], list[Component]]


def estimate(cfg: Config, dims: TaskDims) -> MemoryEstimate:
    """The memory of a run of ``cfg`` on a task of ``dims`` (see the module docstring for what is counted)."""
    declared = algorithm(cfg.algo.name)
    trainer = TRAINER_MEMORY[declared.trainer]
    placed = dict(zip(ROLES, (str(d) for d in resolve_devices(cfg)), strict=True))
    devices = {role: placed[role] for role in trainer.roles}
    if dims.obs_dim is None or dims.act_dim is None:
        return MemoryEstimate(devices, problem=f"task dims unknown ({dims.problem})")
    d, a = dims.obs_dim, dims.act_dim
    parts = _simulator(cfg, d, a, dims.sim_bytes_per_env, trainer.noise_bytes_per_env)
    parts += trainer.parts(cfg, declared, d, a)
    parts += _cuda_contexts(devices, 1 + len(ROLES) if cfg.mode == "async" and trainer.roles == ROLES else 1)
    return MemoryEstimate(devices, tuple(parts), simulator_estimated=dims.sim_bytes_per_env is not None)


def _cuda_contexts(devices: dict[str, str], processes: int) -> list[Component]:
    """``processes`` CUDA contexts on each GPU among ``devices`` (role -> device), each counted under the first
    role placed there."""
    first: dict[str, str] = {}
    for role, device in devices.items():
        if device.startswith("cuda"):
            first.setdefault(device if ":" in device else f"{device}:0", role)  # cuda is cuda:0
    return [Component(role, f"CUDA contexts ({processes} process{'es' if processes > 1 else ''})",
                      processes * CUDA_CONTEXT_BYTES, "mode=sync runs one process" if processes > 1 else "none")
            for role in first.values()]


def _simulator(cfg: Config, d: int, a: int, per_env: int | None, noise_per_env: int) -> list[Component]:
    """The training and evaluation environments' state (classic/ only) and the actor's ``[N, ...]`` tensors."""
    n, evals = cfg.num_envs, cfg.eval_envs
    parts = []
    if per_env is not None:  # each env object also holds action_low and action_high [A]
        envs = 1 + (evals > 0)
        parts.append(Component("sim", "simulator state", (n + evals) * per_env + envs * 2 * a * FLOAT,
                               "lower num_envs"))
    # observations to act on [N, D], the exploration std [N] where the actor keeps one, and the running returns
    # [N], split between the exploring envs and the evaluation slice, each part with a float64 and an int64 tally;
    # with noise.correlation, each env's last noise [N, A] and whether its noise restarts [N, 1] (bool)
    correlated = n * (a * FLOAT + 1) if noise_per_env and cfg.noise.correlation else 0
    parts.append(Component("sim", "actor state (obs, noise std, returns)",
                           n * (d + 1) * FLOAT + n * noise_per_env + 32 + correlated, "lower num_envs"))
    return parts


def layer_norm_floats(layer_norm: bool) -> dict[str, int]:
    """:data:`LAYER_NORM_FLOATS` with ``algo.layer_norm``, else none kept by any kind of network."""
    return LAYER_NORM_FLOATS if layer_norm else dict.fromkeys(LAYER_NORM_FLOATS, 0)


def _off_policy(cfg: Config, declared: Algorithm, d: int, a: int) -> list[Component]:
    """The actor-critic trainer (PQL, PQL-D, DDPG(n), SAC(n)): the actor, V-learner and P-learner of
    :mod:`pql.workers.builders`, in either mode, with the algorithm's own policy, critic head and objective."""
    algo, n = cfg.algo, cfg.num_envs
    ln = layer_norm_floats(algo.layer_norm)
    envs = n if algo.per_env_sampling else 1  # a buffer sampled per env: whole steps, E x max(1, B // E) rows
    b, capacity = batch_rows(algo.batch_size, envs), algo.buffer_size - algo.buffer_size % envs
    run_async, evals = cfg.mode == "async", int(cfg.eval_envs > 0)
    with torch.device("meta"):  # the algorithm's own policy, head and objective, sized without allocating
        net = declared.make_policy(algo, d, a)
        critic_net = TwinCritic(d, a, algo.critic_hidden, declared.head(algo, "meta").out_features,
                                algo.activation, algo.layer_norm, declared.temperature(algo, a))
        stochastic = declared.objective(net, critic_net, algo).stochastic  # samples: a Gaussian's terms per row
    head = declared.head(algo, "meta")
    out = [m for m in net.modules() if isinstance(m, nn.Linear)][-1].out_features
    k = head.out_features
    policy_sizes = [d, *algo.actor_hidden, out]
    critic_sizes = [d + a, *algo.critic_hidden, k]
    policy = sum(p.numel() for p in net.parameters()) * FLOAT  # SAC's: with log_alpha
    critic = 2 * mlp_params(critic_sizes, algo.layer_norm) * FLOAT  # twin
    norm = normalizer_bytes(d)
    atoms = sum(t.numel() for t in vars(head).values() if isinstance(t, torch.Tensor)) * FLOAT  # C51's [K]
    width = 2 * d + a + 2
    gaussian = 8 * a if stochastic else 0  # per row: its sample's mean, log std, eps, u, log-prob terms
    parent = " (+ the parent's)" if run_async else ""
    parts = [
        Component("sim", "n-step window", algo.nstep * n * ((2 * d + a + 1) * FLOAT + 2) + algo.nstep * FLOAT,
                  "lower num_envs or algo.nstep"),
        Component("sim", "policy copies (actor, evaluator)", (1 + evals) * policy, "narrower algo.actor_hidden"),
        Component("sim", "normaliser copies", (2 + evals + run_async) * norm, "small"),
        Component("sim", "actor step (policy forward, packed transitions)",
                  n * (inference_floats(1, policy_sizes) + d + a + width + gaussian + 4 * algo.nstep) * FLOAT,
                  "lower num_envs", transient=True),
        Component("v_learner", "replay buffer", capacity * width * FLOAT, "lower algo.buffer_size"),
        Component("v_learner", f"critic: weights, target, grads, AdamW moments, slot{parent}",
                  (6 + run_async) * critic, "narrower algo.critic_hidden"),
        Component("v_learner", "policy and normaliser copies", policy + norm + atoms, "narrower algo.actor_hidden"),
        Component("v_learner", f"critic update activations (batch {b})",
                  (b * (width + 2 * d)  # the sampled rows and the normalised obs, next_obs
                   + b * (a + gaussian) + 2 * b * k  # target action, target critic output
                   + BACKWARD * train_floats(b, critic_sizes, 2, norm_floats=ln["ensemble"])
                   + (8 * b * k if k > 1 else 0)  # C51: target probs, projection, log-softmax
                   + (3 * b * k if getattr(head, "pick_after_projection", False) else 0)) * FLOAT,  # both projected
                  "lower algo.batch_size", transient=True),
        Component("p_learner", "observation buffer", capacity * d * FLOAT, "lower algo.buffer_size"),
        Component("p_learner", f"policy: weights, grads, AdamW moments, slot{parent}", (5 + run_async) * policy,
                  "narrower algo.actor_hidden"),
        Component("p_learner", "critic and normaliser copies", critic + norm + atoms, "narrower algo.critic_hidden"),
        Component("p_learner", f"policy update activations (batch {b})",
                  (2 * b * d + b * gaussian  # the sampled and normalised obs
                   + BACKWARD * (train_floats(b, policy_sizes, norm_floats=ln["mlp"]) + b * a
                                 + train_floats(b, critic_sizes, 2, frozen=True,  # the critic copy is frozen
                                                norm_floats=ln["frozen ensemble"]))
                   + (4 * b * k if k > 1 else 0)) * FLOAT,  # C51: softmax and expected values
                  "lower algo.batch_size", transient=True),
    ]
    if run_async:
        parts.append(Component("sim", f"transition ring ({RING_SLOTS} actor steps)", RING_SLOTS * n * width * FLOAT,
                               "lower num_envs"))
    return parts


def _on_policy(cfg: Config, declared: Algorithm, d: int, a: int) -> list[Component]:
    """The on-policy trainer (PPO's, :class:`pql.training.on_policy.PPOTrainer`): everything on the simulation
    device."""
    algo, ppo, n = cfg.algo, cfg.algo.ppo, cfg.num_envs
    rows, m = ppo.horizon * n, ppo.minibatch_size
    policy_sizes, value_sizes = [d, *algo.actor_hidden, a], [d, *algo.critic_hidden, 1]
    ln = layer_norm_floats(algo.layer_norm)
    params = mlp_params(policy_sizes, algo.layer_norm) + a + mlp_params(value_sizes, algo.layer_norm)  # + log std
    step = (d + 2 * a + 4) * FLOAT + 2  # per env and step: obs, action, mean, 4 scalars, 2 bools
    # stacked but not kept in the rollout: reward, final value, bootstrapped reward; terminated, truncated, done
    unkept = 3 * FLOAT + 3
    return [
        Component("sim", f"rollout ({ppo.horizon} x {n} rows)", rows * (d + 3 * a + 4) * FLOAT,
                  "lower num_envs or algo.ppo.horizon"),
        Component("sim", "policy and value: weights, grads, Adam moments", 4 * params * FLOAT,
                  "narrower algo.actor_hidden / algo.critic_hidden"),
        Component("sim", "normalisers", normalizer_bytes(d) + normalizer_bytes(1), "small"),
        Component("sim", "rollout collection (per-step tensors and their stacks)", rows * (step + unkept),
                  "lower num_envs or algo.ppo.horizon", transient=True),
        Component("sim", f"update activations (minibatch {m})",
                  rows * (2 * FLOAT + 8)  # value targets, old values, the shuffled order (int64)
                  + (m * (d + 3 * a + 4 + 6 * a)  # the minibatch's rows, the distributions' terms
                     + BACKWARD * (train_floats(m, policy_sizes, norm_floats=ln["mlp"])
                                   + train_floats(m, value_sizes, norm_floats=ln["mlp"]))) * FLOAT,
                  "lower algo.ppo.minibatch_size", transient=True),
    ]


TRAINER_MEMORY = {
    "actor-critic": TrainerMemory(ROLES, FLOAT, _off_policy),
    "on-policy": TrainerMemory(("sim",), 0, _on_policy),
}


@dataclass(frozen=True)
class Capacity:
    """How much memory a device has, and where that number comes from."""

    nbytes: int
    source: str  # e.g. "host memory", "NVIDIA H100 80GB HBM3", "A100 (40 or 80 GB: taken as 80)"


def gpu_model_capacity(model: str) -> Capacity | None:
    """The memory of GPU ``model`` (matched ignoring case, spaces and hyphens); None for a model not known."""
    key = model.upper().replace(" ", "").replace("-", "")
    if key not in GPU_MEMORY_GIB:
        return None
    gib, note = GPU_MEMORY_GIB[key]
    return Capacity(int(gib * GIB), f"{key} ({note})" if note else key)


def device_capacity(device: str, gpu_model: str | None, host_gib: float | None,
                    local_gpus: bool = True) -> Capacity | None:
    """The memory of ``device`` for a cell asking for ``gpu_model``: ``host_gib`` for the CPU; the model's
    for a GPU of a known ``gpu_model``; else, with ``local_gpus``, that of the GPU of this machine. None
    when it is not known (no check)."""
    if device.startswith("cpu"):
        return None if host_gib is None else Capacity(int(host_gib * GIB), "host memory")
    if gpu_model is not None:
        return gpu_model_capacity(gpu_model)
    index = torch.device(device).index or 0
    if local_gpus and device.startswith("cuda") and index < torch.cuda.device_count():
        props = torch.cuda.get_device_properties(index)
        return Capacity(props.total_memory, props.name)
    return None


def size_text(nbytes: int) -> str:
    """``nbytes`` in KiB, MiB or GiB, one decimal."""
    for unit, scale in (("GiB", GIB), ("MiB", 2**20)):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{nbytes / 2**10:.1f} KiB"


def misfits(est: MemoryEstimate, capacity: Callable[[str], Capacity | None]) -> list[str]:
    """One line per device whose estimate exceeds its ``capacity`` (None: unknown, not checked): the
    device, needed vs available GiB, and the biggest component with what lowers it."""
    problems = []
    for device, need in est.device_bytes().items():
        cap = capacity(device)
        if cap is not None and need > cap.nbytes:
            big = est.biggest(device)
            problems.append(f"needs {need / GIB:.1f} GiB on {device} but {cap.source} has {cap.nbytes / GIB:.1f} "
                            f"GiB; biggest: {big.name} {size_text(big.nbytes)} ({big.role}): {big.hint}")
    return problems


def summary(est: MemoryEstimate, capacity: Callable[[str], Capacity | None]) -> str:
    """One line: each role's device and memory, then each device's total against its capacity."""
    if est.problem is not None:
        return est.problem
    roles = []
    for role, device in est.devices.items():
        extra = " + simulator (not estimated)" if role == "sim" and not est.simulator_estimated else ""
        roles.append(f"{role} {device} {size_text(est.role_bytes(role))}{extra}")
    totals = []
    for device, need in est.device_bytes().items():
        cap = capacity(device)
        totals.append(f"{device} {size_text(need)} of {size_text(cap.nbytes)} ({cap.source})" if cap is not None
                      else f"{device} {size_text(need)} (capacity unknown)")
    return ", ".join(roles) + "; " + ", ".join(totals)
