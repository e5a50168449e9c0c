"""Agent configuration: one TOML file, validated into frozen pydantic models.

An invalid file fails at start with the dotted key and the reason, for example
``limits.max_concurrent_commands: Input should be greater than 0``. No other module reads
files or environment variables for settings.

This module holds the whole (:class:`AgentConfig`) and reads the file; the tables are
grouped by what they configure: :mod:`.link` (the control plane, identity, grants,
backhaul), :mod:`.resources` (limits, spool, logging, audit) and :mod:`.access` (files,
tunnels, sudo, terminals, exec, SSH), on the base :class:`~.section.Section`.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from pydantic import Field, ValidationError

from fleetgate.agent.config.access import (
    ExecConfig,
    FilesConfig,
    SshConfig,
    SudoConfig,
    TunnelConfig,
    WebshConfig,
)
from fleetgate.agent.config.link import (
    BackhaulConfig,
    ControlPlaneConfig,
    GrantsConfig,
    IdentityConfig,
)
from fleetgate.agent.config.resources import AuditConfig, LimitsConfig, LoggingConfig, SpoolConfig
from fleetgate.agent.config.section import Section
from fleetgate.agent.errors import ConfigError
from fleetgate.shared.protocol.base import Labels


__all__ = ["DEFAULT_CONFIG_PATH", "AgentConfig", "load", "parse"]

DEFAULT_CONFIG_PATH = Path("/etc/fleetgate-agent/agent.toml")


class AgentConfig(Section):
    """The whole agent configuration."""

    control_plane: ControlPlaneConfig
    identity: IdentityConfig
    state_dir: Path = Path("/var/lib/fleetgate-agent")
    runtime_dir: Path = Path("/run/fleetgate-agent")
    """Holds ``status.sock``, the root-only socket ``fleetgate-agent status`` reads."""
    logs_dir: Path = Path("/var/log/fleetgate-agent")
    backhaul: BackhaulConfig = BackhaulConfig()
    limits: LimitsConfig = LimitsConfig()
    spool: SpoolConfig = SpoolConfig()
    logging: LoggingConfig = LoggingConfig()
    audit: AuditConfig = AuditConfig()
    grants: GrantsConfig = GrantsConfig()
    websh: WebshConfig = WebshConfig()
    files: FilesConfig = FilesConfig()
    sudo: SudoConfig = SudoConfig()
    tunnel: TunnelConfig = TunnelConfig()
    exec: ExecConfig = ExecConfig()

    labels: Labels = Field(default_factory=dict)
    """The server's labels (``[labels]`` table, ``role = "web"``), sent in every ``hello``;
    fan-outs select servers by them (``agentctl exec -l role=web``)."""

    ssh: SshConfig = SshConfig()

    @property
    def ssh_host_key_file(self) -> Path:
        """Where the SSH host key is kept."""
        return self.ssh.host_key_file or self.state_dir / "ssh_host_ed25519_key"

    @property
    def audit_file(self) -> Path:
        """Where the audit log is written."""
        return self.audit.file or self.logs_dir / "audit.log"

    @property
    def recordings_dir(self) -> Path:
        """Where terminal recordings are spooled until shipped."""
        return self.websh.recording_dir or self.state_dir / "recordings"

    @property
    def status_socket(self) -> Path:
        """The daemon's local status socket."""
        return self.runtime_dir / "status.sock"

    @property
    def sudo_socket(self) -> Path:
        """The sudo decision socket the approval plugin asks (root only)."""
        return self.runtime_dir / "sudo.sock"

    def read_key(self) -> str:
        """Read the server key from its file.

        Raises:
            ConfigError: the file is missing, empty, or readable by others.
        """
        path = self.identity.key_file
        try:
            st = path.stat()
            key = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"identity.key_file: cannot read {path}: {exc.strerror}") from exc
        if st.st_mode & 0o077:
            raise ConfigError(
                f"identity.key_file: {path} is accessible by group or others "
                f"(mode {st.st_mode & 0o777:o}); it must be 0600"
            )
        if not key:
            raise ConfigError(f"identity.key_file: {path} is empty")
        return key


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
