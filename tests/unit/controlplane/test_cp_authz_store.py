"""Storage of the authorization model: the v6 migration of existing tokens, and the
``user create --server-username`` CLI. Real SQLite files, no event loop."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

from sqlalchemy import select

from fleetgate.controlplane.acl import TokenAcl
from fleetgate.controlplane.store import connect, tables, transaction, users
from fleetgate.controlplane.store.migrate import ALEMBIC_MARK, current_revision, head_revision
from fleetgate.controlplane.store.schema import _MIGRATIONS


T0 = 1_705_314_645_000_000


def _at_version_5(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    for version in range(1, 6):
        for statement in _MIGRATIONS[version].split(";"):
            if statement.strip():
                conn.execute(statement)
    conn.execute("PRAGMA user_version = 5")
    return conn


def test_v6_gates_the_old_self_minted_tokens_and_keeps_acls(tmp_path: Path) -> None:
    path = tmp_path / "cp.db"
    old = _at_version_5(path)
    old.execute(
        "INSERT INTO users (id, username, is_superuser, created_at) VALUES "
        "(1, 'admin', 1, 0), (2, 'carol', 0, 0)"
    )
    rows = [
        ("a", "api", 1, None),
        ("b", "api", 2, None),
        ("c", "api", 1, json.dumps(["uname *"])),
        ("d", "login", 2, None),
    ]
    for token_id, kind, user_id, acl in rows:
        old.execute(
            "INSERT INTO tokens (id, key_hash, kind, name, user_id, command_acl, created_at) "
            "VALUES (?, ?, ?, 'x', ?, ?, 0)",
            (token_id, f"hash-{token_id}", kind, user_id, acl),
        )
    old.close()
    conn = connect(path)
    try:
        # The old migrations ran to 9, then Alembic took over from its baseline.
        assert conn.exec_driver_sql("PRAGMA user_version").scalar() == ALEMBIC_MARK
        assert current_revision(conn.engine) == head_revision()
        stored = conn.execute(select(tables.tokens)).mappings()
        found = {r["id"]: users.TokenRow.from_row(r) for r in stored}
        assert {k: t.gated for k, t in found.items()} == {
            "a": False,
            "b": True,
            "c": False,
            "d": True,
        }
        assert found["c"].acl == TokenAcl(command=("uname *",))
        assert found["a"].acl is None
        user = users.get_user(conn, 2)
        assert user is not None
        assert user.server_username is None
        with transaction(conn):
            mapped = users.set_server_username(conn, 2, "carol")
        assert mapped is not None
        assert mapped.server_username == "carol"
    finally:
        conn.close()


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fleetgate.controlplane", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_user_create_maps_a_server_username(tmp_path: Path) -> None:
    db = str(tmp_path / "cp.db")
    made = _cli("user", "create", "erin", "--server-username", "erin", "--db", db)
    assert made.returncode == 0, made.stderr
    for bad in ("root", "Not-Valid", "a b"):
        refused = _cli("user", "create", "x", "--server-username", bad, "--db", db)
        assert refused.returncode == 2
        assert "server-username" in refused.stderr
    conn = connect(db)
    try:
        found = users.get_user_by_username(conn, "erin")
        assert found is not None
        assert found[0].server_username == "erin"
        assert users.get_user_by_username(conn, "x") is None
    finally:
        conn.close()
