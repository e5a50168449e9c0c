"""Command execution: identities, the process runner and output handling."""

from __future__ import annotations

from fleetgate.agent.exec.identity import Identity, build_environment, resolve_identity
from fleetgate.agent.exec.output import HeadTailCapture, OutputChunker
from fleetgate.agent.exec.pump import OnOutput
from fleetgate.agent.exec.runner import CommandOutcome, OnStarted, run_command


__all__ = [
    "CommandOutcome",
    "HeadTailCapture",
    "Identity",
    "OnOutput",
    "OnStarted",
    "OutputChunker",
    "build_environment",
    "resolve_identity",
    "run_command",
]
