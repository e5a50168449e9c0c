"""The configuration of the ways in: file transfers, tunnels, sudo mediation, terminals,
commands' environment and SSH, each off or bounded as its table says."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, field_validator, model_validator

from fleetgate.agent.config.section import Section


__all__ = [
    "ExecConfig",
    "FilesConfig",
    "PortRange",
    "SshConfig",
    "SudoConfig",
    "TunnelConfig",
    "WebshConfig",
]


class FilesConfig(Section):
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


class TunnelConfig(Section):
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


class SudoConfig(Section):
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


class WebshConfig(Section):
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


class ExecConfig(Section):
    """``[exec]``: how commands run."""

    allowed_env: tuple[str, ...] = ()
    """Env names a command may set although ``fleetgate.shared.envpolicy`` denies them
    (``PATH``, ``LD_*``, interpreter variables). Default: none."""


class SshConfig(Section):
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
