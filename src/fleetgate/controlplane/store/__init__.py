"""SQLite storage: one module per aggregate, all access through :class:`Database`."""

from fleetgate.controlplane.store.db import Database, connect, transaction


__all__ = ["Database", "connect", "transaction"]
