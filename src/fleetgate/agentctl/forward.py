"""The forwarder behind `agentctl tunnel`: a loopback listener, one channel per connection.

Each accepted TCP connection opens its own websocket (``/ws/tunnels/<id>/streams/``), so
every stream has its own TCP flow control end to end, and is pumped with the same code
as the agent's end (``fleetgate.shared.pump``): large binary frames, no acknowledgements,
EOF and errors as small text frames.

Websockets are kept ready ahead of the next connections (``readylinks``): a connection
does not wait for a websocket handshake. A ready websocket that was closed meanwhile
(idle, a restarted control plane) is replaced.

A stream that ended cleanly leaves its websocket open when the control plane accepted it
with ``REUSE_HEADER`` (``fleetgate.shared.protocol.tunnel``): it goes back to the ready
ones and carries a later connection, so a stream costs no new handshake at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
from dataclasses import dataclass, field
from functools import partial
from urllib.parse import quote

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from fleetgate.agentctl.channel import connect_channel
from fleetgate.agentctl.context import Context
from fleetgate.agentctl.errors import SESSION_ENDED_CODES, AgentctlError, ControlPlaneError
from fleetgate.agentctl.readylinks import ReadyLinks, close_quietly, send_open
from fleetgate.shared.jsontext import loads as json_loads
from fleetgate.shared.protocol.channels import CLOSE_REFUSED
from fleetgate.shared.protocol.tunnel import REUSE_HEADER
from fleetgate.shared.pump import abort_socket, pump


__all__ = ["READ_BYTES", "Forwarder", "listen"]

READ_BYTES = 256 * 1024
"""Largest read from a local connection, hence the largest frame agentctl sends."""
BACKLOG = 512
ACCEPT_BACKOFF = 0.5
"""Seconds before accepting again after accept() failed (EMFILE would otherwise spin)."""

_FATAL_CODES = ("TUNNEL_CLOSED", "TUNNEL_NOT_FOUND", "token_revoked", "user_disabled")
SESSIONS = "/api/work-sessions/sessions/"
WATCH_WAIT = 25
"""Seconds per long-poll of the tunnel's work session (the server allows up to 60)."""
WATCH_RETRY = 1.0
"""Seconds before watching again after the control plane did not answer."""


def listen(bind: str, port: int) -> socket.socket:
    """A non-blocking listening socket on ``bind:port``."""
    family = socket.AF_INET6 if ":" in bind else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((bind, port))
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def _is_fatal(code: str) -> bool:
    return code.startswith("work_session_") or code in _FATAL_CODES


