"""Faults, interruptions, concurrent use and bad input, as a user meets them: through the ``pql`` command.

Each test here backs one row of the README's "What happens when ..." table.
"""

import json
import os
import pickle
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pql.ablate.store import metrics_problem
from pql.ablate.warm_start import WarmProcess
from pql.store.run_dir import METRIC_COLUMNS, RunDir
from pql.training.interrupt import RunInterrupted, StopSignals
from pql.training.run import train

from .conftest import TINY, wait_gone
from .warm_pql import run_pql, start_pql

HERE = Path(__file__).parent
STUDY = HERE / "data" / "tiny_study.yaml"
LONG = {"max_env_steps": "10000000", "max_time_s": "null", "checkpoint_every_s": "0"}


def pql(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return run_pql(*args, cwd=cwd)


def words(overrides: dict[str, str]) -> list[str]:
    return [f"{k}={v}" for k, v in overrides.items()]


def start(*args: str) -> WarmProcess:
    return start_pql(*args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def wait_for_rows(run: Path, rows: int, proc: WarmProcess | None = None, timeout_s: float = 120) -> None:
    """Until ``run`` has a checkpoint and ``rows`` metrics rows."""
    deadline = time.monotonic() + timeout_s
    metrics = run / "metrics.csv"
    while time.monotonic() < deadline:
        if (run / "checkpoint.pt").exists() and metrics.exists() and len(metrics.read_text().splitlines()) > rows:
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the process ended early: {proc.communicate()}")
        time.sleep(0.1)
    raise AssertionError(f"{run} did not reach {rows} rows")


def started_cell(results: Path, proc: WarmProcess, rows: int) -> Path:
    """The run directory of the one cell that ``proc`` (a ``pql ablate`` of the tiny study) started, once
    it has a checkpoint and ``rows`` metrics rows."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not list((results / "tiny").glob("*/metrics.csv")):
        time.sleep(0.1)
    (run,) = [p.parent for p in (results / "tiny").glob("*/cell.json")]
    wait_for_rows(run, rows, proc)
    return run


def status(run: Path) -> dict:
    return json.loads((run / "status.json").read_text())


def env_steps(run: Path) -> list[int]:
    return [int(line.split(",")[0]) for line in (run / "metrics.csv").read_text().splitlines()[1:]]


def temporaries(root: Path) -> list[Path]:
    return [p for p in root.rglob(".*.tmp*")]


# -- interruptions ------------------------------------------------------------------------------------
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_to_train_checkpoints_and_records_interrupted_then_resumes(tmp_path, sig):
    run = tmp_path / "run"
    proc = start("train", *words({**TINY, **LONG, "out": str(run)}))
    wait_for_rows(run, 3, proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + sig, err
    st = status(run)
    assert st["state"] == "interrupted" and st["signal"] == signal.Signals(sig).name
    assert f"resume with pql train resume={run}" in err
    stopped_at = st["env_steps"]
    resumed = pql("train", f"resume={run}", f"max_env_steps={stopped_at + 1280}")
    assert resumed.returncode == 0, resumed.stderr
    steps = env_steps(run)
    assert steps == sorted(set(steps)) and steps[-1] == stopped_at + 1280 and status(run)["state"] == "done"


@pytest.mark.parametrize("how", ["ctrl-c", "kill -9"])
def test_stopping_ablate_interrupts_the_cell_and_the_next_ablate_resumes_it(tmp_path, how):
    args = ["ablate", str(STUDY), "--profile", "one", "--results", str(tmp_path), "--no-progress",
            "max_env_steps=8000", "max_time_s=null", "eval_every_env_steps=800", "checkpoint_every_s=0"]
    proc = start(*args)
    run = started_cell(tmp_path, proc, rows=3)  # 7 rows (about 6 s) before it would end
    job = status(run)["pid"]
    if how == "ctrl-c":  # what a terminal does: SIGINT to the whole foreground group
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 130 and "resumes them" in err, err
    else:  # the launcher dies at once; its job gets SIGTERM from the kernel (PR_SET_PDEATHSIG)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=60)
    assert wait_gone(job), f"pid {job} still runs"
    expected = "SIGINT" if how == "ctrl-c" else "SIGTERM"
    st = status(run)
    assert st["state"] == "interrupted" and st["signal"] == expected and "note" not in st, "checkpointed: one signal"
    before = env_steps(run)
    again = pql(*args)
    assert again.returncode == 0, again.stderr
    assert f"interrupted by {expected}; resumes from its checkpoint" in again.stdout, "resumed, not skipped as failed"
    steps = env_steps(run)
    assert steps == sorted(set(steps)) and steps[-1] == 8000 and steps[: len(before) - 1] == before[:-1]


# A launcher with threads, as pql ablate may have, that starts a job (python -c JOB) and waits to be killed.
THREADED_LAUNCHER = """
import os, subprocess, sys, threading, time
for _ in range(8):
    threading.Thread(target=time.sleep, args=(600,), daemon=True).start()
with open(sys.argv[1], "w") as out:
    subprocess.Popen([sys.executable, "-c", sys.argv[2]], stdout=out, start_new_session=True,
                     env={**os.environ, "PQL_LAUNCHER_PID": str(os.getpid())})
time.sleep(600)
"""
JOB_COUNTING_SIGTERMS = """
import signal, time
from pql.ablate.job import _stop_with_launcher
got = []
signal.signal(signal.SIGTERM, lambda signum, frame: got.append(signum))
_stop_with_launcher()
print("ready", flush=True)
while not got:
    time.sleep(0.01)
time.sleep(2.0)  # room for any further signal of the same death
print(len(got), flush=True)
"""


def test_a_launcher_with_many_threads_that_dies_stops_its_job_with_one_sigterm(tmp_path):
    """Linux repeats the parent-death signal once per thread of the dying parent that the job is handed
    to; a second SIGTERM would stop the run at once, without its checkpoint."""
    out = tmp_path / "job.out"
    launcher = subprocess.Popen([sys.executable, "-c", THREADED_LAUNCHER, str(out), JOB_COUNTING_SIGTERMS],
                                start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (out.exists() and out.read_text().startswith("ready")):
        time.sleep(0.05)
    os.killpg(launcher.pid, signal.SIGKILL)
    launcher.wait(timeout=30)
    while time.monotonic() < deadline and len(out.read_text().split()) < 2:
        time.sleep(0.05)
    assert out.read_text().split() == ["ready", "1"]


def test_a_second_signal_while_the_run_writes_how_it_ended_leaves_it_interrupted(tmp_path, monkeypatch):
    """The first SIGTERM stops the run at its next step; a second one arriving just as the run writes its
    status (here: at once, through the installed handler) is only noted, so status.json does not stay
    running."""
    def handler_now() -> None:  # what Python does when SIGTERM arrives at this point of the main thread
        signal.getsignal(signal.SIGTERM)(signal.SIGTERM, None)

    append, write = RunDir.append_metrics, RunDir.write_status

    def append_then_signal(self, row):
        append(self, row)
        if row["env_steps"] == 1280:
            handler_now()

    def signal_then_write(self, state, **fields):
        if state != "running":
            handler_now()
        write(self, state, **fields)

    monkeypatch.setattr(RunDir, "append_metrics", append_then_signal)
    monkeypatch.setattr(RunDir, "write_status", signal_then_write)
    run = tmp_path / "run"
    with pytest.raises(RunInterrupted, match="interrupted by SIGTERM at env step"):
        train({**TINY, **LONG, "out": str(run)})
    st = status(run)
    assert st["state"] == "interrupted" and st["signal"] == "SIGTERM" and "note" not in st, st
    assert st["env_steps"] == 1280 and (run / "checkpoint.pt").exists()  # stopped where the first one came


# -- concurrent use -----------------------------------------------------------------------------------
def test_two_ablates_of_one_study_never_run_a_cell_twice(tmp_path):
    args = ["ablate", str(STUDY), "--profile", "one", "--results", str(tmp_path), "--no-progress",
            "max_env_steps=8000", "max_time_s=null", "eval_every_env_steps=800", "checkpoint_every_s=0"]
    first = start(*args)
    run = started_cell(tmp_path, first, rows=2)
    os.killpg(first.pid, signal.SIGSTOP)  # held mid-run, however fast this machine runs it: its locks stay held
    try:
        second = pql(*args)
        train = pql("train", f"resume={run}")
    finally:
        os.killpg(first.pid, signal.SIGCONT)
    assert second.returncode == 0, second.stderr
    assert "skip  running" in second.stdout and "left to it" in second.stdout
    assert train.returncode == 2 and "in use by another process" in train.stderr
    _, err = first.communicate(timeout=240)
    assert first.returncode == 0, err
    steps = env_steps(run)
    assert steps == sorted(set(steps)) and steps[-1] == 8000 and status(run)["state"] == "done"


def test_metrics_with_repeated_or_decreasing_env_steps_are_never_done(tmp_path):
    path = tmp_path / "metrics.csv"
    header = ",".join(METRIC_COLUMNS)
    row = lambda steps: ",".join([str(steps), "1.0"] + ["0"] * (len(METRIC_COLUMNS) - 2))  # noqa: E731
    path.write_text("\n".join([header, row(0), row(0), row(2112), row(2112)]) + "\n")
    assert "repeat" in metrics_problem(path, 2112)
    path.write_text("\n".join([header, row(0), row(2112), row(1056)]) + "\n")
    assert "go backwards" in metrics_problem(path, 1056)
    path.write_text("\n".join([header, row(0), row(1056), row(2112)]) + "\n")
    assert metrics_problem(path, 2112) is None


# -- corrupt and crafted checkpoints --------------------------------------------------------------------
def _interrupted_cell(tmp_path: Path) -> tuple[list[str], Path]:
    args = ["ablate", str(STUDY), "--profile", "one", "--results", str(tmp_path), "--no-progress",
            "max_env_steps=3200", "max_time_s=null", "eval_every_env_steps=800"]
    assert pql(*args).returncode == 0
    (run,) = [p.parent for p in (tmp_path / "tiny").glob("*/cell.json")]
    body = status(run)
    body["state"] = "interrupted"
    (run / "status.json").write_text(json.dumps(body))
    return args, run


def test_truncated_checkpoint_is_set_aside_and_the_cell_redone(tmp_path):
    args, run = _interrupted_cell(tmp_path)
    data = (run / "checkpoint.pt").read_bytes()
    (run / "checkpoint.pt").write_bytes(data[: len(data) // 3])
    for command in (["train", f"resume={run}"], ["export", str(run)]):
        refused = pql(*command)
        assert refused.returncode == 2 and f"{run / 'checkpoint.pt'} cannot be loaded" in refused.stderr
        assert "Traceback" not in refused.stderr
    again = pql(*args)
    assert again.returncode == 0, again.stderr
    assert status(run)["state"] == "done" and env_steps(run)[0] == 0 and env_steps(run)[-1] == 3200
    assert list(run.glob("checkpoint.pt.corrupt-*")), "the unloadable checkpoint is kept aside"
    assert "starts afresh" in (run / "train.log").read_text()


class _RunsCode:
    def __reduce__(self):
        return (os.system, (f"touch {_RunsCode.marker}",))


def test_crafted_pickle_in_a_checkpoint_is_refused(tmp_path):
    run = tmp_path / "run"
    assert pql("train", *words({**TINY, "out": str(run), "max_env_steps": "640"})).returncode == 0
    _RunsCode.marker = tmp_path / "pwned"
    (run / "checkpoint.pt").write_bytes(pickle.dumps({"progress": _RunsCode()}))
    for command in (["train", f"resume={run}"], ["export", str(run)]):
        refused = pql(*command)
        assert refused.returncode == 2, refused.stderr
        assert str(run / "checkpoint.pt") in refused.stderr and "could run code" in refused.stderr
    assert not _RunsCode.marker.exists(), "loading the checkpoint ran no code"


# -- full disk, unwritable output -----------------------------------------------------------------------
def _file_size_limit(limit: int):
    """A limit on the size of any file the child writes: a write past it fails as on a full disk."""
    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def test_full_disk_fails_the_run_with_its_error_and_leaves_no_temporary_files(tmp_path):
    run = tmp_path / "run"
    # config.yaml, status.json and metrics rows fit; the first checkpoint does not
    proc = subprocess.run([sys.executable, "-m", "pql", "train", *words({**TINY, "out": str(run)})],
                          capture_output=True, text=True, preexec_fn=_file_size_limit(8_000), timeout=300)
    assert proc.returncode == 1 and "File too large" in proc.stderr and "Traceback" not in proc.stderr
    st = status(run)
    assert st["state"] == "failed" and "File too large" in st["error"]
    assert not (run / "checkpoint.pt").exists() and temporaries(tmp_path) == []


def test_status_that_cannot_be_rewritten_is_removed_rather_than_left_running(tmp_path, capsys):
    from pql.training.run import _record

    run = RunDir(tmp_path / "run")
    run.write_status("running", pid=os.getpid())
    (run.path / f".status.json.tmp{os.getpid()}").mkdir()  # the write of the new status now fails (EISDIR)
    _record(run, StopSignals(), "failed", error="OSError: [Errno 28] No space left on device")
    assert not (run.path / "status.json").exists(), "no status.json left saying running"
    assert "could not write" in capsys.readouterr().err


def test_full_disk_under_ablate_fails_cells_and_still_prints_the_summary(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pql", "ablate", str(STUDY), "--profile", "one", "--results",
                           str(tmp_path), "--no-progress", "max_env_steps=1600"], capture_output=True, text=True,
                          preexec_fn=_file_size_limit(8_000), timeout=300)
    assert proc.returncode == 1, proc.stderr
    assert "failed 1" in proc.stdout and "File too large" in proc.stdout, "the summary names the error"
    (run,) = [p.parent for p in (tmp_path / "tiny").glob("*/cell.json")]
    assert status(run)["state"] == "failed" and temporaries(tmp_path) == []


def test_output_directory_that_cannot_be_created_is_refused(tmp_path):
    proc = pql("train", *words({**TINY, "out": "/proc/pql-cannot-write-here/run"}))
    assert proc.returncode == 2 and "cannot create the run directory /proc/pql-cannot-write-here/run" in proc.stderr


# -- bad input: exit 2, the bad key, value or file named, never a traceback ----------------------------------
def test_malformed_yaml_spec_and_cluster_profile_name_the_file_and_line(tmp_path):
    spec = tmp_path / "broken.yaml"
    spec.write_text("study: broken\naxes: {num_envs: [1, 2\nprofiles: {quick: {}}\n")
    for command in ("ablate", "status", "report"):
        proc = pql(command, str(spec))
        assert proc.returncode == 2 and f"{spec}: not valid YAML" in proc.stderr and "line" in proc.stderr, command
        assert "Traceback" not in proc.stderr
    cluster = tmp_path / "cluster.yaml"
    cluster.write_text("partition: [gpu\n")
    proc = pql("ablate", str(STUDY), "--launcher", "slurm", "--dry-run", "--cluster", str(cluster),
               "--results", str(tmp_path))
    assert proc.returncode == 2 and f"--cluster {cluster}: not valid YAML" in proc.stderr
    proc = pql("ablate", str(STUDY), "--launcher", "slurm", "--dry-run", "--cluster", str(tmp_path / "none.yaml"),
               "--results", str(tmp_path))
    assert proc.returncode == 2 and "none.yaml: no such file" in proc.stderr


def test_bad_run_directory_and_bad_values_exit_2(tmp_path):
    (tmp_path / "notarun").mkdir()
    for command in (["export", str(tmp_path / "notarun")], ["train", f"resume={tmp_path / 'notarun'}"],
                    ["train", "num_envs=many"], ["status", str(STUDY), "--profile", "nope"]):
        proc = pql(*command)
        assert proc.returncode == 2 and "pql: error:" in proc.stderr and "Traceback" not in proc.stderr, command
    assert pql("export", str(tmp_path / "missing")).returncode == 2 and not (tmp_path / "missing").exists()


def test_report_on_a_study_whose_runs_are_all_corrupt_names_them(tmp_path):
    args = ["--profile", "one", "--results", str(tmp_path)]
    assert pql("ablate", str(STUDY), *args, "--no-progress", "max_env_steps=640").returncode == 0
    (run,) = [p.parent for p in (tmp_path / "tiny").glob("*/cell.json")]
    (run / "metrics.csv").write_text("env_steps\n")
    proc = pql("report", str(STUDY), *args, "max_env_steps=640", "--plots", str(tmp_path / "plots"))
    assert proc.returncode == 2 and run.name in proc.stderr and "corrupt result" in proc.stderr


# -- SLURM preview on a machine without SLURM ----------------------------------------------------------------
def test_slurm_dry_run_works_from_any_directory_without_slurm(tmp_path):
    proc = pql("ablate", str(STUDY.resolve()), "--launcher", "slurm", "--dry-run", "--results", str(tmp_path),
               cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "#SBATCH --array=0-7%" in proc.stdout and "cluster profile: built-in defaults" in proc.stdout
    shipped = HERE.parent / "ablations" / "envs.yaml"
    proc = pql("ablate", str(shipped), "--launcher", "slurm", "--dry-run", "--results", str(tmp_path), cwd=tmp_path)
    assert proc.returncode == 0 and str(shipped.parent / "clusters" / "default.yaml") in proc.stdout


@pytest.mark.skipif(shutil.which("sbatch") is not None, reason="SLURM is installed here")
def test_slurm_launch_without_slurm_says_what_is_missing(tmp_path):
    proc = pql("ablate", str(STUDY), "--profile", "one", "--launcher", "slurm", "--results", str(tmp_path))
    assert proc.returncode == 2 and "sbatch and srun not found" in proc.stderr and "--dry-run" in proc.stderr
    (run,) = [p.parent for p in (tmp_path / "tiny").glob("*") if p.is_dir()]
    assert not (run / "status.json").exists(), "nothing was submitted, nothing claims to be"


# -- the progress display ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("budget", [{"max_env_steps": "1600"}, {"max_time_s": "2", "max_env_steps": "null"}])
def test_progress_bar_ends_cleanly_also_after_a_resume(tmp_path, budget):
    run = tmp_path / "run"
    first = pql("train", *words({**TINY, **budget, "out": str(run), "progress": "true"}))
    longer = {k: str(float(v) * 2) if k == "max_time_s" else str(int(v) * 2) for k, v in budget.items() if v != "null"}
    resumed = pql("train", f"resume={run}", "progress=true", *words(longer))
    for proc in (first, resumed):
        assert proc.returncode == 0, proc.stderr
        assert "TqdmWarning" not in proc.stderr and "<-" not in proc.stderr and "100%" in proc.stderr
