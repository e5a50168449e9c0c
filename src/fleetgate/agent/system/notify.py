"""sd_notify(3) without libsystemd: readiness, status, watchdog and stopping to systemd.

systemd passes ``NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract namespace) to a
``Type=notify`` service and ``WATCHDOG_USEC`` when ``WatchdogSec=`` is set. Messages are
single datagrams of ``KEY=VALUE`` lines. Without ``NOTIFY_SOCKET`` (a terminal, a test, no
systemd) every call is a cheap no-op, so the daemon calls them unconditionally.

The watchdog pings from the event loop itself: if the loop hangs (a blocking call, a
busy-looping callback), the pings stop and systemd restarts the service.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Mapping

import structlog


__all__ = ["SystemdNotifier", "watchdog_interval"]

log = structlog.get_logger(__name__)


def watchdog_interval(env: Mapping[str, str]) -> float | None:
    """Seconds between watchdog pings (half of ``WATCHDOG_USEC``), or ``None`` if off.

    ``WATCHDOG_PID``, when set, names the process the watchdog is meant for; a child that
    inherited the variables must not ping on the parent's behalf.
    """
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if pid and pid != str(os.getpid()):
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 2 / 1_000_000 if value > 0 else None


class SystemdNotifier:
    """Sends notifications to ``$NOTIFY_SOCKET``; does nothing when it is not set."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        self._address = _address(env.get("NOTIFY_SOCKET", ""))
        self.watchdog_interval = watchdog_interval(env) if self._address else None
        self._sock: socket.socket | None = None
        self._ready = False
        if self._address is not None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.setblocking(False)

    @property
    def enabled(self) -> bool:
        """Whether a notify socket was given."""
        return self._sock is not None

    def send(self, **fields: str) -> None:
        """Send ``KEY=VALUE`` lines in one datagram (keys are upper-cased).

        Errors are logged, never raised: a full or vanished notify socket must not stop the
        agent (systemd would notice missing watchdog pings on its own).
        """
        if self._sock is None or self._address is None:
            return
        payload = "\n".join(f"{key.upper()}={value}" for key, value in fields.items())
        try:
            self._sock.sendto(payload.encode("utf-8"), self._address)
        except OSError as exc:
            log.warning("notify.send_failed", error=str(exc))

    def status(self, text: str) -> None:
        """``STATUS=`` line shown by ``systemctl status``."""
        self.send(status=text.replace("\n", " "))

    def ready(self, status: str) -> None:
        """``READY=1`` (once) with a status line; later calls only update the status."""
        if self._ready:
            self.status(status)
            return
        self._ready = True
        self.send(ready="1", status=status.replace("\n", " "))

    def stopping(self, status: str = "stopping") -> None:
        """``STOPPING=1``: the service is shutting down on purpose."""
        self.send(stopping="1", status=status)

    async def watchdog(self) -> None:
        """Ping the watchdog every half ``WATCHDOG_USEC`` until cancelled (no-op if off).

        The first ping goes out at once, so a slow start is not mistaken for a hang.
        """
        interval = self.watchdog_interval
        if interval is None:
            return
        log.info("notify.watchdog", interval=interval)
        while True:
            self.send(watchdog="1")
            await asyncio.sleep(interval)

    def close(self) -> None:
        """Close the socket."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _address(value: str) -> str | bytes | None:
    if not value:
        return None
    if value.startswith("@"):
        # Abstract namespace: a leading NUL byte instead of the '@'.
        return b"\0" + value[1:].encode("utf-8")
    if value.startswith("/"):
        return value
    log.warning("notify.bad_socket", notify_socket=value)
    return None
