"""Run the real control plane as a subprocess, for integration tests.

The helper bootstraps a fresh SQLite database through the control plane's own CLI
(``user create admin --superuser`` and ``token create --user admin --file``), then starts
``python -m fleetgate.controlplane serve --port 0 --port-file ...`` on loopback and waits for the port
file. Everything the subprocess prints goes to ``controlplane.log`` in the work directory.

Usage::

    with running_control_plane(tmp_path) as cp:
        server_id, key = cp.register_server("web-01")
        httpx.get(f"{cp.url}/api/auth/whoami/", headers=cp.auth_headers())

or the ``control_plane`` fixture of ``tests/integration/controlplane/conftest.py``.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import socket
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TypeVar

import httpx
from pydantic import BaseModel
from websockets.asyncio.client import ClientConnection, connect as ws_connect

from fleetgate.controlplane.store.engine import sqlite_url
from fleetgate.shared.protocol import (
    Confirm,
    Hello,
    ServerMessage,
    Welcome,
    decode_server_message,
    encode,
)
from tests.support.processes import end_process


__all__ = [
    "ControlPlaneProcess",
    "FakeAgent",
    "Server",
    "TlsFiles",
    "running_control_plane",
    "start_control_plane",
]

_M = TypeVar("_M", bound=BaseModel)

NODELAY = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
"""httpx leaves Nagle on; without this every request waits for a delayed ACK (~40 ms)."""
REPO_ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0

_live: set[ControlPlaneProcess] = set()


@dataclass(frozen=True)
class TlsFiles:
    """What ``serve --tls-cert --tls-key`` serves, and the CA clients verify it with."""

    cert: Path
    key: Path
    ca: Path


@dataclass(frozen=True)
class Server:
    """A registered server's credentials."""

    id: str
    name: str
    key: str


