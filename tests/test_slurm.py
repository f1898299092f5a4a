"""The SLURM launcher against a real single-node cluster started by the test session itself.

Needs root and Debian's slurmctld, slurmd, slurm-client, munge, slurmdbd and mariadb-server
(.ci/run installs them); skipped with that reason where they are missing.
"""

import json
import os
import time
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from pql.ablate.runner import plan_study, run_study, status_report
from pql.ablate.slurm_launcher import ClusterProfile, SlurmLauncher
from pql.devices import gpus_needed

from .slurm_cluster import LocalSlurmCluster

pytestmark = pytest.mark.slurm
TINY = Path(__file__).parent / "data" / "tiny_study.yaml"
DEFAULT_PROFILE = Path(__file__).parent.parent / "ablations" / "clusters" / "default.yaml"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    reason = LocalSlurmCluster.available()
    if reason is not None:
        pytest.skip(reason)
    running = LocalSlurmCluster(tmp_path_factory.mktemp("slurm"))
    try:
        running.start()
    except RuntimeError as err:  # the machine cannot host the cluster: say why instead of failing
        pytest.skip(f"the local SLURM cluster did not start: {err}")
    try:
        saved = {k: os.environ.get(k) for k in running.env}
        os.environ.update(running.env)
        yield running
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    finally:
        running.stop()


def launcher(plan, wait=True) -> SlurmLauncher:
    profile = ClusterProfile(partition="debug", timeout_min=10, array_parallelism=2, cpus_per_task=1)
    return SlurmLauncher(profile, plan.store.path / "slurm", "pql-test", wait=wait, poll_s=0.5)


def plan(results, profile="quick", **overrides):
    return plan_study(TINY, profile, {k: str(v) for k, v in overrides.items()}, results, check_local_gpu=False)


def test_array_study_completes_and_a_rerun_submits_nothing(cluster, tmp_path):
    first = plan(tmp_path, max_env_steps=320)  # 8 cells: 2 algos x 2 noises x 2 seeds
    assert len(first.to_run) == 8
    problems = run_study(first, launcher(first), progress=False)
    assert problems == []
    report = status_report(first.study, first.store)
    assert "done 8" in report
    status = json.loads((first.store.run_path(first.to_run[0]) / "status.json").read_text())
    assert status["slurm_job_id"] and status["devices"]["sim"].startswith("cpu")
    again = plan(tmp_path, max_env_steps=320)
    assert again.to_run == []
    second = launcher(again)
    assert run_study(again, second, progress=False) == [] and second.jobs == [], "nothing submitted"


def test_failing_cell_is_reported_with_its_traceback(cluster, tmp_path):
    failing = plan(tmp_path, "one", **{"algo.gamma": 1.0, "algo.reward_scale": 1e39})
    problems = run_study(failing, launcher(failing), progress=False)
    assert len(problems) == 1
    assert "Traceback" in problems[0] and "NonFiniteLoss" in problems[0]
    assert "failed 1" in status_report(failing.study, failing.store)


def test_preempted_job_checkpoints_requeues_and_resumes(cluster, tmp_path):
    long = plan(tmp_path, "one", max_env_steps=16000, eval_every_env_steps=800, checkpoint_every_s=1000)
    slurm = launcher(long, wait=False)
    run_study(long, slurm, progress=False)
    (job,) = slurm.jobs
    run = long.store.run_path(long.to_run[0])
    metrics = run / "metrics.csv"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and not (metrics.exists() and len(metrics.read_text().splitlines()) >= 6):
        time.sleep(0.2)
    assert metrics.exists(), "the job started training"
    before = metrics.read_text().splitlines()
    job._interrupt()  # what SLURM does on preemption: SIGTERM, then USR2
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not job.done(force_check=True):
        time.sleep(0.5)
    assert job.done(), "the requeued job finished"
    assert job.result()["state"] == "done"
    rows = metrics.read_text().splitlines()
    steps = [int(r.split(",")[0]) for r in rows[1:]]
    assert steps == sorted(set(steps)) and steps[-1] == 16000, "metrics continue without duplicate rows"
    assert rows[: len(before)] == before, "the rows written before the preemption are kept: it resumed"
    log = "".join(p.read_text() for p in (run.parent / "slurm").rglob("*_log.out"))
    assert "Calling checkpoint method" in log and "Requeued job" in log and "completed successfully" in log


def test_a_cpu_study_under_the_default_profile_asks_for_no_gpu_and_lands(cluster, tmp_path):
    """The default cluster profile's GPU rule on the test node, which has no GPU: CPU cells ask for none, so
    SLURM accepts the array and the runs finish (a --gpus-per-node line would be refused at submission)."""
    spec = yaml.safe_load(TINY.read_text())
    spec["profiles"]["two"] = {"axes": {"algo": ["pql"], "noise": [{"kind": "fixed", "sigma": 0.3}]}, "seeds": [0, 1]}
    path = tmp_path / "cpu_study.yaml"
    path.write_text(yaml.safe_dump(spec))
    two = plan_study(path, "two", {"max_env_steps": "320"}, tmp_path / "results", check_local_gpu=False)
    assert len(two.to_run) == 2 and all(gpus_needed(cell.config) == 0 for cell in two.to_run)
    profile = replace(ClusterProfile.load(DEFAULT_PROFILE), cpus_per_task=1, mem_gb=1)  # the 2-CPU / 2000 MB node
    slurm = SlurmLauncher(profile, two.store.path / "slurm", "pql-cpu", wait=True, poll_s=0.5)
    assert run_study(two, slurm, progress=False) == []
    assert len(slurm.jobs) == 2 and len({job.job_id.split("_")[0] for job in slurm.jobs}) == 1, "one array"
    assert "done 2" in status_report(two.study, two.store)
    for cell in two.to_run:
        status = json.loads((two.store.run_path(cell) / "status.json").read_text())
        assert status["state"] == "done" and status["slurm_job_id"] and status["devices"]["sim"].startswith("cpu")
    scripts = [p.read_text() for p in (two.store.path / "slurm").rglob("*_submission.sh")]
    assert scripts and all("--gpus-per-node" not in text and "--gres" not in text for text in scripts)
