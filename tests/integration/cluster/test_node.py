"""Two cluster nodes on one real PostgreSQL, in one event loop: links are mirrored,
frames reach the replica holding the agent exactly once, wake-ups cross, and one
leader at a time runs the duties, another taking over when its session dies."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest

from fleetgate.controlplane.cluster.leader import Leadership
from fleetgate.controlplane.cluster.node import ClusterNode
from fleetgate.controlplane.hub.registry import AgentConnection
from tests.support.waiting import eventually


pytestmark = pytest.mark.timeout(60)


class FakeLink(AgentConnection):
    """A local link that records what is sent on it (no websocket: the node only sends)."""

    def __init__(self, server_id: str) -> None:
        self.server_id = server_id
        self.server_name = server_id
        self.connected_at = 1_000
        self.hostname = "h"
        self.agent_version = "1"
        self.features = frozenset({"tunnel"})
        self.max_message_bytes = 65536
        self.last_seen_at = 1_000
        self.closed = asyncio.Event()
        self.sent: list[str] = []

    async def send(self, message: Any) -> None:
        self.sent.append(message)


class Recorder:
    """A node's handlers: local links, and what arrived."""

    def __init__(self) -> None:
        self.links: dict[str, AgentConnection] = {}
        self.woken: list[str] = []
        self.revocations: list[dict[str, Any]] = []
        self.waiting_for: set[str] = set()
        self.answers: list[tuple[str, str, str]] = []
        self.pokes: list[str] = []
        self.kicked_ids: list[str] = []
        self.tunnels_closed: list[str] = []
        self.reinstated_ids: list[int] = []

    def local(self, server_id: str) -> AgentConnection | None:
        return self.links.get(server_id)

    def local_links(self) -> list[AgentConnection]:
        return list(self.links.values())

    def waiting(self, channel_id: str) -> bool:
        return channel_id in self.waiting_for

    async def channel_answer(self, channel_id: str, server_id: str, error: str) -> None:
        self.answers.append((channel_id, server_id, error))

    async def revoked(self, revocation: dict[str, Any]) -> None:
        self.revocations.append(revocation)

    def wake(self, command_ids: list[str]) -> None:
        self.woken.extend(command_ids)

    def poked(self, what: str) -> None:
        self.pokes.append(what)

    async def kicked(self, server_id: str) -> None:
        self.kicked_ids.append(server_id)

    def tunnel_closed(self, tunnel_id: str, code: str, detail: str) -> None:
        self.tunnels_closed.append(tunnel_id)

    def reinstated(self, user_id: int) -> None:
        self.reinstated_ids.append(user_id)


@pytest.fixture
async def nodes(
    cluster_db: str,
) -> AsyncIterator[tuple[ClusterNode, Recorder, ClusterNode, Recorder]]:
    a, b = ClusterNode(cluster_db, "a", "http://a"), ClusterNode(cluster_db, "b", "http://b")
    ra, rb = Recorder(), Recorder()
    await a.start()
    await b.start()
    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(a.run(ra)), tg.create_task(b.run(rb))]
        await eventually(lambda: a._bus.connected.is_set() and b._bus.connected.is_set())
        yield a, ra, b, rb
        for task in tasks:
            task.cancel()
    await a.leave()
    await b.leave()


async def test_links_frames_and_wakes_cross(
    nodes: tuple[ClusterNode, Recorder, ClusterNode, Recorder],
) -> None:
    a, ra, b, rb = nodes
    assert a.secret == b.secret
    assert len(a.secret) == 32
    link = FakeLink(str(uuid.uuid4()))
    ra.links[link.server_id] = link
    await a.link_up(link)
    await eventually(lambda: b.remote(link.server_id) is not None, what="mirrored link")
    remote = b.remote(link.server_id)
    assert remote is not None
    assert (remote.replica_id, remote.features, remote.max_message_bytes) == (
        "a",
        frozenset({"tunnel"}),
        65536,
    )
    assert a.remote(link.server_id) is None  # its own link is not mirrored

    frames = [f'{{"n": {i}}}' for i in range(50)]
    for frame in frames:
        assert await remote.send_quietly(frame)
    await eventually(lambda: len(link.sent) == 50, what="frames delivered")
    assert link.sent == frames  # in order, each once

    b.publish_wakes(["c1", "c2"])
    await eventually(lambda: {"c1", "c2"} <= set(ra.woken), what="wake-ups")
    b.publish_poke("scheduler")
    await eventually(lambda: "scheduler" in ra.pokes, what="poke")

    await b.broadcast_revocation({"code": "token_deleted", "detail": "x", "token_id": "t"})
    await eventually(lambda: ra.revocations != [], what="revocation")
    assert rb.revocations == []  # not applied twice where it was made
    await a.broadcast_tunnel_closed("t-1", "TUNNEL_CLOSED", "closed")
    await eventually(lambda: rb.tunnels_closed == ["t-1"], what="tunnel closed")
    a.publish_reinstated(42)
    await eventually(lambda: 42 in rb.reinstated_ids, what="reinstated")
    assert ra.tunnels_closed == []

    await remote.close(4003, "server deleted")  # b deletes the server: a closes the link
    await eventually(lambda: ra.kicked_ids == [link.server_id], what="kick")
    assert rb.kicked_ids == []
    await a.link_down(link)
    await eventually(lambda: b.remote(link.server_id) is None, what="unlinked")
    assert not await remote.send_quietly("late")


