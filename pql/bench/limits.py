"""Each worker against its bare limit, measured in one run (``python -m pql.bench``).

- **Simulator**: an embedded task's ``env.step`` (auto-reset, time limit, final observation)
  against its bare dynamics kernel (``_dynamics`` + ``_observe`` on a fixed state), at 4096 envs.
- **V-learner**: ``SyncTrainer.v_update()`` against a bare TD step of copies of the same networks
  on a fixed, pre-normalised batch of the same size, eager and compiled; and the **GEMM floor**:
  the same step's matrix multiplications alone (forward, backward, target and policy), which no
  fusion can remove, so ``bare eager / GEMM floor`` bounds what compilation can gain.
- **Actor**: ``ActorWorker.step()`` (normaliser update, noise, env step, returns, n-step window)
  against a bare policy forward plus env step, eager and compiled.

Every pair is timed in alternating blocks (:func:`interleaved`); medians are reported.
"""

from __future__ import annotations

import copy
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

import torch
from torch.nn import functional as F

from pql.envs import make_env
from pql.envs.classic import TorchClassicEnv
from pql.nets import Actor, TwinCritic
from pql.resolve import build_config
from pql.speed import Speed
from pql.store.run_dir import RunDir
from pql.training.sync import SyncTrainer
from pql.workers.actor import ActorWorker, to_env_units
from pql.workers.plan import plan_run

V_TASK = "classic/pendulum"
SIM_ENVS = 4096


