"""Fan-out storage on a real SQLite file, synchronously: target resolution by names, ids
and labels, the aggregated counts and paged results, and batched report storage."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from sqlalchemy import Connection

from fleetgate.controlplane.store import (
    commands,
    fanouts,
    reports as reports_store,
    servers,
    transaction,
)
from fleetgate.controlplane.store.command_rows import NewCommand
from fleetgate.controlplane.store.fanouts import FanoutRow
from fleetgate.shared.labels import parse_selector
from fleetgate.shared.protocol import CommandAcked, CommandFinished


T0 = 1_705_314_645_000_000


def _servers(conn: Connection, *names: str) -> dict[str, str]:
    ids = {}
    with transaction(conn):
        for name in names:
            created = servers.register_server(conn, name, now=T0)
            assert created is not None
            ids[name] = created[0].id
    return ids


def test_resolve_refs_by_name_and_id(conn: Connection) -> None:
    ids = _servers(conn, "web-01", "web-02", "db-01")
    found, missing = fanouts.resolve_refs(
        conn, ["web-02", ids["db-01"], "nope", "web-02", str(uuid.uuid4())]
    )
    assert [t.name for t in found] == ["web-02", "db-01"]
    assert missing[0] == "nope"
    assert len(missing) == 2


def test_labels_agent_then_operator(conn: Connection) -> None:
    ids = _servers(conn, "web-01", "web-02", "db-01")
    with transaction(conn):
        for name, role in (("web-01", "web"), ("web-02", "web"), ("db-01", "db")):
            servers.mark_connected(
                conn,
                ids[name],
                agent_version="1",
                hostname=name,
                connected_at=T0,
                last_seen_at=T0,
                labels={"role": role},
            )
        assert servers.update_labels(conn, ids["web-02"], {"role": "canary"}) == {"role": "canary"}
    selected = fanouts.select_by_labels(conn, parse_selector("role=web"))
    assert [t.name for t in selected] == ["web-01"]
    row = servers.get_server(conn, "web-02")
    assert row is not None
    assert row.labels == {"role": "canary"}
    assert row.agent_labels == {"role": "web"}
    with transaction(conn):
        servers.update_labels(conn, ids["web-02"], {"role": None})
    selected = fanouts.select_by_labels(conn, parse_selector("role=web"))
    assert [t.name for t in selected] == ["web-01", "web-02"]


def test_counts_results_and_batched_reports(conn: Connection) -> None:
    ids = _servers(conn, "a", "b", "c")
    command_ids = {}
    with transaction(conn):
        for name, server_id in ids.items():
            command_id = str(uuid.uuid4())
            command_ids[name] = command_id
            new = NewCommand(
                id=command_id,
                server_id=server_id,
                shell="system",
                line="true",
                username="root",
                groupname="",
                env={},
                timeout=None,
                requested_by=None,
                added_at=T0,
                scheduled_at=T0,
            )
            commands.insert_command(conn, new, sent_at=T0, server_name=name)
        fanout = FanoutRow("f" * 8, "true", {"servers": ["a", "b", "c"]}, None, T0, 3)
        fanouts.insert_fanout(conn, fanout, list(command_ids.values()))
    assert fanouts.counts(conn, fanout.id) == {
        "queued": 3,
        "running": 0,
        "succeeded": 0,
        "failed": 0,
    }
    now = datetime.now(UTC)

    def finished(name: str, code: int) -> CommandFinished:
        return CommandFinished(
            rid=1,
            command_id=uuid.UUID(command_ids[name]),
            handled_at=now,
            elapsed_time=0.0,
            exit_code=code,
            success=code == 0,
            result="",
        )

    acked = CommandAcked(rid=0, command_id=uuid.UUID(command_ids["c"]), acked_at=now)
    with transaction(conn):
        outcomes = reports_store.apply_report_batches(
            conn,
            [
                (ids["a"], [finished("a", 0)], T0),
                (ids["b"], [finished("b", 2), finished("a", 0)], T0),  # a is not b's
                (ids["c"], [acked], T0),
            ],
        )
    assert [o.stored for o in outcomes] == [[1], [1], [0]]
    assert outcomes[1].unknown == [(1, command_ids["a"])]
    assert fanouts.counts(conn, fanout.id) == {
        "queued": 0,
        "running": 1,
        "succeeded": 1,
        "failed": 1,
    }
    count, rows = fanouts.list_results(conn, fanout.id, state=None, limit=2, offset=0)
    assert count == 3
    assert [r.server_name for r in rows] == ["a", "b"]
    count, rows = fanouts.list_results(conn, fanout.id, state="failed", limit=10, offset=0)
    assert (count, [r.exit_code for r in rows]) == (1, [2])
