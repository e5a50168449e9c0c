"""Which rows a token, a user or a work session owns: the filter that revocation uses.

Terminals and tunnels record who opened them (``owner_token``, ``owner_user``) and under
which work session. Revoking a token, deactivating a user or ending a work session ends
what any of them opened; the store finds those rows with :func:`owned_by`.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, Table, or_


__all__ = ["owned_by"]


def owned_by(
    table: Table,
    *,
    token_id: str | None,
    user_id: int | None,
    work_session_id: str | None,
) -> ColumnElement[bool] | None:
    """``table``'s rows opened with ``token_id``, by ``user_id`` or under
    ``work_session_id`` (any of them), or ``None`` when none is given (nothing matches:
    a ``NULL`` owner never does)."""
    c = table.c
    owned: list[ColumnElement[Any]] = [
        column == value
        for column, value in (
            (c.owner_token, token_id),
            (c.owner_user, user_id),
            (c.work_session_id, work_session_id),
        )
        if value is not None
    ]
    return or_(*owned) if owned else None
