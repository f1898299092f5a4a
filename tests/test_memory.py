"""The memory estimate (``pql/ablate/memory.py``) against what the real workers hold, and its place in
``pql ablate --dry-run``.

The persistent parts are compared with the bytes of every tensor the built workers hold after one update of
each learner (parameters, gradients, optimiser state, buffers, normalisers, window, ring, environments).
Activations cannot be seen that way: they are compared with the tensors autograd saves during one update.
"""

import re
import types
from pathlib import Path
from typing import NamedTuple

import pytest
import torch
import torch.multiprocessing as mp

import pql.envs
from pql.ablate.memory import (
    Capacity,
    Component,
    MemoryEstimate,
    TaskDims,
    device_capacity,
    estimate,
    gpu_model_capacity,
    misfits,
    probe_task,
    size_text,
)
from pql.ablate.runner import describe_memory, plan_study
from pql.cli import main
from pql.config import ConfigError
from pql.resolve import build_config
from pql.store.run_dir import RunDir
from pql.training.on_policy import PPOTrainer
from pql.training.parallel import ProcessTrainer
from pql.training.processes import ActorRole, LearnerRole
from pql.training.sync import SyncTrainer
from pql.workers.plan import plan_run

TINY_STUDY = Path(__file__).parent / "data" / "tiny_study.yaml"
# Networks and buffer of similar sizes, so that a network copy too many or a buffer column too wide shows.
SMALL = {"task": "classic/pendulum", "num_envs": "32", "eval_envs": "8", "max_env_steps": "1000",
         "algo.actor_hidden": "[64,64]", "algo.critic_hidden": "[64,64]", "algo.batch_size": "64",
         "algo.buffer_size": "2048", "progress": "false"}
ATOMIC = (str, bytes, int, float, bool, complex, type(None), type, types.ModuleType, types.FunctionType,
          types.BuiltinFunctionType, types.MethodType, torch.Generator, torch.device, torch.dtype, Path)


class TensorBytes:
    """Bytes of the distinct tensor storages reachable from objects (through attributes, containers,
    module parameters and their gradients, optimiser state); a storage is counted once across calls."""

    def __init__(self) -> None:
        self.storages: set[tuple[str, int]] = set()
        self.visited: set[int] = set()

    def __call__(self, *roots: object) -> int:
        return sum(self._visit(root) for root in roots)

    def _visit(self, obj: object) -> int:
        if id(obj) in self.visited or isinstance(obj, ATOMIC):
            return 0
        self.visited.add(id(obj))
        if isinstance(obj, torch.Tensor):
            storage = obj.untyped_storage()
            key = (str(obj.device), storage.data_ptr())
            own = 0
            if storage.nbytes() and key not in self.storages:
                self.storages.add(key)
                own = storage.nbytes()
            return own + (self._visit(obj.grad) if obj.grad is not None else 0)
        if isinstance(obj, dict):
            return sum(self._visit(k) + self._visit(v) for k, v in obj.items())
        if isinstance(obj, (list, tuple, set, frozenset)):
            return sum(self._visit(v) for v in obj)
        return self._visit(vars(obj)) if hasattr(obj, "__dict__") else 0


def _config(algo: str, mode: str, **extra: str):
    return build_config({**SMALL, "algo": algo, "mode": mode, **extra})


def _persistent(est: MemoryEstimate, role: str) -> int:
    return est.role_bytes(role, transient=False)


def _counters(optimizers: list, slots: list, rings: tuple = ()) -> int:
    """Bytes of the counters the estimate leaves out: each optimiser's step per parameter (a float32 scalar,
    on the CPU), each slot's version and each ring's read and write counts (int64)."""
    steps = sum(state["step"].nbytes for opt in optimizers if opt is not None for state in opt.state.values())
    return steps + sum(s._version.nbytes for s in slots) + sum(r.written.nbytes + r.taken.nbytes for r in rings)


class Measured(NamedTuple):
    roles: dict[str, int]  # bytes of each role's objects
    counters: dict[str, int]  # of which counters (see _counters)
    total: int  # bytes of everything the trainer holds
    envs: int  # bytes of the training and evaluation environments


def _temperature_optimizer(p_learner):
    """SAC's temperature optimiser (its objective's), None for the other algorithms."""
    return getattr(p_learner.objective, "temperature_optimizer", None)


