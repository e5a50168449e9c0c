"""The channel foundation end to end, without a particular kind.

The real control plane application (uvicorn, in this process, on a database bootstrapped
by the real CLI) gets one extra test route that opens a tunnel-kind channel; the real
agent backhaul and channel router (in this process) serve it with an echo service. The
client is a plain websockets client, as agentctl would be.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from starlette.websockets import WebSocket
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from fleetgate.agent.backhaul import Backhaul, ChannelLink, Outbox
from fleetgate.agent.backhaul.tls import agent_headers
from fleetgate.agent.channels import ChannelRouter
from fleetgate.agent.config import AgentConfig, load
from fleetgate.agent.errors import ChannelRefused
from fleetgate.agent.policy import GrantPolicy
from fleetgate.controlplane.api.channels import (
    Authorized,
    authorize,
    deny,
    owner_of,
    serve_channel,
    services_of,
    websocket_principal,
)
from fleetgate.controlplane.api.deps import Services
from fleetgate.controlplane.app import create_app
from fleetgate.controlplane.auth import Principal
from fleetgate.controlplane.authz import RULES, Access, Rule
from fleetgate.controlplane.config import ControlPlaneSettings
from fleetgate.controlplane.errors import APIError
from fleetgate.controlplane.hub.channelpool import ChannelPool
from fleetgate.controlplane.hub.channelregistry import OpenChannel
from fleetgate.controlplane.hub.streamrelay import relay_stream
from fleetgate.controlplane.server import ControlPlaneServer, bind_socket
from fleetgate.shared.protocol import (
    ChannelAccepted,
    ChannelOpen,
    GrantClaims,
    TunnelSpec,
    content_digest,
)
from fleetgate.shared.protocol.grants import decode_payload, parse_claims
from tests.support.agent import write_agent_config
from tests.support.controlplane import running_control_plane
from tests.support.database import backend


__all__ = ["backend"]  # the relay's tests run on SQLite and on PostgreSQL
from tests.support.waiting import eventually


REFUSED_PORT = 9


class EchoService:
    """Echoes every frame back; port 9 ("discard") is refused by ``check``."""

    kind = "tunnel"
    scope = "tunnel"

    def __init__(self) -> None:
        self.claims: list[GrantClaims | None] = []
        self.quiet: list[bool] = []
        """Whether each channel's open was quiet (no ``channel.accepted`` was sent)."""

    def check(self, message: ChannelOpen) -> None:
        assert isinstance(message.spec, TunnelSpec)
        if message.spec.port == REFUSED_PORT:
            raise ChannelRefused("tunnel_port_not_allowed", "port 9 is not allowed")

    async def serve(
        self, message: ChannelOpen, link: ChannelLink, claims: GrantClaims | None
    ) -> None:
        self.claims.append(claims)
        self.quiet.append(message.quiet)
        while True:
            frame = await link.recv()
            if frame == "bye":
                return
            await link.send(frame)


@dataclass
class Stack:
    url: str
    token: str
    server_id: str
    echo: EchoService
    router: ChannelRouter
    pool: ChannelPool
    """The control plane's pool of agent websockets."""


async def _authorize_test_stream(
    websocket: WebSocket, services: Services, principal: Principal
) -> tuple[uuid.UUID, TunnelSpec, Authorized]:
    """A new channel id, a tunnel spec for ``?port=`` and its grant for ``?server=``."""
    channel_id = uuid.uuid4()
    spec = TunnelSpec(tunnel_id=uuid.uuid4(), port=int(websocket.query_params["port"]))
    # ?other=1: a grant signed for another channel (the agent must refuse it).
    operation_id = uuid.uuid4() if "other" in websocket.query_params else channel_id
    authorized = await authorize(
        services,
        principal,
        server=websocket.query_params["server"],
        scope="tunnel",
        work_session=None,
        operation_id=str(operation_id),
        description="test",
        content=content_digest(spec),
    )
    return channel_id, spec, authorized


async def _test_route(websocket: WebSocket) -> None:
    services = services_of(websocket)
    principal = await websocket_principal(websocket)
    if principal is None:
        return
    try:
        channel_id, spec, authorized = await _authorize_test_stream(websocket, services, principal)
    except APIError as exc:
        await deny(websocket, exc.status, exc.code, exc.detail)
        return
    grant = authorized.grant
    if "expires_in" in websocket.query_params:
        # As a work session's grant would be: valid for a few more seconds only.
        claims = parse_claims(decode_payload(grant.payload)).model_copy(
            update={"expires_at": int(time.time()) + int(websocket.query_params["expires_in"])}
        )
        grant = services.signer.sign(claims)
    message = ChannelOpen(channel_id=channel_id, spec=spec, grant=grant)
    owner = owner_of(principal, authorized.work_session_id)
    channel = OpenChannel(channel_id, "tunnel", authorized.server_id, owner)
    await serve_channel(websocket, services, message, channel)


