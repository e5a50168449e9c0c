"""Fixtures of the replica tests: one throw-away PostgreSQL cluster for the module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.postgres import PostgresCluster, postgres_cluster


@pytest.fixture(scope="module")
def pg() -> Iterator[PostgresCluster]:
    with postgres_cluster() as cluster:
        yield cluster


@pytest.fixture
def cluster_db(pg: PostgresCluster) -> str:
    """A fresh database's libpq URL."""
    return pg.create_database().replace("postgresql+psycopg://", "postgresql://")
