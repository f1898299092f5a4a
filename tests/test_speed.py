"""The speed path: compiled updates match eager ones, the warm-up leaves a run as it was, compile= and
amp= are checked before training and kept through config, checkpoint and resume, and compilation
stays out of wall_s."""

import copy
import json
from dataclasses import replace

import pandas as pd
import pytest
import torch

from pql.algos import algorithm
from pql.config import ConfigError, load_config, parse_overrides
from pql.resolve import build_config
from pql.speed import Speed, load_optimizer_state, matmul_precision, speed_problem, state_kept
from pql.store.run_dir import RunDir
from pql.training.run import resolve, run_training
from pql.training.sync import SyncTrainer
from pql.workers.builders import build_actor, build_p_learner, build_v_learner, initial_networks
from pql.workers.plan import plan_run

CPU = torch.device("cpu")


def _learner_pair(build, cfg, nets, compile_mode: str, device: torch.device = CPU):
    """An eager learner and a compiled one with the same networks, buffer contents and generator state."""
    eager, compiled = build(plan_run(cfg), nets), build(plan_run(replace(cfg, compile=compile_mode)), nets)
    rows = torch.randn(256, eager.buffer.width, generator=torch.Generator().manual_seed(5)).to(device)
    for learner in (eager, compiled):
        learner.buffer.add_rows(rows)
    return eager, compiled


def _config(algo: str = "pql", **extra: str):
    return build_config({"algo": algo, "algo.actor_hidden": "[16,16]", "algo.critic_hidden": "[16,16]",
                         "algo.batch_size": "64", "max_env_steps": "10", **extra})


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.allclose(a, b, rtol=1e-4, atol=1e-5)


def test_a_warmed_up_compiled_v_update_matches_eager_updates():
    """The warm-up compiles on stand-in data and restores the critic, its target and AdamW; the compiled
    updates then give the eager updates' losses and parameters."""
    cfg = _config()
    torch.manual_seed(0)
    nets = initial_networks(plan_run(cfg), 3, 1)
    eager, compiled = _learner_pair(build_v_learner, cfg, nets, "default")
    assert compiled.warm_up() > 0
    assert all(torch.equal(a, b) for a, b in zip(eager.critic.parameters(), compiled.critic.parameters(),
                                                  strict=True)), "the warm-up changed the critic"
    assert not compiled.optimizer.state or all(float(s["step"]) == 0 for s in compiled.optimizer.state.values())
    for _ in range(3):
        assert _close(eager.update(), compiled.update())
    for a, b in zip([*eager.critic.parameters(), *eager.target.parameters()],
                    [*compiled.critic.parameters(), *compiled.target.parameters()], strict=True):
        assert _close(a, b)


def test_state_kept_restores_modules_and_optimiser_state_in_place():
    net = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(net.parameters(), lr=0.1)
    weight = net.weight
    before = weight.detach().clone()
    with state_kept([net], [optimizer]):
        net(torch.ones(4, 3)).sum().backward()
        optimizer.step()
        assert not torch.equal(weight, before)
    assert net.weight is weight and torch.equal(weight, before) and weight.grad is None
    fresh = [float(s["step"]) for s in optimizer.state.values()] + [float(s["exp_avg"].abs().sum())
                                                                   for s in optimizer.state.values()]
    assert fresh == [0.0] * len(fresh), "state made inside is zeroed: a fresh AdamW state"


