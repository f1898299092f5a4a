"""A run's state is the truth: one order rule for metrics rows, claims judged by the lock (and on another host
by the SLURM job and the claim's age), resumable failures resumed, temporary files swept."""

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pql.ablate.launchers import DebugLauncher
from pql.ablate.runner import Plan, plan_study, run_study, status_report
from pql.ablate.store import ResultsStore, metrics_problem
from pql.report.aggregate import curve_on_grid
from pql.store.claims import ClaimRule
from pql.store.run_dir import STATUS_TIME, MetricsOrderError, RunDir, rows_order_problem

STUDY = Path(__file__).parent / "data" / "tiny_study.yaml"


# -- one writer's rows ----------------------------------------------------------------------------------
def test_rows_by_time_may_repeat_env_steps_but_a_second_writer_is_caught():
    assert rows_order_problem([(0, 0.0), (0, 0.5), (1056, 1.0), (1056, 1.5), (2112, 1.6)]) is None
    assert "env_steps go backwards" in rows_order_problem([(0, 0.0), (1056, 1.0), (0, 1.2)])
    # a second writer that started later from the same checkpoint: its rows are earlier in training time
    assert "wall_s goes backwards" in rows_order_problem([(0, 0.0), (1056, 1.0), (1056, 0.4)])
    assert "repeats env step 1056 at wall_s 1.0" in rows_order_problem([(0, 0.0), (1056, 1.0), (1056, 1.0)])


def _row(steps: int, wall: float) -> dict[str, float]:
    return {"env_steps": steps, "wall_s": wall, "train_return": -5.0, "eval_return": -4.0}


def test_the_run_loop_cannot_write_a_row_that_breaks_the_rule_and_resume_keeps_the_checkpoints_rows(tmp_path):
    run = RunDir(tmp_path / "run")
    for steps, wall in [(0, 0.0), (512, 1.0), (512, 1.5), (512, 2.0)]:
        run.append_metrics(_row(steps, wall))
    with pytest.raises(MetricsOrderError, match="wall_s goes backwards"):
        run.append_metrics(_row(512, 1.2))
    assert metrics_problem(run.metrics_path, 512) is None, "rows written by time are valid"
    run.truncate_metrics(2)  # the checkpoint was taken after the second row, at 512 env steps and 1.0 s
    assert [r["wall_s"] for r in RunDir(run.path)._metrics_rows()[1]] == ["0.0", "1.0"], "by row count, not steps"
    fresh = RunDir(run.path)  # a resumed session: the rule continues from the last row kept
    with pytest.raises(MetricsOrderError):
        fresh.append_metrics(_row(256, 1.1))
    fresh.append_metrics(_row(512, 1.1))


def test_the_report_grid_takes_the_last_of_rows_with_equal_env_steps():
    grid = np.array([0.0, 10.0, 15.0, 20.0])
    got = curve_on_grid(np.array([0.0, 10.0, 10.0, 10.0, 20.0]), np.array([0.0, 1.0, 2.0, 5.0, 5.0]), grid)
    assert got.tolist() == [0.0, 5.0, 5.0, 5.0], "the latest policy evaluated at 10 env steps"


# -- claims ---------------------------------------------------------------------------------------------
def _claimed_run(root: Path, **status: object) -> tuple[ResultsStore, Path]:
    store = ResultsStore(root, "study")
    run = RunDir(store.path / "r1")
    run.write_status("running", pid=1, host=socket.gethostname(), env_steps=640, **status)
    (run.path / "checkpoint.pt").write_bytes(b"")
    return store, run.path


def _aged(run: Path, age_s: float) -> None:
    body = json.loads((run / "status.json").read_text())
    body["updated"] = time.strftime(STATUS_TIME, time.localtime(time.time() - age_s))
    (run / "status.json").write_text(json.dumps(body))


def test_on_this_host_the_lock_decides_a_running_claim_not_the_pid(tmp_path):
    store, run = _claimed_run(tmp_path)  # pid 1 is alive, but it holds no lock: a dead run's claim
    state = store.run_state(run, None)
    assert state.state == "pending" and state.resumable, state
    assert "no process holds its lock here" in state.detail and "resumes from its checkpoint" in state.detail
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, sys, time; fh = open(sys.argv[1], 'w'); "
                               "fcntl.flock(fh, fcntl.LOCK_EX); print(flush=True); time.sleep(60)", str(run / ".lock")],
                              stdout=subprocess.PIPE, text=True)
    try:
        holder.stdout.readline()
        assert store.run_state(run, None).state == "running", "a live holder of the lock: running"
    finally:
        holder.kill()
        holder.wait()


