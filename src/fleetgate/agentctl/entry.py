"""The `agentctl` console script: the two hot paths start without loading the full CLI.

Scripts probe a CLI with `--version` in loops, and OpenSSH runs `agentctl ssh-proxy` once
per connection (Ansible once per task and host): importing the parser, the config loader
and the output helpers first would cost most of those processes' time. `--version` is
answered here, `ssh-proxy` imports only :mod:`fleetgate.agentctl.sshproxy`, and
everything else goes to :func:`fleetgate.agentctl.main.main`.
"""

from __future__ import annotations

import sys

from fleetgate import __version__


def main() -> int:
    """Run agentctl with `sys.argv`; return the exit code."""
    if sys.argv[1:] == ["--version"]:
        sys.stdout.write(f"agentctl {__version__}\n")
        return 0
    if len(sys.argv) > 1 and sys.argv[1] == "ssh-proxy":
        from fleetgate.agentctl.sshproxy import main as proxy

        return proxy()
    from fleetgate.agentctl.main import main as run  # the whole CLI

    return run()
