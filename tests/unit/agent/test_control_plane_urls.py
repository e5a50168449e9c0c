"""Several control-plane URLs: ``urls`` alone, with ``url``, refusals, and the ring."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleetgate.agent.backhaul.urls import UrlRing
from fleetgate.agent.config import load
from fleetgate.agent.config.link import ControlPlaneConfig
from fleetgate.agent.errors import ConfigError


SERVER_ID = "0e5e94a1-2ed5-4908-9d8f-1457b2a03971"


def _load(tmp_path: Path, control_plane: str) -> ControlPlaneConfig:
    path = tmp_path / "agent.toml"
    path.write_text(
        f"[control_plane]\n{control_plane}\n"
        f'[identity]\nserver_id = "{SERVER_ID}"\nkey_file = "{tmp_path / "key"}"\n'
    )
    return load(path).control_plane


def test_urls_alone_start_with_the_first(tmp_path: Path) -> None:
    cp = _load(tmp_path, 'urls = ["https://a.example.com/", "https://b.example.com"]')
    assert cp.all_urls == ("https://a.example.com", "https://b.example.com")
    assert cp.backhaul_url == "wss://a.example.com/ws/agent/backhaul/"


def test_url_and_urls_url_first_each_once(tmp_path: Path) -> None:
    body = (
        'url = "https://b.example.com"\nurls = ["https://a.example.com", "https://b.example.com"]'
    )
    cp = _load(tmp_path, body)
    assert cp.all_urls == ("https://b.example.com", "https://a.example.com")


def test_single_url_still_valid(tmp_path: Path) -> None:
    cp = _load(tmp_path, 'url = "https://cp.example.com"')
    assert cp.all_urls == ("https://cp.example.com",)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("urls = []", "control_plane.url"),
        ('urls = ["ftp://a.example.com"]', "control_plane.url"),
        ('url = "https://a.example.com"\nurls = ["ftp://b.example.com"]', "control_plane.urls"),
        ('urls = ["https://a.example.com", "http://127.0.0.1:1"]', "all https"),
        ('urls = "https://a.example.com"', "control_plane.urls"),
    ],
)
def test_bad_urls_are_refused_naming_the_key(tmp_path: Path, body: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _load(tmp_path, body)


def test_ring_rotates_and_wraps() -> None:
    ring = UrlRing(("a", "b", "c"))
    assert ring.current == "a"
    assert [ring.rotate() for _ in range(4)] == ["b", "c", "a", "b"]
    single = UrlRing(("only",))
    assert single.rotate() == "only"
    with pytest.raises(ValueError, match="at least one"):
        UrlRing(())
