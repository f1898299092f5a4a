"""Warm starts (pql/ablate/warm_start.py): a process forked from a server that imported torch is started as
``subprocess.Popen`` would start ``python -m MODULE``; the local launcher starts its later cells so."""

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pql.ablate import launchers
from pql.ablate.launchers import LocalLauncher
from pql.ablate.runner import plan_study, run_study
from pql.ablate.warm_start import WarmStarter

from .conftest import wait_gone

PLUGINS = Path(__file__).parent / "plugins"


@pytest.fixture(scope="module")
def starter():
    warm = WarmStarter(("json", "fcntl"))
    yield warm
    warm.close()


def _probe(starter: WarmStarter, tmp_path: Path, *args: str, **kwargs) -> tuple[int, dict, str]:
    env = {"PYTHONPATH": str(PLUGINS), "PQL_PROBE": "1"}
    proc = starter.popen("warm_probe", *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         cwd=tmp_path, env=env, **kwargs)
    out, err = proc.communicate(timeout=60)
    return proc.returncode, json.loads(out), err


def test_a_warm_process_is_what_popen_would_start(starter, tmp_path):
    code, seen, err = _probe(starter, tmp_path, "3")
    assert code == 3 and err == "to stderr\n"
    assert seen["ppid"] == starter.server.pid and seen["pid"] != starter.server.pid
    assert seen["cwd"] == str(tmp_path) and seen["path0"] == str(tmp_path) and seen["argv"] == ["3"]
    assert seen["env"] == {"PYTHONPATH": str(PLUGINS), "PQL_PROBE": "1"} and seen["name"] == "__main__"
    assert seen["sid"] != seen["pid"], "in the server's session unless asked"
    _, alone, _ = _probe(starter, tmp_path, "0", start_new_session=True)
    assert alone["sid"] == alone["pid"]


def test_a_passed_descriptor_keeps_its_number_and_its_lock(starter, tmp_path):
    with open(tmp_path / ".lock", "w") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        _, seen, _ = _probe(starter, tmp_path, "0", str(fh.fileno()), pass_fds=(fh.fileno(),))
    assert seen["locked"] is True


def test_exit_by_signal_and_a_stopped_server(starter, tmp_path):
    proc = starter.popen("warm_probe", "0", cwd=tmp_path, env={"PYTHONPATH": str(PLUGINS)},
                         stdout=subprocess.DEVNULL)
    assert proc.wait(timeout=60) == 0 and proc.poll() == 0
    sleeper = starter.popen("time", cwd=tmp_path, env={}, stderr=subprocess.DEVNULL)  # python -m time: an error
    assert sleeper.wait(timeout=60) == 1
    os.kill(starter.server.pid, signal.SIGINT)  # a terminal's Ctrl-C to the launcher's group: ignored
    time.sleep(0.2)
    assert starter.server.poll() is None
    other = WarmStarter(())
    other.close()
    with pytest.raises(OSError, match="not running"):
        other.popen("warm_probe")


def test_the_local_launcher_forks_the_cells_after_the_first_from_the_warm_server(tmp_path, monkeypatch):
    spec = tmp_path / "three.yaml"
    spec.write_text("study: three\nbase: {task: classic/pendulum, mode: sync, num_envs: 16, eval_envs: 2, "
                    "max_env_steps: 320, eval_every_env_steps: 320, eval_every_s: 3600, algo: {actor_hidden: [8], "
                    "critic_hidden: [8], batch_size: 32, buffer_size: 1000, warmup_steps: 4}}\n"
                    "axes: {}\nseeds: [0, 1, 2]\nprofiles: {quick: {}}\n")
    started = []
    popen = WarmStarter.popen

    def recorded(self, *args, **kwargs):
        proc = popen(self, *args, **kwargs)
        started.append((proc.pid, self.server.pid))
        return proc

    monkeypatch.setattr(launchers.WarmStarter, "popen", recorded)
    plan = plan_study(spec, "quick", {}, tmp_path / "results")
    assert run_study(plan, LocalLauncher(jobs=1), progress=False) == []
    pids = [json.loads((plan.store.run_path(c) / "status.json").read_text()) for c in plan.to_run]
    assert all(st["state"] == "done" for st in pids)
    assert [p for p, _ in started] == [st["pid"] for st in pids[1:]], "the first cold, the next two warm"
    assert wait_gone(started[0][1], 10), "the server stopped with the launch"


def test_kill_9_of_the_launcher_stops_a_warm_cell_which_checkpoints(tmp_path):
    spec = tmp_path / "two.yaml"
    spec.write_text("study: two\nbase: {task: classic/pendulum, mode: sync, num_envs: 16, eval_envs: 2, "
                    "max_time_s: null, eval_every_env_steps: 800, eval_every_s: 3600, checkpoint_every_s: 0, "
                    "algo: {actor_hidden: [8], critic_hidden: [8], batch_size: 32, buffer_size: 1000, "
                    "warmup_steps: 4}}\naxes: {max_env_steps: [320, 10000000]}\nseeds: [0]\nprofiles: {quick: {}}\n")
    args = [sys.executable, "-m", "pql", "ablate", str(spec), "--results", str(tmp_path), "--no-progress"]
    proc = subprocess.Popen(args, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    long = None
    while time.monotonic() < deadline and long is None:
        for cell in (tmp_path / "two").glob("*/cell.json"):
            steps = json.loads(cell.read_text())["config"]["max_env_steps"]
            if steps > 320 and (cell.parent / "checkpoint.pt").exists():
                long = cell.parent
        time.sleep(0.1)
    assert long is not None, "the second cell started and checkpointed"
    job = json.loads((long / "status.json").read_text())["pid"]
    parent = int(Path(f"/proc/{job}/stat").read_text().rsplit(")", 1)[1].split()[1])
    assert parent != proc.pid, "forked from the warm server, not started by the launcher"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert wait_gone(job, 60), f"the warm job {job} still runs"
    st = json.loads((long / "status.json").read_text())
    assert st["state"] == "interrupted" and st["signal"] == "SIGTERM" and "note" not in st, st
