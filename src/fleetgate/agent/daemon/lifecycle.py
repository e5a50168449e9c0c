"""The daemon's life: prepare the host (state directory, root's groups), open the spool,
run every component in one TaskGroup, and stop them.

Shutdown on SIGTERM or SIGINT happens in phases under a deadline: refuse new commands,
let running ones finish and their reports be confirmed (``limits.shutdown_grace``), then
cancel what is left (running commands are killed by process group) and close the link.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from pathlib import Path

import structlog

from fleetgate.agent.backhaul import ssl_context
from fleetgate.agent.config import AgentConfig
from fleetgate.agent.daemon.wiring import Components, build
from fleetgate.agent.errors import AgentError, StateDirError
from fleetgate.agent.exec import close_spawner
from fleetgate.agent.policy import GrantPolicy
from fleetgate.agent.spool import Snapshot, Spool


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


async def _serve(
    config: AgentConfig,
    key: str,
    grants: GrantPolicy,
    spool: Spool,
    leftovers: Snapshot,
    stop: asyncio.Event | None,
) -> None:
    parts = build(config, key, grants, spool, leftovers)
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
    parts: Components, config: AgentConfig, spool: Spool, stop: asyncio.Event
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


async def _shutdown_when(stop: asyncio.Event, parts: Components, config: AgentConfig) -> None:
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
