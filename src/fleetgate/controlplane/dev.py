"""``fleetgate-controlplane dev`` (what ``make run`` calls): a control plane and a local agent.

Creates (or reuses) ``<dir>``: the database, a superuser ``admin`` with an API token in
``<dir>/admin.token``, this machine registered as a server, the agent's files under
``<dir>/agent/`` and ``<dir>/agentctl.toml``. Then serves, spawns
``python -m fleetgate.agent run --config <dir>/agent/agent.toml`` (output in ``<dir>/agent.log``),
prints how to use agentctl once the agent is connected, and on Ctrl-C or SIGTERM stops
the agent (SIGTERM, then SIGKILL) and the server. Secrets only go to 0600 files.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import signal
import socket
import sys
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
import tomlkit

from fleetgate.controlplane.app import create_app
from fleetgate.controlplane.cli_common import write_secret
from fleetgate.controlplane.config import ControlPlaneSettings
from fleetgate.controlplane.grants import GrantSigner, key_path, load_or_create_key
from fleetgate.controlplane.hub import Hub
from fleetgate.controlplane.server import ControlPlaneServer, bind_socket, run_on_uvloop
from fleetgate.controlplane.store import (
    connect,
    servers as servers_store,
    transaction,
    users as users_store,
)
from fleetgate.controlplane.timeutil import now_us
from fleetgate.shared import logs
from fleetgate.shared.atomic import atomic_write


__all__ = ["DevEnvironment", "bootstrap", "run_dev"]

log = structlog.get_logger("fleetgate.controlplane.dev")

AGENT_STOP_TIMEOUT = 10.0


@dataclass(frozen=True)
class DevEnvironment:
    """What :func:`bootstrap` prepared."""

    directory: Path
    url: str
    server_id: str
    server_name: str
    agent_config: Path
    agentctl_config: Path
    token_file: Path
    password_file: Path
    """The console password of ``admin``."""


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


def bootstrap(directory: Path, url: str, db_path: Path) -> DevEnvironment:
    """Create or reuse the dev database and files (idempotent)."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    directory.chmod(0o700)
    agent_dir = directory / "agent"
    agent_dir.mkdir(mode=0o700, exist_ok=True)
    token_file = directory / "admin.token"
    password_file = directory / "admin.password"
    key_file = agent_dir / "server.key"
    name = socket.gethostname() or "localhost"
    now = now_us()
    conn = connect(db_path)
    try:
        with transaction(conn):
            found = users_store.get_user_by_username(conn, "admin")
            if found is None:
                admin = users_store.create_user(conn, "admin", is_superuser=True, now=now)
                assert admin is not None
            else:
                admin = found[0]
            token = _read(token_file)
            if token is None or users_store.lookup_token(conn, token, now=now) is None:
                _row, token = users_store.create_token(
                    conn, kind="api", name="dev", user_id=admin.id, now=now
                )
                write_secret(token_file, token + "\n")
            stored = users_store.get_user_by_username(conn, "admin")
            password = _read(password_file)
            if password is None or not users_store.verify_password(
                password, None if stored is None else stored[1]
            ):
                # The console logs in with a password; the dev one lives in a 0600 file.
                password = secrets.token_urlsafe(16)
                users_store.set_password(conn, admin.id, users_store.hash_password(password))
                write_secret(password_file, password + "\n")
            server = servers_store.get_server(conn, name)
            key = _read(key_file)
            if server is None:
                created = servers_store.register_server(conn, name, hostname=name, now=now)
                assert created is not None
                server, key = created
                write_secret(key_file, key + "\n")
            elif key is None or servers_store.authenticate(conn, server.id, key) is None:
                key = servers_store.rotate_key(conn, server.id)
                write_secret(key_file, key + "\n")
    finally:
        conn.close()
    # The agent pins the control plane's signing key, so it accepts only signed grants.
    signer = GrantSigner(load_or_create_key(key_path(db_path)))
    agent_config = agent_dir / "agent.toml"
    document = tomlkit.document()
    document.update(
        {
            "state_dir": str(agent_dir / "state"),
            "runtime_dir": str(agent_dir / "run"),
            "logs_dir": str(agent_dir / "logs"),
            "control_plane": {"url": url},
            "identity": {
                "server_id": server.id,
                "key_file": str(key_file),
                "control_plane_key": signer.public_key_b64,
            },
            # Development only: `agentctl tunnel` may reach any port of this machine's
            # loopback. An installed agent keeps tunnels off until its operator allows ports.
            "tunnel": {"enabled": True, "allowed_ports": ["1-65535"]},
        }
    )
    atomic_write(agent_config, tomlkit.dumps(document), 0o600)
    agentctl_config = directory / "agentctl.toml"
    write_secret(agentctl_config, tomlkit.dumps({"url": url, "token": token}))
    return DevEnvironment(
        directory=directory,
        url=url,
        server_id=server.id,
        server_name=server.name,
        agent_config=agent_config,
        agentctl_config=agentctl_config,
        token_file=token_file,
        password_file=password_file,
    )


