"""Running as a system service: sd_notify and watchdog, the status socket, registration."""

from agent.service import enrol
from agent.service.notify import Notifier, watchdog_interval
from agent.service.runtime import ServiceRuntime
from agent.service.status import StatusServer, query


__all__ = [
    "Notifier",
    "ServiceRuntime",
    "StatusServer",
    "enrol",
    "query",
    "watchdog_interval",
]
