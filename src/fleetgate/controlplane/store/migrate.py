"""Bring a database to the current schema with Alembic (``store/migrations``).

A SQLite database made before Alembic (``PRAGMA user_version`` 1 to 9, no
``alembic_version`` table) first runs its old migrations to version 9, which is the
baseline revision, is stamped with it, then upgrades like any other. Once under Alembic a
SQLite file says ``user_version`` :data:`ALEMBIC_MARK`: a control plane from before
refuses it ("schema version 10 is newer") instead of creating its tables again.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import structlog
from sqlalchemy import Connection, Engine, inspect, text

from fleetgate.controlplane.store import schema as legacy
from fleetgate.controlplane.store.engine import IMMEDIATE, StoreError, safe_url


if TYPE_CHECKING:
    from alembic.config import Config

__all__ = ["ALEMBIC_MARK", "BASELINE", "HEAD", "current_revision", "head_revision", "upgrade"]

log = structlog.get_logger("fleetgate.controlplane.store")

BASELINE = "0001"
"""The first revision: the SQLite schema version 9, as one definition for both backends."""
HEAD = "0001"
"""The newest revision (``head_revision()``, checked by the tests): a database already
there is used without loading Alembic, which costs half a second at every start."""
ALEMBIC_MARK = legacy.SCHEMA_VERSION + 1
MIGRATION_LOCK = 0x6667_6462  # "fgdb": one control plane migrates at a time (PostgreSQL)
SCRIPTS = Path(__file__).with_name("migrations")


def _config(conn: Connection | None = None) -> Config:
    from alembic.config import Config  # only when migrating: see HEAD

    cfg = Config()
    cfg.set_main_option("script_location", str(SCRIPTS))
    cfg.attributes["connection"] = conn
    return cfg


def head_revision() -> str:
    """The newest revision of ``store/migrations``."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(_config()).get_current_head()
    assert head is not None
    return head


def _stored_revision(conn: Connection) -> str | None:
    if not inspect(conn).has_table("alembic_version"):
        return None
    return conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one_or_none()


def current_revision(engine: Engine) -> str | None:
    """The database's revision (``None``: not under Alembic yet)."""
    with engine.connect() as conn:
        revision = _stored_revision(conn)
        conn.rollback()
    return revision


def upgrade(engine: Engine) -> str:
    """Migrate to the newest revision, in one transaction; the revision reached.

    Raises:
        StoreError: the database is newer than this control plane.
    """
    if current_revision(engine) == HEAD:
        return HEAD
    from alembic import command

    sqlite = engine.dialect.name == "sqlite"
    if sqlite:
        _adopt_legacy(engine)
    head = head_revision()
    with engine.connect() as conn:
        conn.info[IMMEDIATE] = True
        with conn.begin():
            if not sqlite:
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
            before = _stored_revision(conn)
            if before is not None and before != head and not _known(before):
                raise StoreError(
                    f"the database {safe_url(engine.url)} is at revision {before}, newer than "
                    f"this control plane (head {head})"
                )
            command.upgrade(_config(conn), "head")
        if sqlite:
            conn.exec_driver_sql(f"PRAGMA user_version = {ALEMBIC_MARK}")
            conn.commit()
    if before != head:
        log.info("store.migrated", url=safe_url(engine.url), before=before, after=head)
    return head


def _known(revision: str) -> bool:
    from alembic.script import ScriptDirectory
    from alembic.script.revision import RevisionError
    from alembic.util import CommandError

    try:
        return ScriptDirectory.from_config(_config()).get_revision(revision) is not None
    except (RevisionError, CommandError):  # an id this control plane does not have
        return False


def _adopt_legacy(engine: Engine) -> None:
    """Run the pre-Alembic SQLite migrations and stamp the baseline, once."""
    with engine.connect() as conn:
        raw = conn.connection.driver_connection
        assert raw is not None
        version = int(raw.execute("PRAGMA user_version").fetchone()[0])
        names = set(inspect(conn).get_table_names())
        conn.rollback()
        if "alembic_version" in names:
            return  # already under Alembic
        if version == 0:
            if names:
                raise StoreError(
                    f"the database {safe_url(engine.url)} has tables but no schema version: "
                    "not a control plane's database"
                )
            return  # a new database: the baseline creates it
        if version > legacy.SCHEMA_VERSION:
            raise StoreError(
                f"database schema version {version} is newer than this control plane "
                f"({legacy.SCHEMA_VERSION}) and has no Alembic revision"
            )
        from alembic import command

        legacy.migrate(raw)  # its own BEGIN IMMEDIATE per step, up to version 9
        conn.info[IMMEDIATE] = True
        with conn.begin():
            command.stamp(_config(conn), BASELINE)
    log.info("store.adopted", url=safe_url(engine.url), legacy_version=version)
