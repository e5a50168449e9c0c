"""Prepared statements (store/prepared.py) on both backends: the same rows, the same
transactions and the same exceptions as ``Connection.execute``."""

from __future__ import annotations

import pytest
from sqlalchemy import Connection, DateTime, bindparam, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from fleetgate.controlplane.store import tables as t, transaction
from fleetgate.controlplane.store.prepared import IN_LIST_MAX, Prepared, PreparedIn


pytestmark = pytest.mark.timeout(60)

_s = t.servers.c

_INSERT = Prepared(
    insert(t.servers).values(
        id=bindparam("id"),
        name=bindparam("name"),
        key_hash="secret-hash",  # fixed by the statement: a default parameter
        registered_at=bindparam("at"),
    )
)
# "at" twice: positional dialects bind it twice, in the SQL's order.
_SEEN = Prepared(
    update(t.servers)
    .where(_s.id == bindparam("id"))
    .values(
        connected_at=bindparam("at"), last_seen_at=func.coalesce(_s.connected_at, bindparam("at"))
    )
)
_GET = Prepared(
    select(_s.name, _s.key_hash, _s.registered_at, _s.connected_at, _s.last_seen_at).where(
        _s.id == bindparam("id")
    )
)


def test_rows_writes_and_repeated_parameters(conn: Connection) -> None:
    with transaction(conn):
        _INSERT.run(conn, {"id": "s1", "name": "web-1", "at": 10})
        assert _SEEN.run(conn, {"id": "s1", "at": 20}) == 1
        assert _SEEN.run(conn, {"id": "nope", "at": 20}) == 0
    assert _GET.first(conn, {"id": "s1"}) == ("web-1", "secret-hash", 10, 20, 20)
    assert _GET.rows(conn, {"id": "s1"}) == [("web-1", "secret-hash", 10, 20, 20)]
    assert _GET.first(conn, {"id": "nope"}) is None
    conn.rollback()


def test_runs_in_the_callers_transaction(conn: Connection) -> None:
    def failing() -> None:
        with transaction(conn):
            _INSERT.run(conn, {"id": "s2", "name": "web-2", "at": 1})
            raise RuntimeError("rolled back")

    with pytest.raises(RuntimeError):
        failing()
    assert _GET.first(conn, {"id": "s2"}) is None
    conn.rollback()
    with transaction(conn):
        _INSERT.run(conn, {"id": "s2", "name": "web-2", "at": 1})
    # What it wrote is what SQLAlchemy's own path reads.
    assert conn.execute(select(_s.name).where(_s.id == "s2")).scalar_one() == "web-2"
    conn.rollback()


def test_run_many(conn: Connection) -> None:
    with transaction(conn):
        for i in range(3):
            _INSERT.run(conn, {"id": f"m{i}", "name": f"m-{i}", "at": i})
        _SEEN.run_many(conn, [{"id": f"m{i}", "at": 100 + i} for i in range(3)])
        _SEEN.run_many(conn, [])
    assert [_GET.first(conn, {"id": f"m{i}"})[4] for i in range(3)] == [100, 101, 102]
    conn.rollback()


def test_driver_errors_are_sqlalchemys_without_parameters(conn: Connection) -> None:
    with transaction(conn):
        _INSERT.run(conn, {"id": "d1", "name": "dup", "at": 1})
    with pytest.raises(IntegrityError) as caught, transaction(conn):
        _INSERT.run(conn, {"id": "d2", "name": "dup", "at": 1})
    # A command's env is a parameter: never in the message.
    assert "d2" not in str(caught.value)
    assert "hidden" in str(caught.value)
    # The connection is usable afterwards.
    assert _GET.first(conn, {"id": "d1"}) is not None
    conn.rollback()


def test_floats_are_converted_as_sqlalchemy_does(conn: Connection) -> None:
    c = t.commands.c
    with transaction(conn):
        _INSERT.run(conn, {"id": "f1", "name": "f-1", "at": 1})
        conn.execute(
            insert(t.commands).values(
                id="c1", server_id="f1", shell="sh", line="true", username="root",
                added_at=1, scheduled_at=1,
            )
        )  # fmt: skip
        Prepared(update(t.commands).where(c.id == "c1").values(timeout=bindparam("t"))).run(
            conn, {"t": 3}
        )
    value = Prepared(select(c.timeout).where(c.id == "c1")).first(conn)[0]
    assert value == 3.0
    assert isinstance(value, float)
    conn.rollback()


def test_statements_needing_sqlalchemy_are_refused(conn: Connection) -> None:
    expanding = Prepared(select(_s.id).where(_s.id.in_(bindparam("ids", expanding=True))))
    with pytest.raises(ValueError, match="IN list"):
        expanding.rows(conn, {"ids": ["a"]})
    converted = Prepared(select(func.now().cast(DateTime)))
    with pytest.raises(ValueError, match="conversion"):
        converted.first(conn)
    conn.rollback()


_NAMES = PreparedIn(lambda ids: select(_s.id, _s.name).where(_s.id.in_(ids)).order_by(_s.id))


def test_in_lists_of_any_size(conn: Connection) -> None:
    with transaction(conn):
        for i in range(40):
            _INSERT.run(conn, {"id": f"i{i:02}", "name": f"n{i}", "at": i})
    for size in (1, 2, 3, 5, 17, 40):
        ids = [f"i{i:02}" for i in range(size)]
        # A missing id is no row; the padding (the last id repeated) adds none.
        assert _NAMES.rows(conn, [*ids, "missing"]) == [(i, f"n{int(i[1:])}") for i in ids]
    assert _NAMES.rows(conn, ["i07"] * IN_LIST_MAX) == [("i07", "n7")]
    with pytest.raises(ValueError, match="IN list"):
        _NAMES.rows(conn, [])
    with pytest.raises(ValueError, match="IN list"):
        _NAMES.rows(conn, ["x"] * (IN_LIST_MAX + 1))
    conn.rollback()
