"""PostgreSQL's READ COMMITTED with row locks where the store reads then writes: a second
writer waits for the first (seen waiting in ``pg_stat_activity``) and then builds on its
result instead of overwriting it. SQLite serializes every write transaction already
(``BEGIN IMMEDIATE``), so these races exist only on PostgreSQL."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import Connection, text

from fleetgate.controlplane.store import connect, servers, transaction, worksessions
from fleetgate.controlplane.store.worksessions import NewWorkSession
from fleetgate.controlplane.worksession.lifecycle import Action, InvalidTransition, Status
from tests.support.postgres import PostgresCluster
from tests.support.waiting import eventually_blocking


T0 = 1_705_314_645_000_000
HOUR = 3600 * 10**6


@pytest.fixture
def conns(postgres: PostgresCluster) -> Iterator[tuple[Connection, Connection, Connection]]:
    url = postgres.create_database()
    opened = (connect(url), connect(url), connect(url))
    yield opened
    for conn in opened:
        conn.close()


def _while_locked(
    first: Connection,
    second: Connection,
    watcher: Connection,
    hold: Callable[[Connection], object],
    wait: Callable[[Connection], object],
) -> list[object]:
    """Run ``hold`` in ``first``'s open transaction, start ``wait`` in ``second`` on a
    thread, see it wait for a lock, commit ``first``; ``wait``'s result (or error)."""
    out: list[object] = []

    def run() -> None:
        try:
            with transaction(second):
                out.append(wait(second))
        except InvalidTransition as exc:  # the test looks at it
            out.append(exc)

    with transaction(first):
        hold(first)
        thread = threading.Thread(target=run)
        thread.start()

        def waiting() -> bool:
            sql = "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
            with transaction(watcher):
                return bool(watcher.execute(text(sql)).scalar_one())

        eventually_blocking(waiting, 10, "the second writer waiting for the row lock")
    thread.join(10)
    assert not thread.is_alive()
    return out


def test_concurrent_label_merges_lose_nothing(
    conns: tuple[Connection, Connection, Connection],
) -> None:
    first, second, watcher = conns
    with transaction(first):
        created = servers.register_server(first, "web-01", now=T0)
    assert created is not None
    sid = created[0].id
    [merged] = _while_locked(
        first,
        second,
        watcher,
        lambda c: servers.update_labels(c, sid, {"a": "1"}),
        lambda c: servers.update_labels(c, sid, {"b": "2"}),
    )
    assert merged == {"a": "1", "b": "2"}
    server = servers.get_server(watcher, sid)
    assert server is not None
    assert server.operator_labels == {"a": "1", "b": "2"}


def test_a_session_rejected_meanwhile_is_not_approved(
    conns: tuple[Connection, Connection, Connection],
) -> None:
    first, second, watcher = conns
    new = NewWorkSession(
        id="11111111-2222-3333-4444-555555555555",
        description="fix",
        requester_type="user",
        scopes=("command",),
        server_ids=(),
        sudo_policies=(),
        created_by=None,
        assigned_user=None,  # type: ignore[arg-type]
        starts_at=T0 + HOUR,
        expires_at=T0 + 2 * HOUR,
    )
    with transaction(first):
        worksessions.insert_work_session(first, new, auto_approve=False, now=T0)
    [outcome] = _while_locked(
        first,
        second,
        watcher,
        lambda c: worksessions.apply_action(c, new.id, Action.REJECT, actor=None, now=T0),
        lambda c: worksessions.apply_action(c, new.id, Action.APPROVE, actor=None, now=T0),
    )
    # The approval read the rejected row (it waited for the lock), so it is refused.
    assert isinstance(outcome, InvalidTransition)
    row = worksessions.load_settled(watcher, new.id, now=T0)
    assert row is not None
    assert row.status is Status.REJECTED
