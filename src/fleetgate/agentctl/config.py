"""Client configuration: one small TOML file, overridable from the environment.

Location: `--config PATH`, else `$AGENTCTL_CONFIG`, else `$XDG_CONFIG_HOME/agentctl/config.toml`,
else `~/.config/agentctl/config.toml`. Keys: `url`, `token`, `verify_tls` (default true),
`ca_file`. `AGENTCTL_URL` and `AGENTCTL_TOKEN` win over the file. The file holds a secret, so it
is written 0600 in a 0700 directory, and the token is a `Secret` that never prints.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fleetgate.agentctl.errors import CliError
from fleetgate.shared.atomic import atomic_write


ENV_CONFIG = "AGENTCTL_CONFIG"
ENV_URL = "AGENTCTL_URL"
ENV_TOKEN = "AGENTCTL_TOKEN"  # noqa: S105 - the name of a variable, not a secret

# Hosts that default to plain http when a URL is given without a scheme (as the reference CLI).
_LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
_KEYS = ("url", "token", "verify_tls", "ca_file")


class Secret:
    """A secret string that never prints (`repr` and `str` show asterisks)."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get_secret_value(self) -> str:
        """The secret itself, for the one place that sends it."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class ClientConfig:
    """The validated client configuration (build it with `parse_config`).

    A dataclass checked by hand rather than a pydantic model: importing pydantic costs about
    40 ms, half the budget of a whole `agentctl --version`, and every command loads this.
    """

    url: str | None = None
    token: Secret | None = None
    verify_tls: bool = True
    ca_file: Path | None = None


def _validated(data: Mapping[str, Any]) -> ClientConfig:
    """The config of `data`; raises ValueError naming each bad key (never echoing a value)."""
    problems = [f"{key}: unknown key" for key in data if key not in _KEYS]
    url = data.get("url")
    if url is not None:
        if not isinstance(url, str):
            problems.append("url: must be a string")
        else:
            try:
                url = normalize_url(url)
            except ValueError as exc:
                problems.append(f"url: {exc}")
    raw_token = data.get("token")
    token: Secret | None = None
    if isinstance(raw_token, Secret):
        token = raw_token
    elif raw_token is not None:
        if not isinstance(raw_token, str):
            problems.append("token: must be a string")
        elif not raw_token.strip():
            problems.append("token: must not be empty")
        else:
            token = Secret(raw_token)
    verify_tls = data.get("verify_tls", True)
    if not isinstance(verify_tls, bool):
        problems.append("verify_tls: must be true or false")
    ca_file = data.get("ca_file")
    if ca_file is not None and not isinstance(ca_file, str | os.PathLike):
        problems.append("ca_file: must be a path")
    if problems:
        raise ValueError("; ".join(problems))
    return ClientConfig(
        url=url,
        token=token,
        verify_tls=verify_tls,
        ca_file=None if ca_file is None else Path(ca_file),
    )


def normalize_url(value: str) -> str:
    """Return `value` as an absolute http(s) base URL without a trailing slash.

    A bare host gets `http://` for loopback and `https://` otherwise, like the reference CLI.
    """
    value = value.strip()
    if not value:
        raise ValueError("must not be empty")
    if "://" not in value:
        host = urlsplit(f"//{value}").hostname
        scheme = "http" if host in _LOOPBACK_HOSTS else "https"
        value = f"{scheme}://{value}"
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"not an http(s) URL: {value!r}")
    return value.rstrip("/")


def config_path(explicit: str | os.PathLike[str] | None, env: Mapping[str, str]) -> Path:
    """Resolve the config file path (the flag, then the environment, then XDG)."""
    if explicit:
        return Path(explicit).expanduser()
    if env.get(ENV_CONFIG):
        return Path(env[ENV_CONFIG]).expanduser()
    xdg = env.get("XDG_CONFIG_HOME")
    base = Path(xdg) if xdg else Path(env.get("HOME") or Path.home()) / ".config"
    return base / "agentctl" / "config.toml"


def parse_config(data: Mapping[str, Any], origin: str) -> ClientConfig:
    """Validate a mapping of config keys, naming the bad key in the error."""
    try:
        return _validated(data)
    except ValueError as exc:
        raise CliError(f"invalid config {origin}: {exc}") from None


def without_token(config: ClientConfig) -> ClientConfig:
    """The same config with the token removed (`logout`)."""
    return replace(config, token=None)


def load_file(path: Path) -> ClientConfig:
    """Read and validate the config file; a missing file is an empty config."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return ClientConfig()
    except OSError as exc:
        raise CliError(f"cannot read config {path}: {exc.strerror or exc}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise CliError(f"invalid config {path}: {exc}") from None
    return parse_config(data, str(path))


def apply_env(config: ClientConfig, env: Mapping[str, str]) -> ClientConfig:
    """Overlay `AGENTCTL_URL` / `AGENTCTL_TOKEN` (the environment wins over the file)."""
    data: dict[str, Any] = {
        key: getattr(config, key) for key in _KEYS if getattr(config, key) is not None
    }
    if env.get(ENV_URL):
        data["url"] = env[ENV_URL]
    if env.get(ENV_TOKEN):
        data["token"] = env[ENV_TOKEN]
    return parse_config(data, "(environment)")


def load(explicit: str | None, env: Mapping[str, str]) -> tuple[Path, ClientConfig]:
    """Return the config path and the effective config (file plus environment)."""
    path = config_path(explicit, env)
    return path, apply_env(load_file(path), env)


def dump_toml(config: ClientConfig) -> str:
    """Render the config as TOML (tomlkit encodes every string, any character)."""
    import tomlkit  # only `login` writes a config: keep it off every other command's path

    document = tomlkit.document()
    document.add(
        tomlkit.comment("agentctl client configuration (holds a secret: keep it mode 0600)")
    )
    if config.url is not None:
        document["url"] = config.url
    if config.token is not None:
        document["token"] = config.token.get_secret_value()
    document["verify_tls"] = config.verify_tls
    if config.ca_file is not None:
        document["ca_file"] = str(config.ca_file)
    return tomlkit.dumps(document)


def save(path: Path, config: ClientConfig) -> None:
    """Write the config atomically with mode 0600, creating its directory with mode 0700."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    atomic_write(path, dump_toml(config), 0o600)
