"""Command execution: identities, the process runner and output handling.

The runner (and what it pulls in) loads with the first command, not with the package: the
sudo mediation uses :mod:`~fleetgate.agent.exec.idcache` from an idle agent, which must not
load the process runner (``tests/unit/agent/test_idle_imports.py``).
"""

from __future__ import annotations

import importlib
import sys
from typing import TYPE_CHECKING, Any

from fleetgate.agent.exec.identity import Identity, build_environment, resolve_identity
from fleetgate.agent.exec.output import HeadTailCapture, OutputChunker
from fleetgate.agent.exec.pump import OnOutput


if TYPE_CHECKING:
    from fleetgate.agent.exec.runner import CommandOutcome, OnStarted, run_command

__all__ = [
    "CommandOutcome",
    "HeadTailCapture",
    "Identity",
    "OnOutput",
    "OnStarted",
    "OutputChunker",
    "build_environment",
    "close_spawner",
    "resolve_identity",
    "run_command",
]

_FROM_RUNNER = frozenset({"CommandOutcome", "OnStarted", "run_command"})


def close_spawner() -> None:
    """End the spawner helper if the runner started one (never loads the runner)."""
    runner = sys.modules.get("fleetgate.agent.exec.runner")
    if runner is not None:
        runner.close_spawner()


def __getattr__(name: str) -> Any:
    if name in _FROM_RUNNER:
        return getattr(importlib.import_module("fleetgate.agent.exec.runner"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
