"""Client configuration: one small TOML file, overridable from the environment.

Location: `--config PATH`, else `$AGENTCTL_CONFIG`, else `$XDG_CONFIG_HOME/agentctl/config.toml`,
else `~/.config/agentctl/config.toml`. Keys: `url`, `token`, `verify_tls` (default true),
`ca_file`. `AGENTCTL_URL` and `AGENTCTL_TOKEN` win over the file. The file holds a secret, so it
is written 0600 in a 0700 directory, and the token is a `SecretStr` that never prints.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, SecretStr, ValidationError, field_validator

from fleetgate.agentctl.errors import CliError


ENV_CONFIG = "AGENTCTL_CONFIG"
ENV_URL = "AGENTCTL_URL"
ENV_TOKEN = "AGENTCTL_TOKEN"  # noqa: S105 - the name of a variable, not a secret

# Hosts that default to plain http when a URL is given without a scheme (as the reference CLI).
_LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")


class ClientConfig(BaseModel):
    """The validated client configuration."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str | None = None
    token: SecretStr | None = None
    verify_tls: bool = True
    ca_file: Path | None = None

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str | None) -> str | None:
        return None if value is None else normalize_url(value)

    @field_validator("token")
    @classmethod
    def _check_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().strip():
            raise ValueError("must not be empty")
        return value


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


def _describe(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"]) or "config"
        message = error["msg"]
        if error["type"] == "extra_forbidden":
            message = "unknown key"
        problems.append(f"{key}: {message}")
    return "; ".join(problems)


def parse_config(data: Mapping[str, Any], origin: str) -> ClientConfig:
    """Validate a mapping of config keys, naming the bad key in the error."""
    try:
        return ClientConfig.model_validate(dict(data))
    except ValidationError as exc:
        raise CliError(f"invalid config {origin}: {_describe(exc)}") from None


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
    data: dict[str, Any] = config.model_dump(exclude_none=True)
    if config.token is not None:
        data["token"] = config.token.get_secret_value()
    if env.get(ENV_URL):
        data["url"] = env[ENV_URL]
    if env.get(ENV_TOKEN):
        data["token"] = env[ENV_TOKEN]
    return parse_config(data, "(environment)")


def load(explicit: str | None, env: Mapping[str, str]) -> tuple[Path, ClientConfig]:
    """Return the config path and the effective config (file plus environment)."""
    path = config_path(explicit, env)
    return path, apply_env(load_file(path), env)


def _toml_string(value: str) -> str:
    out = ['"']
    for ch in value:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04X}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def dump_toml(config: ClientConfig) -> str:
    """Render the config as TOML (four flat keys need no TOML writer dependency)."""
    lines = ["# agentctl client configuration (holds a secret: keep it mode 0600)"]
    if config.url is not None:
        lines.append(f"url = {_toml_string(config.url)}")
    if config.token is not None:
        lines.append(f"token = {_toml_string(config.token.get_secret_value())}")
    lines.append(f"verify_tls = {'true' if config.verify_tls else 'false'}")
    if config.ca_file is not None:
        lines.append(f"ca_file = {_toml_string(str(config.ca_file))}")
    return "\n".join(lines) + "\n"


def save(path: Path, config: ClientConfig) -> None:
    """Write the config atomically with mode 0600, creating its directory with mode 0700."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    # O_EXCL + explicit mode: the secret is never readable by others, not even briefly.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(dump_toml(config))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
