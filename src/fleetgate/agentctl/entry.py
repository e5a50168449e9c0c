"""The `agentctl` console script: answers `--version` before loading anything else.

Scripts probe a CLI with `--version` in loops; importing the parser, the config loader and
the output helpers first would cost most of the process's time. Everything else goes to
`fleetgate.agentctl.main`.
"""

from __future__ import annotations

import sys

from fleetgate import __version__


def main() -> int:
    """Run agentctl with `sys.argv`; return the exit code."""
    if sys.argv[1:] == ["--version"]:
        sys.stdout.write(f"agentctl {__version__}\n")
        return 0
    from fleetgate.agentctl.main import main as run  # the whole CLI

    return run()
