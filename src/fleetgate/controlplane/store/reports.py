"""Idempotent storage of agent reports (``command.delivered|acked|output|finished``).

Timestamps are set once, output chunks are insert-or-ignore on ``(command_id, seq)``,
the final result is stored once: a report sent again after a reconnect changes nothing.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from sqlalchemy import Connection, bindparam, func, select, update

from fleetgate.controlplane.store import tables as t, worksessions as sessions_store
from fleetgate.controlplane.store.prepared import IN_LIST_MAX, Prepared, PreparedIn
from fleetgate.controlplane.store.sql import insert_ignoring, json_text
from fleetgate.controlplane.store.ssh_events import store_ssh_event
from fleetgate.controlplane.timeutil import to_us
from fleetgate.shared.protocol import (
    CommandAcked,
    CommandDelivered,
    CommandFinished,
    CommandOutput,
    CommandReport,
    SshEvent,
    SudoDecided,
)


__all__ = [
    "BatchOutcomes",
    "ReportOutcome",
    "apply_report_batches",
    "apply_reports",
    "store_report_batches",
]


@dataclass
class ReportOutcome:
    """What :func:`apply_reports` did."""

    stored: list[int] = field(default_factory=list)
    """rids of reports stored (or already stored before: duplicates)."""
    unknown: list[tuple[int, str]] = field(default_factory=list)
    """(rid, command id) of reports for a command this server does not have."""
    changed: set[str] = field(default_factory=set)
    """Commands that got new output or their final result."""
    erased_env: bool = False
    """A final result erased a non-empty env (the caller scrubs the WAL)."""


def apply_reports(
    conn: Connection,
    server_id: str,
    reports: Sequence[CommandReport],
    *,
    last_seen_at: int | None,
    owners: Mapping[str, str] | None = None,
) -> ReportOutcome:
    """Store agent reports idempotently (call inside one transaction).

    Timestamps are set once (a duplicate report changes nothing); output chunks are
    insert-or-ignore on ``(command_id, seq)``. A report for a command that is not this
    server's is not stored and is listed in :attr:`ReportOutcome.unknown`. ``owners``
    (command id -> server id, already read) saves the ownership query; ``last_seen_at``
    ``None`` leaves the server's row alone (the caller updates it).
    """
    outcome = ReportOutcome()
    ids = {str(r.command_id) for r in reports if not isinstance(r, SudoDecided | SshEvent)}
    if owners is None:
        known = _own_commands(conn, server_id, ids)
    else:
        known = {command_id for command_id in ids if owners.get(command_id) == server_id}
    for report in reports:
        if isinstance(report, SudoDecided):
            _store_sudo(conn, server_id, report)
            outcome.stored.append(report.rid)
            continue
        if isinstance(report, SshEvent):
            store_ssh_event(conn, server_id, report)
            outcome.stored.append(report.rid)
            continue
        command_id = str(report.command_id)
        exists = command_id in known
        if not exists:
            outcome.unknown.append((report.rid, command_id))
            continue
        if isinstance(report, CommandFinished) and _holds_env(conn, command_id):
            outcome.erased_env = True
        if _apply_one(conn, command_id, report):
            outcome.changed.add(command_id)
        outcome.stored.append(report.rid)
    if last_seen_at is not None:
        _LAST_SEEN.run(conn, {"server_id": server_id, "seen": last_seen_at})
    return outcome


_c = t.commands.c

# The hot statements, compiled once per dialect (see ``prepared``): one command's life
# stores four reports, and a busy fleet sends thousands a second.
_HOLDS_ENV = Prepared(
    select(_c.id).where(_c.id == bindparam("cid"), _c.env != "{}", _c.handled_at.is_(None))
)
_CHUNK = Prepared(
    lambda dialect: insert_ignoring(t.command_chunks, dialect).values(
        command_id=bindparam("command_id"), seq=bindparam("seq"), content=bindparam("content")
    )
)
_DELIVERED = Prepared(
    update(t.commands)
    .where(_c.id == bindparam("cid"), _c.delivered_at.is_(None))
    .values(delivered_at=bindparam("at"), sent_at=func.coalesce(_c.sent_at, bindparam("at")))
)
_ACKED = Prepared(
    update(t.commands)
    .where(_c.id == bindparam("cid"), _c.acked_at.is_(None))
    .values(acked_at=bindparam("at"))
)
_FINISHED = Prepared(
    update(t.commands)
    .where(_c.id == bindparam("cid"), _c.handled_at.is_(None))
    .values(
        handled_at=bindparam("at"),
        elapsed_time=bindparam("elapsed"),
        exit_code=bindparam("code"),
        success=bindparam("ok"),
        result=bindparam("text"),
        truncated=bindparam("cut"),
        output_bytes=bindparam("size"),
        error_phase=bindparam("phase"),
        message=bindparam("msg"),
        error_code=bindparam("refusal"),
        env="{}",
    )
)
_OWNERS = PreparedIn(lambda ids: select(_c.id, _c.server_id).where(_c.id.in_(ids)))
_OWN = PreparedIn(lambda ids: select(_c.id).where(_c.server_id == bindparam("sid"), _c.id.in_(ids)))
_LAST_SEEN = Prepared(
    update(t.servers)
    .where(t.servers.c.id == bindparam("server_id"))
    .values(last_seen_at=bindparam("seen"))
)


def _holds_env(conn: Connection, command_id: str) -> bool:
    return _HOLDS_ENV.first(conn, {"cid": command_id}) is not None


@dataclass
class BatchOutcomes:
    """What :func:`store_report_batches` did: one outcome per batch."""

    outcomes: list[ReportOutcome]

    @property
    def erased_env(self) -> bool:
        """A final result erased a command's env (the caller scrubs the WAL)."""
        return any(outcome.erased_env for outcome in self.outcomes)