async def _pipelined_route(websocket: WebSocket) -> None:
    """A channel whose client websocket is accepted before the agent is asked, so its
    frames follow the ``channel.open`` at once (as a deferred tunnel stream's)."""
    services = services_of(websocket)
    principal = await websocket_principal(websocket)
    if principal is None:
        return
    channel_id, spec, authorized = await _authorize_test_stream(websocket, services, principal)
    await websocket.accept()
    message = ChannelOpen(channel_id=channel_id, spec=spec, grant=authorized.grant)
    channel = OpenChannel(channel_id, "tunnel", authorized.server_id, owner_of(principal, None))
    pool = services.hub.channels.pool

    async def relayer(client: WebSocket, agent: WebSocket) -> None:
        accepted = pool.acceptance(agent)
        await relay_stream(client, agent, client_ends=False, agent_ends=False, accepted=accepted)

    await serve_channel(websocket, services, message, channel, relayer=relayer, pipelined=True)


@pytest.fixture
async def stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Stack]:
    # The real CLI bootstraps the database and the admin token; then the same database is
    # served in this process, so the test can add its route (with its authorization rule:
    # a route without one is refused, docs/security.md).
    with running_control_plane(tmp_path / "cp") as cp:
        server = cp.new_server("echo")
        db_path, token, key = cp.db_path, cp.admin_token, cp.signing_public_key
        database_url = cp.database_url
    app = create_app(ControlPlaneSettings(db_path=db_path, database_url=database_url))
    app.add_api_websocket_route("/ws/test/echo/", _test_route)
    app.add_api_websocket_route("/ws/test/pipelined/", _pipelined_route)
    for route in ("/ws/test/echo/", "/ws/test/pipelined/"):
        monkeypatch.setitem(RULES, ("WS", route), Rule(Access.PRINCIPAL, "tunnel", gated=True))
    sock = bind_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    uv = ControlPlaneServer(app, ControlPlaneSettings(db_path=db_path))
    key_file = tmp_path / "agent.key"
    key_file.write_text(server.key)
    config_path = tmp_path / "agent.toml"
    write_agent_config(
        config_path,
        url=f"http://127.0.0.1:{port}",
        server_id=server.id,
        key_file=key_file,
        state_dir=tmp_path / "state",
        control_plane_key=key,
    )
    config: AgentConfig = load(config_path)
    echo = EchoService()
    router = ChannelRouter(config, key=server.key, grants=GrantPolicy.from_config(config))
    router.register(echo)

    class NoCommands:
        def running(self) -> list[uuid.UUID]:
            return []

        def on_command(self, message: object, delivered_at: object) -> None:
            raise AssertionError("no commands in this test")

        def on_work_session_ended(self, message: object) -> None:
            pass

    connected = asyncio.Event()
    backhaul = Backhaul(
        config,
        key=server.key,
        outbox=Outbox(max_reports=10),
        handler=NoCommands(),
        channels=router,
        on_connected=connected.set,
    )
    async with asyncio.TaskGroup() as tg:
        serving = tg.create_task(uv.serve(sockets=[sock]))
        agent = tg.create_task(backhaul.run())
        channels = tg.create_task(router.run())
        await asyncio.wait_for(connected.wait(), 10)
        try:
            pool = app.state.services.hub.channels.pool
            yield Stack(f"ws://127.0.0.1:{port}", token, server.id, echo, router, pool)
        finally:
            agent.cancel()
            channels.cancel()
            uv.should_exit = True
            await serving


def _headers(token: str) -> dict[str, str]:
    return {"Authorization": f'token="{token}"'}


async def test_frames_are_relayed_both_ways_and_close_propagates(stack: Stack) -> None:
    url = f"{stack.url}/ws/test/echo/?server=echo&port=8080"
    async with connect(url, additional_headers=_headers(stack.token), max_size=None) as ws:
        payload = bytes(range(256)) * 4096  # 1 MiB
        await ws.send(payload)
        assert await ws.recv() == payload
        await ws.send('{"type":"ping"}')
        assert await ws.recv() == '{"type":"ping"}'
        await ws.send("bye")  # the agent's service returns: the router closes with 1000
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 10)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1000
    claims = stack.echo.claims[-1]
    assert claims is not None
    assert claims.scopes == ["tunnel"]
    assert str(claims.server_id) == stack.server_id


