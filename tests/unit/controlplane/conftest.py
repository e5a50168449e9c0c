"""Store tests run on both backends: ``database_url`` is a fresh database of each."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Connection

from fleetgate.controlplane.store import connect
from tests.support.database import BACKENDS, database_url as fresh_database


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database: a SQLite file, then a PostgreSQL database."""
    return fresh_database(request, str(request.param), tmp_path)


@pytest.fixture
def conn(database_url: str) -> Iterator[Connection]:
    """A migrated connection to a fresh database of each backend."""
    c = connect(database_url)
    yield c
    c.close()
    c.engine.dispose()