def _measure_sync(cfg, tmp_path) -> Measured:
    """What a sync SyncTrainer holds after 4 actor steps and one update of each learner."""
    trainer = SyncTrainer(plan_run(cfg), RunDir(tmp_path / "run"))
    for _ in range(4):
        trainer.actor_step()
    trainer.v_update()
    trainer.p_update()
    count = TensorBytes()
    envs = count(trainer.env, trainer.eval_env)
    v, p = trainer.v, trainer.p
    roles = {"v_learner": count(v, trainer.critic_slot), "p_learner": count(p, trainer.policy_slot),
             "sim": envs + count(trainer.actor, trainer.evaluator, trainer.norm_slot)}
    counters = {"v_learner": _counters([v.optimizer], [trainer.critic_slot]),
                "p_learner": _counters([p.optimizer, _temperature_optimizer(p)], [trainer.policy_slot]),
                "sim": _counters([], [trainer.norm_slot])}
    return Measured(roles, counters, sum(roles.values()) + count(trainer), envs)


def _measure_async(cfg, tmp_path) -> Measured:
    """The same for async mode: the parent's objects and the shared ones, and the three workers built here as
    their processes build them (not started: the roles are stepped in this process)."""
    parent = ProcessTrainer(plan_run(cfg), RunDir(tmp_path / "run"))
    shared = parent.shared = parent.share(mp.get_context("spawn"))
    sim, vdev, pdev = parent.devices
    actor = ActorRole(shared, sim, None)
    v, p = LearnerRole("v", shared, vdev, None), LearnerRole("p", shared, pdev, None)
    for _ in range(4):
        transitions = actor.worker.step(random=True)
        if transitions is not None:
            shared.ring.put(transitions.packed())
        v.drain()
        p.drain()
    v.worker.update()
    p.worker.update()
    count = TensorBytes()
    envs = count(actor.worker.env, parent.eval_env)
    roles = {"v_learner": count(v.worker, shared.critic, parent.nets.critic),
             "p_learner": count(p.worker, shared.policy, parent.nets.policy),
             "sim": envs + count(actor.worker, shared.ring, shared.normalizer, parent.nets.normalizer,
                                 parent.evaluator)}
    counters = {"v_learner": _counters([v.worker.optimizer], [shared.critic]),
                "p_learner": _counters([p.worker.optimizer, _temperature_optimizer(p.worker)], [shared.policy]),
                "sim": _counters([], [shared.normalizer], (shared.ring,))}
    return Measured(roles, counters, sum(roles.values()) + count(parent, actor, v, p), envs)


@pytest.mark.parametrize(("algo", "mode", "more"), [("pql", "sync", {}), ("pql", "async", {}), ("pql-d", "async", {}),
                                                   ("sac", "sync", {}), ("pql", "sync", {"noise.correlation": "0.9"})])
def test_estimate_matches_what_the_workers_hold(algo, mode, more, tmp_path):
    cfg = _config(algo, mode, **more)
    est = estimate(cfg, probe_task(cfg.task))
    got = (_measure_async if mode == "async" else _measure_sync)(cfg, tmp_path)
    estimated = sum(_persistent(est, role) for role in got.roles)
    print(f"{algo} {mode}: estimated {estimated} bytes, measured {got.total} bytes; per role (estimated, measured): "
          + ", ".join(f"{r} ({_persistent(est, r)}, {m})" for r, m in got.roles.items()))
    assert abs(estimated - got.total) <= 0.10 * got.total
    # Role by role the count is exact, but for a few counters of a few bytes each: a buffer one column too
    # wide, a network copy too many or a normaliser too few would be seen.
    for role, measured in got.roles.items():
        assert _persistent(est, role) == measured - got.counters[role], role
    assert next(c.nbytes for c in est.components if c.name == "simulator state") == got.envs


def test_ppo_estimate_matches_what_the_trainer_holds(tmp_path):
    cfg = build_config({**SMALL, "algo": "ppo", "algo.ppo.horizon": "8", "algo.ppo.minibatch_size": "64",
                        "algo.ppo.epochs": "1"})
    est = estimate(cfg, probe_task(cfg.task))
    trainer = PPOTrainer(plan_run(cfg), RunDir(tmp_path / "run"))
    rollout = trainer.collect()
    trainer.update(rollout)
    count = TensorBytes()
    held = count(trainer.env, trainer.eval_env, trainer.obs, trainer.episodes, trainer.eval_episodes,
                 trainer.policy, trainer.value, trainer.optimizer, trainer.normalizer, trainer.value_normalizer,
                 rollout)
    total = held + count(trainer)
    estimated = _persistent(est, "sim")
    print(f"ppo: estimated {estimated} bytes, measured {total} bytes")
    assert abs(estimated - total) <= 0.10 * total
    assert estimated == held - _counters([trainer.optimizer], [])
    assert [c.role for c in est.components] == ["sim"] * len(est.components) and est.devices == {"sim": "cpu"}


