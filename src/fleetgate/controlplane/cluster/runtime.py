"""A replica's start and its long-lived loops: the node's listening and heartbeat, and
the periodic duties run by the one replica holding the leader lock.

The duties: the scheduler (due commands), the work-session clock (starts, expiries),
and the sweep of dead replicas (their agents' links end, their servers are marked
disconnected). A command scheduled, or a session changed, on any replica wakes the
leader's scheduler or clock by a ``poke`` note; every :data:`SAFETY_POKE` sweeps they
look again anyway.
"""

from __future__ import annotations

import asyncio
import uuid

import structlog

from fleetgate.controlplane.background import Loop
from fleetgate.controlplane.cluster.leader import Leadership
from fleetgate.controlplane.cluster.node import ClusterNode
from fleetgate.controlplane.config import ControlPlaneSettings
from fleetgate.controlplane.hub import Hub
from fleetgate.controlplane.hub.worksessions import WorkSessionClock
from fleetgate.controlplane.store import Database, servers as servers_store
from fleetgate.controlplane.store.engine import parse_url


__all__ = ["POKE", "SAFETY_POKE", "cluster_loops", "libpq_url", "new_node", "start_node"]

log = structlog.get_logger("fleetgate.controlplane.cluster")

POKE = 1.0
"""Seconds between two sweeps of dead replicas by the leader."""
SAFETY_POKE = 30
"""Every this many sweeps the leader's scheduler and clock look again, whatever the
notes said (a ``poke`` note lost while a bus connection was down costs at most this)."""


def libpq_url(url: str) -> str:
    """A libpq URL from a SQLAlchemy one (``postgresql+psycopg://`` -> ``postgresql://``)."""
    parsed = parse_url(url)
    return parsed.set(drivername="postgresql").render_as_string(hide_password=False)


def new_node(settings: ControlPlaneSettings) -> ClusterNode:
    """This process's node (``cluster`` is set, so ``database_url`` is PostgreSQL)."""
    assert settings.database_url is not None
    replica_id = settings.replica_id or uuid.uuid4().hex[:12]
    return ClusterNode(libpq_url(settings.database_url), replica_id, settings.replica_url)


def cluster_loops(node: ClusterNode, hub: Hub, clock: WorkSessionClock) -> dict[str, Loop]:
    """The replica's loops, for ``run_in_background`` (instead of a single process's
    scheduler and clock)."""
    assert hub.bridge is not None
    bridge = hub.bridge

    async def duties() -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(hub.scheduler.run(), name="scheduler")
            tg.create_task(clock.run(), name="work-session-clock")
            tg.create_task(_sweep_and_poke(node, hub, clock), name="cluster-sweep")

    leadership = Leadership(node.conninfo, duties)

    async def listen() -> None:
        await node.run(bridge)

    return {"cluster": listen, "leader": leadership.run}


async def start_node(node: ClusterNode, db: Database) -> None:
    """Join the cluster; servers whose links a previous run of this replica held are
    marked disconnected (their agents are elsewhere now, or coming back)."""
    await _links_ended(db, await node.start())


async def _links_ended(db: Database, links: list[tuple[str, int]]) -> None:
    for server_id, connected_at in links:
        row = await db.read(servers_store.get_server, server_id)
        last_seen = connected_at if row is None else (row.last_seen_at or connected_at)
        await db.write(
            servers_store.mark_disconnected,
            server_id,
            connected_at=connected_at,
            last_seen_at=last_seen,
        )


async def _sweep_and_poke(node: ClusterNode, hub: Hub, clock: WorkSessionClock) -> None:
    rounds = 0
    while True:
        if rounds % SAFETY_POKE == 0:
            hub.scheduler.wake()
            clock.wake()
        rounds += 1
        await _links_ended(hub.db, await node.sweep())
        await asyncio.sleep(POKE)
