"""Running as a system service: sd_notify and watchdog, the status socket, registration."""

from fleetgate.agent.service import enrol
from fleetgate.agent.service.notify import Notifier, watchdog_interval
from fleetgate.agent.service.runtime import ServiceRuntime
from fleetgate.agent.service.status import StatusServer, query


__all__ = [
    "Notifier",
    "ServiceRuntime",
    "StatusServer",
    "enrol",
    "query",
    "watchdog_interval",
]
