"""Running the application under uvicorn on a socket we bind ourselves.

Binding first lets ``--port 0`` work (the real port is known before uvicorn starts) and
lets ``dev`` write the agent's configuration with that port.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import signal
import socket
from collections.abc import Callable, Coroutine, Generator
from pathlib import Path
from typing import Any, TypeVar

import uvicorn
import uvloop
from fastapi import FastAPI

from fleetgate.controlplane.config import ControlPlaneSettings
from fleetgate.controlplane.httpbounds import BoundedHttpToolsProtocol
from fleetgate.controlplane.wsprotocol import BulkReadsWebSocketProtocol
from fleetgate.shared.atomic import atomic_write


__all__ = [
    "ControlPlaneServer",
    "bind_socket",
    "raise_open_files_limit",
    "run_on_uvloop",
    "write_port_file",
]

T = TypeVar("T")


def run_on_uvloop(main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` to completion on a new uvloop event loop (as ``asyncio.run`` does).

    uvicorn picks uvloop only in ``uvicorn.run``; we start the server ourselves
    (``Server.serve`` on a socket we bound), so the loop is chosen here. uvloop's
    transports, callbacks and thread wake-ups cost less CPU per request than asyncio's
    selector loop: on the command path (one HTTP request, one websocket frame each way
    and a few database thread hand-offs per command) that is most of the loop's work.
    """
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (``port`` 0: any free port)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP matters: asyncio turns Nagle off (TCP_NODELAY) only on sockets
    # that say they are TCP, and accepted sockets inherit it. Without it every response
    # written in two parts waits ~40 ms for the client's delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def raise_open_files_limit() -> int:
    """Raise the soft limit of open files to the hard one; return the new soft limit.

    Every connected agent is one open socket: the common soft default (1024) would cap a
    control plane at about a thousand agents. The hard limit is the operator's (systemd's
    ``LimitNOFILE``, see ``systemd/fleetgate-controlplane.service``).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            return soft
        return target
    return soft


def write_port_file(path: Path, port: int) -> None:
    """Write ``port`` and a newline atomically (readers never see a partial file)."""
    atomic_write(path, f"{port}\n")


class ControlPlaneServer(uvicorn.Server):
    """uvicorn's server with our own signal handling and a started callback.

    SIGTERM/SIGINT ask for a graceful shutdown (a second SIGINT forces it); the process
    then exits normally instead of re-raising the signal as uvicorn does. With
    ``on_signal`` the first signal is handed to the caller instead (which then calls
    :meth:`request_exit` when it is ready).
    """

    def __init__(
        self,
        app: FastAPI,
        settings: ControlPlaneSettings,
        *,
        on_started: Callable[[], None] | None = None,
        on_signal: Callable[[int], None] | None = None,
    ) -> None:
        """``on_started`` runs once listening; ``on_signal`` takes over the first signal."""
        config = uvicorn.Config(
            app,
            log_config=None,
            access_log=False,
            ws_max_size=settings.ws_max_size,
            ws_per_message_deflate=settings.backhaul_compression,
            ws_ping_interval=None,
            ws_ping_timeout=None,
            timeout_graceful_shutdown=5,
            # Behind a load balancer (TLS terminated there): believe X-Forwarded-For and
            # X-Forwarded-Proto from the configured proxies only, so client addresses in
            # the logs and Secure cookies are right and nobody else can forge them.
            proxy_headers=bool(settings.trusted_proxies),
            forwarded_allow_ips=[str(net) for net in settings.trusted_proxies] or None,
            server_header=False,
            lifespan="on",
            # Bounded request heads, answered with 431 (plain httptools buffers any
            # size, and a websocket upgrade with a long header line hung).
            http=BoundedHttpToolsProtocol,
            # Large frames (file transfers) parsed with fewer copies.
            ws=BulkReadsWebSocketProtocol,
            # TLS on the socket we bound (uvicorn wraps given sockets too); None: plain.
            ssl_certfile=settings.tls_cert,
            ssl_keyfile=settings.tls_key,
        )
        super().__init__(config)
        self.fastapi_app = app
        self._on_started = on_started
        self._on_signal = on_signal

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        """Install SIGINT/SIGTERM handlers on the running loop (main thread only)."""
        loop = asyncio.get_running_loop()
        installed: list[int] = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, self._signalled, sig)
            except (RuntimeError, ValueError):  # not the main thread
                continue
            installed.append(sig)
        try:
            yield
        finally:
            for installed_sig in installed:
                loop.remove_signal_handler(installed_sig)

    def _signalled(self, sig: int) -> None:
        if self._on_signal is not None and not self.should_exit:
            self._on_signal(sig)
        else:
            self.request_exit(sig)

    def request_exit(self, sig: int | None = None) -> None:
        """Begin a graceful shutdown (or force it on a repeated SIGINT)."""
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True
        self.should_exit = True
        services = getattr(self.fastapi_app.state, "services", None)
        if services is not None:
            services.hub.begin_shutdown()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        """uvicorn's startup, then the ``on_started`` callback once listening."""
        await super().startup(sockets=sockets)
        if not self.should_exit and self._on_started is not None:
            self._on_started()
