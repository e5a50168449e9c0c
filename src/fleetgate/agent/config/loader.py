"""Reading the agent's TOML file into :class:`AgentConfig`, with errors that name the key."""

from __future__ import annotations

import tomllib
from pathlib import Path

from pydantic import ValidationError

from fleetgate.agent.config.agent import AgentConfig
from fleetgate.agent.errors import ConfigError


__all__ = ["DEFAULT_CONFIG_PATH", "load", "parse"]

DEFAULT_CONFIG_PATH = Path("/etc/fleetgate-agent/agent.toml")


def load(path: Path) -> AgentConfig:
    """Read and validate the configuration file.

    Raises:
        ConfigError: with the file, the dotted key and the reason for the first errors.
    """
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    return parse(raw, source=str(path))


def parse(raw: dict[str, object], *, source: str = "config") -> AgentConfig:
    """Validate an already-parsed mapping. Raises :class:`ConfigError` like :func:`load`."""
    try:
        return AgentConfig.model_validate(raw)
    except ValidationError as exc:
        lines = [
            f"{'.'.join(str(p) for p in err['loc']) or '(root)'}: {err['msg']}"
            for err in exc.errors()
        ]
        raise ConfigError(f"{source}: invalid configuration:\n  " + "\n  ".join(lines)) from exc