def sync(device: torch.device) -> None:
    """Wait for queued kernels on ``device`` (no-op on cpu)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], n: int, device: torch.device) -> float:
    """Wall-clock seconds of ``n`` calls of ``fn``, with the device synchronised before and after."""
    sync(device)
    start = time.perf_counter()
    for _ in range(n):
        fn()
    sync(device)
    return time.perf_counter() - start


def calibrate(fn: Callable[[], object], device: torch.device, target_s: float) -> int:
    """Number of calls of ``fn`` that take about ``target_s``: one warm-up call, then a doubling probe."""
    timed(fn, 1, device)
    probe_s = min(0.25, target_s / 4)
    n = 1
    while (elapsed := timed(fn, n, device)) < probe_s:
        n *= 2
    return max(1, round(n * target_s / elapsed))


def interleaved(fns: dict[str, Callable[[], object]], device: torch.device, seconds: float,
                blocks: int) -> dict[str, float]:
    """Median seconds per call of each function, timed in alternating blocks of about ``seconds / blocks``.

    The order flips every block (A B, B A, ...) so neither side always runs first.
    """
    counts = {name: calibrate(fn, device, seconds / blocks) for name, fn in fns.items()}
    per_call: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    for b in range(blocks):
        for name in names if b % 2 == 0 else reversed(names):
            per_call[name].append(timed(fns[name], counts[name], device) / counts[name])
    return {name: statistics.median(ts) for name, ts in per_call.items()}


def build_trainer(overrides: dict[str, Any], device: torch.device, num_envs: int, out: str) -> SyncTrainer:
    """A real SyncTrainer for ``V_TASK`` with its preset plus ``overrides``, every part on ``device``."""
    dev = str(device)
    cfg = build_config({"task": V_TASK, "num_envs": num_envs, "max_time_s": 1, "progress": False, "out": out,
                        "device.sim": dev, "device.v_learner": dev, "device.p_learner": dev, **overrides})
    return SyncTrainer(plan_run(cfg), RunDir(out))


def fill_until_learning(trainer: SyncTrainer) -> None:
    """Step a SyncTrainer's actor until its learners learn and its V-learner's buffer holds a whole batch."""
    while not trainer.learning() or trainer.v.buffer.size < trainer.cfg.algo.batch_size:
        trainer.actor_step()


# -- simulator ------------------------------------------------------------------------------
def sim_vs_kernel(task: str, device: torch.device, seconds: float, blocks: int,
                  num_envs: int = SIM_ENVS) -> dict[str, float]:
    """Seconds per ``env.step`` and per bare kernel call of an embedded (classic/) task, fixed random actions."""
    env = make_env(task, num_envs, device=device, seed=0)
    assert isinstance(env, TorchClassicEnv), f"{task}: only embedded tasks expose their kernel"
    env.reset()
    u = torch.rand(num_envs, env.act_dim, generator=torch.Generator(device=device).manual_seed(0), device=device)
    actions = env.action_low + u * (env.action_high - env.action_low)
    state = env.state

    def kernel() -> None:
        next_state, _, _ = env._dynamics(state, actions)
        env._observe(next_state)

    return interleaved({"env": lambda: env.step(actions), "kernel": kernel}, device, seconds, blocks)


# -- V-learner ------------------------------------------------------------------------------
class BareCriticStep:
    """The TD step alone, on deep copies of a trainer's V-learner networks and a fixed batch.

    No sampling, normalisation, target noise, clipping, target update or publishing:
    target = ret + discount * min(Q1', Q2')(next_obs, policy(next_obs)), MSE, AdamW step.
    Compiled like the V-learner (the loss, then the optimiser step) unless ``compile_mode`` is off.
    """

    def __init__(self, trainer: SyncTrainer, compile_mode: str = "off", seed: int = 1) -> None:
        v = trainer.v
        self.critic = copy.deepcopy(v.critic)
        self.target = copy.deepcopy(v.target)
        self.policy = copy.deepcopy(v.policy)
        device = next(self.critic.parameters()).device
        fused = Speed(compile_mode, device=device).fused_optimizer(step_compiled=True)  # the V-learner's AdamW
        self.optimizer = torch.optim.AdamW(self.critic.parameters(), lr=v.cfg.critic_lr, fused=fused)
        with torch.no_grad():
            batch = v.buffer.sample(v.cfg.batch_size, torch.Generator(device=device).manual_seed(seed))
            self.obs, self.next_obs = v.normalizer(batch["obs"]), v.normalizer(batch["next_obs"])
        self.action, self.ret, self.discount = batch["action"], batch["ret"], batch["discount"]
        compiling = compile_mode != "off"
        self._loss = torch.compile(self.loss, mode=compile_mode) if compiling else self.loss
        self._step = torch.compile(self.optimizer.step, mode=compile_mode) if compiling else self.optimizer.step

    def loss(self) -> torch.Tensor:
        """The V-update's TD loss on the fixed batch, as the V-learner computes it."""
        with torch.no_grad():
            next_action = self.policy(self.next_obs).clamp(-1.0, 1.0)
            y = self.ret + self.discount * self.target(self.next_obs, next_action).min(0).values
        pred = self.critic(self.obs, self.action)
        return F.mse_loss(pred, y.expand_as(pred))

    def __call__(self) -> None:
        """One bare forward + backward + AdamW step."""
        loss = self._loss()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self._step()


class GemmFloor:
    """The matrix multiplications of one bare TD step, alone: per critic layer the forward batched
    matmul and the two of its backward, the target critic's forward, and the policy's forward, on
    random tensors of the step's shapes."""

    def __init__(self, trainer: SyncTrainer) -> None:
        v, device = trainer.v, trainer.v.device
        b = v.cfg.batch_size
        critic, policy = v.critic, v.policy
        assert isinstance(critic, TwinCritic) and isinstance(policy, Actor), "the floor knows PQL's networks"

        def rand(*shape: int) -> torch.Tensor:
            return torch.randn(*shape, device=device)

        self.ops: list[Callable[[], object]] = []
        for layer in critic.layers:
            e, n_in, n_out = layer.weight.shape
            x, w, g = rand(e, b, n_in), rand(e, n_in, n_out), rand(e, b, n_out)
            self.ops += [lambda x=x, w=w: torch.bmm(x, w)] * 2  # critic and target forward
            self.ops += [lambda g=g, w=w: torch.bmm(g, w.transpose(1, 2)),  # grad of the input
                         lambda x=x, g=g: torch.bmm(x.transpose(1, 2), g)]  # grad of the weight
        for layer in (m for m in policy.modules() if isinstance(m, torch.nn.Linear)):
            x, w = rand(b, layer.in_features), rand(layer.in_features, layer.out_features)
            self.ops.append(lambda x=x, w=w: torch.mm(x, w))

    def __call__(self) -> None:
        """Every op of the kernel once."""
        for op in self.ops:
            op()


