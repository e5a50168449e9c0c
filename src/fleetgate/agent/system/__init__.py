"""Running as a system service: sd_notify and watchdog, the status socket, registration.

Registration (:mod:`fleetgate.agent.system.enrol`, with tomlkit) is not imported here:
the daemon never registers, and ``fleetgate-agent register`` imports it itself.
"""

from fleetgate.agent.system.notify import SystemdNotifier, watchdog_interval
from fleetgate.agent.system.runtime import ServiceRuntime
from fleetgate.agent.system.status import StatusServer, query


__all__ = [
    "ServiceRuntime",
    "StatusServer",
    "SystemdNotifier",
    "query",
    "watchdog_interval",
]