@pytest.mark.parametrize("algo", ["pql", "fast_sac"])
def test_eager_cpu_learners_step_the_fused_adamw_which_matches_torchs_reference_adamw(algo):
    """On a CPU an eager learner's AdamW is torch's fused kernel (a compiled step keeps torch's default, which
    the compiler fuses): the same parameters after each update as the single-tensor AdamW, with the
    algorithm's weight decay, betas and, for FastSAC, the temperature's own group."""
    cfg = _config(algo)
    torch.manual_seed(0)
    nets = initial_networks(plan_run(cfg), 3, 1)
    for build in (build_v_learner, build_p_learner):
        fused, compiled = _learner_pair(build, cfg, nets, "default")
        reference = _learner_pair(build, cfg, nets, "off")[0]
        assert [g["fused"] for g in fused.optimizer.param_groups] == [True] * len(fused.optimizer.param_groups)
        assert {g["fused"] for g in compiled.optimizer.param_groups} == {None}
        for group in reference.optimizer.param_groups:
            group.update(fused=None, foreach=False)  # torch's one-tensor-at-a-time AdamW
        net = "critic" if build is build_v_learner else "policy"
        for _ in range(3):
            fused.update(), reference.update()
            for a, b in zip(getattr(fused, net).parameters(), getattr(reference, net).parameters(), strict=True):
                assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)
        assert not torch.equal(next(getattr(fused, net).parameters()), next(getattr(nets, net).parameters()))


def test_a_restored_optimiser_keeps_the_kernel_it_was_built_with():
    """A checkpoint's AdamW state (saved eagerly on a CPU, fused) restored into an optimiser built for a compiled
    or CUDA step keeps the latter's implementation, and the reverse; the state itself is restored."""
    net = torch.nn.Linear(3, 2)
    saved = torch.optim.AdamW(net.parameters(), lr=0.1, fused=Speed(device=CPU).fused_optimizer(step_compiled=True))
    net(torch.ones(4, 3)).sum().backward()
    saved.step()
    compiled = torch.optim.AdamW(net.parameters(), lr=0.1,
                                 fused=Speed("default", device=CPU).fused_optimizer(step_compiled=True))
    assert (saved.param_groups[0]["fused"], compiled.param_groups[0]["fused"]) == (True, None)
    load_optimizer_state(compiled, saved.state_dict())
    assert compiled.param_groups[0]["fused"] is None and float(compiled.state[net.weight]["step"]) == 1.0
    load_optimizer_state(saved, compiled.state_dict())
    assert saved.param_groups[0]["fused"] is True and torch.equal(saved.state[net.weight]["exp_avg"],
                                                                  compiled.state[net.weight]["exp_avg"])
    assert Speed(device=CPU).fused_optimizer(step_compiled=False) is True, "a step never compiled: fused"
    assert Speed("default", device=CPU).fused_optimizer(step_compiled=False) is True
    assert Speed(device="meta").fused_optimizer(step_compiled=True) is None, "only where a CPU measured it"


@pytest.mark.parametrize(("key", "value", "message"), [
    ("compile", "fast", "compile must be one of off, default, reduce-overhead, max-autotune, got 'fast'"),
    ("amp", "fp16", "amp must be one of off, bf16, got 'fp16'"),
])
def test_unknown_compile_and_amp_values_are_refused_by_name(key, value, message):
    with pytest.raises(ConfigError, match=message):
        _config(**{key: value})


def test_off_is_read_as_written_not_as_yaml_false():
    cfg = build_config(parse_overrides(["compile=off", "amp=off", "max_env_steps=10"]))
    assert (cfg.compile, cfg.amp) == ("off", "off")
    with pytest.raises(ConfigError, match="write 'off' in quotes"):
        _config(compile=False)


def test_combinations_that_cannot_apply_stop_before_training(monkeypatch, tiny, tmp_path):
    assert "compile=reduce-overhead replays CUDA graphs, and cpu has none" in speed_problem("reduce-overhead", "off",
                                                                                          [CPU])
    with pytest.raises(ConfigError, match="compile=reduce-overhead"):
        run_training(resolve({**tiny, "compile": "reduce-overhead"}))
    assert not (tmp_path / "run" / "metrics.csv").exists()
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("CXX", raising=False)
    assert "needs a C++ compiler" in speed_problem("default", "off", [CPU])
    assert speed_problem("off", "off", [CPU]) is None
    monkeypatch.setattr("pql.speed.bf16_supported", lambda device: False)
    assert "amp=bf16: cpu has no native bfloat16" in speed_problem("off", "bf16", [CPU])


