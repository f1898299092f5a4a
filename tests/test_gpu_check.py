"""``make gpu-check ARGS="--device cpu --quick"``: every check a CPU can run runs, at tiny sizes, and its
table says what it found; the exchange's control proves the check can see a torn slot."""

import json
import subprocess
import sys

from pql.bench.gpu_check import skip_reason
from pql.bench.gpu_checks import CHECKS, V_VARIANTS
from pql.bench.gpu_rows import ROWS, TABLE


def test_the_quick_cpu_check_writes_every_row_and_finds_nothing_wrong(tmp_path):
    out = tmp_path / "gc"
    done = subprocess.run([sys.executable, "-m", "pql.bench.gpu_check", "--device", "cpu", "--quick",
                           "--out", str(out)], capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = {r["check"]: r for r in map(json.loads, (out / ROWS).read_text().splitlines())}
    assert not [r for r in rows.values() if r["verdict"] == "FAIL"]
    assert rows["ring across processes"]["verdict"] == "ok"
    assert rows["ring control (half-written slots)"]["verdict"] == "ok", "the control must see torn slots"
    assert rows["module slot across processes"]["verdict"] == "ok"
    assert rows["V-update fp32"]["gap"] == 0.0 and "V-updates/s" in rows["V-update fp32"]["result"]
    assert rows["sync 64 envs"]["env_steps_per_s"] > 0 and rows["async 64 envs"]["env_steps_per_s"] > 0
    assert rows["PQL-D sync"]["verdict"] == "ok"
    for skipped in ("V-update cuda-graphs", "V-update compiled", "resume cpu -> cuda"):
        assert rows[skipped]["verdict"] == "skipped"
    for mode in ("sync", "async"):  # on a CPU only the classic env's done check, once an actor step (+ NaN checks)
        reads = rows[f"host reads per actor step ({mode})"]
        assert 1.0 <= reads["per_step"] <= 1.5 and "envs/classic.py" in reads["result"], reads
    table = (out / TABLE).read_text()
    assert table.count("\n") == len(rows) + 2 and "| ring across processes |" in table
    assert "0 check(s) failed" in done.stdout


def test_checks_a_device_cannot_run_are_skipped_before_a_process_starts():
    import torch

    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert "CUDA graphs" in skip_reason("v-cuda-graphs", cpu, quick=False)
    assert skip_reason("v-compiled", cpu, quick=True) == "not compiled in a quick check"
    assert skip_reason("resume", cpu, quick=False) and skip_reason("host-reads", cpu, quick=False) is None
    assert skip_reason("sim", gpu, quick=False) is None
    assert set(V_VARIANTS) == {n[2:] for n in CHECKS if n.startswith("v-")}, "every variant is a check"


def test_an_unknown_check_is_refused_by_name(tmp_path):
    done = subprocess.run([sys.executable, "-m", "pql.bench.gpu_check", "--only", "sim,warp", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "unknown check(s) warp" in done.stderr