async def test_a_dead_replica_is_swept_and_its_links_dropped(
    nodes: tuple[ClusterNode, Recorder, ClusterNode, Recorder], cluster_db: str
) -> None:
    a, _ra, b, _rb = nodes
    ghost = ClusterNode(cluster_db, "ghost", "http://ghost")
    await ghost.start()
    link = FakeLink(str(uuid.uuid4()))
    writing = asyncio.create_task(ghost._outbox.run())  # the ghost's writer, only
    await ghost.link_up(link)
    await ghost._outbox.drained()
    writing.cancel()
    await eventually(lambda: a.remote(link.server_id) is not None, what="mirrored")
    # The ghost never beats again: once past the liveness window a sweep drops it.
    async with await psycopg.AsyncConnection.connect(cluster_db, autocommit=True) as conn:
        await conn.execute(
            "UPDATE cluster_replicas SET heartbeat_at = now() - interval '1 hour' "
            "WHERE replica_id = 'ghost'"
        )
    assert await b.sweep() == [(link.server_id, link.connected_at)]
    await eventually(lambda: a.remote(link.server_id) is None, what="dropped on a")
    await eventually(lambda: b.remote(link.server_id) is None, what="dropped on b")
    assert await b.sweep() == []
    await ghost._writer.close()


async def test_one_leader_at_a_time_and_takeover(cluster_db: str) -> None:
    running: list[str] = []

    def duties(name: str) -> Any:
        async def run() -> None:
            running.append(name)
            try:
                await asyncio.Event().wait()
            finally:
                running.remove(name)

        return run

    one = Leadership(cluster_db, duties("one"), retry=0.05)
    two = Leadership(cluster_db, duties("two"), retry=0.05)
    async with asyncio.TaskGroup() as tg:
        t1 = tg.create_task(one.run())
        await eventually(lambda: running == ["one"], what="first leader")
        t2 = tg.create_task(two.run())
        await asyncio.sleep(0.3)  # several retries of the second: it must not lead
        assert running == ["one"]
        # The leader's database session dies (as when its process is killed).
        async with await psycopg.AsyncConnection.connect(cluster_db, autocommit=True) as conn:
            await conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_locks "
                "WHERE locktype = 'advisory' AND granted"
            )
        await eventually(lambda: "two" in running, what="takeover")
        await eventually(lambda: running == ["two"], what="old leader stepped down")
        t1.cancel()
        t2.cancel()


async def test_a_replica_restarted_under_its_name_drops_its_old_links(
    nodes: tuple[ClusterNode, Recorder, ClusterNode, Recorder], cluster_db: str
) -> None:
    a, _, b, _ = nodes
    old = ClusterNode(cluster_db, "c", "http://c")
    await old.start()
    link = FakeLink(str(uuid.uuid4()))
    writing = asyncio.create_task(old._outbox.run())
    await old.link_up(link)
    await old._outbox.drained()
    writing.cancel()
    await eventually(lambda: b.remote(link.server_id) is not None, what="mirrored")
    # SIGKILLed and started again at once, under the same name: its links ended.
    await old._writer.close()
    again = ClusterNode(cluster_db, "c", "http://c")
    assert await again.start() == [(link.server_id, link.connected_at)]
    await eventually(lambda: b.remote(link.server_id) is None, what="dropped on b")
    await eventually(lambda: a.remote(link.server_id) is None, what="dropped on a")
    await again._writer.close()
