"""agentctl's console entry point: ``ssh-proxy`` starts without loading the full CLI.

OpenSSH runs ``agentctl ssh-proxy`` once per connection (Ansible once per task and host),
so that path imports only :mod:`fleetgate.agentctl.sshproxy`; everything else goes to
:func:`fleetgate.agentctl.main.main`.
"""

from __future__ import annotations

import sys


def main() -> int:
    """Run agentctl; returns its exit status."""
    if len(sys.argv) > 1 and sys.argv[1] == "ssh-proxy":
        from fleetgate.agentctl.sshproxy import main as proxy

        return proxy()
    from fleetgate.agentctl.main import main as full

    return full()