def test_flags_round_trip_through_config_checkpoint_and_resume(monkeypatch, tiny, tmp_path):
    # what amp=bf16 computes is the tests below; here the flag's path, also on a CPU without native bf16
    monkeypatch.setattr("pql.speed.bf16_supported", lambda device: True)
    run = run_training(resolve({**tiny, "amp": "bf16", "max_env_steps": "1280"})).path
    cfg = load_config(str(run / "config.yaml"))
    assert (cfg.compile, cfg.amp) == ("off", "bf16")
    assert RunDir(str(run)).load_checkpoint()["config"]["amp"] == "bf16"
    with pytest.raises(ConfigError, match="cannot change amp when resuming"):
        resolve({"resume": str(run), "amp": "off"})
    resumed = resolve({"resume": str(run), "max_env_steps": "2560"})
    assert resumed.amp == "bf16"
    run_training(resumed)
    rows = pd.read_csv(run / "metrics.csv")
    assert rows["env_steps"].iloc[-1] == 2560 and rows["critic_loss"].iloc[1:].notna().all()


def test_collect_and_learn_seconds_are_counted_within_each_row(tiny):
    run = run_training(resolve(tiny)).path
    rows = pd.read_csv(run / "metrics.csv")
    later = rows.iloc[1:]
    assert (later["collect_s"] > 0).all() and (later["learn_s"] > 0).all()
    spent = later["collect_s"] + later["learn_s"]
    assert (spent <= rows["wall_s"].diff().iloc[1:] + 1e-3).all(), "more time in the phases than in the row"
    status = json.loads((run / "status.json").read_text())
    assert status["compile_s"] == 0.0


@pytest.mark.slow
@pytest.mark.parametrize("algo", ["pql", "sac"])
def test_compiled_p_update_and_policy_step_match_eager(algo):
    cfg = _config(algo)
    torch.manual_seed(0)
    nets = initial_networks(plan_run(cfg), 3, 1)
    eager, compiled = _learner_pair(build_p_learner, cfg, nets, "default")
    compiled.warm_up()
    for _ in range(3):
        assert _close(eager.update(), compiled.update())
    for a, b in zip(eager.policy.parameters(), compiled.policy.parameters(), strict=True):
        assert _close(a, b)

    from pql.envs import make_env

    def actor(compile_mode):
        actor = build_actor(plan_run(build_config({"algo": algo, "num_envs": "8", "compile": compile_mode,
                                                   "max_env_steps": "10"})),
                            make_env("classic/pendulum", 8, seed=0), copy.deepcopy(nets))
        actor.warm_up()
        return actor

    a, b = actor("off"), actor("default")
    for _ in range(4):
        a.step(), b.step()
        assert _close(a.obs, b.obs)


@pytest.mark.slow
def test_compiled_ppo_minibatch_step_matches_eager(tiny):
    losses = {}
    for mode in ("off", "default"):
        trainer = algorithm("ppo")  # the registry picks PPO's trainer
        assert trainer.trainer == "on-policy"
        run = run_training(resolve({**tiny, "algo": "ppo", "compile": mode, "algo.ppo.minibatch_size": "64",
                                    "out": f"{tiny['out']}-{mode}"})).path
        losses[mode] = pd.read_csv(run / "metrics.csv")[["critic_loss", "actor_loss"]].iloc[1:].to_numpy()
    assert losses["off"] == pytest.approx(losses["default"], rel=1e-3, abs=1e-4)


@pytest.mark.slow
def test_compile_default_learns_pendulum_like_eager(tmp_path):
    rows = {}
    for mode in ("off", "default"):
        run = run_training(resolve({"task": "classic/pendulum", "mode": "sync", "seed": "0", "num_envs": "64",
                                    "max_env_steps": "102400", "eval_every_env_steps": "12800", "progress": "false",
                                    "compile": mode, "out": str(tmp_path / mode)})).path
        rows[mode] = pd.read_csv(run / "metrics.csv")
        status = json.loads((run / "status.json").read_text())
        assert (status["compile_s"] > 0) == (mode != "off")
    for mode, frame in rows.items():
        assert frame["eval_return"].max() >= -250, (mode, frame[["env_steps", "eval_return"]].to_string())