def v_update_vs_bare(overrides: dict[str, Any], device: torch.device, num_envs: int, fill_steps: int,
                     seconds: float, blocks: int, compile_modes: list[str], amp: str = "off") -> dict[str, Any]:
    """Per-update seconds of the trainer's V-update and the bare step, eager and under each compile mode,
    and of the GEMM floor; plus the networks' sizes."""
    out: dict[str, Any] = {}
    for mode in ["off", *compile_modes]:
        with tempfile.TemporaryDirectory(prefix="pql-bench-") as run:
            trainer = build_trainer({**overrides, "compile": mode, "amp": amp}, device, num_envs, run)
            for _ in range(fill_steps):
                trainer.actor_step()
            trainer.v.warm_up()
            bare = BareCriticStep(trainer, mode)
            fns: dict[str, Callable[[], object]] = {"trainer": trainer.v_update, "bare": bare}
            if mode == "off":
                fns["gemm"] = GemmFloor(trainer)
            t = interleaved(fns, device, seconds, blocks)
            out.update({f"{name}_{mode}": value for name, value in t.items()})
            algo, d, a = trainer.cfg.algo, trainer.env.obs_dim, trainer.env.act_dim
            out.update(batch=algo.batch_size, actor="-".join(map(str, (d, *algo.actor_hidden, a))),
                       critic="2x " + "-".join(map(str, (d + a, *algo.critic_hidden, 1))))
    return out


# -- actor ----------------------------------------------------------------------------------
class BarePolicyStep:
    """The actor's step alone: eager policy forward on the normalised observation, env step (copies of
    the actor's policy and normaliser, the actor's envs)."""

    def __init__(self, actor: ActorWorker) -> None:
        self.env, self.policy = actor.env, copy.deepcopy(actor.policy)
        self.normalizer = copy.deepcopy(actor.normalizer)
        self.obs = self.env.reset()

    @torch.no_grad()
    def __call__(self) -> None:
        """One bare policy forward and env step."""
        env = self.env
        env.step(to_env_units(self.policy(self.normalizer(self.obs)), env.action_low, env.action_high))


def actor_vs_bare(task: str, device: torch.device, num_envs: int, seconds: float, blocks: int,
                  compile_modes: list[str]) -> dict[str, float]:
    """Seconds per ``ActorWorker.step()`` (eager and under each compile mode) and per bare policy
    forward + env step, on ``task``'s preset networks."""
    out: dict[str, float] = {}
    for mode in ["off", *compile_modes]:
        with tempfile.TemporaryDirectory(prefix="pql-bench-") as run:
            cfg = build_config({"task": task, "num_envs": num_envs, "max_time_s": 1, "progress": False, "out": run,
                                "compile": mode, "device.sim": str(device), "device.v_learner": str(device),
                                "device.p_learner": str(device)})
            trainer = SyncTrainer(plan_run(cfg), RunDir(run))
            actor = trainer.actor
            actor.warm_up()
            fns: dict[str, Callable[[], object]] = {"actor": actor.step}
            if mode == "off":
                fns["bare"] = BarePolicyStep(actor)
            t = interleaved(fns, device, seconds, blocks)
            out.update({f"{name}_{mode}": value for name, value in t.items()})
    return out