@dataclass
class Forwarder:
    """Accepts connections and carries each over its own stream until stopped."""

    ctx: Context
    tunnel_id: str
    listener: socket.socket
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    fatal: AgentctlError | None = None
    streams: int = 0
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _links: ReadyLinks = field(init=False)

    def __post_init__(self) -> None:
        params = {"defer": "1", "reuse": "1"}
        dial = partial(connect_channel, self.ctx, self.path, params=params)
        self._links = ReadyLinks(dial, self.stop.is_set)

    @property
    def path(self) -> str:
        """The stream endpoint of this tunnel."""
        return f"/ws/tunnels/{self.tunnel_id}/streams/"

    async def probe(self) -> None:
        """Let the agent check a stream (grant, policy, limits) without connecting, then
        dial the websockets of the first streams.

        Raises:
            ControlPlaneError: the control plane or the agent refused.
        """
        ws = await connect_channel(self.ctx, self.path, params={"probe": "1"})
        with contextlib.suppress(ConnectionClosed):
            while True:
                await ws.recv()
        await ws.close()
        # Then the websockets of the first streams, before the caller says it is ready.
        await self._links.first_dialled()

    async def run(self, work_session: str | None = None) -> None:
        """Serve until SIGINT/SIGTERM or a fatal refusal; with `work_session`, also until
        that session ends (even while no connection is open)."""
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, self.stop.set)
        try:
            async with asyncio.TaskGroup() as tg:
                acceptor = tg.create_task(self._accept(tg))
                watcher = tg.create_task(self._watch(work_session)) if work_session else None
                await self.stop.wait()
                acceptor.cancel()
                if watcher is not None:
                    watcher.cancel()
                # Open streams end with the tunnel: their connections are reset.
                for task in list(self._tasks):
                    task.cancel()
                await self._links.drop()
        finally:
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(signum)

    async def _watch(self, session_id: str) -> None:
        """Long-poll the session (`GET <id>/?status=active&wait=`): the control plane
        answers as soon as it is no longer active (revoked, expired, completed)."""
        import httpx  # only tunnels with a work session watch it

        path = f"{SESSIONS}{quote(session_id, safe='')}/"
        params = {"status": "active", "wait": str(WATCH_WAIT)}
        async with self.ctx.client().async_http(read_timeout=WATCH_WAIT + 15) as http:
            while True:
                try:
                    response = await http.get(path, params=params)
                except httpx.TransportError:
                    await asyncio.sleep(WATCH_RETRY)  # a restarting control plane
                    continue
                if response.status_code == 404:
                    status = "gone"
                elif response.is_error:
                    await asyncio.sleep(WATCH_RETRY)
                    continue
                else:
                    status = str(response.json().get("status"))
                if status != "active":
                    break
        if self.fatal is None:
            # The codes the control plane closes streams with when a session ends.
            code = SESSION_ENDED_CODES.get(status, "work_session_not_usable")
            detail = f"work session {session_id} is {status}: the tunnel is closed"
            self.fatal = ControlPlaneError(403, code, detail, "tunnel")
        self.stop.set()

    async def _accept(self, tg: asyncio.TaskGroup) -> None:
        """Accept connections until cancelled: in the listener's reader callback, which
        also sends the new stream's open (no loop turn between the connection and its
        open, and no reader re-registered per connection as ``sock_accept`` does)."""
        loop = asyncio.get_running_loop()
        fd = self.listener.fileno()
        retry: asyncio.TimerHandle | None = None

        def resume() -> None:
            nonlocal retry
            retry = None
            loop.add_reader(fd, acceptable)

        def acceptable() -> None:
            nonlocal retry
            if self.stop.is_set():  # stopping: no new stream (the acceptor ends soon)
                loop.remove_reader(fd)
                return
            try:
                self._accept_one(tg)
            except OSError as exc:
                # Out of descriptors or memory: say so, give streams time to end, go on.
                self.ctx.out.info(f"agentctl: cannot accept: {exc.strerror or exc}")
                loop.remove_reader(fd)
                retry = loop.call_later(ACCEPT_BACKOFF, resume)
            except RuntimeError:  # the task group ends (a stream failed): so does this
                loop.remove_reader(fd)

        loop.add_reader(fd, acceptable)
        try:
            await loop.create_future()  # until cancelled
        finally:
            loop.remove_reader(fd)
            if retry is not None:
                retry.cancel()

    def _accept_one(self, tg: asyncio.TaskGroup) -> None:
        """Accept one waiting connection (none: a spurious wake-up) and start its stream,
        its open sent at once when a ready websocket is there.

        Raises:
            OSError: accept() failed (out of descriptors, memory).
        """
        try:
            conn, _ = self.listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        try:
            conn.setblocking(False)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            first = _waiting_bytes(conn)
            opened = self._open_at_once(first)
            self.streams += 1
            task = tg.create_task(
                self._stream(conn, opened, first), name=f"tunnel-stream-{self.streams}"
            )
        except BaseException:
            abort_socket(conn)
            raise
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _open_at_once(self, first: bytes) -> ClientConnection | None:
        """The first ready websocket that is dialled, told to open its stream (and given
        ``first``), if it is still open; else ``None`` and the stream's own task finds one
        (waits for one, tells a dial's error, or dials)."""
        ws = self._links.take_dialled()
        return ws if ws is not None and send_open(ws, first) else None

    async def _open_stream(self, opened: ClientConnection | None, first: bytes) -> ClientConnection:
        """The websocket of a new stream, opened (and given ``first``): ``opened`` by the
        acceptor, else a ready one if there is one still usable."""
        if opened is not None:
            return opened
        ws = await self._links.take()
        if ws is not None and send_open(ws, first):
            return ws
        # None ready: a stream opened by its handshake, as without ready websockets.
        ws = await connect_channel(self.ctx, self.path)
        if first:
            with contextlib.suppress(ConnectionClosed):  # the pump finds it closed
                await ws.send(first)
        return ws

    async def _stream(
        self, conn: socket.socket, opened: ClientConnection | None, first: bytes
    ) -> None:
        given_back = False
        try:
            given_back = await self._carry(conn, opened, first)
        finally:
            if not given_back:
                self._links.prepare()

    async def _carry(
        self, conn: socket.socket, opened: ClientConnection | None, first: bytes
    ) -> bool:
        """Carry one connection; whether its websocket was given back for a later one."""
        try:
            ws = await self._open_stream(opened, first)
        except ControlPlaneError as exc:
            abort_socket(conn)
            self._refused(exc.code, exc.detail, exc)
            return False
        except AgentctlError as exc:
            abort_socket(conn)
            self.ctx.out.info(f"agentctl: tunnel stream failed: {exc}")
            return False
        except BaseException:
            abort_socket(conn)
            raise
        reuse = ws.response is not None and ws.response.headers.get(REUSE_HEADER) == "1"
        result = None
        given_back = False
        try:
            result = await pump(
                conn, ws, read_bytes=READ_BYTES, closed=(ConnectionClosed,), reuse=reuse
            )
            if not result.clean and result.code != "tunnel_closed":
                self.ctx.out.info(
                    f"agentctl: tunnel stream ended: {result.message} ({result.code})"
                )
        finally:
            given_back = result is not None and result.reusable and self._links.give_back(ws)
            if not given_back:
                await close_quietly(ws)
        if not result.reusable:
            self._closed_by_control_plane(ws)
        return given_back

    def _closed_by_control_plane(self, ws: ClientConnection) -> None:
        """A stream closed with 4403 and a gate code: the whole tunnel has ended."""
        if ws.close_code != CLOSE_REFUSED or not ws.close_reason:
            return
        try:
            reason = json_loads(ws.close_reason)
            code, detail = str(reason["code"]), str(reason.get("detail", ""))
        except (ValueError, KeyError, TypeError):
            return
        self._refused(code, detail, ControlPlaneError(403, code, detail, "tunnel"))

    def _refused(self, code: str, detail: str, error: ControlPlaneError) -> None:
        if _is_fatal(code):
            if self.fatal is None:
                self.fatal = error
            self.stop.set()
        else:
            self.ctx.out.info(f"agentctl: tunnel stream refused: {detail} ({code})")


def _waiting_bytes(conn: socket.socket) -> bytes:
    """What the connection sent already (a client that speaks first: HTTP, TLS), read
    without waiting; empty when nothing is there yet, or at its end (the pump reads that
    end again)."""
    try:
        return conn.recv(READ_BYTES)
    except (BlockingIOError, InterruptedError):
        return b""
    except OSError:
        return b""  # reset: the pump's own read says so
