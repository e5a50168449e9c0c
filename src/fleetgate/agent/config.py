"""Agent configuration: one TOML file, validated into frozen pydantic models.

An invalid file fails at start with the dotted key and the reason, for example
``limits.max_concurrent_commands: Input should be greater than 0``. No other module reads
files or environment variables for settings.
"""

from __future__ import annotations

import base64
import binascii
import tomllib
from pathlib import Path
from typing import Annotated, Literal
from uuid import UUID

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

# pydantic_core's URL type, which pydantic's AnyUrl wraps: the same parsing and errors,
# without pydantic.networks, a module the agent would load for this type alone (0.2-0.3 MB
# of an idle agent's memory, which is held to 40 MB).
from pydantic_core import Url as AnyUrl

from fleetgate.agent.errors import ConfigError
from fleetgate.shared.protocol.base import Labels
from fleetgate.shared.protocol.limits import DEFAULT_MAX_MESSAGE_BYTES


__all__ = [
    "DEFAULT_CONFIG_PATH",
    "AgentConfig",
    "AuditConfig",
    "BackhaulConfig",
    "ControlPlaneConfig",
    "FilesConfig",
    "GrantsConfig",
    "IdentityConfig",
    "LimitsConfig",
    "LoggingConfig",
    "SpoolConfig",
    "SshConfig",
    "TunnelConfig",
    "WebshConfig",
    "load",
    "parse",
]

DEFAULT_CONFIG_PATH = Path("/etc/fleetgate-agent/agent.toml")


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ControlPlaneConfig(_Section):
    """Where the agent dials and how it checks who answers.

    ``url`` names one control plane (or the load balancer in front of its replicas);
    ``urls`` names several replicas, tried in turn: a failed dial or a lost link moves
    the agent to the next one (with the same backoff as one URL). Either key, or both
    (``url`` is then tried first).
    """

    url: AnyUrl
    """Base URL of the control plane, ``https://…`` (``http://`` only for loopback)."""
    urls: tuple[AnyUrl, ...] = ()
    """Every replica's base URL, in the order they are tried (``url`` first when given)."""
    verify_tls: bool = True
    """Verify the control plane's certificate. Turning this off is logged at every start."""
    ca_file: Path | None = None
    """PEM bundle to verify against instead of the system trust store."""

    @model_validator(mode="before")
    @classmethod
    def _url_from_urls(cls, data: object) -> object:
        # ``urls`` alone: the first is ``url`` (the URL shown in the status, used first).
        if isinstance(data, dict) and "url" not in data:
            urls = data.get("urls")
            if isinstance(urls, list | tuple) and urls:
                return {**data, "url": urls[0]}
        return data

    @field_validator("url")
    @classmethod
    def _http_or_https(cls, url: AnyUrl) -> AnyUrl:
        if url.scheme not in {"http", "https"}:
            raise ValueError("must be an http:// or https:// URL")
        return url

    @field_validator("urls")
    @classmethod
    def _all_http_or_https(cls, urls: tuple[AnyUrl, ...]) -> tuple[AnyUrl, ...]:
        for url in urls:
            cls._http_or_https(url)
        return urls

    @model_validator(mode="after")
    def _one_scheme(self) -> ControlPlaneConfig:
        # One TLS context serves every replica: mixing http and https would silently
        # send credentials in clear to some of them.
        schemes = {url.scheme for url in (self.url, *self.urls)}
        if len(schemes) > 1:
            raise ValueError("url and urls must all be http:// or all https://")
        return self

    @property
    def all_urls(self) -> tuple[str, ...]:
        """Every base URL (no trailing slash), ``url`` first, each once."""
        ordered = [str(self.url).rstrip("/"), *(str(u).rstrip("/") for u in self.urls)]
        return tuple(dict.fromkeys(ordered))

    @property
    def backhaul_url(self) -> str:
        """The websocket URL of the backhaul endpoint (on ``url``)."""
        return self.websocket_url("/ws/agent/backhaul/")

    def websocket_url(self, path: str, base: str | None = None) -> str:
        """The websocket URL of ``path`` (absolute, starting with ``/``) on the control
        plane at ``base`` (default ``url``)."""
        base = (base or str(self.url)).rstrip("/")
        scheme, rest = base.split("://", 1)
        return f"{'wss' if scheme == 'https' else 'ws'}://{rest}{path}"


