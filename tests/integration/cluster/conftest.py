"""Fixtures of the replica tests: the session's throw-away PostgreSQL cluster."""

from __future__ import annotations

import pytest

from tests.support.postgres import PostgresCluster


@pytest.fixture(scope="module")
def pg(postgres: PostgresCluster) -> PostgresCluster:
    """The session's cluster (``tests/conftest.py``: skipped without PostgreSQL, except
    under CI)."""
    return postgres


@pytest.fixture
def cluster_db(pg: PostgresCluster) -> str:
    """A fresh database's libpq URL."""
    return pg.create_database().replace("postgresql+psycopg://", "postgresql://")
