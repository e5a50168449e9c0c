"""``sudo.decision`` reports: one timeline item per decision, whatever the resends."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

from sqlalchemy import Connection, select

from fleetgate.controlplane.store import reports as reports_store, servers, tables, transaction
from fleetgate.shared.protocol import SudoDecided


T0 = 1_705_314_645 * 1_000_000


def _setup(conn: Connection) -> tuple[str, str]:
    with transaction(conn):
        created = servers.register_server(conn, "web-01", now=T0)
        assert created is not None
        server_id = created[0].id
        conn.execute(
            tables.work_sessions.insert().values(
                id="ws1",
                description="x",
                status="active",
                scopes=json.dumps(["sudo"]),
                servers=json.dumps([server_id]),
                starts_at=T0,
                expires_at=T0 + 1,
                added_at=T0,
                updated_at=T0,
            )
        )
    return server_id, "ws1"


def _report(rid: int, decision: uuid.UUID, work_session: str = "ws1") -> SudoDecided:
    return SudoDecided(
        rid=rid,
        decision_id=decision,
        work_session=work_session,
        session="websh t1",
        user="alice",
        command="/usr/bin/rm",
        argv=["rm", "-rf", "/x"],
        allowed=False,
        code="sudo_pattern_not_allowed",
        message="no",
        at=datetime(2024, 1, 15, tzinfo=UTC),
    )


def _items(conn: Connection) -> list[dict[str, object]]:
    events = tables.work_session_events
    rows = conn.execute(select(events.c.data).where(events.c.type == "sudo"))
    return [json.loads(data) for (data,) in rows]


def test_stored_once_and_always_confirmed(conn: Connection) -> None:
    server_id, _ = _setup(conn)
    decision = uuid.uuid4()
    for rid in (1, 1, 2):  # a resend after a reconnect, then the same decision again
        with transaction(conn):
            out = reports_store.apply_reports(
                conn, server_id, [_report(rid, decision)], last_seen_at=T0
            )
        assert out.stored == [rid]
        assert out.unknown == []
    items = _items(conn)
    assert len(items) == 1
    assert items[0]["code"] == "sudo_pattern_not_allowed"
    assert items[0]["argv"] == ["rm", "-rf", "/x"]


def test_foreign_session_is_dropped_but_confirmed(conn: Connection) -> None:
    server_id, _ = _setup(conn)
    with transaction(conn):
        out = reports_store.apply_reports(
            conn, server_id, [_report(3, uuid.uuid4(), "nope")], last_seen_at=T0
        )
    assert out.stored == [3]
    assert _items(conn) == []
