"""The agent's own refusals of tunnel channels (check() is synchronous, no I/O)."""

from __future__ import annotations

from uuid import uuid4

import pytest

from fleetgate.agent.config import parse
from fleetgate.agent.errors import ChannelRefused
from fleetgate.agent.tunnel.service import TunnelService
from fleetgate.shared.protocol import ChannelOpen
from fleetgate.shared.protocol.channels import TunnelSpec


BASE: dict[str, object] = {
    "control_plane": {"url": "https://cp.example.com"},
    "identity": {"server_id": "0e5e94a1-2ed5-4908-9d8f-1457b2a03971", "key_file": "/k"},
}


def service(**tunnel: object) -> TunnelService:
    return TunnelService(parse({**BASE, "tunnel": tunnel}).tunnel)


def open_message(
    port: int = 8080, host: str | None = None, tunnel_id: object = None
) -> ChannelOpen:
    spec = TunnelSpec(tunnel_id=tunnel_id or uuid4(), port=port, host=host)
    return ChannelOpen(channel_id=uuid4(), spec=spec)


def refusal(svc: TunnelService, message: ChannelOpen) -> ChannelRefused:
    with pytest.raises(ChannelRefused) as info:
        svc.check(message)
    return info.value


def test_disabled_agent_refuses_every_tunnel() -> None:
    assert refusal(service(), open_message()).code == "tunnel_disabled"


@pytest.mark.parametrize("host", ["10.0.0.1", "example.com", "0.0.0.0", "::ffff:8.8.8.8"])
def test_agent_refuses_a_non_loopback_host_itself(host: str) -> None:
    """Even if a control plane asked for another host, the agent says no."""
    svc = service(enabled=True, allowed_ports=["1-65535"])
    refused = refusal(svc, open_message(host=host))
    assert refused.code == "tunnel_target_not_allowed"
    assert host in refused.message


def test_agent_allows_listed_ports_on_loopback() -> None:
    svc = service(enabled=True, allowed_ports=[8080, "9000-9001"])
    for port, host in ((8080, None), (9001, "127.0.0.1"), (9000, "::1"), (8080, "localhost")):
        svc.check(open_message(port=port, host=host))
    assert refusal(svc, open_message(port=9002)).code == "tunnel_port_not_allowed"


def test_stream_limits_are_checked_before_dialling() -> None:
    svc = service(enabled=True, allowed_ports=[8080], max_streams_per_tunnel=1, max_streams=2)
    tunnel = uuid4()
    assert svc.streams.admit(tunnel) is None
    refused = refusal(svc, open_message(tunnel_id=tunnel))
    assert refused.code == "tunnel_stream_limit"
    svc.check(open_message())  # another tunnel still has room
    svc.streams.release(tunnel)
    svc.check(open_message(tunnel_id=tunnel))