def store_report_batches(
    conn: Connection, batches: Sequence[tuple[str, Sequence[CommandReport], int]]
) -> BatchOutcomes:
    """:func:`apply_report_batches`, its outcomes wrapped for ``Database.write_erasing``."""
    return BatchOutcomes(apply_report_batches(conn, batches))


def apply_report_batches(
    conn: Connection, batches: Sequence[tuple[str, Sequence[CommandReport], int]]
) -> list[ReportOutcome]:
    """:func:`apply_reports` for several servers' batches ``(server_id, reports,
    last_seen_at)`` in the caller's one transaction; one outcome per batch.

    The owners of every command named are read in one query per 500, and each server's
    ``last_seen_at`` is written once, instead of both per batch.
    """
    ids = {
        str(r.command_id)
        for _, reports, _ in batches
        for r in reports
        if not isinstance(r, SudoDecided | SshEvent)
    }
    owners = _owners(conn, ids)
    outcomes = [
        apply_reports(conn, server_id, reports, last_seen_at=None, owners=owners)
        for server_id, reports, _ in batches
    ]
    last_seen: dict[str, int] = {}
    for server_id, _, seen in batches:
        last_seen[server_id] = max(seen, last_seen.get(server_id, seen))
    if last_seen:
        # In id order: two writers locking the same rows lock them in the same order
        # (PostgreSQL), so they queue instead of deadlocking.
        params = [{"server_id": sid, "seen": seen} for sid, seen in sorted(last_seen.items())]
        _LAST_SEEN.run_many(conn, params)
    return outcomes


def _owners(conn: Connection, ids: set[str]) -> dict[str, str]:
    """The server of each of ``ids`` that is a command (one query per 512 ids)."""
    found: dict[str, str] = {}
    pending = sorted(ids)
    for start in range(0, len(pending), IN_LIST_MAX):
        rows = _OWNERS.rows(conn, pending[start : start + IN_LIST_MAX])
        found.update((str(command_id), str(server)) for command_id, server in rows)
    return found


def _store_sudo(conn: Connection, server_id: str, report: SudoDecided) -> None:
    """A ``sudo`` item on the work session's timeline, once per decision.

    A decision about a session that is not this control plane's, or whose server is not
    in it, is dropped (and still confirmed: sending it again would change nothing).
    """
    ws = t.work_sessions.c
    row = conn.execute(
        select(ws.servers, ws.assigned_user).where(ws.id == report.work_session)
    ).first()
    if row is None or server_id not in json.loads(row[0]):
        return
    actor = row[1]  # who asked: the session's user, whose shell or command called sudo
    decision_id = str(report.decision_id)
    ev = t.work_session_events.c
    seen = conn.execute(
        select(ev.id).where(
            ev.session_id == report.work_session,
            ev.type == "sudo",
            json_text(ev.data, "decision_id") == decision_id,
        )
    ).first()
    if seen is not None:
        return
    own_command = None
    if report.command_id is not None and _own_commands(conn, server_id, {str(report.command_id)}):
        own_command = str(report.command_id)
        requester = conn.execute(select(_c.requested_by).where(_c.id == own_command)).first()
        if requester is not None and requester[0] is not None:
            actor = requester[0]
    sessions_store.add_event(
        conn,
        report.work_session,
        "sudo",
        timestamp=to_us(report.at),
        actor=actor,
        server_id=server_id,
        command_id=own_command,
        data={
            "decision_id": decision_id,
            "session": report.session,
            "user": report.user,
            "command": report.command,
            "argv": report.argv,
            "allowed": report.allowed,
            "code": report.code,
            "message": report.message,
        },
    )


def _own_commands(conn: Connection, server_id: str, ids: set[str]) -> set[str]:
    """Which of ``ids`` are commands of this server (one query per 512 ids)."""
    found: set[str] = set()
    pending = sorted(ids)
    for start in range(0, len(pending), IN_LIST_MAX):
        rows = _OWN.rows(conn, pending[start : start + IN_LIST_MAX], {"sid": server_id})
        found.update(str(row[0]) for row in rows)
    return found


def _apply_one(conn: Connection, command_id: str, report: CommandReport) -> bool:
    """Store one report; whether stream readers should be woken."""
    if isinstance(report, CommandOutput):
        chunk = {"command_id": command_id, "seq": report.seq, "content": report.data}
        return _CHUNK.run(conn, chunk) > 0
    if isinstance(report, CommandDelivered):
        _DELIVERED.run(conn, {"cid": command_id, "at": to_us(report.delivered_at)})
        return False
    if isinstance(report, CommandAcked):
        _ACKED.run(conn, {"cid": command_id, "at": to_us(report.acked_at)})
        return False
    assert isinstance(report, CommandFinished)
    changed = _FINISHED.run(
        conn,
        {
            "cid": command_id,
            "at": to_us(report.handled_at),
            "elapsed": report.elapsed_time,
            "code": report.exit_code,
            "ok": int(report.success),
            "text": report.result,
            "cut": int(report.truncated),
            "size": report.output_bytes,
            "phase": report.error_phase,
            "msg": report.message,
            "refusal": report.code,
        },
    )
    return changed > 0
