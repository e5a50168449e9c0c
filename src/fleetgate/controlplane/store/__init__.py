"""Storage on SQLite or PostgreSQL (SQLAlchemy Core): one module per aggregate, the
tables in :mod:`.tables`, migrations in ``migrations/``, all access through
:class:`Database`."""

from fleetgate.controlplane.store.db import Database, connect, open_engine, transaction
from fleetgate.controlplane.store.engine import DatabaseUnavailable, InvalidDatabaseUrl, StoreError


__all__ = [
    "Database",
    "DatabaseUnavailable",
    "InvalidDatabaseUrl",
    "StoreError",
    "connect",
    "open_engine",
    "transaction",
]
