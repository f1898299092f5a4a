"""mode=async: the workers as processes, the ring between them, failures, interruptions and resume."""

import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from pql.ablate.store import ResultsStore
from pql.ablate.warm_start import WarmProcess
from pql.buffers import RingBuffer
from pql.envs import register
from pql.envs.classic import Pendulum
from pql.training.loop import NonFiniteLoss
from pql.training.parallel import WorkerFailed
from pql.training.placement import thread_plan
from pql.training.run import train
from pql.workers.exchange import TransitionRing
from tests.conftest import wait_gone
from tests.test_trainer import read_rows
from tests.warm_pql import start_pql

ROWS, BATCHES = 5, 37  # 37 batches through 3 slots: the ring wraps around a dozen times


def produce(ring: TransitionRing, batches: int) -> None:
    """Put ``batches`` batches of numbered rows (row i holds i and -i) as soon as the ring has room."""
    rows = ring.storage.shape[1]
    for b in range(batches):
        while not ring.has_room():
            time.sleep(1e-4)
        ids = torch.arange(b * rows, (b + 1) * rows, dtype=torch.float32)
        ring.put(torch.stack([ids, -ids], 1))


def test_ring_carries_every_row_once_in_order_from_another_process():
    ring = TransitionRing(slots=3, rows=ROWS, width=2, readers=2, device="cpu").share_memory()
    producer = mp.get_context("spawn").Process(target=produce, args=(ring, BATCHES))
    producer.start()
    seen: list[torch.Tensor] = []
    buffer = RingBuffer(23, {"id": (), "neg": ()}, "cpu")  # 23 rows: the replay buffer wraps too
    deadline = time.monotonic() + 60
    while (ring.pending(0) or ring.pending(1) or producer.is_alive()) and time.monotonic() < deadline:
        if ring.pending(0):  # reader 0 keeps everything, reader 1 is a replay buffer
            rows = ring.peek(0)
            seen.append(rows.clone())
            ring.release(0, [])
        if ring.pending(1):
            rows = ring.peek(1)
            ring.release(1, [buffer.add_rows(rows)])
        assert int(ring.written) - int(ring.taken.min()) <= 3, "the writer never overruns a slot being read"
    producer.join()
    assert producer.exitcode == 0
    ids = torch.cat(seen)[:, 0]
    assert torch.equal(ids, torch.arange(ROWS * BATCHES, dtype=torch.float32)), "each row once, in order"
    assert torch.equal(torch.cat(seen)[:, 1], -ids), "no row torn between two writes"
    order = (buffer.ptr + torch.arange(23)) % 23  # oldest first
    assert torch.equal(buffer.data["id"][order], ids[-23:]), "the buffer holds the newest rows in order"


def test_thread_plan_splits_the_cores_without_oversubscription():
    cpu, gpu = torch.device("cpu"), torch.device("cuda:0")
    assert thread_plan({"actor": cpu, "v": cpu, "p": cpu}, 2) == {"actor": 1, "v": 1, "p": 1}
    assert thread_plan({"actor": cpu, "v": cpu, "p": cpu}, 16) == {"actor": 5, "v": 6, "p": 5}
    assert thread_plan({"actor": gpu, "v": cpu, "p": cpu}, 8) == {"actor": 1, "v": 4, "p": 4}
    assert thread_plan({"actor": gpu, "v": gpu, "p": gpu}, 8) == {"actor": 1, "v": 1, "p": 1}


def test_core_plan_gives_the_v_learner_its_own_cores_and_the_budget_follows_omp_num_threads(monkeypatch):
    from pql.training.placement import core_budget, core_plan

    assert core_plan({"actor": 1, "v": 1, "p": 1}, [0, 1]) == {"v": {0}, "actor": {1}, "p": {1}}
    assert core_plan({"actor": 5, "v": 6, "p": 5}, list(range(16))) == {
        "v": set(range(6)), "actor": set(range(6, 11)), "p": set(range(11, 16))}
    assert core_plan({"actor": 1, "v": 1, "p": 1}, [3]) == {"v": {3}, "actor": {3}, "p": {3}}
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert core_budget()[1] == 1, "pql ablate --jobs J gives each run its share"
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert core_budget()[1] == len(core_budget()[0]) >= 1


