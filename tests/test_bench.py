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
