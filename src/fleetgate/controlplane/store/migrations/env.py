"""Alembic's environment: runs on the connection (in its transaction) that
:func:`fleetgate.controlplane.store.migrate.upgrade` hands over."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from fleetgate.controlplane.store.tables import metadata


connection = context.config.attributes.get("connection")
if not isinstance(connection, Connection):
    raise TypeError("run the migrations with fleetgate-controlplane db upgrade")
context.configure(
    connection=connection,
    target_metadata=metadata,
    # SQLite alters a table by copying it: Alembic's batch mode does that.
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