def test_local_jobs_split_the_cpus_this_process_may_use_not_the_machine_s(monkeypatch):
    """``pql ablate --jobs J`` under taskset, a cgroup or SLURM's allocation: the affinity's CPUs are split,
    and an OMP_NUM_THREADS the user set caps them."""
    from pql.ablate.launchers import job_threads

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {4, 5, 6, 7, 8, 9})
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert [job_threads(jobs) for jobs in (1, 2, 4, 8)] == [6, 3, 1, 1]
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    assert [job_threads(jobs) for jobs in (1, 2, 3)] == [4, 2, 1]


@pytest.fixture
def async_run(tiny):
    """The tiny run in async mode, with a critic big enough that the V-learner is the slowest worker."""
    return {**tiny, "mode": "async", "algo.critic_hidden": "[128,128]", "algo.batch_size": "256",
            "max_env_steps": "6400", "eval_every_env_steps": "1600"}


def test_async_holds_both_ratios_with_a_slow_learner(async_run):
    run = train({**async_run, "eval_every_env_steps": "3200"}).path
    rows = read_rows(run)
    assert json.loads((run / "status.json").read_text())["state"] == "done"
    assert [int(r["env_steps"]) for r in rows] == [0, 3200, 6400], "rows where sync mode has them"
    for row in rows[1:]:
        counted = int(row["actor_steps"]) - 8  # warm-up steps are not counted by the controller
        v, p = int(row["v_updates"]), int(row["p_updates"])
        assert v == pytest.approx(8 * counted, rel=0.05), row
        assert v / p == pytest.approx(2, rel=0.05), row
    assert float(rows[-1]["critic_loss"]) > 0 and float(rows[-1]["actor_loss"]) == float(rows[-1]["actor_loss"])


def test_async_resume_continues_counts_and_rows(async_run):
    first = train({**async_run, "max_env_steps": "3200"}).path
    before = read_rows(first)
    state = torch.load(first / "checkpoint.pt", weights_only=True)
    assert {"policy", "critic", "critic_target", "normalizer", "controller"} <= set(state)
    assert set(state["rng"]) == {"torch", "actor", "env", "v", "p", "eval_env"}
    train({"resume": str(first), "max_env_steps": "6400"})
    rows = read_rows(first)
    assert rows[:len(before)] == before
    assert [int(r["env_steps"]) for r in rows] == [0, 1600, 3200, 4800, 6400]
    assert int(rows[-1]["v_updates"]) > int(before[-1]["v_updates"]) > 0, "the controller's counts go on"
    assert json.loads((first / "status.json").read_text())["state"] == "done"


class CrashingPendulum(Pendulum):
    """Pendulum whose simulator raises on its 20th step in a worker process (the actor's), not in the
    parent's evaluation."""

    def step(self, actions):
        self.steps = getattr(self, "steps", 0) + 1
        if self.steps == 20 and mp.parent_process() is not None:
            raise RuntimeError("simulator exploded")
        return super().step(actions)


class NaNPendulum(Pendulum):
    """Pendulum whose rewards turn NaN after 5 steps, before learning starts: the critic's loss is NaN from
    the V-learner's first update, so its first check (50 updates) comes long before the P-learner's."""

    def step(self, actions):
        self.steps = getattr(self, "steps", 0) + 1
        obs, reward, terminated, truncated, info = super().step(actions)
        return obs, reward * (float("nan") if self.steps > 5 else 1.0), terminated, truncated, info


register("test/crashing-pendulum", CrashingPendulum)
register("test/nan-pendulum-async", NaNPendulum)


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(c) for c in path.read_text().split()] if path.exists() else []


