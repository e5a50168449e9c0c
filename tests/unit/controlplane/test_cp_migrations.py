"""Migrations and the database URL: Alembic's schema is the tables' one on both backends,
an existing SQLite database (schema version 9, made as the control plane before Alembic
made it) migrates forward keeping its data, and a bad URL, an unreachable server or a
newer schema is one clear line without the password. Real SQLite files and a real
PostgreSQL cluster, no event loop."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import select

from fleetgate.controlplane.config import ControlPlaneSettings
from fleetgate.controlplane.store import (
    InvalidDatabaseUrl,
    StoreError,
    commands,
    connect,
    servers,
    tables,
    transaction,
    users,
    worksessions,
)
from fleetgate.controlplane.store.engine import parse_url, safe_url
from fleetgate.controlplane.store.migrate import (
    ALEMBIC_MARK,
    HEAD,
    current_revision,
    head_revision,
)
from fleetgate.controlplane.store.schema import (
    _MIGRATIONS,
    SCHEMA_VERSION,
    migrate as legacy_migrate,
)
from tests.support.postgres import PostgresCluster


T0 = 1_705_314_645_000_000
SECRET = "s3cret-pw"


def test_head_names_the_newest_revision() -> None:
    # A new revision updates HEAD too, or every start would load Alembic for nothing.
    assert head_revision() == HEAD


def test_alembic_schema_is_the_tables_schema(database_url: str) -> None:
    conn = connect(database_url)
    try:
        diff = compare_metadata(MigrationContext.configure(conn), tables.metadata)
        assert diff == []
        assert current_revision(conn.engine) == head_revision()
    finally:
        conn.close()


def test_upgrade_twice_changes_nothing(database_url: str) -> None:
    conn = connect(database_url)
    with transaction(conn):
        assert users.create_user(conn, "alice", now=T0) is not None
    conn.close()
    conn = connect(database_url)
    try:
        assert [u.username for u in users.list_users(conn)] == ["alice"]
    finally:
        conn.close()


def _version_9_database(path: Path) -> str:
    """A database as the control plane before Alembic made and filled it: its own
    migrations (PRAGMA user_version 9), rows written with its SQL."""
    old = sqlite3.connect(path, isolation_level=None)
    legacy_migrate(old)
    assert old.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    old.execute(
        "INSERT INTO users (username, email, is_superuser, created_at) VALUES "
        "('admin', 'a@example.org', 1, ?), ('carol', '', 0, ?)",
        (T0, T0),
    )
    old.execute(
        "INSERT INTO servers (id, name, key_hash, registered_at, labels) "
        "VALUES ('6f1c1c7e-8a0e-4a53-9d5e-2f1f3d0f4b10', 'web-01', 'h', ?, ?)",
        (T0, json.dumps({"env": "prod"})),
    )
    old.execute(
        "INSERT INTO commands (id, server_id, shell, line, username, env, requested_by, "
        "added_at, scheduled_at, sudo) VALUES ('c1', '6f1c1c7e-8a0e-4a53-9d5e-2f1f3d0f4b10', "
        "'system', 'uname -a', 'root', '{\"A\": \"1\"}', 2, ?, ?, 1)",
        (T0, T0),
    )
    old.execute(
        "INSERT INTO work_sessions (id, description, status, scopes, servers, assigned_user, "
        "starts_at, expires_at, added_at, updated_at) VALUES ('w1', 'fix', 'pending', "
        "'[\"command\"]', '[\"6f1c1c7e-8a0e-4a53-9d5e-2f1f3d0f4b10\"]', 2, ?, ?, ?, ?)",
        (T0, T0 + 3600 * 10**6, T0, T0),
    )
    old.close()
    return str(path)


def test_a_version_9_sqlite_database_migrates_forward_with_its_data(tmp_path: Path) -> None:
    path = _version_9_database(tmp_path / "cp.db")
    conn = connect(path)
    try:
        assert conn.exec_driver_sql("PRAGMA user_version").scalar() == ALEMBIC_MARK
        assert current_revision(conn.engine) == head_revision()
        # Same tables, columns and indexes. (SQLite's reflection reads the old inline
        # "REFERENCES ... ON DELETE" without its action, the old text keys as nullable,
        # REAL as another type name: the cascade itself is checked below.)
        shape = {"add_table", "remove_table", "add_column", "remove_column"}
        shape |= {"add_index", "remove_index"}
        diff = compare_metadata(MigrationContext.configure(conn), tables.metadata)
        assert [d for d in diff if isinstance(d, tuple) and d[0] in shape] == []
        assert [u.username for u in users.list_users(conn)] == ["admin", "carol"]
        server = servers.get_server(conn, "web-01")
        assert server is not None
        assert server.labels == {"env": "prod"}
        command = commands.get_command(conn, "c1")
        assert command is not None
        assert (command.line, command.env, command.sudo) == ("uname -a", {"A": "1"}, True)
        assert command.requester_username == "carol"
        with transaction(conn):
            session = worksessions.load_settled(conn, "w1", now=T0)
            # AUTOINCREMENT goes on after the old rows: ids are never reused.
            dave = users.create_user(conn, "dave", now=T0)
        assert session is not None
        assert session.server_ids == ("6f1c1c7e-8a0e-4a53-9d5e-2f1f3d0f4b10",)
        assert dave is not None
        assert dave.id == 3
        with transaction(conn):
            assert servers.delete_server(conn, server.id)
        assert commands.get_command(conn, "c1") is None  # ON DELETE CASCADE kept
    finally:
        conn.close()
    # Opened again: already under Alembic, nothing runs twice.
    again = connect(path)
    try:
        assert [u.username for u in users.list_users(again)] == ["admin", "carol", "dave"]
    finally:
        again.close()


def test_an_older_sqlite_database_runs_its_old_migrations_first(tmp_path: Path) -> None:
    path = tmp_path / "cp.db"
    old = sqlite3.connect(path, isolation_level=None)
    for version in (1, 2, 3):
        for statement in _MIGRATIONS[version].split(";"):
            if statement.strip():
                old.execute(statement)
    old.execute("PRAGMA user_version = 3")
    old.execute("INSERT INTO users (username, created_at) VALUES ('old', ?)", (T0,))
    old.close()
    conn = connect(path)
    try:
        assert current_revision(conn.engine) == head_revision()
        [user] = users.list_users(conn)
        assert (user.username, user.is_active, user.server_username) == ("old", True, None)
    finally:
        conn.close()


def test_tables_without_a_schema_version_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "cp.db"
    old = sqlite3.connect(path, isolation_level=None)
    old.execute("CREATE TABLE users (id INTEGER PRIMARY KEY)")
    old.close()
    with pytest.raises(StoreError, match="no schema version"):
        connect(path)


def test_a_newer_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "cp.db"
    old = sqlite3.connect(path, isolation_level=None)
    old.execute("CREATE TABLE t (x)")
    old.execute(f"PRAGMA user_version = {ALEMBIC_MARK + 5}")
    old.close()
    with pytest.raises(StoreError, match="newer than this control plane"):
        connect(path)


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("not a url", "not a URL"),
        (f"mysql://u:{SECRET}@localhost/db", "unsupported database 'mysql'"),
        (f"postgresql://u:{SECRET}@localhost", "name the database"),
        ("sqlite://", "needs a file"),
    ],
)
def test_bad_urls_are_refused_without_the_password(url: str, says: str) -> None:
    with pytest.raises(InvalidDatabaseUrl, match=says) as refused:
        parse_url(url)
    assert SECRET not in str(refused.value)
    with pytest.raises(ValueError, match=says) as invalid:
        ControlPlaneSettings(database_url=url)
    assert SECRET not in str(invalid.value)


def test_safe_url_masks_the_password() -> None:
    url = f"postgresql+psycopg://fleet:{SECRET}@db.example:5432/fleet"
    assert SECRET not in safe_url(url)
    assert safe_url(url) == "postgresql+psycopg://fleet:***@db.example:5432/fleet"
    assert parse_url("postgresql://u@h/d").drivername == "postgresql+psycopg"


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fleetgate.controlplane", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_serve_and_db_upgrade_say_one_line_when_the_server_is_unreachable(
    postgres: PostgresCluster, tmp_path: Path
) -> None:
    # A port nobody listens on (the cluster's own port plus one is free: it only takes one).
    unreachable = f"postgresql+psycopg://fleet:{SECRET}@127.0.0.1:{postgres.port + 1}/fleet"
    missing = postgres.url("no_such_database")
    for url in (unreachable, missing):
        for args in (
            ["db", "upgrade", "--database-url", url],
            ["serve", "--port", "0", "--db", str(tmp_path / "k.db"), "--database-url", url],
        ):
            out = _cli(*args)
            assert out.returncode == 78, out.stderr
            lines = out.stderr.strip().splitlines()
            assert len(lines) == 1, out.stderr
            assert lines[0].startswith("error: cannot use the database postgresql+psycopg://")
            assert SECRET not in out.stderr + out.stdout
    assert "no_such_database" in _cli("db", "upgrade", "--database-url", missing).stderr


def test_db_upgrade_migrates_and_says_so(postgres: PostgresCluster) -> None:
    url = postgres.create_database()
    first = _cli("db", "upgrade", "--database-url", url)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip().endswith(f"revision none -> {head_revision()}")
    second = _cli("db", "upgrade", "--database-url", url)
    assert second.stdout.strip().endswith(f"revision {head_revision()} -> {head_revision()}")
    conn = connect(url)
    try:
        assert conn.execute(select(tables.users)).all() == []
    finally:
        conn.close()
