"""``python -m fleetgate.agent``, and the ``fleetgate-agent`` program (its ``main``).

The agent's processes start here, before anything imports structlog: structlog imports
rich whenever it is installed (agentctl's extra, so in development environments), which
would cost the daemon several megabytes for tracebacks it never renders with it. The
agent's environment is the package's, without rich: here every environment behaves like
it (structlog then renders plain tracebacks).
"""

import sys


sys.modules.setdefault("rich", None)  # type: ignore[arg-type]  # None: "not installed"

# Only after the line above.
from fleetgate.agent.cli import main


__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
