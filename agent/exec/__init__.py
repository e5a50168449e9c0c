"""Command execution: identities, the process runner and output handling."""

from __future__ import annotations

from agent.exec.identity import Identity, build_environment, resolve_identity
from agent.exec.output import HeadTailCapture, OutputChunker
from agent.exec.pump import OnOutput
from agent.exec.runner import CommandOutcome, OnStarted, run_command


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
