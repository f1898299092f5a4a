"""Shared fixtures: a tiny, fast training configuration; the Isaac simulator fakes."""

import atexit
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

import pytest

# One torch thread in every test process and what it starts (a run's workers, `pql ablate`'s cells): the
# suite runs in parallel test processes (make test: pytest -n 2), and on a busy core torch's thread pool spins
# against the others, slowing tiny updates by an order of magnitude. Set before anything imports torch.
os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"

# JAX's compilation cache of this session (its test processes and the processes they start), cold at its
# start: the Playground tests share one compiled step without touching the user's ~/.cache/pql/jax, and
# time what CI would. Made by the session's first process, which the parallel test processes inherit it
# from (pytest-xdist sets PYTEST_XDIST_WORKER in them), and removed when that process ends.
if "PYTEST_XDIST_WORKER" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="pql-test-jax-")
    atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)

# The test files that take longest, first: `make test` (pytest -n 2, with pyproject.toml's --dist loadfile
# --no-loadscope-reorder) hands whole files to its test processes, so that both end about together. Seconds
# per file in a serial run on 2 cores (pytest --junitxml, at 3262c89): faults 88, slurm 83, parallel 57,
# trainer 41, ablate 33, gpu_check 25, playground 17-32 (its first JAX compile).
LONGEST_FIRST = ("test_slurm.py", "test_faults.py", "test_parallel.py", "test_trainer.py", "test_ablate.py",
                 "test_gpu_check.py", "test_playground.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The files of LONGEST_FIRST first, in its order, then the rest as collected."""
    def rank(item: pytest.Item) -> int:
        name = item.path.name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)

TINY = {  # sync mode: deterministic, and no worker processes to start
    "task": "classic/pendulum", "mode": "sync", "num_envs": "32", "eval_envs": "4", "max_env_steps": "2560",
    "eval_every_env_steps": "640", "algo.actor_hidden": "[16,16]", "algo.critic_hidden": "[16,16]",
    "algo.batch_size": "64", "algo.buffer_size": "4096", "algo.warmup_steps": "8", "progress": "false",
    "eval_every_s": "3600",  # rows at env steps only, so that their positions are deterministic,
    "eval_max_share": "0",  # whatever evaluating costs on a busy machine
}


@pytest.fixture(autouse=True, scope="session")
def interruptible_children():
    """A test session started with SIGINT ignored (a background job of a non-interactive shell) would pass
    that on to every process it starts, and the interruption tests send SIGINT: restore Python's handler."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    yield


@pytest.fixture
def tiny(tmp_path):
    """Overrides for a run of a few seconds in ``tmp_path/run``; update the dict to vary it."""
    return {**TINY, "out": str(tmp_path / "run")}


FAKES = Path(__file__).parent / "fakes"
FAKE_PACKAGES = ("isaacgym", "isaacgymenvs", "isaaclab", "isaaclab_tasks")


@pytest.fixture
def isaac_fakes(monkeypatch):
    """The Isaac Gym / Isaac Lab fakes (tests/fakes) importable; afterwards their modules are forgotten
    and Isaac Sim counts as not started."""
    import gymnasium as gym

    import pql.envs.isaaclab_backend as lab

    monkeypatch.syspath_prepend(str(FAKES))
    monkeypatch.setattr(lab, "_app", None)
    yield FAKES
    for name in list(sys.modules):
        if name.split(".")[0] in FAKE_PACKAGES:
            del sys.modules[name]
    gym.registry.pop("Isaac-Ant-Direct-v0", None)


def wait_gone(pid: int, timeout_s: float = 60) -> bool:
    """Until ``pid`` has exited (a zombie counts as gone: a killed process that is not our child is
    reaped by init); whether it has."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0] == "Z":
                return True
        except OSError:
            return True
        time.sleep(0.05)
    return not Path(f"/proc/{pid}").exists()


@pytest.fixture
def drawn(monkeypatch):
    """The figures ``pql report`` draws, by file name, kept open for the test to read."""
    from pql.report import study as report_module

    figures = {}
    save = report_module.save_figure

    def keep(fig, out_dir, name):
        figures[name] = fig
        return save(fig, out_dir, name)

    monkeypatch.setattr(report_module, "save_figure", keep)
    return figures
