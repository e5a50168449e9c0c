"""What the file worker imports before it serves a transfer: every transfer waits for
its start, so what only directories need is imported for them alone."""

from __future__ import annotations

import json
import subprocess
import sys


TREES_ONLY = ["tarfile", "ctypes", "bz2", "lzma", "fleetgate.agent.files.trees"]


NOT_AT_START = ["hashlib", "_hashlib", "dataclasses", "inspect"]
"""Loaded where a file is hashed in the worker (not a handed-over one: the agent hashes
it) or not at all (``dataclasses`` and its ``inspect``: 6 ms)."""


def loaded_after(code: str, watched: list[str] = TREES_ONLY) -> list[str]:
    """Which of ``watched`` a fresh interpreter (started as the agent starts the worker)
    has loaded after running ``code``."""
    probe = (
        f"import json, sys\n{code}\nprint(json.dumps([m for m in {watched!r} if m in sys.modules]))"
    )
    done = subprocess.run(
        [sys.executable, "-I", "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    return list(json.loads(done.stdout))


def test_the_worker_starts_without_what_only_directories_need() -> None:
    assert loaded_after("import fleetgate.agent.files.worker") == []


def test_a_directory_transfer_loads_it() -> None:
    # The positive control: the probe does see these modules once trees are imported.
    assert loaded_after("import fleetgate.agent.files.trees") == TREES_ONLY


def test_the_worker_starts_without_hashing() -> None:
    assert loaded_after("import fleetgate.agent.files.worker", NOT_AT_START) == []
    # The positive control: hashing a file in the worker loads it.
    assert (
        loaded_after("import fleetgate.agent.files.hashing", NOT_AT_START[:2]) == NOT_AT_START[:2]
    )