def test_a_claim_from_another_host_is_taken_over_when_old_or_when_asked(tmp_path):
    store, run = _claimed_run(tmp_path, slurm_job_id=None)
    body = json.loads((run / "status.json").read_text())
    (run / "status.json").write_text(json.dumps({**body, "host": "node-17"}))
    fresh = store.run_state(run, None)
    assert fresh.state == "running" and "on node-17, renewed" in fresh.detail
    taken = ResultsStore(tmp_path, "study", ClaimRule(take_over=True)).run_state(run, None)
    assert taken.state == "pending" and taken.resumable and "taken over from node-17" in taken.detail
    _aged(run, 3 * 3600)
    old = store.run_state(run, None)
    assert old.state == "pending" and "last renewed 180 min ago" in old.detail and "--stale-after 1800" in old.detail
    assert ResultsStore(tmp_path, "study", ClaimRule(7200.0)).run_state(run, None).state == "pending"
    assert ResultsStore(tmp_path, "study", ClaimRule(4 * 3600.0)).run_state(run, None).state == "running"


def test_a_running_run_renews_its_claim_at_every_row_and_checkpoint(tmp_path, tiny, monkeypatch):
    from pql.training.run import train

    claims: list[int] = []  # the env steps the running status claims as each row is about to be written
    original = RunDir.append_metrics

    def spy(self, row):
        claims.append(json.loads((self.path / "status.json").read_text())["env_steps"])
        original(self, row)

    monkeypatch.setattr(RunDir, "append_metrics", spy)
    run = train({**tiny, "max_env_steps": "1280", "eval_every_env_steps": "320", "checkpoint_every_s": "0"}).path
    assert claims == [0, 0, 320, 640, 960], "renewed after every row (the first: the status written at start)"
    final = json.loads((run / "status.json").read_text())
    assert final["state"] == "done" and final["checkpoint_env_steps"] == 1280


# -- a stale claim and a killed write under pql ablate ---------------------------------------------------
ONE_CELL = {"max_env_steps": "1280", "checkpoint_every_s": "0"}


def _finish_one_cell(results: Path, **options: bool) -> tuple[Plan, Path]:
    """``pql ablate`` (in this process) of the tiny study's one cell; the plan and the cell's run directory."""
    plan = plan_study(STUDY, "one", ONE_CELL, results, **options)
    assert run_study(plan, DebugLauncher(), progress=False) == []
    return plan, plan.store.run_path(plan.to_run[0])


def test_ablate_resumes_a_stale_claim_and_sweeps_a_killed_writes_temporary_file(tmp_path):
    plan, run = _finish_one_cell(tmp_path)
    # a copy from a machine that died mid-run: status running there, a checkpoint write cut short
    body = json.loads((run / "status.json").read_text())
    (run / "status.json").write_text(json.dumps({**body, "state": "running", "host": "gone-host", "pid": 1}))
    _aged(run, 7200)
    (run / ".checkpoint.pt.tmp4242").write_bytes(b"\0" * 1000)
    report = status_report(plan.study, plan.store)
    assert "pending 1" in report and "stale claim: its claim from gone-host is last renewed 120 min ago" in report
    assert _finish_one_cell(tmp_path)[0].to_run == plan.to_run, "resumed"
    assert json.loads((run / "status.json").read_text())["state"] == "done"
    assert not (run / ".checkpoint.pt.tmp4242").exists()
    assert json.loads((run / "manifest.json").read_text())["resumes"], "resumed from its checkpoint, not redone"


def test_ablate_retry_failed_resumes_a_resumable_failure_and_restart_starts_afresh(tmp_path):
    plan, run = _finish_one_cell(tmp_path)
    body = json.loads((run / "status.json").read_text())
    # what a worker killed by the out-of-memory killer leaves
    (run / "status.json").write_text(json.dumps({**body, "state": "failed", "cause": "killed", "resumable": True,
                                                 "error": "WorkerFailed: the V-learner (pid 9) was killed by SIGKILL"}))
    assert plan_study(STUDY, "one", ONE_CELL, tmp_path).to_run == [], "a failed run waits for --retry-failed"
    assert "resumes from its checkpoint at" in status_report(plan.study, plan.store)
    _finish_one_cell(tmp_path, retry_failed=True)
    assert len(json.loads((run / "manifest.json").read_text())["resumes"]) == 1
    (run / "status.json").write_text(json.dumps({**body, "state": "failed", "cause": "nonfinite", "resumable": False,
                                                 "error": "non-finite loss"}))
    _finish_one_cell(tmp_path, retry_failed=True)
    assert json.loads((run / "manifest.json").read_text())["resumes"] == [], "a NaN failure starts afresh"
    (run / "status.json").write_text(json.dumps({**body, "state": "interrupted", "signal": "SIGTERM"}))
    _finish_one_cell(tmp_path, restart=True)
    assert json.loads((run / "manifest.json").read_text())["resumes"] == [], "--restart: from step 0"
    assert metrics_problem(run / "metrics.csv", 1280) is None
