"""The channel hop: an agent's channel websocket that landed on another replica than the
one where the channel's client waits is relayed there, over an authenticated websocket.

Why a hop and not a redirect: the agent dials ``/ws/agent/channels/<id>/`` through the
load balancer (or on the replica it is linked to), which cannot know where the client
waits; redirecting would need every replica reachable by every agent, bypassing the
balancer and its TLS. The replica the agent reached authenticates the agent as usual,
then opens ``/ws/cluster/channels/<id>/`` on the waiting replica with a token that only
replicas can make: an HMAC-SHA256, with the cluster's key (a random row of the shared
database, never configured or logged), of the channel id, the server id (checked there
against the channel's server) and an expiry 30 s ahead. Nothing new is open without
credentials; the token is useless for any other channel, server or minute.

The copy is frame by frame, text as text and bytes as bytes, the close code passed on.
"""

from __future__ import annotations

import asyncio

import structlog
from starlette.websockets import WebSocket
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from fleetgate.controlplane.cluster.hoptoken import HOP_HEADER
from fleetgate.controlplane.hub.relay import close_websocket
from fleetgate.shared.protocol.channels import CLOSE_INTERNAL, CLOSE_NORMAL


__all__ = ["relay_to_replica"]

log = structlog.get_logger("fleetgate.controlplane.cluster")


async def relay_to_replica(
    agent: WebSocket, url: str, token: str, *, max_size: int, open_timeout: float = 10.0
) -> None:
    """Relay the (accepted) agent websocket to the waiting replica's hop endpoint at
    ``url`` until either side closes; the other is then closed the same way."""
    try:
        peer = await connect(
            url,
            additional_headers={HOP_HEADER: token},
            open_timeout=open_timeout,
            max_size=max_size,
            compression=None,
            ping_interval=None,
        )
    except Exception as exc:  # noqa: BLE001 - unreachable, refused, timed out: all alike
        log.warning("cluster.hop_failed", error=type(exc).__name__, detail=str(exc)[:200])
        await close_websocket(agent, CLOSE_INTERNAL, "the channel's replica is unreachable")
        return
    async with peer, asyncio.TaskGroup() as tg:
        up = tg.create_task(_agent_to_peer(agent, peer), name="hop-up")
        down = tg.create_task(_peer_to_agent(peer, agent), name="hop-down")
        up.add_done_callback(lambda _: down.cancel())
        down.add_done_callback(lambda _: up.cancel())


async def _agent_to_peer(agent: WebSocket, peer: ClientConnection) -> None:
    try:
        while True:
            message = await agent.receive()
            if message["type"] == "websocket.disconnect":
                code = message.get("code") or CLOSE_NORMAL
                await peer.close(code if code not in (1005, 1006) else CLOSE_NORMAL)
                return
            data = message.get("bytes")
            await peer.send(data if data is not None else message.get("text") or "")
    except ConnectionClosed:
        return


async def _peer_to_agent(peer: ClientConnection, agent: WebSocket) -> None:
    code, reason = CLOSE_NORMAL, ""
    try:
        async for frame in peer:
            if isinstance(frame, bytes):
                await agent.send_bytes(frame)
            else:
                await agent.send_text(frame)
    except ConnectionClosed:
        pass
    if peer.close_code is not None and peer.close_code not in (1005, 1006):
        code, reason = peer.close_code, peer.close_reason or ""
    await close_websocket(agent, code, reason)
