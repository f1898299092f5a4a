"""The benchmark's command line: any backend's task in the env table, bad tasks refused up front."""

import pytest

from pql.bench import main


def test_env_table_for_chosen_tasks(capsys):
    main(["--only", "env", "--tasks", "classic/pendulum,gym/Pendulum-v1", "--envs", "8", "--seconds", "0.05"])
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.startswith(("classic/pendulum ", "gym/Pendulum-v1 "))]
    assert [r[0] for r in rows] == ["classic/pendulum", "gym/Pendulum-v1"] and all(r[1] == "8" for r in rows)
    assert all(float(r[3].replace(",", "")) > 0 for r in rows), "env-steps/s measured"


def test_unknown_task_is_refused_before_measuring(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--only", "env", "--tasks", "classic/pendulm"])
    assert exit_info.value.code == 2 and "unknown task 'classic/pendulm'" in capsys.readouterr().err


def test_sync_vs_async_row_holds_the_ratios_and_computes_its_ceiling():
    from pql.bench_modes import compare

    tiny = {"num_envs": 32, "eval_envs": 1, "algo.actor_hidden": "[16,16]", "algo.critic_hidden": "[64,64]",
            "algo.batch_size": 128, "algo.buffer_size": 4096, "algo.warmup_steps": 8}
    row = compare("classic/pendulum", "cpu", tiny, steps=80, reps=1)
    split = row["split"]
    assert row["async_beta_av"] == pytest.approx(8, rel=0.05) and row["sync_beta_av"] == pytest.approx(8, rel=0.01)
    assert row["async_beta_pv"] == pytest.approx(2, rel=0.05)
    assert row["speedup"] == pytest.approx(row["async_env_steps_per_s"] / row["sync_env_steps_per_s"])
    assert set(split.sync) == set(split.alone) == {"actor", "v", "p"} and min(split.alone.values()) > 0
    assert split.ceiling == pytest.approx(split.sync_step_s / max(max(split.alone.values()),
                                                                  sum(split.alone.values()) / min(split.cores, 3)))
