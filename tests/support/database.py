"""The two database backends the control plane's tests run on.

``tests/conftest.py`` has a session-scoped ``postgres`` cluster (``tests/support/
postgres.py``); :func:`database_url` gives each test (or module) a fresh database of the
backend it is parametrized with: a SQLite file in its temporary folder, or a new database
in that cluster. Under ``CI=true`` a machine without PostgreSQL fails those tests, never
skips them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fleetgate.controlplane.store.engine import sqlite_url
from tests.support.controlplane import databases


__all__ = ["BACKENDS", "backend", "database_url"]

BACKENDS = ("sqlite", "postgresql")


def database_url(request: pytest.FixtureRequest, backend: str, folder: Path) -> str:
    """A fresh, empty database of ``backend``: a SQLite file in ``folder`` or a new
    database in the session's PostgreSQL cluster."""
    if backend == "sqlite":
        folder.mkdir(parents=True, exist_ok=True)
        return sqlite_url(folder / "controlplane.db")
    cluster = request.getfixturevalue("postgres")
    url: str = cluster.create_database()
    return url


@pytest.fixture(scope="module", params=BACKENDS, autouse=True)
def backend(request: pytest.FixtureRequest) -> Iterator[str]:
    """Run the module's tests once per backend: every control plane they start serves a
    fresh database of it (import this fixture into a ``conftest.py``)."""
    factory: Callable[[], str] | None = None
    if request.param == "postgresql":
        factory = request.getfixturevalue("postgres").create_database
    with databases(factory):
        yield str(request.param)