def test_a_crash_in_the_actor_fails_the_run_naming_it_and_leaves_no_process(async_run):
    with pytest.raises(WorkerFailed, match=r"the actor \(pid \d+\) failed: RuntimeError: simulator exploded"):
        train({**async_run, "task": "test/crashing-pendulum"})
    status = json.loads(Path(async_run["out"], "status.json").read_text())
    assert status["state"] == "failed" and status["worker"] == "actor"
    assert "simulator exploded" in status["traceback"] and "CrashingPendulum" not in status["error"]
    assert all(wait_gone(pid, 10) for pid in status["workers"].values())


def refuse_in_the_worker(reason: str) -> None:
    """What unpickling a CUDA tensor does where a container refuses CUDA IPC: raise in the receiving process."""
    raise RuntimeError(reason)


class RefusedShare:
    """Stands in for a shared tensor that the worker cannot map: it fails to unpickle there."""

    def __reduce__(self):
        return refuse_in_the_worker, ("cudaIpcOpenMemHandle failed: operation not supported (a stand-in)",)


def test_a_worker_that_cannot_map_the_shared_tensors_reports_its_own_error(async_run, monkeypatch):
    """The shared bundle is opened inside the worker's own error handling: the run fails naming the worker and
    the cause (status.json's error), not "exited with code 1" with the traceback on stderr alone."""
    from pql.training.parallel import ProcessTrainer

    share = ProcessTrainer.share

    def share_refused(self, ctx):
        shared = share(self, ctx)
        shared.env_factory = RefusedShare()  # travels with the ring and slots
        return shared

    monkeypatch.setattr(ProcessTrainer, "share", share_refused)
    with pytest.raises(WorkerFailed, match=r"failed: SharedNotReceived: could not receive the shared ring, slots"
                                           r" and board from the parent process: RuntimeError: cudaIpcOpenMemHandle"):
        train(async_run)
    status = json.loads(Path(async_run["out"], "status.json").read_text())
    assert status["state"] == "failed" and "operation not supported" in status["error"]
    assert "refuse_in_the_worker" in status["traceback"]


def test_the_actor_receives_no_critic_and_each_worker_compiles_before_it_is_pinned(tmp_path, monkeypatch):
    """start_worker in this process: the actor's bundle leaves out the critic's slot (a process maps every CUDA
    tensor it receives) and still builds and steps; its warm-up (compilation) runs on every CPU of the process,
    and afterwards every thread of the process, those started before too, is pinned to the worker's cores."""
    import threading

    from pql.resolve import build_config
    from pql.store.run_dir import RunDir
    from pql.training.board import Parcel
    from pql.training.parallel import ProcessTrainer
    from pql.training.processes import ActorRole, start_worker
    from pql.workers.plan import plan_run

    cfg = build_config({"task": "classic/pendulum", "mode": "async", "num_envs": "16", "algo.actor_hidden": "[8]",
                        "algo.critic_hidden": "[8]", "device.sim": "cpu", "device.v_learner": "cpu",
                        "device.p_learner": "cpu"})
    parent = ProcessTrainer(plan_run(cfg), RunDir(tmp_path / "run"))
    shared = parent.shared = parent.share(mp.get_context("spawn"))
    shared.board.flags.update(pause=0, actor_limit=10**9, learn_from=10**9)
    bundle = shared.for_role("actor")
    assert bundle.critic is None and bundle.ring is shared.ring and shared.for_role("v") is shared
    everywhere = os.sched_getaffinity(0)
    seen_while_compiling = []
    warm_up = ActorRole.warm_up
    monkeypatch.setattr(ActorRole, "warm_up", lambda self: seen_while_compiling.append(os.sched_getaffinity(0))
                        or warm_up(self))
    stop = threading.Event()
    earlier = threading.Thread(target=stop.wait)  # a thread started before the pinning
    earlier.start()
    core = {min(everywhere)}
    try:
        worker, _ = start_worker("actor", Parcel(bundle, "the actor's bundle"), torch.device("cpu"), 1, core, None)
        pinned = {int(tid): os.sched_getaffinity(int(tid)) for tid in os.listdir("/proc/self/task")}
        assert worker.work() == 0.0 and shared.board.flags["actor_steps"] == 1, "the actor steps without a critic"
    finally:
        stop.set()
        earlier.join()
        for tid in os.listdir("/proc/self/task"):
            with contextlib.suppress(ProcessLookupError):
                os.sched_setaffinity(int(tid), everywhere)
    assert seen_while_compiling == [everywhere], "compiled on every CPU the process had"
    assert earlier.native_id in pinned and all(cpus == core for cpus in pinned.values()), "all pinned afterwards"


