"""Suite-wide rules: tests that need root say so, and under CI none of them may skip; the
number of structured fuzz cases run is printed at the end.

A test that creates users, switches uid, installs packages or mounts file systems carries
``@pytest.mark.root``. Without root such a test is skipped with that reason; with
``CI=true`` (CI runs as root) a skipped root test fails the run instead of passing
silently. :func:`tests.support.users.require_root` checks that its caller carries the
marker, so a test that needs root cannot forget it.
"""

from __future__ import annotations

import os
from collections.abc import Generator, Iterator

import pytest

from tests.support import users
from tests.support.fuzz import CASES
from tests.support.postgres import PostgresCluster, PostgresUnavailable, postgres_cluster


IS_ROOT = os.geteuid() == 0
UNDER_CI = os.environ.get("CI") == "true"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if IS_ROOT:
        return
    skip = pytest.mark.skip(reason="needs root (run the suite as root)")
    for item in items:
        if item.get_closest_marker("root") is not None:
            item.add_marker(skip)


def pytest_runtest_setup(item: pytest.Item) -> None:
    users.current_test_is_root = item.get_closest_marker("root") is not None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if UNDER_CI and report.skipped and item.get_closest_marker("root") is not None:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"a root test skipped under CI=true: {reason}"
    return report


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print how many structured fuzz cases ran (``tests.support.fuzz``), by target."""
    if not CASES:
        return
    total = sum(CASES.values())
    terminalreporter.write_sep("-", f"structured fuzz: {total} cases")
    for name, number in sorted(CASES.items()):
        terminalreporter.write_line(f"{number:>7}  {name}")


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresCluster]:
    """One throw-away PostgreSQL cluster for the whole run (``tests/support/postgres.py``);
    each test makes its own database with ``create_database()``. Without PostgreSQL the
    tests that need it skip, except under ``CI=true`` where they fail."""
    try:
        cluster = postgres_cluster()
        pg = cluster.__enter__()
    except PostgresUnavailable as exc:
        if UNDER_CI:
            pytest.fail(f"PostgreSQL is required under CI=true: {exc}")
        pytest.skip(str(exc))
    try:
        yield pg
    finally:
        cluster.__exit__(None, None, None)