def _saved_activations(update, params: list[torch.Tensor]) -> int:
    """Bytes of the distinct tensors autograd saves for the backward during ``update()``, parameters left out."""
    skip = {p.untyped_storage().data_ptr() for p in params}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in skip:
            seen[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        update()
    return sum(seen.values())


@pytest.mark.parametrize(("algo", "layer_norm"), [("pql", "false"), ("pql-d", "false"), ("sac", "false"),
                                                  ("pql", "true")])
def test_activation_estimate_covers_what_one_update_saves(algo, layer_norm, tmp_path):
    cfg = _config(algo, "sync", **{"algo.batch_size": "512", "algo.critic_hidden": "[256,256]",
                                   "algo.actor_hidden": "[256,256]", "algo.layer_norm": layer_norm})
    trainer = SyncTrainer(plan_run(cfg), RunDir(tmp_path / "run"))
    for _ in range(4):
        trainer.actor_step()
    est = {c.name.split(" (")[0]: c.nbytes for c in estimate(cfg, probe_task(cfg.task)).components if c.transient}
    v, p = trainer.v, trainer.p
    saved_v = _saved_activations(v.update, [*v.critic.parameters(), *v.target.parameters(), *v.policy.parameters()])
    saved_p = _saved_activations(p.update, [*p.policy.parameters(), *p.critic.parameters()])
    print(f"{algo}: critic update activations estimated {est['critic update activations']}, autograd saved "
          f"{saved_v}; policy update estimated {est['policy update activations']}, saved {saved_p}")
    # The estimate is the forward's saved tensors, doubled for the backward's gradients, plus the batch.
    for estimated, saved in ((est["critic update activations"], saved_v), (est["policy update activations"], saved_p)):
        assert 1.8 * saved <= estimated <= 2.5 * saved


def test_a_cell_too_big_for_its_device_is_warned_of_with_its_biggest_part(tmp_path):
    plan = plan_study(TINY_STUDY, "one", {}, tmp_path)
    (cell,) = plan.to_run
    est = estimate(cell.config, probe_task(cell.config.task))
    need = est.device_bytes()["cpu"]
    text, warnings = describe_memory(plan, lambda device, gpu_model: Capacity(need - 1, "a tiny test device"))
    (warning,) = warnings
    assert warning.startswith(f"cell {cell.run_id} (algo=pql, noise={{kind: fixed, sigma: 0.3}}, seed 0) needs")
    assert "on cpu but a tiny test device has" in warning
    # the replay buffer, 1000 rows of 2D + A + 2 = 9 float32 columns for Pendulum (D = 3, A = 1)
    assert "biggest: replay buffer 35.2 KiB (v_learner): lower algo.buffer_size" in warning
    assert f"does not fit: {warning.split(') ', 1)[1]}" in text
    assert describe_memory(plan, lambda device, gpu_model: Capacity(need, "just enough"))[1] == []


def test_misfit_names_the_device_and_both_sizes():
    est = MemoryEstimate({"sim": "cuda:0", "v_learner": "cuda:1", "p_learner": "cuda:1"},
                         (Component("sim", "actor", 2**30, "lower num_envs"),
                          Component("v_learner", "replay buffer", 30 * 2**30, "lower algo.buffer_size"),
                          Component("p_learner", "observation buffer", 3 * 2**30, "lower algo.buffer_size")))
    rtx = gpu_model_capacity("rtx 4090")
    assert est.device_bytes() == {"cuda:0": 2**30, "cuda:1": 33 * 2**30}
    assert misfits(est, lambda device: rtx) == [
        "needs 33.0 GiB on cuda:1 but RTX4090 has 24.0 GiB; biggest: replay buffer 30.0 GiB (v_learner): "
        "lower algo.buffer_size"]


def test_gpu_models_and_host_memory_give_the_capacity():
    assert gpu_model_capacity("a100") == Capacity(80 * 2**30, "A100 (40 or 80 GB: taken as 80)")
    assert gpu_model_capacity("H200").nbytes == 141 * 2**30 and gpu_model_capacity("l40s").nbytes == 48 * 2**30
    assert gpu_model_capacity("TPUv5") is None
    assert device_capacity("cuda:3", "RTX3090", host_gib=64).nbytes == 24 * 2**30
    assert device_capacity("cpu", "RTX3090", host_gib=64) == Capacity(64 * 2**30, "host memory")
    assert device_capacity("cuda:7", None, host_gib=64, local_gpus=False) is None
    assert device_capacity("cpu", None, host_gib=None) is None


def test_buffer_and_network_sizes_follow_the_config():
    dims = TaskDims(obs_dim=60, act_dim=8)
    cfg = build_config({"task": "classic/pendulum", "algo": "pql-d", "num_envs": "4096", "mode": "async",
                        "algo.buffer_size": "5000000", "algo.critic_hidden": "[512,256,128]",
                        "algo.actor_hidden": "[512,256,128]", "algo.num_atoms": "51"})
    parts = {c.name.split(":")[0]: c.nbytes for c in estimate(cfg, dims).components}
    assert parts["replay buffer"] == 5_000_000 * (2 * 60 + 8 + 2) * 4
    assert parts["observation buffer"] == 5_000_000 * 60 * 4
    assert parts["transition ring (8 actor steps)"] == 8 * 4096 * 130 * 4
    twin = 2 * ((68 * 512 + 512) + (512 * 256 + 256) + (256 * 128 + 128) + (128 * 51 + 51))
    assert parts["critic"] == 7 * twin * 4  # weights, target, grads, 2 moments, slot, the parent's
    assert "simulator state" not in parts and not estimate(cfg, dims).simulator_estimated


def test_task_whose_backend_fails_has_unknown_dims_and_the_dry_run_goes_on(tmp_path, monkeypatch, capsys):
    from pql.cli import main

    def broken(num_envs, device="cpu", seed=0):
        raise ImportError("the broken/ backend is not installed\nmore lines")

    monkeypatch.setitem(pql.envs._REGISTRY, "classic/broken", broken)
    dims = probe_task("classic/broken")
    assert dims == TaskDims(problem="ImportError: the broken/ backend is not installed")
    spec = tmp_path / "broken.yaml"
    spec.write_text("study: broken\nbase: {task: classic/broken, max_env_steps: 100}\nprofiles: {quick: {}}\n")
    assert main(["ablate", str(spec), "--dry-run", "--results", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "task dims unknown (ImportError: the broken/ backend is not installed)" in out


def test_dry_run_prints_each_cells_memory(tmp_path, capsys):
    from pql.cli import main

    assert main(["ablate", str(TINY_STUDY), "--dry-run", "--results", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    cells = plan_study(TINY_STUDY, "quick", {}, tmp_path).study.cells
    pql_cell = next(c for c in cells if c.config.algo.name == "pql")
    est = estimate(pql_cell.config, probe_task("classic/pendulum"))
    # Pendulum (D = 3, A = 1), hidden [8]: replay buffer 1000 x (2D + A + 2) float32; twin critic 2 x 49 and
    # policy 41 parameters; the critic kept 6 times (weights, target, grads, 2 AdamW moments, slot), the
    # policy and the normaliser (mean, var [D] float32, count float64) once
    assert est.role_bytes("v_learner", transient=False) == 1000 * 9 * 4 + 6 * 98 * 4 + 41 * 4 + (3 * 8 + 8)
    line = next(line for line in out.splitlines() if line.startswith(f"  {pql_cell.run_id}  sim cpu"))
    assert f"v_learner cpu {size_text(est.role_bytes('v_learner'))}," in line
    assert f"; cpu {size_text(sum(est.device_bytes().values()))} of " in line
    assert out.index("memory per cell") > out.index("study tiny")


# -- pql train's check (pql.ablate.memory_check) ------------------------------------------------------------------
def _no_training(monkeypatch) -> list:
    """Replace the training with a recorder: a test of the check must never allocate the run it refuses."""
    import pql.training.run

    started: list = []
    monkeypatch.setattr(pql.training.run, "run_training", lambda cfg: started.append(cfg) or RunDir(cfg.out))
    return started


@pytest.mark.parametrize(("overrides", "biggest", "pinned"), [
    ({"num_envs": "100000000"}, r"actor step \(policy forward, packed transitions\) 104.7 GiB \(sim\): lower num_envs",
     True),  # 144 GiB: refused by a 64 GiB device (a machine with more might run it)
    ({"algo.buffer_size": "1000000000000"}, r"replay buffer 33527.6 GiB \(v_learner\): lower algo.buffer_size",
     False),  # 44 TiB: refused by this machine, whatever it is
])
def test_train_refuses_a_run_that_cannot_fit_before_it_allocates(overrides, biggest, pinned, monkeypatch, tmp_path,
                                                                  capsys):
    import time

    from pql.ablate import memory_check

    if pinned:
        monkeypatch.setattr(memory_check, "local_capacity",
                            lambda device: Capacity(64 * 2**30, "a 64 GiB test device (total)"))
    started = _no_training(monkeypatch)
    t0 = time.monotonic()
    code = main(["train", *(f"{k}={v}" for k, v in overrides.items()), f"out={tmp_path / 'never'}"])
    err = capsys.readouterr().err
    assert code == 2 and started == [] and not (tmp_path / "never").exists()
    assert time.monotonic() - t0 < 30
    assert re.search(r"^pql: error: the run cannot fit in memory: it needs [\d.]+ GiB on \S+ but .* \(total\) has "
                     r"[\d.]+ GiB; biggest: " + biggest, err), err
    assert "against each device's total memory" in err and "check_memory=false" in err


def test_a_run_that_fits_is_not_refused_and_check_memory_false_skips_the_check(monkeypatch, tmp_path):
    from pql.ablate import memory_check

    memory_check.check_fits(build_config({**SMALL}))  # no error
    started = _no_training(monkeypatch)
    assert main(["train", *(f"{k}={v}" for k, v in SMALL.items()), f"out={tmp_path / 'fits'}"]) == 0
    assert len(started) == 1 and started[0].check_memory is True
    monkeypatch.setattr(memory_check, "local_capacity", lambda device: Capacity(2**20, "a 1 MiB device (total)"))
    assert main(["train", *(f"{k}={v}" for k, v in SMALL.items()), f"out={tmp_path / 'small'}"]) == 2
    assert main(["train", *(f"{k}={v}" for k, v in SMALL.items()), f"out={tmp_path / 'skip'}",
                 "check_memory=false"]) == 0
    assert len(started) == 2 and started[1].check_memory is False


def test_check_memory_stays_out_of_run_ids_and_may_change_on_resume(tmp_path):
    from pql.ablate.matrix import run_id
    from pql.training.run import resolve

    cfg = build_config({**SMALL})
    assert run_id(cfg) == run_id(build_config({**SMALL, "check_memory": "false"}))
    run = RunDir(tmp_path / "run")
    run.write_config(cfg)
    run.checkpoint_path.write_bytes(b"")
    assert resolve({"resume": str(run.path), "check_memory": "false"}).check_memory is False


def test_isaac_tasks_are_checked_on_a_lower_bound_without_building_their_one_simulation(isaac_fakes, monkeypatch):
    from pql.ablate import memory_check

    def never(task):
        raise AssertionError("Isaac Gym makes one simulation per process: the check must not build one")

    monkeypatch.setattr(memory_check, "probe_task", never)
    cfg = build_config({"task": "isaacgym/Ant", "algo.buffer_size": "1000000000000"})
    with pytest.raises(ConfigError, match=r"it at least needs [\d.]+ GiB on .*lower algo.buffer_size"):
        memory_check.check_fits(cfg)


def test_the_host_figure_is_the_cgroup_limit_where_that_is_lower(monkeypatch, tmp_path):
    from pql.ablate import memory_check

    limit = tmp_path / "memory.max"
    limit.write_text(f"{2**30}\n")
    monkeypatch.setattr(memory_check, "CGROUP_LIMITS", (limit,))
    assert memory_check.host_capacity() == Capacity(2**30, f"the memory limit of this process's cgroup ({limit})")
    limit.write_text("max\n")
    assert memory_check.host_capacity().source == "host memory (total)"


@pytest.mark.parametrize(("mode", "devices", "contexts"), [
    ("sync", ("cpu", "cpu", "cpu"), {}),
    ("sync", ("cuda", "cuda:0", "cuda:0"), {"cuda:0": 1}),
    ("async", ("cuda:0", "cuda:0", "cuda:0"), {"cuda:0": 4}),
    ("async", ("cuda:0", "cuda:1", "cuda:1"), {"cuda:0": 4, "cuda:1": 4}),
])
def test_each_process_on_each_gpu_counts_a_cuda_context(mode, devices, contexts):
    """Measured on an H200 (make gpu-check): one process's context is 527 MiB; async runs four processes, each
    mapping every shared tensor, so four contexts on every GPU the run uses."""
    from pql.ablate.memory import CUDA_CONTEXT_BYTES

    cfg = build_config({"task": "classic/pendulum", "mode": mode,
                        **dict(zip(("device.sim", "device.v_learner", "device.p_learner"), devices, strict=True))})
    est = estimate(cfg, probe_task(cfg.task))
    found = {est.devices[c.role]: c.nbytes // CUDA_CONTEXT_BYTES for c in est.components if "CUDA context" in c.name}
    assert {k if ":" in k else f"{k}:0": v for k, v in found.items()} == contexts
    assert 500 * 2**20 <= CUDA_CONTEXT_BYTES <= 527 * 2**20
