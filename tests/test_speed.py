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
from pql.speed import matmul_precision, speed_problem, state_kept
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


def test_flags_round_trip_through_config_checkpoint_and_resume(tiny, tmp_path):
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
