"""Running as a system service: sd_notify and watchdog, the status socket, registration."""

from fleetgate.agent.system import enrol
from fleetgate.agent.system.notify import SystemdNotifier, watchdog_interval
from fleetgate.agent.system.runtime import ServiceRuntime
from fleetgate.agent.system.status import StatusServer, query


__all__ = [
    "ServiceRuntime",
    "StatusServer",
    "SystemdNotifier",
    "enrol",
    "query",
    "watchdog_interval",
]
