"""Tunnel policy and frames, pure: port lists, loopback targets, stream limits."""

from __future__ import annotations

from uuid import uuid4

import pytest

from fleetgate.agent.config import parse
from fleetgate.agent.config.access import TunnelConfig
from fleetgate.agent.errors import ConfigError
from fleetgate.agent.tunnel.policy import (
    Refusal,
    StreamBook,
    StreamSlots,
    TunnelPolicy,
    describe_ports,
    port_allowed,
)
from fleetgate.shared.addresses import loopback_address
from fleetgate.shared.errors import ProtocolViolation
from fleetgate.shared.protocol.tunnel import (
    EOF_FRAME,
    TunnelEof,
    TunnelError,
    decode_tunnel_control,
    tunnel_error_frame,
)


BASE: dict[str, object] = {
    "control_plane": {"url": "https://cp.example.com"},
    "identity": {"server_id": "0e5e94a1-2ed5-4908-9d8f-1457b2a03971", "key_file": "/k"},
}


def config(**tunnel: object) -> TunnelConfig:
    return parse({**BASE, "tunnel": tunnel}).tunnel


def test_tunnels_are_off_by_default() -> None:
    cfg = parse(BASE).tunnel
    assert not cfg.enabled
    assert cfg.allowed_ports == ()
    refusal = TunnelPolicy.from_config(cfg).target(None, 22)
    assert isinstance(refusal, Refusal)
    assert refusal.code == "tunnel_disabled"
    assert "[tunnel] enabled" in refusal.message


def test_ports_and_ranges_are_parsed() -> None:
    cfg = config(enabled=True, allowed_ports=[22, "8000-8099", "443", [5000, 5001]])
    assert cfg.allowed_ports == ((22, 22), (8000, 8099), (443, 443), (5000, 5001))
    assert describe_ports(cfg.allowed_ports) == "22, 8000-8099, 443, 5000-5001"


@pytest.mark.parametrize("bad", [0, 65536, "80-70", "http", "1-2-3", True, 3.5, "", [1, 2, 3]])
def test_bad_port_entries_name_the_key(bad: object) -> None:
    with pytest.raises(ConfigError, match=r"tunnel\.allowed_ports\.0"):
        config(enabled=True, allowed_ports=[bad])


def test_limits_must_be_consistent() -> None:
    with pytest.raises(ConfigError, match="max_streams_per_tunnel must not exceed"):
        config(max_streams_per_tunnel=10, max_streams=5)
    with pytest.raises(ConfigError, match=r"tunnel\.max_streams"):
        config(max_streams=0)


def test_port_matching() -> None:
    ranges = ((22, 22), (8000, 8099))
    assert port_allowed(ranges, 22)
    assert port_allowed(ranges, 8000)
    assert port_allowed(ranges, 8099)
    assert not port_allowed(ranges, 8100)
    assert not port_allowed(ranges, 21)
    assert not port_allowed((), 22)
    assert describe_ports(()) == "none"


@pytest.mark.parametrize(
    ("host", "address"),
    [
        (None, "127.0.0.1"),
        ("localhost", "127.0.0.1"),
        ("127.0.0.1", "127.0.0.1"),
        ("127.1.2.3", "127.1.2.3"),
        ("::1", "::1"),
        ("[::1]", "::1"),
        ("::ffff:127.0.0.1", "127.0.0.1"),
    ],
)
def test_loopback_targets(host: str | None, address: str) -> None:
    assert loopback_address(host) == address


@pytest.mark.parametrize(
    "host",
    ["10.0.0.1", "0.0.0.0", "::", "example.com", "localhost.example.com", "", "::ffff:10.0.0.1"],
)
def test_other_targets_are_refused(host: str) -> None:
    assert loopback_address(host) is None
    refusal = TunnelPolicy(enabled=True, allowed_ports=((1, 65535),)).target(host, 80)
    assert isinstance(refusal, Refusal)
    assert refusal.code == "tunnel_target_not_allowed"
    assert "loopback" in refusal.message


def test_port_refusal_lists_what_is_allowed() -> None:
    policy = TunnelPolicy.from_config(config(enabled=True, allowed_ports=[22, "8000-8099"]))
    assert policy.target(None, 8080) == "127.0.0.1"
    refusal = policy.target("127.0.0.1", 25)
    assert isinstance(refusal, Refusal)
    assert refusal.code == "tunnel_port_not_allowed"
    assert "port 25" in refusal.message
    assert "22, 8000-8099" in refusal.message


def test_stream_book_limits_per_tunnel_and_in_total() -> None:
    book = StreamBook(max_per_tunnel=2, max_total=3)
    a, b = uuid4(), uuid4()
    assert book.admit(a) is None
    assert book.admit(a) is None
    refused = book.admit(a)
    assert refused is not None
    assert refused.code == "tunnel_stream_limit"
    assert "max_streams_per_tunnel" in refused.message
    assert book.admit(b) is None
    total = book.admit(b)
    assert total is not None
    assert "max_streams)" in total.message
    assert (book.count(a), book.count(b), book.total) == (2, 1, 3)
    book.release(a)
    assert book.admit(b) is None
    for tunnel in (a, b, b):
        book.release(tunnel)
    assert book.total == 0
    assert book.count(a) == 0


def test_stream_slots_give_back_what_they_hold_once() -> None:
    book = StreamBook(max_per_tunnel=2, max_total=3)
    other = uuid4()
    assert book.admit(other) is None  # a tunnel's stream, in the same book
    slots = StreamSlots(book, uuid4())
    assert slots.take() is None
    assert slots.take() is None
    refused = slots.take()
    assert refused is not None
    assert "max_streams)" in refused.message
    assert (slots.held, book.total) == (2, 3)
    slots.give_back()
    assert (slots.held, book.total) == (1, 2)
    slots.give_back_all()  # the holder ended with one stream still counted
    slots.give_back()  # a late watcher of that stream: nothing left to give
    assert (slots.held, book.total, book.count(other)) == (0, 1, 1)


def test_control_frames_round_trip() -> None:
    assert decode_tunnel_control(EOF_FRAME) == TunnelEof()
    frame = decode_tunnel_control(tunnel_error_frame("tunnel_reset", "boom"))
    assert frame == TunnelError(code="tunnel_reset", message="boom")
    long = decode_tunnel_control(tunnel_error_frame("x" * 100, "y" * 10_000))
    assert isinstance(long, TunnelError)
    assert len(long.code) == 64
    assert len(long.message) == 4096


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "{}",
        '{"type": "data"}',
        '{"type": "eof", "extra": 1}',
        '{"type": "error", "code": "x"}',
        '{"type": "eof"}' + " " * 9000,
    ],
)
def test_bad_control_frames_are_protocol_violations(text: str) -> None:
    with pytest.raises(ProtocolViolation) as info:
        decode_tunnel_control(text)
    assert info.value.code in {"invalid", "too_large", "malformed"}
