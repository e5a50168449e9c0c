"""A throw-away PostgreSQL cluster for the tests: Debian's ``postgresql`` binaries, a data
directory in a temporary folder, run as the unprivileged ``postgres`` user (``initdb``
refuses root), listening on a free loopback port and on a socket in that folder.

Usage::

    with postgres_cluster() as pg:
        url = pg.create_database("fleetgate")   # postgresql+psycopg://postgres@127.0.0.1:PORT/fleetgate

or the session-scoped ``postgres`` fixture of ``tests/conftest.py``. The server is stopped
(``pg_ctl stop -m immediate``) and its folder removed when the block ends.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


__all__ = ["PostgresCluster", "PostgresUnavailable", "find_bin_dir", "postgres_cluster"]

RUN_AS = "postgres"
START_TIMEOUT = 60


class PostgresUnavailable(RuntimeError):
    """The machine has no PostgreSQL server binaries or no ``postgres`` user."""


def find_bin_dir() -> Path:
    """The newest ``/usr/lib/postgresql/<major>/bin`` holding ``initdb`` and ``pg_ctl``."""
    root = Path("/usr/lib/postgresql")
    majors = sorted(
        (p for p in root.glob("*/bin") if (p / "initdb").exists()),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    if not majors:
        raise PostgresUnavailable(
            "PostgreSQL server binaries not found (apt-get install postgresql)"
        )
    return majors[-1]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class PostgresCluster:
    """A running throw-away cluster; :meth:`create_database` gives a SQLAlchemy URL."""

    bin_dir: Path
    data_dir: Path
    socket_dir: Path
    port: int
    user: str = RUN_AS

    def url(self, database: str = "postgres") -> str:
        """The SQLAlchemy URL of ``database`` (psycopg 3 driver, trust auth on loopback)."""
        return f"postgresql+psycopg://{self.user}@127.0.0.1:{self.port}/{database}"

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run ``sql`` with ``psql`` over the cluster's socket; the output, unaligned."""
        result = subprocess.run(
            [str(self.bin_dir / "psql"), "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1",
             "-h", str(self.socket_dir), "-p", str(self.port), "-U", self.user,
             "-d", database, "-c", sql],
            capture_output=True, text=True, check=True, timeout=30,
        )  # fmt: skip
        return result.stdout

    def create_database(self, name: str | None = None) -> str:
        """Create a fresh database (a random name by default); return its URL."""
        name = name or f"t_{uuid.uuid4().hex[:16]}"
        self.psql(f'CREATE DATABASE "{name}"')
        return self.url(name)


def _as_postgres(argv: list[str], uid: int, gid: int) -> list[str]:
    return ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--init-groups", "--", *argv]


@contextmanager
def postgres_cluster() -> Iterator[PostgresCluster]:
    """Start a cluster in a new folder of the system's temporary directory (pytest's own
    ``tmp_path`` is private to root, and the server runs as ``postgres``) and stop it,
    removing the folder, when the block ends."""
    bin_dir = find_bin_dir()
    try:
        account = pwd.getpwnam(RUN_AS)
    except KeyError as exc:
        raise PostgresUnavailable(f"no {RUN_AS!r} user (apt-get install postgresql)") from exc
    root = Path(tempfile.mkdtemp(prefix="fleetgate-pg-"))
    data_dir, socket_dir = root / "data", root / "run"
    socket_dir.mkdir(parents=True, exist_ok=True)
    for path in (root, socket_dir):
        os.chown(path, account.pw_uid, account.pw_gid)
    uid, gid = account.pw_uid, account.pw_gid
    env = {"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8", "HOME": str(root)}
    subprocess.run(
        _as_postgres([str(bin_dir / "initdb"), "-D", str(data_dir), "-U", RUN_AS,
                      "--auth=trust", "-E", "UTF8", "--no-sync"], uid, gid),
        check=True, capture_output=True, env=env, timeout=START_TIMEOUT,
    )  # fmt: skip
    port = _free_port()
    options = (
        f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={socket_dir}"
        " -c fsync=off -c max_connections=300 -c shared_buffers=64MB"
    )
    subprocess.run(
        _as_postgres([str(bin_dir / "pg_ctl"), "-D", str(data_dir), "-o", options, "-w",
                      "-t", str(START_TIMEOUT), "-l", str(root / "server.log"), "start"], uid, gid),
        check=True, capture_output=True, env=env, timeout=START_TIMEOUT + 10,
    )  # fmt: skip
    try:
        yield PostgresCluster(bin_dir, data_dir, socket_dir, port)
    finally:
        subprocess.run(
            _as_postgres([str(bin_dir / "pg_ctl"), "-D", str(data_dir), "-m", "immediate", "stop"],
                         uid, gid),
            check=False, capture_output=True, env=env, timeout=START_TIMEOUT,
        )  # fmt: skip
        shutil.rmtree(root, ignore_errors=True)