async def test_agent_refusal_is_an_http_error_with_the_code(stack: Stack) -> None:
    url = f"{stack.url}/ws/test/echo/?server=echo&port={REFUSED_PORT}"
    with pytest.raises(InvalidStatus) as refused:
        await connect(url, additional_headers=_headers(stack.token))
    response = refused.value.response
    assert response.status_code == 403
    assert json.loads(response.body or b"")["code"] == "tunnel_port_not_allowed"


async def test_unknown_server_and_bad_token_are_refused(stack: Stack) -> None:
    with pytest.raises(InvalidStatus) as unknown:
        await connect(
            f"{stack.url}/ws/test/echo/?server=nope&port=80",
            additional_headers=_headers(stack.token),
        )
    assert unknown.value.response.status_code == 404
    with pytest.raises(InvalidStatus) as bad:
        await connect(
            f"{stack.url}/ws/test/echo/?server=echo&port=80",
            additional_headers=_headers("fat_wrong"),
        )
    assert bad.value.response.status_code == 401


async def test_client_leaving_ends_the_agent_side(stack: Stack) -> None:
    url = f"{stack.url}/ws/test/echo/?server=echo&port=8080"
    before = len(stack.echo.claims)
    ws = await connect(url, additional_headers=_headers(stack.token))
    await ws.send(b"x")
    assert await ws.recv() == b"x"
    await ws.close()
    # The agent's service sees its link closed and the router forgets the channel.
    await eventually(
        lambda: len(stack.echo.claims) == before + 1 and stack.router.open_channels() == 0,
        what="the agent side ended",
    )


async def test_channel_ends_when_its_grant_expires(stack: Stack) -> None:
    url = f"{stack.url}/ws/test/echo/?server=echo&port=8080&expires_in=2"
    async with connect(url, additional_headers=_headers(stack.token)) as ws:
        await ws.send(b"still valid")
        assert await ws.recv() == b"still valid"
        # Nothing else happens: the agent's own clock closes the channel at expiry.
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 10)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 4403
    assert json.loads(closed.value.rcvd.reason)["code"] == "work_session_expired"


# -- pooled agent websockets -----------------------------------------------------------------


async def _warm(stack: Stack) -> None:
    """Open one channel the classic way; the agent then fills its pool."""
    url = f"{stack.url}/ws/test/echo/?server=echo&port=8080"
    async with connect(url, additional_headers=_headers(stack.token)) as ws:
        await ws.send(b"warm")
        assert await ws.recv() == b"warm"
    await eventually(
        lambda: stack.pool.idle(stack.server_id) == stack.router.pool.size,
        what="the agent's pooled websockets",
    )


async def _close_code_after_bye(ws: ClientConnection) -> int:
    """Say ``bye`` (the echo target then ends the stream); the close code the client got."""
    await ws.send("bye")
    with pytest.raises(ConnectionClosed) as closed:
        await asyncio.wait_for(ws.recv(), 10)
    assert closed.value.rcvd is not None
    return closed.value.rcvd.code


async def test_a_warm_agent_serves_channels_on_pooled_websockets(stack: Stack) -> None:
    assert stack.pool.idle(stack.server_id) == 0  # cold: nothing dialled ahead
    await _warm(stack)
    claimed = stack.pool.claimed
    url = f"{stack.url}/ws/test/echo/?server=echo&port=8080"
    for round_ in range(3):
        async with connect(url, additional_headers=_headers(stack.token)) as ws:
            await ws.send(b"pooled %d" % round_)
            assert await ws.recv() == b"pooled %d" % round_
            assert await _close_code_after_bye(ws) == 1000
    assert stack.pool.claimed == claimed + 3
    # Each one taken is replaced; the pool stays bounded by the agent's size.
    await eventually(
        lambda: stack.pool.idle(stack.server_id) == stack.router.pool.size,
        what="the pool refilled",
    )
    await eventually(lambda: stack.router.open_channels() == 0, what="channels ended")


@pytest.mark.parametrize(
    ("query", "code"),
    [
        (f"port={REFUSED_PORT}", "tunnel_port_not_allowed"),  # the kind's own check
        ("port=8080&other=1", "work_session_not_usable"),  # the grant, bound to the channel
    ],
)
async def test_pooled_websockets_refuse_as_the_backhaul_does(
    stack: Stack, query: str, code: str
) -> None:
    url = f"{stack.url}/ws/test/echo/?server=echo&{query}"
    with pytest.raises(InvalidStatus) as cold:
        await connect(url, additional_headers=_headers(stack.token))
    await _warm(stack)
    claimed = stack.pool.claimed
    with pytest.raises(InvalidStatus) as warm:
        await connect(url, additional_headers=_headers(stack.token))
    assert stack.pool.claimed == claimed + 1  # this one was asked on a pooled websocket
    for refused in (cold.value.response, warm.value.response):
        assert refused.status_code == 403
        assert json.loads(refused.body or b"")["code"] == code
    assert stack.echo.claims[-1] is not None  # only the warm-up channel was served
    assert len(stack.echo.claims) == 1


