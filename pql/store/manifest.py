"""What a reviewer needs to trust or redo a run: code version, packages, host and hardware (``manifest.json``)."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from pql.devices import device_name

# Distributions whose versions change results, by their distribution names (what importlib.metadata and pip
# know: MuJoCo Playground's is "playground", not its import name mujoco_playground); those not installed are
# left out. constraints.txt pins the simulator stack among them for set-up and CI.
PACKAGES = ("torch", "numpy", "scipy", "gymnasium", "mujoco", "mujoco-mjx", "jax", "jaxlib", "playground",
            "warp-lang", "brax", "isaacgym", "isaacgymenvs", "isaaclab", "pql")
PROJECT_ROOT = Path(__file__).resolve().parent.parent


def git_state(root: Path = PROJECT_ROOT) -> dict[str, Any] | None:
    """``{"commit", "dirty", "changed", "diff_sha256"}`` of the checkout holding this package (None outside a
    git checkout): ``changed`` lists the tracked files that differ from the commit, ``diff_sha256`` hashes
    their diff, so that runs made on the same uncommitted state can be told from others (both empty when
    clean)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10,
                              check=True).stdout

    try:
        changed = sorted(name for name in git("diff", "HEAD", "--name-only", "-z").split("\0") if name)
        diff = git("diff", "HEAD") if changed else ""
        return {"commit": git("rev-parse", "HEAD").strip(), "dirty": bool(changed), "changed": changed,
                "diff_sha256": hashlib.sha256(diff.encode()).hexdigest() if changed else ""}
    except (OSError, subprocess.SubprocessError):
        return None


def package_versions() -> dict[str, str]:
    """The installed versions of :data:`PACKAGES`, by distribution name (those not installed left out)."""
    versions = {}
    for name in PACKAGES:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[name] = importlib.metadata.version(name)
    return versions


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo; else what platform says)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def memory_gib() -> float | None:
    """Total memory of the host in GiB (None where it cannot be read)."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    return None


def session(devices: dict[str, torch.device]) -> dict[str, Any]:
    """The facts of this process's machine and code, for one training session of a run."""
    gpus = [{"name": torch.cuda.get_device_name(i),
             "memory_gib": round(torch.cuda.get_device_properties(i).total_memory / 2**30, 1)}
            for i in range(torch.cuda.device_count())]
    return {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "git": git_state(), "python": platform.python_version(),
            "packages": package_versions(), "host": socket.gethostname(), "platform": platform.platform(),
            "cpu": cpu_model(), "cpus": os.cpu_count(), "memory_gib": memory_gib(), "gpus": gpus,
            "devices": {name: device_name(d) for name, d in devices.items()}, "command": sys.argv}
