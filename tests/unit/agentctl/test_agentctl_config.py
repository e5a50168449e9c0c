"""Client config: location, validation, precedence (env over file), 0600 writes, secrecy."""

from __future__ import annotations

import dataclasses
import stat
import tomllib
from pathlib import Path

import pytest

from fleetgate.agentctl import config as cfg
from fleetgate.agentctl.errors import CliError


def test_path_precedence_flag_env_xdg_home(tmp_path: Path) -> None:
    env = {
        "AGENTCTL_CONFIG": str(tmp_path / "env.toml"),
        "XDG_CONFIG_HOME": str(tmp_path / "xdg"),
        "HOME": str(tmp_path / "home"),
    }
    assert cfg.config_path(str(tmp_path / "flag.toml"), env) == tmp_path / "flag.toml"
    assert cfg.config_path(None, env) == tmp_path / "env.toml"
    del env["AGENTCTL_CONFIG"]
    assert cfg.config_path(None, env) == tmp_path / "xdg" / "agentctl" / "config.toml"
    del env["XDG_CONFIG_HOME"]
    assert cfg.config_path(None, env) == tmp_path / "home" / ".config" / "agentctl" / "config.toml"


def test_missing_file_is_an_empty_config(tmp_path: Path) -> None:
    config = cfg.load_file(tmp_path / "absent.toml")
    assert config == cfg.ClientConfig()
    assert config.verify_tls is True
    assert config.url is None


def test_load_file_and_env_override(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('url = "https://file.example/"\ntoken = "from-file"\nverify_tls = false\n')
    _, config = cfg.load(str(path), {})
    assert config.url == "https://file.example"
    assert config.token is not None
    assert config.token.get_secret_value() == "from-file"
    assert config.verify_tls is False

    env = {"AGENTCTL_URL": "http://localhost:8000", "AGENTCTL_TOKEN": "from-env"}
    _, config = cfg.load(str(path), env)
    assert config.url == "http://localhost:8000"
    assert config.token is not None
    assert config.token.get_secret_value() == "from-env"
    assert config.verify_tls is False  # not overridden, kept from the file


def test_env_alone_is_enough_without_a_file(tmp_path: Path) -> None:
    _, config = cfg.load(str(tmp_path / "none.toml"), {"AGENTCTL_URL": "cp.example"})
    assert config.url == "https://cp.example"


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('url = "ftp://x"\n', "url"),
        ("verify_tls = 3\n", "verify_tls"),
        ('token = ""\n', "token"),
        ('colour = "blue"\n', "colour: unknown key"),
    ],
)
def test_invalid_config_names_the_key(tmp_path: Path, text: str, key: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(CliError, match=key) as info:
        cfg.load_file(path)
    assert str(path) in info.value.message


def test_invalid_toml_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("url = \n")
    with pytest.raises(CliError, match="invalid config"):
        cfg.load_file(path)


def test_invalid_env_url_is_reported(tmp_path: Path) -> None:
    with pytest.raises(CliError, match="url"):
        cfg.load(str(tmp_path / "none.toml"), {"AGENTCTL_URL": "ftp://nope"})


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("localhost:8000", "http://localhost:8000"),
        ("127.0.0.1:8000/", "http://127.0.0.1:8000"),
        ("[::1]:8000", "http://[::1]:8000"),
        ("cp.example.com", "https://cp.example.com"),
        ("http://cp.example.com/", "http://cp.example.com"),
        ("https://cp.example.com/prefix/", "https://cp.example.com/prefix"),
    ],
)
def test_normalize_url(given: str, expected: str) -> None:
    assert cfg.normalize_url(given) == expected


def test_save_is_0600_in_a_0700_dir_and_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "fresh" / "agentctl" / "config.toml"
    token = 'we"ird\\tok\x7fen\u00e9'
    config = cfg.parse_config(
        {"url": "https://cp.example", "token": token, "ca_file": str(tmp_path / "ca.pem")}, "test"
    )
    cfg.save(path, config)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    tomllib.loads(path.read_text())  # valid TOML
    loaded = cfg.load_file(path)
    assert loaded == config
    assert loaded.token is not None
    assert loaded.token.get_secret_value() == token
    assert [p.name for p in path.parent.iterdir()] == ["config.toml"]  # no temp file left


def test_save_replaces_an_existing_file_keeping_0600(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('url = "https://old"\n')
    path.chmod(0o644)
    cfg.save(path, cfg.parse_config({"url": "https://new"}, "test"))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert cfg.load_file(path).url == "https://new"


def test_token_never_appears_in_repr_or_str() -> None:
    config = cfg.parse_config({"url": "https://cp", "token": "fat_secret-value"}, "test")
    assert "fat_secret-value" not in repr(config)
    assert "fat_secret-value" not in str(config)
    assert "fat_secret-value" not in str(dataclasses.asdict(config))


def test_validation_error_does_not_echo_the_token(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('token = "fat_secret-value"\nverify_tls = "maybe"\n')
    with pytest.raises(CliError) as info:
        cfg.load_file(path)
    assert "fat_secret-value" not in info.value.message