def test_a_diverging_learner_fails_the_run_naming_it(async_run):
    with pytest.raises(NonFiniteLoss, match="in the V-learner"):
        train({**async_run, "task": "test/nan-pendulum-async", "eval_every_env_steps": "100000"})
    status = json.loads(Path(async_run["out"], "status.json").read_text())
    assert status["state"] == "failed" and status["worker"] == "V-learner"
    assert status["env_steps"] < 6400, "stopped long before the next evaluation"


def _start_cli(overrides: dict[str, str]) -> WarmProcess:
    args = [f"{k}={v}" for k, v in overrides.items()]
    return start_pql("train", *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _wait_running(run: Path, proc: WarmProcess, min_rows: int = 2) -> dict:
    """The running status once the workers run, ``min_rows`` rows are written and a checkpoint exists."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        status = json.loads((run / "status.json").read_text()) if (run / "status.json").exists() else {}
        if ("workers" in status and (run / "checkpoint.pt").exists() and (run / "metrics.csv").exists()
                and len(read_rows(run)) >= min_rows):
            return status
        time.sleep(0.1)
    raise AssertionError(f"the run did not start: {proc.communicate()}")


@pytest.mark.parametrize("role", ["actor", "V-learner", "P-learner"])
def test_kill_9_of_a_worker_stops_the_run_within_seconds(async_run, role):
    run = Path(async_run["out"])
    proc = _start_cli({**async_run, "max_env_steps": "10000000", "checkpoint_every_s": "0"})
    status = _wait_running(run, proc)
    os.kill(status["workers"][{"actor": "actor", "V-learner": "v", "P-learner": "p"}[role]], signal.SIGKILL)
    killed = time.monotonic()
    _, err = proc.communicate(timeout=60)
    assert time.monotonic() - killed < 10 and proc.returncode == 1, err
    final = json.loads((run / "status.json").read_text())
    assert final["state"] == "failed" and final["worker"] == role and "killed by SIGKILL" in final["error"]
    assert final["cause"] == "killed" and final["resumable"] is True, "the out-of-memory killer's signal: resumable"
    assert torch.load(run / "checkpoint.pt", weights_only=True)["progress"]["env_steps"] > 0, "the checkpoint is kept"
    assert all(wait_gone(pid, 10) for pid in status["workers"].values()), "no worker left behind"


def test_ctrl_c_checkpoints_stops_every_worker_and_resumes(async_run):
    run = Path(async_run["out"])
    proc = _start_cli({**async_run, "max_env_steps": "10000000", "checkpoint_every_s": "0"})
    status = _wait_running(run, proc)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=60)
    assert proc.returncode == 130
    final = json.loads((run / "status.json").read_text())
    assert final["state"] == "interrupted" and final["signal"] == "SIGINT"
    assert all(wait_gone(pid, 10) for pid in status["workers"].values())
    stopped_at = torch.load(run / "checkpoint.pt", weights_only=True)["progress"]["env_steps"]
    assert stopped_at == final["env_steps"] > 0
    train({"resume": str(run), "max_env_steps": str(stopped_at + 1600)})
    assert json.loads((run / "status.json").read_text())["state"] == "done"
    assert int(read_rows(run)[-1]["env_steps"]) >= stopped_at + 1600


QUICK_ROWS = {"max_env_steps": "10000000", "checkpoint_every_s": "0", "algo.critic_hidden": "[16,16]",
              "algo.batch_size": "64", "eval_every_env_steps": "320"}  # a row and a checkpoint every 10 actor steps


def test_a_stopped_worker_is_caught_by_the_watchdog_and_the_run_fails_resumably(async_run):
    run = Path(async_run["out"])
    proc = _start_cli({**async_run, **QUICK_ROWS, "watchdog_s": "4"})
    status = _wait_running(run, proc)
    os.kill(status["workers"]["v"], signal.SIGSTOP)  # a hung simulator call, a deadlock, a swapped-out process
    stopped = time.monotonic()
    _, err = proc.communicate(timeout=60)
    assert time.monotonic() - stopped < 12 and proc.returncode == 1, err
    final = json.loads((run / "status.json").read_text())
    assert final["state"] == "failed" and final["worker"] == "V-learner", final
    assert final["cause"] == "watchdog" and final["resumable"] is True
    assert "made no progress for" in final["error"] and "watchdog_s=4" in final["error"]
    assert all(wait_gone(pid, 10) for pid in status["workers"].values()), "the stopped worker is killed too"


def test_sigterm_while_a_worker_is_stuck_stops_the_run_at_once_as_interrupted(async_run):
    run = Path(async_run["out"])
    proc = _start_cli({**async_run, **QUICK_ROWS})  # watchdog_s: its default, 300 s
    status = _wait_running(run, proc)
    os.kill(status["workers"]["actor"], signal.SIGSTOP)
    time.sleep(1.5)  # the actor misses its heartbeats
    proc.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and time.monotonic() - signalled < 8, err
    final = json.loads((run / "status.json").read_text())
    assert final["state"] == "interrupted" and final["signal"] == "SIGTERM", final
    assert "actor was stuck" in final["note"] and "resumes from the last one" in final["note"]
    assert all(wait_gone(pid, 10) for pid in status["workers"].values())


def test_sigterm_to_the_process_group_while_the_workers_start_ends_interrupted(async_run):
    run = Path(async_run["out"])
    args = [f"{k}={v}" for k, v in {**async_run, "max_env_steps": "10000000"}.items()]
    proc = start_pql("train", *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 60
    status: dict = {}
    while "workers" not in status and time.monotonic() < deadline and proc.poll() is None:
        with contextlib.suppress(OSError, ValueError):
            status = json.loads((run / "status.json").read_text())
        time.sleep(0.01)
    assert not (run / "metrics.csv").exists(), "signalled before the workers were built"
    os.killpg(proc.pid, signal.SIGTERM)  # what scancel does: every process of the job
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    final = json.loads((run / "status.json").read_text())
    assert final["state"] == "interrupted" and final["signal"] == "SIGTERM", final
    assert (run / "checkpoint.pt").exists(), "the workers parked and the run checkpointed"
    assert all(wait_gone(pid, 10) for pid in status["workers"].values())


def test_rows_written_while_the_actor_waits_repeat_env_steps_and_the_run_stays_done(async_run):
    """A busy machine: the actor waits for a slow V-learner (64 updates per step), and rows come by time."""
    run = train({**async_run, "algo.critic_sample_ratio": "64", "algo.critic_hidden": "[256,256]",
                 "algo.batch_size": "1024", "max_env_steps": "null", "max_time_s": "2", "eval_every_s": "0.2",
                 "eval_every_env_steps": "100000"}).path
    steps = [int(r["env_steps"]) for r in read_rows(run)]
    assert len(steps) > len(set(steps)), f"some rows repeat the env steps of the one before: {steps}"
    assert json.loads((run / "status.json").read_text())["state"] == "done"
    assert ResultsStore(run.parent, run.name).run_state(run, None).state == "done", "never judged corrupt"