def _out(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def run_dev(directory: Path, *, host: str = "127.0.0.1", port: int = 8000) -> int:
    """Run the dev environment until Ctrl-C or SIGTERM."""
    directory = directory.resolve()
    settings = ControlPlaneSettings(db_path=directory / "controlplane.db", host=host, port=port)
    logs.configure(settings.log_level, settings.log_format)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        sock = bind_socket(host, port)
    except OSError as exc:
        _out(f"error: cannot listen on {host}:{port}: {exc.strerror}")
        return 1
    real_port = int(sock.getsockname()[1])
    url_host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    url = f"http://{url_host}:{real_port}"
    env = bootstrap(directory, url, settings.db_path)
    try:
        return run_on_uvloop(_run(env, settings, sock))
    finally:
        sock.close()


async def _run(env: DevEnvironment, settings: ControlPlaneSettings, sock: socket.socket) -> int:
    app = create_app(settings)
    started = asyncio.Event()
    stop = asyncio.Event()
    server = ControlPlaneServer(
        app, settings, on_started=started.set, on_signal=lambda _: stop.set()
    )
    _out(f"control plane: {env.url} (admin token in {env.token_file})")
    _out(f"web console: {env.url}/ (user admin, password in {env.password_file})")
    async with asyncio.TaskGroup() as tg:
        serving = tg.create_task(server.serve(sockets=[sock]), name="uvicorn")
        await _first(started.wait(), serving)
        if serving.done():
            return 1
        hub: Hub = app.state.services.hub
        agent = await _spawn_agent(env)
        helpers = [tg.create_task(_announce(hub, env), name="announce")]
        if agent is not None:
            helpers.append(tg.create_task(_watch_agent(agent, env, stop), name="agent-watch"))
        await _first(stop.wait(), serving)
        for task in helpers:
            task.cancel()
        if agent is not None:
            await _stop_agent(agent)
        server.request_exit()
    return 0


async def _first(waiter: Coroutine[Any, Any, object], task: asyncio.Task[None]) -> None:
    """Wait until ``waiter`` completes or ``task`` is done."""
    other = asyncio.ensure_future(waiter)
    try:
        await asyncio.wait({other, task}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        other.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await other


async def _spawn_agent(env: DevEnvironment) -> asyncio.subprocess.Process | None:
    log_path = env.directory / "agent.log"
    try:
        with log_path.open("ab") as log_file:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "fleetgate.agent",
                "run",
                "--config",
                str(env.agent_config),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log_file,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
    except OSError as exc:
        log.error("dev.agent_spawn_failed", error=str(exc))
        _out(f"could not start the agent: {exc}")
        return None
    log.info("dev.agent_started", pid=proc.pid, log=str(log_path))
    return proc


async def _watch_agent(
    proc: asyncio.subprocess.Process, env: DevEnvironment, stop: asyncio.Event
) -> None:
    code = await proc.wait()
    if not stop.is_set():
        log.error("dev.agent_exited", code=code)
        _out(f"the agent exited with code {code}; see {env.directory / 'agent.log'}")


async def _announce(hub: Hub, env: DevEnvironment) -> None:
    await hub.registry.wait_for(env.server_id)
    _out(f"agent connected: {env.server_name}")
    bindir = Path(sys.executable).parent
    _out("in another terminal:")
    _out(f"  . {bindir / 'activate'}")
    _out(f"  export AGENTCTL_CONFIG={env.agentctl_config}")
    _out(f"  agentctl exec {env.server_name} -- id -un")
    _out(f"  agentctl exec ls          # history; API: {env.url}/api/events/commands/")
    _out(f"  agentctl websh {env.server_name}          # a terminal, recorded")
    _out(
        f"  agentctl cp ./file {env.server_name}:/tmp/   # and back: cp {env.server_name}:/tmp/file ."
    )
    _out(f"  agentctl tunnel {env.server_name} -l 8080 -r 80")
    _out("stop with Ctrl-C")


async def _stop_agent(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        async with asyncio.timeout(AGENT_STOP_TIMEOUT):
            await proc.wait()
    except TimeoutError:
        log.warning("dev.agent_kill", pid=proc.pid)
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
