"""Building the daemon's components and wiring them together: the outbox, the dispatcher,
sudo mediation, the service runtime, the channel kinds (files, tunnels and SSH loaded with
their first channel), terminals and the backhaul; and where sudo decisions and SSH
events go (the audit log, the work session's timeline through the outbox)."""

from __future__ import annotations

import functools
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import structlog

from fleetgate.agent.audit import AuditLog
from fleetgate.agent.backhaul import Backhaul, LinkState, Outbox
from fleetgate.agent.channels import ChannelRouter, LazyService
from fleetgate.agent.config import AgentConfig
from fleetgate.agent.dispatch import Dispatcher
from fleetgate.agent.errors import ConfigError
from fleetgate.agent.policy import GrantPolicy
from fleetgate.agent.spool import Inbox, PendingReports, Retention, Snapshot, Spool
from fleetgate.agent.ssh.hostkey import ensure_host_key
from fleetgate.agent.sudo import Decided, SudoDecisionServer, SudoSessions
from fleetgate.agent.sudo.elevation import ElevationPolicy
from fleetgate.agent.system import ServiceRuntime
from fleetgate.agent.terminals import Terminals
from fleetgate.shared.protocol import SshEvent, SudoDecided, WorkSessionEnded


if TYPE_CHECKING:
    # Imported by their loaders below, with their first channel (LazyService).
    from fleetgate.agent.files.service import FilesService
    from fleetgate.agent.ssh.service import SshService
    from fleetgate.agent.tunnel.policy import StreamBook
    from fleetgate.agent.tunnel.service import TunnelService


__all__ = ["Components", "build"]

log = structlog.get_logger(__name__)


@dataclass
class Components:
    """Everything the daemon runs, wired together (built by :func:`build`)."""

    outbox: Outbox
    dispatcher: Dispatcher
    sudo_sessions: SudoSessions
    sudo_server: SudoDecisionServer | None
    service: ServiceRuntime
    channels: ChannelRouter
    websh: Terminals
    backhaul: Backhaul
    audit: AuditLog | None


def build(
    config: AgentConfig, key: str, grants: GrantPolicy, spool: Spool, leftovers: Snapshot
) -> Components:
    """Every component, wired together; nothing runs and no lazy service loads yet."""
    pending = PendingReports()
    pending.restore(leftovers.reports, next_rid=leftovers.next_rid)
    if leftovers.reports or leftovers.active:
        log.info(
            "spool.recovered",
            unconfirmed_reports=len(leftovers.reports),
            unfinished_commands=len(leftovers.active),
            next_rid=pending.next_rid,
        )
    outbox = Outbox(max_reports=config.limits.outbox_max_reports, spool=spool, pending=pending)
    retention = Retention(
        max_entries=config.spool.max_finished_commands,
        max_bytes=config.spool.max_result_bytes,
        max_age=config.spool.max_age,
    )
    audit = _open_audit(config)
    sudo_sessions = SudoSessions()
    dispatcher = Dispatcher(
        config.limits,
        outbox=outbox,
        grants=grants,
        spool=spool,
        inbox=Inbox(retention=retention),
        leftovers=leftovers,
        audit=audit,
        sudo=sudo_sessions,
        elevation=ElevationPolicy(config.sudo.secure_path),
        allowed_env=config.exec.allowed_env,
        on_session_ended=lambda ended: _end_ssh_sessions(ssh, ended),
    )
    sudo_server = (
        SudoDecisionServer(
            config.sudo_socket,
            sudo_sessions,
            config.sudo,
            audit=audit,
            on_decided=lambda decided: _report_sudo(outbox, decided),
        )
        if config.sudo.enabled
        else None
    )
    service = ServiceRuntime(
        config, lambda: _details(backhaul.state, outbox, dispatcher, sudo_sessions)
    )
    channels = ChannelRouter(config, key=key, grants=grants, audit=audit)
    channels.register(LazyService("files", lambda: _files_service(config)))
    # Tunnel streams and SSH port forwards count against the same [tunnel] limits: one
    # book, made by whichever of the two services loads first.
    streams = functools.cache(lambda: _stream_book(config))
    channels.register(LazyService("tunnel", lambda: _tunnel_service(config, streams())))
    websh = Terminals(
        config,
        key,
        on_shell_started=lambda pid, claims, terminal_id: sudo_sessions.register(
            pid, claims, label=f"websh {terminal_id}"
        ),
        on_shell_ended=sudo_sessions.unregister,
    )
    channels.register(websh)
    ssh = LazyService(
        "ssh",
        lambda: _ssh_service(
            config, websh, lambda fields: _report_ssh(outbox, audit, fields), streams()
        ),
    )
    channels.register(ssh)
    ssh_host_key = _ssh_host_key(config)
    backhaul = Backhaul(
        config,
        key=key,
        outbox=outbox,
        handler=dispatcher,
        channels=channels,
        on_state=service.on_link_state,
        ssh_host_key=ssh_host_key,
    )
    return Components(
        outbox, dispatcher, sudo_sessions, sudo_server, service, channels, websh, backhaul, audit
    )


