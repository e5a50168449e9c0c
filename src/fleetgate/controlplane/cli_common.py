"""What the ``controlplane`` commands share: their settings (``CONTROLPLANE_*`` with the
command-line flags over them), one-line output, and writing a secret to a file.

Secrets (tokens, server keys, passwords) are printed only when the operator asked for
them on stdout (``token create`` without ``--file``); never logged.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pydantic import ValidationError

from fleetgate.controlplane.config import ControlPlaneSettings
from fleetgate.shared.atomic import atomic_write
from fleetgate.shared.errors import FleetgateError


__all__ = ["SettingsError", "err", "out", "settings_from_args", "write_secret"]


def write_secret(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` with mode 0600 (created so, never world-readable)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, text, 0o600)


def out(text: str) -> None:
    """One line on stdout, flushed (a script may be reading it)."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def err(text: str) -> None:
    """One line on stderr, flushed."""
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


class SettingsError(FleetgateError):
    """Flags and ``CONTROLPLANE_*`` variables do not make valid settings (exit 2)."""


_FLAG_SETTINGS = {
    "db": "db_path",
    "database_url": "database_url",
    "host": "host",
    "port": "port",
    "tls_cert": "tls_cert",
    "tls_key": "tls_key",
}
"""Command-line flags and the settings they override (flags win over ``CONTROLPLANE_*``)."""


def settings_from_args(args: argparse.Namespace) -> ControlPlaneSettings:
    """The settings of this invocation.

    Raises:
        SettingsError: they are not valid (the message names each problem).
    """
    overrides: dict[str, object] = {}
    for flag, name in _FLAG_SETTINGS.items():
        value = getattr(args, flag, None)
        if value is not None:
            overrides[name] = value
    try:
        return ControlPlaneSettings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error['loc']) or 'settings'}: {error['msg']}"
            for error in exc.errors()
        )
        raise SettingsError(f"invalid settings: {problems}") from None