async def test_the_pool_endpoint_is_for_agents_and_carries_nothing_unasked(
    stack: Stack, tmp_path: Path
) -> None:
    with pytest.raises(InvalidStatus) as user:
        await connect(f"{stack.url}/ws/agent/pool/", additional_headers=_headers(stack.token))
    assert user.value.response.status_code == 401
    # The agent's own credentials: a frame sent before any channel.open closes the
    # websocket, which is never used for a channel.
    config = stack.router.pool._config
    headers = agent_headers(config, stack.router.pool._key)
    async with connect(f"{stack.url}/ws/agent/pool/", additional_headers=headers) as ws:
        await eventually(lambda: stack.pool.idle(stack.server_id) == 1, what="pooled")
        await ws.send(ChannelAccepted(channel_id=uuid.uuid4()).model_dump_json())
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 10)
    assert stack.pool.idle(stack.server_id) == 0


async def test_unused_pooled_websockets_expire_and_a_cold_agent_keeps_none(
    stack: Stack,
) -> None:
    stack.pool.idle_timeout = 0.5
    stack.router.pool.warm_seconds = 1.0
    await _warm(stack)
    # Past the warm time the agent stops dialling; the control plane closes the rest.
    await eventually(
        lambda: (
            not stack.router.pool.warm()
            and stack.router.pool.idle == 0
            and stack.pool.idle(stack.server_id) == 0
        ),
        what="pool drained",
    )


@pytest.mark.parametrize("quiet", [True, False])
async def test_a_pipelined_open_is_quiet_only_for_an_agent_that_asks(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, quiet: bool
) -> None:
    """An agent that dials its pooled websockets with ``?quiet=1`` gets a pipelined
    channel's open quiet: its first frame of the channel is the answer, relayed as the
    channel's own. One that does not ask (an older agent) answers ``channel.accepted``,
    checked before anything of the agent's is relayed. Both carry the client's first
    frame, sent before the agent answered, and the close."""
    if not quiet:
        monkeypatch.setattr("fleetgate.agent.channels.pool.POOL_PATH", "/ws/agent/pool/?reuse=1")
    await _warm(stack)
    claimed = stack.pool.claimed
    url = f"{stack.url}/ws/test/pipelined/?server=echo&port=8080"
    for round_ in range(2):
        async with connect(url, additional_headers=_headers(stack.token)) as ws:
            await ws.send(b"right behind the open %d" % round_)
            assert await asyncio.wait_for(ws.recv(), 10) == b"right behind the open %d" % round_
            await ws.send('{"type":"note"}')  # text frames pass as they are
            assert await asyncio.wait_for(ws.recv(), 10) == '{"type":"note"}'
            assert await _close_code_after_bye(ws) == 1000
    assert stack.pool.claimed == claimed + 2
    assert stack.echo.quiet[-2:] == [quiet, quiet]


@pytest.mark.parametrize("quiet", [True, False])
@pytest.mark.parametrize(
    ("query", "code"),
    [
        (f"port={REFUSED_PORT}", "tunnel_port_not_allowed"),  # the kind's own check
        ("port=8080&other=1", "work_session_not_usable"),  # the grant, bound to the channel
    ],
)
async def test_a_refused_pipelined_open_closes_the_client_with_the_agents_code(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, quiet: bool, query: str, code: str
) -> None:
    """The refusal of a quiet open (an ``error`` naming the channel, not a frame of the
    channel) reaches the client as a close 4403 with the agent's code, as an answered
    one's does; the frames that followed the open are not carried."""
    if not quiet:
        monkeypatch.setattr("fleetgate.agent.channels.pool.POOL_PATH", "/ws/agent/pool/?reuse=1")
    await _warm(stack)
    served = len(stack.echo.claims)
    claimed = stack.pool.claimed
    url = f"{stack.url}/ws/test/pipelined/?server=echo&{query}"
    async with connect(url, additional_headers=_headers(stack.token)) as ws:
        await ws.send(b"must not be carried")
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 10)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 4403
    assert json.loads(closed.value.rcvd.reason)["code"] == code
    assert stack.pool.claimed == claimed + 1  # asked on a pooled websocket
    assert len(stack.echo.claims) == served
