"""The whole agent configuration: every table, the paths derived from them, and the
server key's file."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

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


__all__ = ["AgentConfig"]


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