class IdentityConfig(_Section):
    """The credentials issued at registration."""

    server_id: UUID
    key_file: Path
    """File holding the server key (mode 0600, owned by root)."""
    control_plane_key: str | None = None
    """The control plane's Ed25519 public key (base64 of 32 bytes), from registration's
    ``signing_public_key``. Without it gated operations are refused (see ``grants``)."""

    ssh_ca_key: str | None = None
    """The control plane's SSH certificate authority (OpenSSH public key line), from
    registration's ``ssh_ca_public_key``. Without it ``ssh`` channels are refused."""

    @field_validator("ssh_ca_key")
    @classmethod
    def _openssh_public_key(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = value.split()
        if len(parts) < 2 or parts[0] != "ssh-ed25519":
            raise ValueError("must be an OpenSSH ssh-ed25519 public key line")
        try:
            base64.b64decode(parts[1], validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("the key is not base64") from None
        return f"{parts[0]} {parts[1]}"

    @field_validator("control_plane_key")
    @classmethod
    def _ed25519_public_key(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            raw = base64.b64decode(value.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("must be base64") from None
        if len(raw) != 32:
            raise ValueError(f"must be a 32-byte Ed25519 public key, got {len(raw)} bytes")
        return value.strip()


class GrantsConfig(_Section):
    """How the agent checks the grants of gated operations."""

    allow_unsigned: bool = False
    """Development only: run commands that carry no grant (and, without a pinned key,
    run them unchecked). Logged as a warning at every start."""
    clock_skew: float = Field(default=60.0, ge=0, le=3600)
    """Seconds of clock difference tolerated at both ends of a grant's time window."""


class BackhaulConfig(_Section):
    """Keepalive and reconnect timing, in seconds."""

    keepalive_interval: float = Field(default=15.0, gt=0)
    """How often an application ping is sent when the link is otherwise idle."""
    keepalive_timeout: float = Field(default=20.0, gt=0)
    """A pong later than this declares the peer dead (so detection takes < 60 s)."""
    open_timeout: float = Field(default=10.0, gt=0)
    reconnect_min_delay: float = Field(default=0.5, gt=0)
    reconnect_max_delay: float = Field(default=60.0, gt=0)
    stable_after: float = Field(default=30.0, ge=0)
    """A connection that lived this long resets the backoff schedule."""


class LimitsConfig(_Section):
    """Bounds on work and memory."""

    max_concurrent_commands: int = Field(default=16, gt=0, le=4096)
    """Commands above this wait, in arrival order."""
    max_queued_commands: int = Field(default=10_000, gt=0)
    """Commands accepted but waiting for a slot; beyond this they are refused."""
    command_timeout: float = Field(default=1800.0, gt=0)
    """Default per-command timeout; the command's own ``timeout`` overrides it."""
    kill_grace: float = Field(default=5.0, ge=0)
    """Seconds between SIGTERM and SIGKILL when a command times out."""
    output_chunk_bytes: int = Field(default=4096, ge=256, le=1024 * 1024)
    output_flush_interval: float = Field(default=0.1, gt=0, le=10)
    result_cap_bytes: int = Field(default=1024 * 1024, ge=1024, le=16 * 1024 * 1024)
    """The final result keeps this many bytes of output: half head, half tail."""
    max_message_bytes: int = Field(default=DEFAULT_MAX_MESSAGE_BYTES, ge=64 * 1024)
    """Largest backhaul message accepted; larger ones are answered with an error."""
    max_frame_bytes: int = Field(default=4 * 1024 * 1024, ge=64 * 1024, le=64 * 1024 * 1024)
    """Largest frame accepted on a channel websocket (terminals, files, tunnels)."""
    max_channels: int = Field(default=1024, gt=0, le=65_536)
    """Open channels of every kind together; beyond this new ones are refused."""
    outbox_max_reports: int = Field(default=100_000, gt=0)
    """Unconfirmed reports kept; producers wait when it is full."""
    shutdown_grace: float = Field(default=20.0, ge=0)
    """On SIGTERM, running commands get this long to finish and their reports to be
    confirmed; keep it below systemd's TimeoutStopSec."""


class FilesConfig(_Section):
    """File transfers (``agentctl cp``/``edit``), performed as the session user."""

    enabled: bool = True
    """Serve ``files`` channels at all."""
    max_file_bytes: int = Field(default=1 << 40, gt=0)
    """Largest file uploaded or downloaded (and largest member of a directory)."""
    allowed_roots: tuple[Path, ...] | None = None
    """When set, only paths under these absolute directories can be read or written
    (checked after symlinks are resolved); the user's own permissions apply within."""
    chunk_bytes: int = Field(default=2 * 1024 * 1024, ge=64 * 1024, le=16 * 1024 * 1024)
    """Payload bytes per data frame sent by the agent (capped by ``limits.max_frame_bytes``).
    2 MiB, as agentctl's uploads: a 1 GiB download in 1 MiB frames cost 8-9 % more CPU
    across agentctl, control plane and agent (per-frame work in each)."""

    @field_validator("allowed_roots")
    @classmethod
    def _absolute(cls, roots: tuple[Path, ...] | None) -> tuple[Path, ...] | None:
        for root in roots or ():
            if not root.is_absolute() or ".." in root.parts:
                raise ValueError(f"{root} must be an absolute path without '..'")
        return roots


class SpoolConfig(_Section):
    """How long finished commands are remembered, to answer redeliveries (the oldest go
    first when any bound is exceeded; unconfirmed reports are never dropped)."""

    max_finished_commands: int = Field(default=100_000, gt=0)
    max_result_bytes: int = Field(default=256 * 1024 * 1024, ge=0)
    """Total size of the stored final results."""
    max_age: float = Field(default=14 * 24 * 3600.0, gt=0)
    """Seconds after which a finished command is forgotten."""


class LoggingConfig(_Section):
    """Log level and format (``auto`` is JSON unless stderr is a terminal)."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


class AuditConfig(_Section):
    """The append-only audit log of commands (JSON lines, mode 0600).

    Rotation is by size, in the agent itself (no logrotate needed, no lost lines when it
    rotates): when the file would exceed ``max_bytes`` it becomes ``audit.log.1``, older
    ones shift up, and beyond ``backups`` the oldest is removed.
    """

    enabled: bool = True
    file: Path | None = None
    """Default: ``audit.log`` in ``logs_dir``."""
    max_bytes: int = Field(default=10 * 1024 * 1024, ge=4096)
    backups: int = Field(default=5, ge=0, le=100)


def _port_range(value: object) -> tuple[int, int]:
    """``8080`` or ``"8080"`` -> (8080, 8080); ``"8000-8099"`` -> (8000, 8099)."""
    if isinstance(value, int) and not isinstance(value, bool):
        low = high = value
    elif isinstance(value, str):
        text = value.strip()
        low_text, sep, high_text = text.partition("-")
        try:
            low = int(low_text)
            high = int(high_text) if sep else low
        except ValueError:
            raise ValueError(f'{value!r} is not a port or a range such as "8000-8099"') from None
    elif isinstance(value, list | tuple) and len(value) == 2:
        low, high = (_port_range(v)[0] for v in value)
    else:
        raise ValueError('a port is a number or a range such as "8000-8099"')
    if not 1 <= low <= high <= 65535:
        raise ValueError(f"{value!r}: ports are 1..65535, low end first")
    return (low, high)


PortRange = Annotated[tuple[int, int], BeforeValidator(_port_range)]
"""An inclusive range of TCP ports; a single port is the range (p, p)."""


class TunnelConfig(_Section):
    """TCP port forwarding to this server's loopback (``agentctl tunnel``).

    Off unless enabled, and then only to the listed ports; the target is always a
    loopback address, never another host.
    """

    enabled: bool = False
    allowed_ports: tuple[PortRange, ...] = ()
    """Ports (``22``) or inclusive ranges (``"8000-8099"``) a tunnel may reach."""
    max_streams_per_tunnel: int = Field(default=256, gt=0, le=65_536)
    """TCP connections open at once through one tunnel; more are refused."""
    max_streams: int = Field(default=1024, gt=0, le=65_536)
    """TCP connections open at once through all tunnels together."""
    connect_timeout: float = Field(default=10.0, gt=0, le=300)
    """Seconds to wait for the target port to accept the connection."""
    read_bytes: int = Field(default=256 * 1024, ge=4096, le=1024 * 1024)
    """Largest read from the target, hence the largest frame the agent sends."""

    @model_validator(mode="after")
    def _total_covers_one(self) -> TunnelConfig:
        if self.max_streams_per_tunnel > self.max_streams:
            raise ValueError("max_streams_per_tunnel must not exceed max_streams")
        return self


class SudoConfig(_Section):
    """Sudo mediation (``docs/sudo.md``): the approval plugin asks the agent about every
    ``sudo``; calls from sessions the agent started follow their work session's patterns.

    ``unmanaged`` decides calls from anywhere else (an SSH login, cron): ``allow`` leaves
    them to sudoers as if the agent were not there (members of ``group`` excepted: their
    sudo right exists for agent sessions only); ``deny`` refuses them (locked-down fleets).
    """

    enabled: bool = True
    unmanaged: Literal["allow", "deny"] = "allow"
    group: str = Field(default="fleet-sudo", pattern=r"^[a-z_][a-z0-9_-]{0,31}$")
    """The group the sudoers drop-in lets use sudo (session users must be members)."""
    secure_path: str = Field(
        default="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        pattern=r"^/[^\x00\n]*$",
    )
    """Where bare command names of patterns are looked up (sudo's ``secure_path``)."""


class WebshConfig(_Section):
    """Interactive terminals (websh) and their recordings."""

    enabled: bool = True
    max_sessions: int = Field(default=64, gt=0, le=4096)
    """Terminals alive at once (attached or detached); more are refused."""
    detach_grace: float = Field(default=300.0, ge=0, le=7 * 24 * 3600)
    """Seconds a shell survives without a client, waiting for a reattach."""
    hangup_grace: float = Field(default=2.0, ge=0, le=60)
    """Seconds between SIGHUP and SIGKILL when a terminal ends."""
    replay_bytes: int = Field(default=64 * 1024, ge=1024, le=16 * 1024 * 1024)
    """Tail of the output kept while detached, replayed on reattach."""
    default_term: str = Field(default="xterm-256color", pattern=r"^[A-Za-z0-9._+-]{1,64}$")
    """``TERM`` when the client does not say."""
    recording_dir: Path | None = None
    """Where recordings are spooled (default: ``recordings`` in ``state_dir``)."""
    recording_max_bytes: int = Field(default=1024 * 1024 * 1024, ge=0)
    """Cap on all recordings on disk (running and waiting to be shipped)."""
    recording_full: Literal["stop", "refuse"] = "stop"
    """At the cap: ``stop`` recording (logged, the session goes on) or ``refuse`` (new
    terminals are refused and a running one is ended)."""


class ExecConfig(_Section):
    """``[exec]``: how commands run."""

    allowed_env: tuple[str, ...] = ()
    """Env names a command may set although ``fleetgate.shared.envpolicy`` denies them
    (``PATH``, ``LD_*``, interpreter variables). Default: none."""


class SshConfig(_Section):
    """SSH access through ``ssh`` channels (``docs/ssh.md``): an in-process SSH server per
    channel, no listening port; certificates from the control plane's CA only."""

    enabled: bool = True
    agent_forwarding: bool = False
    """``ssh -A``: not offered, so only ``false`` is valid (the request is refused and the
    client told why). A forwarded agent would let root on the server sign with the
    user's keys; each server gets its own certificate instead (``agentctl ssh-config``)."""
    x11_forwarding: bool = False
    """``ssh -X``: not offered (managed servers run no X11 clients); only ``false`` is
    valid."""
    remote_forwarding: bool = False
    """Allow ``ssh -R``: the agent listens on the server's loopback only (whatever address
    the client asks), a port below 1024 only for a root login, and carries each
    connection back to the client; the work session needs the ``tunnel`` scope
    (``fleetgate.agent.ssh.remote``)."""
    host_key_file: Path | None = None
    """The SSH host key (default ``ssh_host_ed25519_key`` in ``state_dir``, made at
    registration or first start, 0600)."""
    sftp_server: Path = Path("/usr/lib/openssh/sftp-server")
    """OpenSSH's ``sftp-server``, started as the user for the ``sftp`` subsystem."""

    @field_validator("agent_forwarding", "x11_forwarding")
    @classmethod
    def _not_offered(cls, on: bool) -> bool:
        if on:
            raise ValueError("not offered by this agent: only false is valid (docs/ssh.md)")
        return on

    login_timeout: float = Field(default=30.0, gt=0, le=600)
    """Seconds a client has to authenticate."""
    read_bytes: int = Field(default=256 * 1024, ge=4096, le=1024 * 1024)
    """Largest read from the SSH server's socket, hence the largest frame sent."""


class AgentConfig(_Section):
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
