"""The composition root: builds every component, owns them in one TaskGroup, stops them.

Shutdown on SIGTERM or SIGINT happens in phases under a deadline: refuse new commands,
let running ones finish and their reports be confirmed (``limits.shutdown_grace``), then
cancel what is left (running commands are killed by process group) and close the link.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import signal
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from fleetgate.agent.audit import AuditLog
from fleetgate.agent.backhaul import Backhaul, LinkState, Outbox, ssl_context
from fleetgate.agent.channels import ChannelRouter, LazyService
from fleetgate.agent.config import AgentConfig
from fleetgate.agent.dispatch import Dispatcher
from fleetgate.agent.errors import AgentError, ConfigError, StateDirError
from fleetgate.agent.exec import close_spawner
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


__all__ = ["adopt_root_groups", "prepare_state_dir", "run"]

log = structlog.get_logger(__name__)


class _Stop(Exception):
    """Raised inside the TaskGroup to end it after a graceful shutdown (not an error)."""


def prepare_state_dir(path: Path) -> None:
    """Create the state directory (0700) and prove it is writable.

    Raises:
        StateDirError: it cannot be created, or a file cannot be written and synced in it
            (read-only file system, full disk, wrong owner).
    """
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        probe = path / ".write-probe"
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, b"\0" * 4096)
            os.fsync(fd)
        finally:
            os.close(fd)
        probe.unlink()
    except OSError as exc:
        raise StateDirError(f"state_dir {path} is not usable: {exc.strerror or exc}") from exc


def adopt_root_groups() -> None:
    """As root, carry exactly root's own supplementary groups.

    Services often start with an empty group list; commands as root must run with root's
    groups, and when the daemon already has them the runner spawns without switching.
    """
    if os.geteuid() == 0:
        try:
            os.setgroups(os.getgrouplist("root", 0))
        except (OSError, KeyError) as exc:
            log.warning("agent.setgroups_failed", error=str(exc))


async def run(config: AgentConfig, *, stop: asyncio.Event | None = None) -> None:
    """Run the agent until ``stop`` is set or a signal arrives.

    Raises:
        ConfigError: the key file is unusable.
        StateDirError: the state directory is unusable.
        AuthRejected: the control plane refused this server's credentials.
    """
    key = config.read_key()
    ssl_context(config.control_plane)  # an unusable ca_file is a configuration error
    prepare_state_dir(config.state_dir)
    adopt_root_groups()
    if config.control_plane.url.scheme == "https" and not config.control_plane.verify_tls:
        log.warning("tls.verification_disabled", url=str(config.control_plane.url))

    grants = GrantPolicy.from_config(config)
    if grants.warning:
        log.warning("grants.unsafe_configuration", problem=grants.warning)
    # The spool (inbox and outbox on disk) is opened before anything can reach us, and
    # closed last, after the last report was written.
    spool, leftovers = await Spool.open(config.state_dir)
    try:
        await _serve(config, key, grants, spool, leftovers, stop)
    finally:
        close_spawner()  # every command was stopped with the components
        await spool.close()
    log.info("agent.stopped")


@dataclass
class _Components:
    """Everything the daemon runs, wired together (built by :func:`_build`)."""

    outbox: Outbox
    dispatcher: Dispatcher
    sudo_sessions: SudoSessions
    sudo_server: SudoDecisionServer | None
    service: ServiceRuntime
    channels: ChannelRouter
    websh: Terminals
    backhaul: Backhaul
    audit: AuditLog | None


def _build(
    config: AgentConfig, key: str, grants: GrantPolicy, spool: Spool, leftovers: Snapshot
) -> _Components:
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
    return _Components(
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


async def _serve(
    config: AgentConfig,
    key: str,
    grants: GrantPolicy,
    spool: Spool,
    leftovers: Snapshot,
    stop: asyncio.Event | None,
) -> None:
    parts = _build(config, key, grants, spool, leftovers)
    stop = stop or asyncio.Event()
    with contextlib.ExitStack() as cleanup:
        # Undone in reverse order, on every way out: signal handlers, then the service's
        # sockets and notifier, then the audit log.
        if parts.audit is not None:
            cleanup.callback(parts.audit.close)
        cleanup.callback(parts.service.close)
        parts.service.status.bind()
        if parts.sudo_server is not None:
            parts.sudo_server.bind()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
            cleanup.callback(loop.remove_signal_handler, signum)
        log.info("agent.starting", server_id=str(config.identity.server_id))
        try:
            await _run_components(parts, config, spool, stop)
        except* _Stop:
            pass
        except* AgentError as group:
            raise _first_of(group) from None


async def _run_components(
    parts: _Components, config: AgentConfig, spool: Spool, stop: asyncio.Event
) -> None:
    async with asyncio.TaskGroup() as tg:
        tg.create_task(spool.run(), name="spool")
        tg.create_task(parts.dispatcher.run(), name="dispatcher")
        tg.create_task(parts.channels.run(), name="channels")
        tg.create_task(parts.websh.run(), name="websh")
        tg.create_task(parts.backhaul.run(), name="backhaul")
        tg.create_task(parts.service.notifier.watchdog(), name="watchdog")
        tg.create_task(parts.service.status.serve(), name="status")
        if parts.sudo_server is not None:
            tg.create_task(parts.sudo_server.serve(), name="sudo")
        tg.create_task(_shutdown_when(stop, parts, config), name="shutdown")


def _first_of(group: BaseExceptionGroup[AgentError]) -> AgentError:
    """The first error of ``group``, raised as itself so the CLI maps it to an exit
    status; the others (components that failed at the same time) are logged, not lost."""
    first, *others = _leaves(group)
    for other in others:
        log.error("agent.component_failed", error=str(other), kind=type(other).__name__)
    return first


def _leaves(group: BaseExceptionGroup[AgentError]) -> list[AgentError]:
    return [
        leaf
        for exc in group.exceptions
        for leaf in (_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    ]


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


async def _shutdown_when(stop: asyncio.Event, parts: _Components, config: AgentConfig) -> None:
    dispatcher, channels, outbox = parts.dispatcher, parts.channels, parts.outbox
    await stop.wait()
    log.info("agent.stopping", grace=config.limits.shutdown_grace)
    parts.service.stopping(len(dispatcher.running()))
    dispatcher.stop_accepting()
    # Open channels (terminals, transfers, tunnels) end when the TaskGroup is cancelled
    # below: they have no result to wait for, and their clients see the close.
    channels.stop_accepting()
    try:
        async with asyncio.timeout(config.limits.shutdown_grace):
            await dispatcher.wait_idle()
            await outbox.drained()
    except TimeoutError:
        # Not lost: they are in the spool and go out first after the next start.
        log.warning("agent.shutdown_grace_exceeded", unconfirmed_reports_kept=len(outbox))
    raise _Stop
