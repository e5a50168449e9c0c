"""Store functions on a real SQLite file, called synchronously (no event loop)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Connection, select

from fleetgate.controlplane.store import (
    command_delivery,
    commands,
    connect,
    reports as reports_store,
    servers,
    tables,
    transaction,
    users,
)
from fleetgate.controlplane.store.command_rows import NewCommand
from fleetgate.controlplane.store.commands import CancelOutcome
from fleetgate.controlplane.store.migrate import ALEMBIC_MARK, current_revision, head_revision
from fleetgate.controlplane.store.queries import CommandFilter
from fleetgate.controlplane.timeutil import from_us, iso, to_us
from fleetgate.shared.protocol import (
    CommandAcked,
    CommandDelivered,
    CommandFinished,
    CommandOutput,
    CommandReport,
)


S = 1_000_000
T0 = 1_705_314_645 * S


def _server(conn: Connection, name: str = "web-01") -> tuple[str, str]:
    with transaction(conn):
        created = servers.register_server(conn, name, now=T0)
    assert created is not None
    return created[0].id, created[1]


def _command(
    conn: Connection,
    server_id: str,
    *,
    line: str = "uname -a",
    scheduled_at: int = T0,
    added_at: int = T0,
    requested_by: int | None = None,
    sent: bool = False,
) -> str:
    cmd = NewCommand(
        id=str(uuid.uuid4()),
        server_id=server_id,
        shell="system",
        line=line,
        username="root",
        groupname="",
        env={"SECRET": "x"},
        timeout=None,
        requested_by=requested_by,
        added_at=added_at,
        scheduled_at=scheduled_at,
    )
    with transaction(conn):
        commands.insert_command(conn, cmd, sent_at=added_at if sent else None, server_name="web-01")
    return cmd.id


def test_pragmas(tmp_path: Path) -> None:
    conn = connect(tmp_path / "cp.db")
    assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
    assert conn.exec_driver_sql("PRAGMA secure_delete").scalar() == 1
    conn.close()
    conn.engine.dispose()
    assert (tmp_path / "cp.db").stat().st_mode & 0o777 == 0o600


def test_reconnect_keeps_schema(database_url: str) -> None:
    connect(database_url).close()
    c = connect(database_url)
    assert current_revision(c.engine) == head_revision()
    if c.dialect.name == "sqlite":
        assert c.exec_driver_sql("PRAGMA user_version").scalar() == ALEMBIC_MARK
    c.close()
    c.engine.dispose()


def _dump(conn: Connection) -> str:
    """Every value of every table, as text (what a stolen database would show)."""
    out: list[str] = []
    for table in tables.metadata.sorted_tables:
        out.extend(repr(tuple(row)) for row in conn.execute(select(table)))
    return "\n".join(out)


def test_timestamps_roundtrip() -> None:
    dt = datetime(2024, 1, 15, 10, 30, 44, 123456, tzinfo=UTC)
    assert from_us(to_us(dt)) == dt
    assert iso(to_us(dt)) == "2024-01-15T10:30:44.123456Z"
    assert to_us(dt.replace(tzinfo=None)) == to_us(dt)


def test_passwords_and_keys() -> None:
    stored = users.hash_password("s3cret")
    assert stored.startswith("scrypt$")
    assert "s3cret" not in stored
    assert users.verify_password("s3cret", stored)
    assert not users.verify_password("wrong", stored)
    assert not users.verify_password("s3cret", None)
    assert not users.verify_password("s3cret", "garbage")
    assert users.hash_password("s3cret") != stored  # per-user salt


def test_tokens_are_stored_hashed(conn: Connection) -> None:
    with transaction(conn):
        user = users.create_user(conn, "alice", now=T0)
        assert user is not None
        token, key = users.create_token(conn, kind="api", name="t", user_id=user.id, now=T0)
    assert key.startswith("fat_")
    dump = _dump(conn)
    assert key not in dump
    found = users.lookup_token(conn, key, now=T0)
    assert found is not None
    assert found[0].id == token.id
    assert found[1] is not None
    assert found[1].username == "alice"
    assert users.lookup_token(conn, key + "x", now=T0) is None


def test_a_user_reference_no_row_can_have_names_nobody(conn: Connection) -> None:
    # Found by the API fuzz test: 10**30 reached the driver, which refused the number
    # (OverflowError, a 500) instead of finding nobody.
    with transaction(conn):
        user = users.create_user(conn, "alice", now=T0)
    assert user is not None
    assert users.find_user(conn, user.id) == user
    assert users.find_user(conn, str(user.id)) == user
    assert users.find_user(conn, users.MAX_ID) is None
    for ref in (10**30, users.MAX_ID + 1, 0, -1, "9" * 5000, "\u00b2", "\u0661"):
        assert users.find_user(conn, ref) is None, ref


def test_expired_token_is_refused(conn: Connection) -> None:
    with transaction(conn):
        _t, key = users.create_token(
            conn, kind="service", name="s", user_id=None, service_name="ci", expires_at=T0, now=T0
        )
    assert users.lookup_token(conn, key, now=T0 - 1) is not None
    assert users.lookup_token(conn, key, now=T0) is None


def test_server_keys(conn: Connection) -> None:
    sid, key = _server(conn)
    assert key not in _dump(conn)
    assert servers.authenticate(conn, sid, key) is not None
    assert servers.authenticate(conn, sid, key[:-1]) is None
    assert servers.authenticate(conn, "not-a-uuid", key) is None
    assert servers.authenticate(conn, str(uuid.uuid4()), key) is None
    with transaction(conn):
        assert servers.register_server(conn, "web-01", now=T0) is None
    got = servers.get_server(conn, "web-01")
    assert got is not None
    assert got.id == sid
    assert servers.get_server(conn, sid) == got


def test_reports_are_idempotent(conn: Connection) -> None:
    sid, _ = _server(conn)
    cid = _command(conn, sid, sent=True)
    u = uuid.UUID(cid)
    at = datetime(2024, 1, 15, 10, 30, 44, 500000, tzinfo=UTC)
    reports: list[CommandReport] = [
        CommandDelivered(rid=1, command_id=u, delivered_at=at),
        CommandAcked(rid=2, command_id=u, acked_at=at),
        CommandOutput(rid=3, command_id=u, seq=0, data="a"),
        CommandOutput(rid=4, command_id=u, seq=1, data="b"),
        CommandFinished(
            rid=5,
            command_id=u,
            handled_at=at,
            elapsed_time=0.5,
            exit_code=0,
            success=True,
            result="ab",
        ),
    ]
    with transaction(conn):
        out = reports_store.apply_reports(conn, sid, reports, last_seen_at=T0)
    assert out.stored == [1, 2, 3, 4, 5]
    assert out.unknown == []
    assert out.changed == {cid}
    later = datetime(2024, 1, 15, 11, 0, tzinfo=UTC)
    again: list[CommandReport] = [
        CommandDelivered(rid=6, command_id=u, delivered_at=later),
        CommandOutput(rid=7, command_id=u, seq=1, data="changed"),
        CommandFinished(
            rid=8,
            command_id=u,
            handled_at=later,
            elapsed_time=9,
            exit_code=1,
            success=False,
            result="",
        ),
    ]
    with transaction(conn):
        out = reports_store.apply_reports(conn, sid, again, last_seen_at=T0)
    assert out.stored == [6, 7, 8]
    assert out.changed == set()
    row = commands.get_command(conn, cid)
    assert row is not None
    assert row.delivered_at == to_us(at)
    assert row.handled_at == to_us(at)
    assert row.exit_code == 0
    assert row.result == "ab"
    assert row.env == {}  # erased once finished
    count, chunks = commands.list_chunks(conn, cid, seq_gte=None, seq_lte=None, limit=10, offset=0)
    assert count == 2
    assert [c.content for c in chunks] == ["a", "b"]


def test_an_interrupted_result_after_a_power_cut_keeps_the_first(conn: Connection) -> None:
    """The agent sends a final report before its fsync; after a power cut it restarts
    with the command running and reports it interrupted: the result stored first stays."""
    sid, _ = _server(conn)
    cid = _command(conn, sid, sent=True)
    u = uuid.UUID(cid)
    at = datetime(2024, 1, 15, 10, 30, 44, tzinfo=UTC)
    done = CommandFinished(
        rid=7,
        command_id=u,
        handled_at=at,
        elapsed_time=0.01,
        exit_code=0,
        success=True,
        result="ok\n",
    )
    with transaction(conn):
        out = reports_store.apply_reports(conn, sid, [done], last_seen_at=T0)
    assert out.changed == {cid}
    interrupted = CommandFinished(
        rid=7,  # rids lost in the power cut are given again
        command_id=u,
        handled_at=at.replace(hour=11),
        elapsed_time=0.0,
        exit_code=-1,
        success=False,
        result="",
        error_phase="interrupted",
        message="the agent restarted while the command was running",
    )
    with transaction(conn):
        out = reports_store.apply_reports(conn, sid, [interrupted], last_seen_at=T0)
    assert out.stored == [7]  # confirmed (the agent forgets it), not stored
    assert out.changed == set()
    row = commands.get_command(conn, cid)
    assert row is not None
    assert (row.exit_code, row.success, row.result, row.error_phase) == (0, True, "ok\n", None)
    assert row.handled_at == to_us(at)


def test_report_for_another_servers_command_is_unknown(conn: Connection) -> None:
    sid, _ = _server(conn)
    other, _ = _server(conn, "web-02")
    cid = _command(conn, other, sent=True)
    missing = uuid.uuid4()
    reports: list[CommandReport] = [
        CommandOutput(rid=1, command_id=uuid.UUID(cid), seq=0, data="x"),
        CommandOutput(rid=2, command_id=missing, seq=0, data="x"),
    ]
    with transaction(conn):
        out = reports_store.apply_reports(conn, sid, reports, last_seen_at=T0)
    assert out.stored == []
    assert out.unknown == [(1, cid), (2, str(missing))]


def test_cancel(conn: Connection) -> None:
    sid, _ = _server(conn)
    queued = _command(conn, sid, scheduled_at=T0 + 60 * S)
    sent = _command(conn, sid, sent=True)
    with transaction(conn):
        assert commands.cancel_command(conn, queued, now=T0) == CancelOutcome.CANCELLED
        assert commands.cancel_command(conn, queued, now=T0) == CancelOutcome.CANCELLED
        assert commands.cancel_command(conn, sent, now=T0) == CancelOutcome.ALREADY_SENT
        assert commands.cancel_command(conn, str(uuid.uuid4()), now=T0) == CancelOutcome.NOT_FOUND
    with transaction(conn):
        assert command_delivery.claim_due(conn, [sid], now=T0 + 120 * S) == []
    assert command_delivery.next_due(conn, now=T0) is None


def test_claims(conn: Connection) -> None:
    sid, _ = _server(conn)
    later = _command(conn, sid, scheduled_at=T0 + 60 * S)
    sent = _command(conn, sid, added_at=T0 - 2 * S, scheduled_at=T0 - 2 * S, sent=True)
    running = _command(conn, sid, added_at=T0 - S, scheduled_at=T0 - S, sent=True)
    queued = _command(conn, sid)
    assert command_delivery.next_due(conn, now=T0) == T0 + 60 * S
    with transaction(conn):
        rows = command_delivery.claim_for_hello(conn, sid, now=T0, running=[running])
    assert [r.id for r in rows] == [sent, queued]
    assert all(r.sent_at is not None for r in rows)
    with transaction(conn):
        assert command_delivery.claim_due(conn, [sid], now=T0 + 30 * S) == []
        rows = command_delivery.claim_due(conn, [sid], now=T0 + 60 * S)
    assert [r.id for r in rows] == [later]
    assert command_delivery.next_due(conn, now=T0) is None


def test_list_filters_and_search(conn: Connection) -> None:
    sid, _ = _server(conn, "Web-Front")
    other, _ = _server(conn, "db-01")
    with transaction(conn):
        alice = users.create_user(conn, "Alice", now=T0)
    assert alice is not None
    a = _command(conn, sid, line="ÉCHO Hello", requested_by=alice.id)
    b = _command(conn, other, line="df -h", scheduled_at=T0 + 3600 * S, added_at=T0 + S)
    c = _command(conn, other, line="uptime", added_at=T0 + 2 * S, scheduled_at=T0 + 2 * S)

    def ids(flt: CommandFilter, visible_to: int | None = None) -> list[str]:
        count, rows = commands.list_commands(
            conn, flt, now=T0 + 10 * S, visible_to=visible_to, limit=100, offset=0
        )
        assert count == len(rows)
        return [r.id for r in rows]

    assert ids(CommandFilter()) == [b, c, a]
    assert ids(CommandFilter(search="web")) == [a]
    assert ids(CommandFilter(search="écho")) == [a]
    assert ids(CommandFilter(search="ALICE")) == [a]
    assert ids(CommandFilter(search="DF ")) == [b]
    assert ids(CommandFilter(search="%")) == []
    assert ids(CommandFilter(server=other)) == [b, c]
    assert ids(CommandFilter(requested_by=alice.id)) == [a]
    assert ids(CommandFilter(requested_by_isnull=True)) == [b, c]
    assert ids(CommandFilter(is_scheduled=True)) == [b]
    assert ids(CommandFilter(is_scheduled=False)) == [c, a]
    assert ids(CommandFilter(ordering="added_at")) == [a, b, c]
    assert ids(CommandFilter(), visible_to=alice.id) == [a]


def test_new_database_is_private(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "cp.db"
    connect(path).close()
    assert path.stat().st_mode & 0o777 == 0o600