@pytest.mark.slow
def test_a_resumed_compiled_run_compiles_again_off_the_clock(tiny):
    run = run_training(resolve({**tiny, "compile": "default", "max_env_steps": "1280"})).path
    first = json.loads((run / "status.json").read_text())["compile_s"]
    run_training(resolve({"resume": str(run), "max_env_steps": "2560"}))
    status = json.loads((run / "status.json").read_text())
    assert status["compile_s"] > first > 0
    assert load_config(str(run / "config.yaml")).compile == "default"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize(("compile_mode", "amp"), [("reduce-overhead", "off"), ("default", "bf16")])
def test_cuda_compiled_v_update_matches_eager(compile_mode, amp):
    cfg = _config(amp=amp, **{"device.sim": "cuda", "device.v_learner": "cuda", "device.p_learner": "cuda"})
    torch.manual_seed(0)
    nets = initial_networks(plan_run(cfg), 3, 1)
    eager, compiled = _learner_pair(build_v_learner, cfg, nets, compile_mode, torch.device("cuda"))
    compiled.warm_up()
    tolerance = 2e-2 if amp == "bf16" else 1e-4
    for _ in range(3):
        assert torch.allclose(eager.update(), compiled.update(), rtol=tolerance, atol=tolerance)


def test_a_sync_trainer_warms_up_nothing_when_not_compiling(tiny, tmp_path):
    trainer = SyncTrainer(plan_run(build_config(tiny)), RunDir(str(tmp_path / "t")))
    assert trainer.warm_up() == 0.0


def test_matmul_precision_auto_is_tf32_on_cuda_only_and_each_run_records_what_it_ran_at(tiny):
    cpu, gpu = torch.device("cpu"), torch.device("cuda:1")
    assert matmul_precision("auto", [cpu, cpu]) == "highest" and matmul_precision("auto", [cpu, gpu]) == "high"
    assert matmul_precision("medium", [cpu]) == "medium" and matmul_precision("highest", [gpu]) == "highest"
    before = torch.get_float32_matmul_precision()
    try:
        run = run_training(resolve({**tiny, "matmul_precision": "medium", "max_env_steps": "640"})).path
        assert torch.get_float32_matmul_precision() == "medium", "set in the process that trained"
    finally:
        torch.set_float32_matmul_precision(before)
    status = json.loads((run / "status.json").read_text())
    assert status["matmul_precision"] == {"sim": "medium", "v_learner": "medium", "p_learner": "medium"}
    with pytest.raises(ConfigError, match="cannot change matmul_precision when resuming"):
        resolve({"resume": str(run), "matmul_precision": "auto"})
    with pytest.raises(ConfigError, match="matmul_precision must be one of auto, highest, high, medium, got 'tf32'"):
        resolve({**tiny, "matmul_precision": "tf32"})
    default = json.loads((run_training(resolve({**tiny, "out": f"{tiny['out']}-auto", "max_env_steps": "640"})).path
                          / "status.json").read_text())
    assert set(default["matmul_precision"].values()) == {"highest"}, "auto on a CPU: exact float32"


