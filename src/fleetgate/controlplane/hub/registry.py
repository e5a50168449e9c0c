"""Connected agents: one :class:`AgentConnection` per server at most."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Protocol

import structlog
from pydantic import BaseModel
from starlette.websockets import WebSocket, WebSocketState

from fleetgate.controlplane.store.command_rows import CommandRow
from fleetgate.controlplane.timeutil import now_us
from fleetgate.shared.protocol import CommandRun, Grant, Requester, encode


__all__ = ["AgentConnection", "Registry", "run_message"]

log = structlog.get_logger("fleetgate.controlplane.hub")

CLOSE_REPLACED = 4000
CLOSE_IDLE = 4001
CLOSE_DELETED = 4003
CLOSE_SHUTDOWN = 1001

_last_stamp = 0


def _unique_now() -> int:
    """``now_us()``, strictly increasing within this process (tells connections apart)."""
    global _last_stamp
    _last_stamp = max(now_us(), _last_stamp + 1)
    return _last_stamp


def run_message(row: CommandRow) -> CommandRun:
    """The ``command.run`` frame of a stored command."""
    return CommandRun(  # noqa: S604 - the agent runs the line with /bin/sh -c
        command_id=uuid.UUID(row.id),
        shell="system",
        line=row.line,
        username=row.username,
        groupname=row.groupname or None,
        env=row.env,
        timeout=row.timeout,
        grant=None if row.grant is None else Grant.model_validate_json(row.grant),
        sudo=row.sudo,
        requested_by=_requester(row),
        work_session=row.work_session_id,
    )


def _requester(row: CommandRow) -> Requester | None:
    """Who asked for the command, for the agent's audit log."""
    if row.requested_token is None and row.requested_by is None:
        return None
    return Requester(
        token_id=row.requested_token or "unknown",
        user_id=row.requested_by,
        username=row.requester_username,
    )


class AgentConnection:
    """One accepted backhaul websocket of one server.

    Sends are serialized by a lock, so the connection handler, the API and the scheduler
    may all send on it.
    """

    tunnel_grants: bool = False
    """The agent takes one grant for all of a tunnel's streams (its ``hello``). A class
    default: a link held by another replica (``cluster.remote``) gets grants per stream,
    which every agent takes."""

    def __init__(self, websocket: WebSocket, server_id: str, server_name: str) -> None:
        self.websocket = websocket
        self.server_id = server_id
        self.server_name = server_name
        self.connected_at = _unique_now()
        self.last_seen_at = self.connected_at
        self.last_frame_monotonic = time.monotonic()
        self.agent_version: str | None = None
        self.hostname: str | None = None
        self.max_message_bytes: int | None = None
        """The largest frame the agent accepts (announced in its ``hello``)."""
        self.features: frozenset[str] = frozenset()
        """Optional features the agent said it offers in its ``hello`` (``tunnel``)."""
        self.closed = asyncio.Event()
        self._send_lock = asyncio.Lock()

    async def send(self, message: BaseModel | str) -> None:
        """Send one frame (a message, or its encoded text). Raises when the connection
        is gone."""
        text = message if isinstance(message, str) else encode(message)
        async with self._send_lock:
            if self.closed.is_set():
                raise ConnectionError("the agent connection is closed")
            await self.websocket.send_text(text)

    async def send_quietly(self, message: BaseModel | str) -> bool:
        """Send one frame; whether it was handed to the transport (errors are logged)."""
        try:
            await self.send(message)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - any transport error: the agent is gone
            log.debug("command.send_failed", server_id=self.server_id, error=type(exc).__name__)
            return False
        return True

    async def close(self, code: int, reason: str) -> None:
        """Close the websocket (once) and wake the connection handler."""
        if self.closed.is_set():
            return
        self.closed.set()
        async with self._send_lock:
            try:
                if self.websocket.application_state == WebSocketState.CONNECTED:
                    await self.websocket.close(code=code, reason=reason)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - closing a dead socket may fail any way
                log.debug(
                    "channel.close_failed", server_id=self.server_id, error=type(exc).__name__
                )


class Remote(Protocol):
    """Links held by the other replicas of a cluster (``controlplane.cluster``)."""

    def remote(self, server_id: str) -> AgentConnection | None:
        """The server's link on another replica."""
        ...

    def remote_ids(self) -> list[str]:
        """Servers linked to other replicas."""
        ...


class Registry:
    """The current connection of each connected server.

    In a cluster, a server linked to another replica is found too (a link that forwards
    what is sent to it), so every sender reaches an agent wherever it is linked.
    """

    def __init__(self) -> None:
        self._connections: dict[str, AgentConnection] = {}
        self._added = asyncio.Event()
        self.remote: Remote | None = None

    def get(self, server_id: str) -> AgentConnection | None:
        """The live connection of a server (here, else on another replica)."""
        conn = self._connections.get(server_id)
        if conn is not None and not conn.closed.is_set():
            return conn
        return None if self.remote is None else self.remote.remote(server_id)

    def local(self, server_id: str) -> AgentConnection | None:
        """The live connection of a server on this replica only."""
        conn = self._connections.get(server_id)
        return None if conn is None or conn.closed.is_set() else conn

    def add(self, conn: AgentConnection) -> AgentConnection | None:
        """Make ``conn`` the server's connection; return the one it replaces."""
        old = self._connections.get(conn.server_id)
        self._connections[conn.server_id] = conn
        self._added.set()
        self._added = asyncio.Event()
        return old if old is not conn else None

    async def wait_for(self, server_id: str) -> AgentConnection:
        """Wait until the server has a live connection and return it."""
        while True:
            added = self._added
            conn = self.get(server_id)
            if conn is not None:
                return conn
            await added.wait()

    def remove(self, conn: AgentConnection) -> bool:
        """Forget ``conn`` if it is still its server's connection."""
        if self._connections.get(conn.server_id) is conn:
            del self._connections[conn.server_id]
            return True
        return False

    def server_ids(self) -> list[str]:
        """Servers with a live connection (here or on another replica)."""
        here = [sid for sid, conn in self._connections.items() if not conn.closed.is_set()]
        if self.remote is None:
            return here
        return list(dict.fromkeys([*here, *self.remote.remote_ids()]))

    def connections(self) -> list[AgentConnection]:
        """Every live connection on this replica."""
        return [conn for conn in self._connections.values() if not conn.closed.is_set()]

    def __len__(self) -> int:
        return len(self._connections)
