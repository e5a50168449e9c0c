"""Agent configuration: one TOML file, validated into frozen pydantic models.

An invalid file fails at start with the dotted key and the reason, for example
``limits.max_concurrent_commands: Input should be greater than 0``. No other module reads
files or environment variables for settings.

The tables are grouped by what they configure: :mod:`link` (the control plane, identity,
grants, backhaul), :mod:`resources` (limits, spool, logging, audit) and :mod:`access`
(files, tunnels, sudo, terminals, exec, SSH); :mod:`agent` holds the whole and
:mod:`loader` reads the file.
"""

from fleetgate.agent.config.access import (
    ExecConfig,
    FilesConfig,
    SshConfig,
    SudoConfig,
    TunnelConfig,
    WebshConfig,
)
from fleetgate.agent.config.agent import AgentConfig
from fleetgate.agent.config.link import (
    BackhaulConfig,
    ControlPlaneConfig,
    GrantsConfig,
    IdentityConfig,
)
from fleetgate.agent.config.loader import DEFAULT_CONFIG_PATH, load, parse
from fleetgate.agent.config.resources import AuditConfig, LimitsConfig, LoggingConfig, SpoolConfig


__all__ = [
    "DEFAULT_CONFIG_PATH",
    "AgentConfig",
    "AuditConfig",
    "BackhaulConfig",
    "ControlPlaneConfig",
    "ExecConfig",
    "FilesConfig",
    "GrantsConfig",
    "IdentityConfig",
    "LimitsConfig",
    "LoggingConfig",
    "SpoolConfig",
    "SshConfig",
    "SudoConfig",
    "TunnelConfig",
    "WebshConfig",
    "load",
    "parse",
]
