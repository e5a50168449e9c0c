"""This replica's part in the cluster: its heartbeat, the links it announces, the
frames it forwards and receives, and its mirror of the links other replicas hold.

Every agent link is held by one replica. Another replica that must send the agent a
frame (a command, a channel open, a terminal end, a work-session end) finds it in the
mirror as a :class:`RemoteLink` and forwards it: the frame becomes a row, a note names
the row, and the holder claims the row and sends it. All authorization happened where
the operation was submitted, before the send, as in one process.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import psycopg
import structlog

from fleetgate.controlplane.cluster import tables
from fleetgate.controlplane.cluster.bus import PgBus, Resync
from fleetgate.controlplane.cluster.handlers import Handlers
from fleetgate.controlplane.cluster.notes import Note
from fleetgate.controlplane.cluster.outbox import Outbox, Writer
from fleetgate.controlplane.cluster.remote import Mirror, RemoteLink
from fleetgate.controlplane.cluster.tables import LinkRow
from fleetgate.controlplane.hub.registry import AgentConnection


__all__ = ["ClusterNode"]

log = structlog.get_logger("fleetgate.controlplane.cluster")

HEARTBEAT = 1.0
"""Seconds between two heartbeats of a replica."""
LIVENESS = 5.0
"""A replica silent this long is dead: its links are dropped and its agents are expected
on another replica (they notice the dead link by their keepalive or a reset)."""
RECEIVE_BATCH = 1_000
"""Notes handled together at most (their frames claimed, their links read, at once)."""
FRAME_TTL = 120.0
"""Seconds a forwarded frame waits for its replica before it is dropped (the agent left;
its commands come again with its next hello)."""


class ClusterNode:
    """This replica, on the shared database at ``conninfo`` (a libpq URL)."""

    def __init__(self, conninfo: str, replica_id: str, internal_url: str) -> None:
        self.conninfo = conninfo
        self.replica_id = replica_id
        self.internal_url = internal_url
        self.secret = b""
        """The cluster's hop key (:mod:`fleetgate.controlplane.cluster.hop`)."""
        self._writer = Writer(conninfo)
        self._outbox = Outbox(self._writer)
        self._bus = PgBus(conninfo)
        self._mirror = Mirror(replica_id, self.forward, self._outbox.kick)
        self._handlers: Handlers | None = None

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> list[tuple[str, int]]:
        """Create the tables if needed, read the hop key, beat once. Returns the links
        a previous run of this replica (same id) left behind: they ended with it."""
        await self._writer.run(tables.create_tables)
        self.secret = await self._writer.run(tables.cluster_secret)
        stale: list[tuple[str, int]] = await self._writer.run(
            lambda c: tables.forget_replica(c, self.replica_id)
        )
        await self._writer.run(lambda c: tables.heartbeat(c, self.replica_id, self.internal_url))
        log.info(
            "cluster.joined",
            replica_id=self.replica_id,
            internal_url=self.internal_url,
            stale_links=len(stale),
        )
        return stale

    async def run(self, handlers: Handlers) -> None:
        """Listen, mirror and beat until cancelled."""
        self._handlers = handlers
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._bus.run(), name="cluster-bus")
            tg.create_task(self._receive(), name="cluster-receive")
            tg.create_task(self._beat(), name="cluster-heartbeat")
            tg.create_task(self._outbox.run(), name="cluster-outbox")

    async def leave(self) -> None:
        """A graceful stop: drop this replica and its links now (the others see ``down``)."""
        try:
            await self._writer.run(lambda c: tables.forget_replica(c, self.replica_id))
        except psycopg.Error as exc:
            log.warning("cluster.leave_failed", error=str(exc).strip()[:200])
        finally:
            self._bus.close()
            await self._writer.close()

    # -- what the hub asks -------------------------------------------------------------

    def remote(self, server_id: str) -> RemoteLink | None:
        """The agent's link on another (live) replica, if any."""
        return self._mirror.get(server_id)

    def remote_ids(self) -> list[str]:
        """Servers linked to other replicas."""
        return self._mirror.server_ids()

    async def link_up(self, conn: AgentConnection) -> None:
        """Announce that this replica holds ``conn`` (after the agent's hello)."""
        self._mirror.drop(conn.server_id)
        row = LinkRow(
            conn.server_id,
            self.replica_id,
            conn.connected_at,
            conn.hostname,
            conn.agent_version,
            conn.features,
            conn.max_message_bytes,
        )
        self._outbox.link_up(row)

    async def link_down(self, conn: AgentConnection) -> None:
        """``conn`` ended (a newer link of the server, here or elsewhere, is left alone)."""
        self._outbox.link_down(conn.server_id, self.replica_id, conn.connected_at)

    def forward(self, replica_id: str, server_id: str, frame: str) -> bool:
        """Queue ``frame`` for the agent of ``server_id`` linked to ``replica_id``;
        whether it was accepted (the outbox is bounded)."""
        return self._outbox.frame(replica_id, server_id, frame)

    async def channel_waiting(self, channel_id: str) -> None:
        """A client waits here for the agent's side of ``channel_id``."""
        await self._writer.run(lambda c: tables.register_channel(c, channel_id, self.replica_id))

    async def channel_done(self, channel_id: str) -> None:
        """The channel was attached here, or abandoned."""
        await self._writer.run(lambda c: tables.unregister_channel(c, channel_id))

    async def channel_replica(self, channel_id: str) -> str | None:
        """The internal URL of the live replica waiting for ``channel_id``."""
        url: str | None = await self._writer.run(
            lambda c: tables.replica_of_channel(c, channel_id, LIVENESS)
        )
        return url

    async def answer_channel(self, channel_id: str, server_id: str, error: str) -> bool:
        """Pass an agent's ``error`` about a channel to the replica where it is waited
        for; whether some replica waits for it."""
        if await self.channel_replica(channel_id) is None:
            return False
        body = json.dumps({"server_id": server_id, "error": error})
        await self._writer.run(lambda c: tables.put_frame(c, "chan", channel_id, body))
        return True

    async def broadcast_tunnel_closed(self, tunnel_id: str, code: str, detail: str) -> None:
        """Tell every other replica that a tunnel was closed here."""
        body = json.dumps(
            {"origin": self.replica_id, "tunnel": {"id": tunnel_id, "code": code, "detail": detail}}
        )
        await self._writer.run(lambda c: tables.put_frame(c, "revoke", "*", body))

    async def broadcast_revocation(self, revocation: dict[str, Any]) -> None:
        """Tell every other replica to end what ``revocation`` covers."""
        body = json.dumps({"origin": self.replica_id, "revocation": revocation})
        await self._writer.run(lambda c: tables.put_frame(c, "revoke", "*", body))

    def publish_reinstated(self, user_id: int) -> None:
        """Tell every replica that ``user_id`` was enabled again."""
        self._outbox.note(Note("reinstate", str(user_id)))

    def publish_poke(self, what: str) -> None:
        """Tell the leader's scheduler or clock (``what``) to look again."""
        self._outbox.poke(what)

    def publish_wakes(self, command_ids: list[str]) -> None:
        """Commands changed here: wake the streams of the other replicas (soon, batched)."""
        self._outbox.wake(command_ids)

    async def sweep(self) -> list[tuple[str, int]]:
        """A leader's duty: drop dead replicas and stale frames; the links that ended."""

        async def work(c: tables.Conn) -> list[tuple[str, int]]:
            ended: list[tuple[str, int]] = []
            for replica_id in await tables.dead_replicas(c, LIVENESS):
                links = await tables.forget_replica(c, replica_id)
                log.warning("cluster.replica_dead", replica_id=replica_id, links=len(links))
                ended.extend(links)
            await tables.expire_frames(c, FRAME_TTL)
            return ended

        result: list[tuple[str, int]] = await self._writer.run(work)
        return result

    # -- the bus -------------------------------------------------------------------------

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT)
            try:
                fresh = await self._writer.run(
                    lambda c: tables.heartbeat(c, self.replica_id, self.internal_url)
                )
            except psycopg.Error as exc:
                log.warning("cluster.heartbeat_failed", error=str(exc).strip()[:200])
                continue
            if fresh and self._handlers is not None:
                # Taken for dead (a long pause): announce the links held here again.
                log.warning("cluster.rejoined", replica_id=self.replica_id)
                for conn in self._handlers.local_links():
                    await self.link_up(conn)

    async def _receive(self) -> None:
        while True:
            batch = [await self._bus.receive()]
            while len(batch) < RECEIVE_BATCH and (more := self._bus.receive_nowait()) is not None:
                batch.append(more)
            try:
                await self._handle_batch(batch)
            except psycopg.Error as exc:
                log.warning("cluster.notes_failed", notes=len(batch), error=type(exc).__name__)
            except Exception as exc:  # a bad row or note must not stop the replica's bus
                log.error("cluster.notes_failed", notes=len(batch), exc_info=exc)

    async def _handle_batch(self, batch: list[Note | Resync]) -> None:
        """Handle notes received together, in order, but with one read for each run of
        ``link`` notes and one claim of this replica's frames for the whole batch."""
        links: list[str] = []
        frames = False
        for item in batch:
            if isinstance(item, Note) and item.kind == "link":
                if item.target != self.replica_id:
                    links.append(item.ref)
                continue
            await self._mirror_links(links)
            links = []
            if isinstance(item, Resync):
                await self._resync()
                if self._handlers is not None:  # pokes may have been lost too
                    self._handlers.poked("scheduler")
                    self._handlers.poked("clock")
            elif item.kind == "frame":
                frames = frames or item.ref == self.replica_id
            else:
                await self._handle(item)
        await self._mirror_links(links)
        if frames:
            await self._claim_frames()

    async def _mirror_links(self, server_ids: list[str]) -> None:
        if not server_ids:
            return
        unique = list(dict.fromkeys(server_ids))
        self._mirror.update(await self._writer.run(lambda c: tables.get_links(c, unique)))

    async def _claim_frames(self) -> None:
        handlers = self._handlers
        assert handlers is not None
        frames = await self._writer.run(lambda c: tables.claim_agent_frames(c, self.replica_id))
        for server_id, frame in frames:
            conn = handlers.local(server_id)
            if conn is not None:  # else the agent left: its commands come with its hello
                await conn.send_quietly(frame)

    async def _resync(self) -> None:
        self._mirror.resync(await self._writer.run(lambda c: tables.live_links(c, LIVENESS)))
        log.info("cluster.resynced", remote_links=len(self._mirror))

    async def _handle(self, note: Note) -> None:
        handlers = self._handlers
        assert handlers is not None
        match note.kind:
            case "chan":
                if not handlers.waiting(note.target or ""):
                    return
                body = await self._writer.run(lambda c: tables.claim_frame(c, int(note.ref)))
                if body is not None:
                    answer = json.loads(body)
                    await handlers.channel_answer(
                        note.target or "", answer["server_id"], answer["error"]
                    )
            case "revoke":
                body = await self._writer.run(lambda c: tables.read_frame(c, int(note.ref)))
                if body is not None:
                    message = json.loads(body)
                    if message["origin"] == self.replica_id:
                        pass
                    elif "tunnel" in message:
                        ended = message["tunnel"]
                        handlers.tunnel_closed(ended["id"], ended["code"], ended["detail"])
                    else:
                        await handlers.revoked(message["revocation"])
            case "unlink":
                self._mirror.unlink(note.ref, note.target)
            case "wake":
                handlers.wake(note.ref.split(","))
            case "poke":
                handlers.poked(note.ref)
            case "reinstate":
                if note.ref.isdigit():
                    handlers.reinstated(int(note.ref))
            case "kick":
                if note.target == self.replica_id:
                    await handlers.kicked(note.ref)
            case "down":
                self._mirror.replica_down(note.ref)
