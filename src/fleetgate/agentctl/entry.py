"""The `agentctl` console script: the two hot paths start without loading the full CLI.

Scripts probe a CLI with `--version` in loops, and OpenSSH runs `agentctl ssh-proxy` once
per connection (Ansible once per task and host): importing the parser, the config loader
and the output helpers first would cost most of those processes' time. `--version` is
answered here, `ssh-proxy` imports only :mod:`fleetgate.agentctl.sshproxy`, and
everything else goes to :func:`fleetgate.agentctl.main.main`.

`cp` ends without the interpreter's teardown (:func:`exit_now`): once its output is
written, what is left is freeing the modules of asyncio, websockets and the CLI one by
one, 20-27 ms measured, as long as a 50 MiB file takes to arrive.
"""

from __future__ import annotations

import os
import sys
import threading

from fleetgate import __version__


QUICK_EXITS = frozenset({"cp"})
"""Commands whose process ends with :func:`exit_now` once they returned."""


def main() -> int:
    """Run agentctl with `sys.argv`; return the exit code."""
    if sys.argv[1:] == ["--version"]:
        sys.stdout.write(f"agentctl {__version__}\n")
        return 0
    if len(sys.argv) > 1 and sys.argv[1] == "ssh-proxy":
        from fleetgate.agentctl.sshproxy import main as proxy

        return proxy()
    from fleetgate.agentctl.main import command_word, main as run  # the whole CLI

    code = run()
    if command_word(sys.argv[1:]) in QUICK_EXITS:
        exit_now(code)
    return code


def exit_now(code: int) -> None:
    """End the process with ``code`` at once, standard streams flushed, unless a thread
    other than this one still runs (then the interpreter's exit waits for it, as ever).

    Nothing is left to tear down when a command returned: its files are closed, its
    threads joined and its event loop closed; no atexit handler of agentctl's exists.
    """
    if threading.active_count() > 1:
        return
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        return  # a closed or broken stream: the ordinary exit reports it
    os._exit(code)