class ControlPlaneProcess:
    """A control plane subprocess serving one database on one loopback port.

    Attributes:
        url: base URL, ``http://127.0.0.1:PORT`` (no trailing slash).
        admin_token: an API token of the superuser ``admin``.
        db_path: the SQLite database file (on PostgreSQL: where the key files live).
        database_url: the database it serves (SQLite's file, or a PostgreSQL database).
        process: the running ``subprocess.Popen`` (replaced by :meth:`restart`).
        log_path: file receiving the subprocess's stdout and stderr.
    """

    def __init__(
        self,
        workdir: Path,
        db_path: Path,
        admin_token: str,
        env: Mapping[str, str],
        start_timeout: float = START_TIMEOUT,
        tls: TlsFiles | None = None,
    ) -> None:
        self.workdir = workdir
        self.tls = tls
        self.db_path = db_path
        self.database_url = env.get("CONTROLPLANE_DATABASE_URL") or sqlite_url(db_path)
        self.admin_token = admin_token
        self.log_path = workdir / "controlplane.log"
        self.port_file = workdir / "controlplane.port"
        self.port = 0
        self.url = ""
        self._env = dict(env)
        self._start_timeout = start_timeout
        self._log: IO[bytes] | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self.signing_public_key: str | None = None
        self.ssh_ca_public_key: str | None = None
        """The control plane's grant key, learnt from the last registration."""

    # -- lifecycle -------------------------------------------------------------------

    def start(self, port: int = 0) -> None:
        """Start ``serve`` on ``port`` (0: any free port) and wait until it listens."""
        if self.process is not None and self.process.poll() is None:
            raise RuntimeError("the control plane is already running")
        self.port_file.unlink(missing_ok=True)
        self._log = self.log_path.open("ab")
        self._log.write(f"\n--- serve --port {port} ---\n".encode())
        self._log.flush()
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "fleetgate.controlplane",
                "serve",
                "--db",
                str(self.db_path),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--port-file",
                str(self.port_file),
                *self._tls_flags(),
            ],
            cwd=REPO_ROOT,
            env=self._env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        _live.add(self)
        deadline = time.monotonic() + self._start_timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"the control plane exited with {self.process.returncode}:\n{self.log_tail()}"
                )
            text = _read_text(self.port_file)
            if text and text.endswith("\n"):
                self.port = int(text)
                break
            if time.monotonic() > deadline:
                self.kill()
                raise TimeoutError(f"the control plane did not start:\n{self.log_tail()}")
            time.sleep(0.02)
        self.url = f"{self.scheme}://127.0.0.1:{self.port}"

    @property
    def scheme(self) -> str:
        """``https`` when serving TLS, else ``http``."""
        return "http" if self.tls is None else "https"

    def _tls_flags(self) -> list[str]:
        if self.tls is None:
            return []
        return ["--tls-cert", str(self.tls.cert), "--tls-key", str(self.tls.key)]

    def kill(self) -> None:
        """SIGKILL the subprocess (a crash) and reap it."""
        end_process(self.process, timeout=STOP_TIMEOUT, crash=True)
        self._closed()

    def stop(self) -> None:
        """SIGTERM the subprocess and wait for a clean exit (SIGKILL after a deadline)."""
        proc = self.process
        end_process(proc, timeout=STOP_TIMEOUT, crash=False)
        self._closed()

    def restart(self, *, kill: bool = False) -> None:
        """Stop (or SIGKILL with ``kill=True``) and start again on the same db and port."""
        port = self.port
        if kill:
            self.kill()
        else:
            self.stop()
        self.start(port)

    def _closed(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None
        _live.discard(self)

    # -- helpers ---------------------------------------------------------------------

    def auth_headers(self, token: str | None = None) -> dict[str, str]:
        """``Authorization`` header for ``token`` (default: the admin token)."""
        return {"Authorization": f'token="{token or self.admin_token}"'}

    def client(self, token: str | None = None, timeout: float = 10.0) -> httpx.Client:
        """A sync httpx client on :attr:`url` authenticated with ``token`` (default admin)."""
        return httpx.Client(
            base_url=self.url,
            headers=self.auth_headers(token),
            timeout=timeout,
            transport=httpx.HTTPTransport(
                socket_options=NODELAY,
                verify=True if self.tls is None else ssl.create_default_context(cafile=self.tls.ca),
            ),
        )

    def register_server(self, name: str) -> tuple[str, str]:
        """Register a server through the HTTP API; return ``(server_id, key)``."""
        with self.client() as client:
            response = client.post("/api/servers/servers/register/", json={"name": name})
        if response.status_code != 201:
            raise RuntimeError(f"register {name}: {response.status_code} {response.text}")
        body = response.json()
        self.signing_public_key = str(body["signing_public_key"])
        self.ssh_ca_public_key = body.get("ssh_ca_public_key")
        return str(body["id"]), str(body["key"])

    def new_server(self, name: str | None = None) -> Server:
        """Register a server (default: a unique name) and return its credentials."""
        name = name or f"srv-{uuid.uuid4().hex[:12]}"
        server_id, key = self.register_server(name)
        return Server(server_id, name, key)

    @property
    def backhaul_url(self) -> str:
        """The websocket URL agents dial."""
        ws = "ws" if self.tls is None else "wss"
        return f"{ws}://127.0.0.1:{self.port}/ws/agent/backhaul/"

    def log_tail(self, max_bytes: int = 8000) -> str:
        """The end of the subprocess log, for failure messages."""
        try:
            data = self.log_path.read_bytes()
        except OSError:
            return ""
        return data[-max_bytes:].decode("utf-8", "replace")


_database: Callable[[], str] | None = None


@contextmanager
def databases(factory: Callable[[], str] | None) -> Iterator[None]:
    """Within the block, every control plane started without a ``database_url`` serves a
    fresh database from ``factory`` (``None``: its SQLite file); how the test suites run
    the same tests on both backends (``tests/support/database.py``)."""
    global _database
    previous, _database = _database, factory
    try:
        yield
    finally:
        _database = previous


def start_control_plane(
    workdir: Path,
    *,
    env: Mapping[str, str] | None = None,
    start_timeout: float = START_TIMEOUT,
    tls: TlsFiles | None = None,
    database_url: str | None = None,
) -> ControlPlaneProcess:
    """Bootstrap a database in ``workdir`` and start a control plane on a free port.

    ``env`` adds environment variables to the subprocess, for example
    ``{"CONTROLPLANE_AGENT_IDLE_TIMEOUT": "1"}``; ``tls`` serves ``https://`` with that
    certificate (see ``tests/support/tls.py``); ``database_url`` a database other than
    the SQLite file in ``workdir`` (default: from :func:`databases`, if any). The caller
    must :meth:`stop` or :meth:`kill` it (or use :func:`running_control_plane`).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    db_path = workdir / "controlplane.db"
    token_file = workdir / "admin.token"
    url_file = workdir / "database.url"
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    if database_url is None and "CONTROLPLANE_DATABASE_URL" not in full_env:
        # Restarting in the same folder finds the same database again.
        database_url = _read_text(url_file).strip() or (None if _database is None else _database())
    if database_url is not None:
        url_file.write_text(database_url + "\n", encoding="utf-8")
        full_env["CONTROLPLANE_DATABASE_URL"] = database_url
    full_env.setdefault("CONTROLPLANE_LOG_FORMAT", "json")
    log_path = workdir / "controlplane.log"
    if not token_file.exists():
        _bootstrap(
            ["user", "create", "admin", "--superuser", "--db", str(db_path)], full_env, log_path
        )
        _bootstrap(
            [
                *("token", "create", "--user", "admin", "--name", "tests"),
                *("--file", str(token_file), "--db", str(db_path)),
            ],
            full_env,
            log_path,
        )
    admin_token = token_file.read_text(encoding="utf-8").strip()
    cp = ControlPlaneProcess(workdir, db_path, admin_token, full_env, start_timeout, tls)
    cp.start(0)
    return cp


@contextmanager
def running_control_plane(
    workdir: Path,
    *,
    env: Mapping[str, str] | None = None,
    tls: TlsFiles | None = None,
    database_url: str | None = None,
) -> Iterator[ControlPlaneProcess]:
    """Context manager around :func:`start_control_plane` that always kills it at the end."""
    cp = start_control_plane(workdir, env=env, tls=tls, database_url=database_url)
    try:
        yield cp
    finally:
        cp.stop()


def _bootstrap(args: list[str], env: Mapping[str, str], log_path: Path) -> None:
    with log_path.open("ab") as log:
        log.write(f"--- {' '.join(args[:3])} ---\n".encode())
        log.flush()
        result = subprocess.run(
            [sys.executable, "-m", "fleetgate.controlplane", *args],
            cwd=REPO_ROOT,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            timeout=START_TIMEOUT,
            check=False,
        )
    if result.returncode != 0:
        tail = log_path.read_bytes()[-4000:].decode("utf-8", "replace")
        raise RuntimeError(f"controlplane {' '.join(args[:2])} failed:\n{tail}")


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError:
        return ""


@atexit.register
def _kill_leftovers() -> None:
    for cp in list(_live):
        cp.kill()


# -- a fake agent speaking the backhaul protocol ---------------------------------------


class FakeAgent:
    """A real websocket client that speaks the backhaul protocol through the codec.

    Messages that :meth:`expect` skips are kept in :attr:`skipped` (in order).
    """

    def __init__(self, ws: ClientConnection, server_id: str) -> None:
        self.ws = ws
        self.server_id = server_id
        self.skipped: list[ServerMessage] = []
        self._rid = 0

    @classmethod
    async def connect(
        cls,
        cp: ControlPlaneProcess,
        server_id: str,
        key: str,
        *,
        hello: bool = True,
        running: Iterable[uuid.UUID] = (),
        features: Iterable[str] = (),
        timeout: float = 10.0,
    ) -> FakeAgent:
        """Dial the backhaul; with ``hello`` send it and wait for ``welcome``."""
        ws = await ws_connect(
            cp.backhaul_url,
            additional_headers={"Authorization": f'id="{server_id}", key="{key}"'},
            max_size=None,
            max_queue=None,
            open_timeout=timeout,
            close_timeout=2,
            ping_interval=None,
        )
        agent = cls(ws, server_id)
        if hello:
            hello_message = Hello(
                agent_version="test",
                hostname="fake",
                running=list(running),
                features=list(features),
            )
            await agent.send(hello_message)
            await agent.expect(Welcome, timeout)
        return agent

    def next_rid(self) -> int:
        """A fresh report id (increasing)."""
        self._rid += 1
        return self._rid

    async def send(self, message: BaseModel | str | bytes) -> None:
        """Send a model (encoded with the codec) or a raw frame."""
        await self.ws.send(encode(message) if isinstance(message, BaseModel) else message)

    async def recv(self, timeout: float = 10.0) -> ServerMessage:
        """The next frame from the control plane, decoded."""
        async with asyncio.timeout(timeout):
            frame = await self.ws.recv()
        return decode_server_message(frame)

    async def expect(self, kind: type[_M], timeout: float = 10.0) -> _M:
        """The next message of class ``kind`` (others are kept in :attr:`skipped`)."""
        async with asyncio.timeout(timeout):
            while True:
                message = await self.recv(timeout)
                if isinstance(message, kind):
                    return message
                self.skipped.append(message)

    async def confirmed(self, rids: Iterable[int], timeout: float = 10.0) -> set[int]:
        """Wait until every rid in ``rids`` was confirmed; return all confirmed rids."""
        wanted = set(rids)
        seen: set[int] = set()
        async with asyncio.timeout(timeout):
            while not wanted <= seen:
                seen.update((await self.expect(Confirm, timeout)).rids)
        return seen

    async def close(self) -> None:
        """Close the connection."""
        await self.ws.close()