def test_reduce_overhead_marks_each_worker_step_and_keeps_what_it_returns(monkeypatch, tiny, tmp_path):
    """Under CUDA graphs every step of the actor, the V- and P-learner (PQL and SAC) and PPO's minibatch
    begins with cudagraph_mark_step_begin, the optimiser steps are compiled without graphs (they read the
    loss's gradients), and what a step returns is a copy, not a graph's output the next replay overwrites.
    torch.compile is replaced by a recorder: a CPU has no CUDA graphs to replay."""
    compiled, marks = [], []
    monkeypatch.setattr(torch, "compile", lambda fn, mode: compiled.append((fn.__name__, mode)) or fn)
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: marks.append(1))
    clones = []
    real_clone = torch.Tensor.clone
    monkeypatch.setattr(torch.Tensor, "clone", lambda self, *a, **k: clones.append(1) or real_clone(self, *a, **k))
    for algo in ("pql", "sac"):
        cfg = replace(_config(algo, num_envs="8"), compile="reduce-overhead")
        torch.manual_seed(0)
        nets = initial_networks(plan_run(cfg), 3, 1)
        from pql.envs import make_env

        actor = build_actor(plan_run(cfg), make_env("classic/pendulum", 8, seed=0), copy.deepcopy(nets))
        v, p = build_v_learner(plan_run(cfg), nets), build_p_learner(plan_run(cfg), nets)
        for learner in (v, p):
            learner.add(torch.randn(256, v.buffer.width, generator=torch.Generator().manual_seed(5)))
        for step in (actor.step, v.update, p.update):
            marks.clear(), clones.clear()
            step()
            assert len(marks) == 1, f"{algo}: {step.__qualname__} marked {len(marks)} steps"
            assert clones, f"{algo}: {step.__qualname__} returned a graph's output"
    assert {mode for name, mode in compiled if name == "apply_gradients"} == {"default"}
    assert {mode for name, mode in compiled if name != "apply_gradients"} == {"reduce-overhead"}
    marks.clear()
    from pql.training.on_policy import PPOTrainer

    ppo = PPOTrainer(plan_run(replace(build_config({**tiny, "algo": "ppo", "algo.ppo.minibatch_size": "64"}),
                                           compile="reduce-overhead")), RunDir(str(tmp_path / "ppo")))
    m, d, a = 64, ppo.env.obs_dim, ppo.env.act_dim
    losses = ppo.minibatch_step(torch.zeros(m, d), torch.zeros(m, a), torch.ones(m, a), torch.zeros(m, a),
                                *(torch.zeros(m) for _ in range(4)))
    assert len(marks) == 1 and type(losses).__name__ == "Losses"


def test_no_step_is_marked_or_copied_outside_cuda_graphs(monkeypatch):
    from pql.speed import Speed

    marks = []
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: marks.append(1))
    x = torch.ones(2)
    for mode in ("off", "default", "max-autotune"):
        speed = Speed(mode)
        speed.begin_step()
        assert speed.kept(x) is x and not speed.cuda_graphs
    assert not marks
    graphs = Speed("reduce-overhead")
    kept = graphs.kept((x, None))
    assert kept[0] is not x and torch.equal(kept[0], x) and kept[1] is None


@pytest.mark.parametrize("algo", ["pql", "sac"])
def test_the_td_target_is_computed_in_float32_under_bf16_autocast(algo):
    """amp=bf16 runs the critic being trained in bf16, never the target it regresses to: the target's
    outputs (and SAC's entropy bonus) equal amp=off's bit for bit, while the prediction moves by bf16's
    rounding."""
    cfg = _config(algo)
    torch.manual_seed(0)
    nets = initial_networks(plan_run(cfg), 3, 1)
    fp32, bf16 = (build_v_learner(plan_run(replace(cfg, amp=amp)), nets) for amp in ("off", "bf16"))
    g = torch.Generator().manual_seed(3)
    obs, action = torch.randn(64, 3, generator=g), torch.rand(64, 1, generator=g)
    noise = torch.randn(64, 1, generator=g)
    for learner in (fp32, bf16):
        learner.normalizer.update(obs * 3 + 1)
    out32, bonus32, _ = fp32.target_outputs(obs, noise)
    with bf16.speed.autocast():  # as inside td_loss
        out16, bonus16, _ = bf16.target_outputs(obs, noise)
        pred16 = bf16.critic(bf16.normalizer(obs), action)
    assert out16.dtype == torch.float32 and torch.equal(out16, out32)
    assert torch.equal(torch.as_tensor(bonus16), torch.as_tensor(bonus32))
    pred32 = fp32.critic(fp32.normalizer(obs), action)
    assert pred16.dtype == torch.bfloat16 and not torch.equal(pred16.float(), pred32)
    assert torch.allclose(pred16.float(), pred32, rtol=2e-2, atol=2e-2)


def test_a_worker_selects_its_cuda_device_by_index(monkeypatch):
    from pql.devices import use_device

    selected = []
    monkeypatch.setattr(torch.cuda, "set_device", selected.append)
    for name in ("cuda", "cuda:1", "cpu"):
        use_device(torch.device(name))
    assert selected == [0, 1], "cuda alone is cuda:0 (set_device refuses a device without an index)"
