"""What the file worker imports before it serves a transfer: every transfer waits for
its start, so what only directories need is imported for them alone."""

from __future__ import annotations

import json
import subprocess
import sys


TREES_ONLY = ["tarfile", "ctypes", "bz2", "lzma", "fleetgate.agent.files.trees"]


def loaded_after(code: str) -> list[str]:
    """Which of TREES_ONLY a fresh interpreter (started as the agent starts the worker)
    has loaded after running ``code``."""
    probe = f"import json, sys\n{code}\nprint(json.dumps([m for m in {TREES_ONLY!r} if m in sys.modules]))"
    done = subprocess.run(
        [sys.executable, "-I", "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    return list(json.loads(done.stdout))


def test_the_worker_starts_without_what_only_directories_need() -> None:
    assert loaded_after("import fleetgate.agent.files.worker") == []


def test_a_directory_transfer_loads_it() -> None:
    # The positive control: the probe does see these modules once trees are imported.
    assert loaded_after("import fleetgate.agent.files.trees") == TREES_ONLY
