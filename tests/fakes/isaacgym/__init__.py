"""Stand-in for the ``isaacgym`` package; see tests/fakes/README.md.

Like the real one it refuses to load after torch, but only when PQL_FAKE_ISAACGYM_STRICT=1
(tests that import it in-process have torch loaded already)."""

import os
import sys

if os.environ.get("PQL_FAKE_ISAACGYM_STRICT") == "1" and "torch" in sys.modules:
    raise ImportError("PyTorch was imported before isaacgym modules.  Please import torch after isaacgym modules.")
