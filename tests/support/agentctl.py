"""Running agentctl as a real subprocess against a control plane, for integration tests."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass

from tests.support.controlplane import REPO_ROOT, ControlPlaneProcess


__all__ = ["RUN_TIMEOUT", "AgentctlRunner"]

RUN_TIMEOUT = 60.0
"""A hung CLI fails its test instead of hanging the suite."""


@dataclass
class AgentctlRunner:
    """Runs ``python -m fleetgate.agentctl`` with ``env`` (its config) against ``cp``."""

    cp: ControlPlaneProcess
    env: dict[str, str]

    def argv(self, *args: str) -> list[str]:
        """The command line of one agentctl invocation."""
        return [sys.executable, "-m", "fleetgate.agentctl", *args]

    def run(
        self, *args: str, env: dict[str, str] | None = None, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run agentctl to completion; return its exit code, stdout and stderr."""
        return subprocess.run(
            self.argv(*args),
            cwd=REPO_ROOT,
            env={**self.env, **(env or {})},
            input=stdin,
            stdin=None if stdin is not None else subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT,
            check=False,
        )

    def popen(self, *args: str) -> subprocess.Popen[str]:
        """Start agentctl without waiting (to watch its output arrive)."""
        return subprocess.Popen(
            self.argv(*args),
            cwd=REPO_ROOT,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
