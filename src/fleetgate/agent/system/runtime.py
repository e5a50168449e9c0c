"""What running as a system service adds to the daemon: systemd notifications and status.

:class:`ServiceRuntime` turns backhaul state changes into ``READY=1``/``STATUS=`` lines
(ready once the agent is connected or knows it must retry: systemd should not wait for a
control plane that may be down for hours), tells systemd ``STOPPING=1`` on shutdown,
and builds the snapshot the status socket serves. Its long-running parts (the watchdog
pings and the status server) are coroutines the daemon runs in its TaskGroup.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from typing import Any

from fleetgate import __version__
from fleetgate.agent.backhaul import LinkState
from fleetgate.agent.backhaul.urls import ring_for
from fleetgate.agent.config import AgentConfig
from fleetgate.agent.system.notify import SystemdNotifier
from fleetgate.agent.system.status import StatusServer


__all__ = ["ServiceRuntime"]


class ServiceRuntime:
    """The daemon's face towards systemd and ``fleetgate-agent status``."""

    def __init__(
        self,
        config: AgentConfig,
        details: Callable[[], Mapping[str, Any]],
        *,
        notifier: SystemdNotifier | None = None,
    ) -> None:
        """``details`` returns the live parts of the status (link, reports, commands)."""
        self._config = config
        self._details = details
        self._started = time.monotonic()
        self._ring = ring_for(config.control_plane)
        self.notifier = notifier or SystemdNotifier()
        self.status = StatusServer(config.status_socket, self.snapshot)

    @property
    def _url(self) -> str:
        """The control plane dialled now (with several URLs, the one in use)."""
        return self._ring.current

    def on_link_state(self, state: LinkState) -> None:
        """Backhaul callback: every change of the connection state."""
        if state.status == "connected":
            self.notifier.ready(f"connected to {self._url}")
        elif state.status == "waiting":
            self.notifier.ready(f"reconnecting to {self._url}: {state.last_error or 'error'}")
        else:
            self.notifier.status(f"connecting to {self._url}")

    def stopping(self, active_commands: int) -> None:
        """Shutdown has begun (``STOPPING=1``)."""
        self.notifier.stopping(f"stopping: waiting for {active_commands} command(s)")

    def snapshot(self) -> dict[str, Any]:
        """The JSON object ``fleetgate-agent status`` shows."""
        return {
            "agent_version": __version__,
            "pid": os.getpid(),
            "server_id": str(self._config.identity.server_id),
            "control_plane": self._url,
            "uptime": round(time.monotonic() - self._started, 3),
            **self._details(),
        }

    def close(self) -> None:
        """Release the notify socket."""
        self.notifier.close()