# The loaders of the kinds an idle agent does not need (see LazyService): each imports
# its service's modules only when the first channel of its kind opens.


def _files_service(config: AgentConfig) -> FilesService:
    from fleetgate.agent.files.service import FilesService

    return FilesService(config)


def _stream_book(config: AgentConfig) -> StreamBook:
    from fleetgate.agent.tunnel.policy import StreamBook

    return StreamBook(config.tunnel.max_streams_per_tunnel, config.tunnel.max_streams)


def _tunnel_service(config: AgentConfig, streams: StreamBook) -> TunnelService:
    from fleetgate.agent.tunnel.service import TunnelService

    return TunnelService(config.tunnel, streams)


def _ssh_service(
    config: AgentConfig,
    websh: Terminals,
    report: Callable[[dict[str, Any]], Awaitable[None]],
    streams: StreamBook,
) -> SshService:
    from fleetgate.agent.ssh.service import SshService

    return SshService(config, websh.service.manager, report=report, streams=streams)


def _end_ssh_sessions(ssh: LazyService[SshService], ended: WorkSessionEnded) -> int:
    """Disconnect the SSH connections of a work session that ended (none if SSH never
    served a channel: its service is not even loaded)."""
    service = ssh.loaded
    if service is None:
        return 0
    return service.end_work_session(ended.work_session, ended.status)


async def _report_sudo(outbox: Outbox, decided: Decided) -> None:
    """A decision about a work session goes to its timeline, through the outbox (durable,
    confirmed: none is lost)."""
    grant = decided.grant
    if grant is None or grant.work_session is None:
        return
    command_id = None
    if grant.label.startswith("command "):
        try:
            command_id = uuid.UUID(grant.label.removeprefix("command "))
        except ValueError:
            command_id = None
    call, verdict = decided.call, decided.verdict
    await outbox.add(
        lambda rid: SudoDecided(
            rid=rid,
            decision_id=uuid.uuid4(),
            work_session=grant.work_session or "",
            session=grant.label[:256],
            command_id=command_id,
            user=decided.caller.user[:64],
            command=call.command[:4096],
            argv=[a[:4096] for a in call.argv[:256]],
            allowed=verdict.allowed,
            code=verdict.code[:64],
            message=verdict.message[:4096],
            at=datetime.fromtimestamp(decided.at, UTC),
        )
    )


async def _report_ssh(outbox: Outbox, audit: AuditLog | None, fields: dict[str, Any]) -> None:
    """What a user did over SSH goes to the audit log, and to the work session's timeline
    through the outbox (durable, confirmed: none is lost)."""
    if audit is not None:
        audit.record(f"ssh.{fields['op']}", **{k: v for k, v in fields.items() if k != "op"})
    # A shell's event creates its terminal on the control plane, which the shell's
    # recording is uploaded to when it ends (a shell may end within milliseconds): it is
    # written at once, not with the next batch of timeline records.
    within = 0.0 if fields["op"] == "shell" else None
    await outbox.add(lambda rid: SshEvent(rid=rid, **fields), within=within)


def _ssh_host_key(config: AgentConfig) -> str | None:
    """The SSH host key's public line (made now if registration did not); ``None`` (and
    a warning) when it cannot be: ``ssh`` channels are then refused."""
    if not config.ssh.enabled:
        return None
    try:
        return ensure_host_key(config.ssh_host_key_file)
    except (OSError, ConfigError) as exc:
        log.warning("ssh.host_key_unavailable", error=str(exc))
        return None


def _open_audit(config: AgentConfig) -> AuditLog | None:
    if not config.audit.enabled:
        return None
    audit = AuditLog(
        config.audit_file, max_bytes=config.audit.max_bytes, backups=config.audit.backups
    )
    audit.open()
    return audit


def _details(
    link: LinkState, outbox: Outbox, dispatcher: Dispatcher, sudo: SudoSessions
) -> dict[str, object]:
    active = dispatcher.running()
    return {
        "connection": {
            "status": link.status,
            "connected_since": link.connected_since and link.connected_since.isoformat(),
            "last_error": link.last_error,
            "connects": link.connects,
            "rtt": link.rtt,
        },
        "unconfirmed_reports": len(outbox),
        "active_commands": len(active),
        "command_ids": [str(c) for c in active[:100]],
        "sudo_sessions": len(sudo),
    }
