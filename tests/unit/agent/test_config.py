"""Configuration: validation messages name the key and the reason."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fleetgate.agent.config import load, parse
from fleetgate.agent.errors import ConfigError


SERVER_ID = "0e5e94a1-2ed5-4908-9d8f-1457b2a03971"


def write_config(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(body)
    return path


def minimal(key_file: Path) -> str:
    return (
        f'[control_plane]\nurl = "https://cp.example.com"\n'
        f'[identity]\nserver_id = "{SERVER_ID}"\nkey_file = "{key_file}"\n'
    )


def test_minimal_config_gets_safe_defaults(tmp_path: Path) -> None:
    """TLS verification is on and limits have their documented defaults."""
    cfg = load(write_config(tmp_path, minimal(tmp_path / "key")))
    assert cfg.control_plane.verify_tls
    assert cfg.control_plane.backhaul_url == "wss://cp.example.com/ws/agent/backhaul/"
    assert cfg.limits.command_timeout == 1800
    assert cfg.backhaul.keepalive_interval + cfg.backhaul.keepalive_timeout < 60


def test_plain_http_maps_to_ws(tmp_path: Path) -> None:
    """A loopback http control plane is dialled with ws://."""
    body = minimal(tmp_path / "key").replace("https://cp.example.com", "http://127.0.0.1:8000/")
    cfg = load(write_config(tmp_path, body))
    assert cfg.control_plane.backhaul_url == "ws://127.0.0.1:8000/ws/agent/backhaul/"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("[limits]\nmax_concurrent_commands = 0\n", "limits.max_concurrent_commands"),
        ("[limits]\nno_such_key = 1\n", "limits.no_such_key"),
        ("[backhaul]\nkeepalive_timeout = -1\n", "backhaul.keepalive_timeout"),
        ('[logging]\nlevel = "loud"\n', "logging.level"),
        ("[ssh]\nagent_forwarding = true\n", "ssh.agent_forwarding: .*not offered"),
        ("[ssh]\nx11_forwarding = true\n", "ssh.x11_forwarding: .*not offered"),
    ],
)
def test_invalid_values_name_their_key(tmp_path: Path, extra: str, message: str) -> None:
    """The error names the dotted key that is wrong."""
    with pytest.raises(ConfigError, match=message):
        load(write_config(tmp_path, minimal(tmp_path / "key") + extra))


def test_wrong_scheme_and_missing_sections(tmp_path: Path) -> None:
    """A non-HTTP URL and a missing section are both reported, with their keys."""
    with pytest.raises(ConfigError) as info:
        parse({"control_plane": {"url": "ftp://x"}})
    assert "control_plane.url" in str(info.value)
    assert "identity: Field required" in str(info.value)


def test_unreadable_and_invalid_toml(tmp_path: Path) -> None:
    """A missing file and broken TOML are ConfigErrors naming the file."""
    with pytest.raises(ConfigError, match="cannot read"):
        load(tmp_path / "absent.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load(write_config(tmp_path, "[control_plane\n"))


def test_key_file_must_be_private(tmp_path: Path) -> None:
    """A key readable by others is refused; a 0600 one is read and stripped."""
    key = tmp_path / "key"
    key.write_text("secret\n")
    cfg = load(write_config(tmp_path, minimal(key)))
    os.chmod(key, 0o644)
    with pytest.raises(ConfigError, match="0600"):
        cfg.read_key()
    os.chmod(key, 0o600)
    assert cfg.read_key() == "secret"
    key.write_text("")
    with pytest.raises(ConfigError, match="empty"):
        cfg.read_key()
    key.unlink()
    with pytest.raises(ConfigError, match="cannot read"):
        cfg.read_key()


def test_labels_table(tmp_path: Path) -> None:
    """`[labels]` holds the server's labels; a bad one names the key and the reason."""
    body = minimal(tmp_path / "key") + '[labels]\nrole = "web"\nenv = "prod"\n'
    assert load(write_config(tmp_path, body)).labels == {"role": "web", "env": "prod"}
    assert load(write_config(tmp_path, minimal(tmp_path / "key"))).labels == {}
    bad = minimal(tmp_path / "key") + '[labels]\nrole = "web server"\n'
    with pytest.raises(ConfigError, match=r"labels: .*label role: value 'web server'"):
        load(write_config(tmp_path, bad))
