"""The control plane's background loops: owned by their own task, never by the lifespan's."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from fleetgate.controlplane.app import create_app
from fleetgate.controlplane.config import ControlPlaneSettings
from fleetgate.controlplane.hub.scheduler import Scheduler
from tests.support.database import database_url as fresh_database
from tests.support.waiting import eventually


@pytest.fixture
def database_url(request: pytest.FixtureRequest, backend: str, tmp_path: Path) -> str:
    """A fresh database of the module's backend."""
    return fresh_database(request, backend, tmp_path / "db")


pytestmark = pytest.mark.timeout(30)


async def test_a_failing_loop_is_reported_and_the_lifespan_is_not_cancelled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, database_url: str
) -> None:
    """A crashing scheduler calls on_failure with the error; the task that runs the
    lifespan (here the test itself) keeps running and shuts the app down cleanly."""

    async def crash(self: Scheduler) -> None:
        raise RuntimeError("scheduler broke")

    monkeypatch.setattr(Scheduler, "run", crash)
    failures: list[BaseExceptionGroup[Exception]] = []
    reported = asyncio.Event()

    def on_failure(group: BaseExceptionGroup[Exception]) -> None:
        failures.append(group)
        reported.set()

    app = create_app(
        ControlPlaneSettings(db_path=tmp_path / "cp.db", database_url=database_url),
        on_failure=on_failure,
    )
    async with app.router.lifespan_context(app):
        await asyncio.wait_for(reported.wait(), 10)
        # Still alive and not cancelled: a further await completes normally.
        await asyncio.wait_for(asyncio.shield(asyncio.sleep(0)), 5)
        assert asyncio.current_task() is not None
        assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]
    [group] = failures
    assert [str(e) for e in group.exceptions] == ["scheduler broke"]


async def test_shutdown_stops_the_loops_and_closes_the_database(
    tmp_path: Path, database_url: str
) -> None:
    app = create_app(ControlPlaneSettings(db_path=tmp_path / "cp.db", database_url=database_url))
    async with app.router.lifespan_context(app):
        await eventually(
            lambda: (
                {"background", "scheduler", "work-session-clock"}
                <= {t.get_name() for t in asyncio.all_tasks()}
            ),
            what="the loops started",
        )
    left = {t.get_name() for t in asyncio.all_tasks() if not t.done()}
    assert not left & {"background", "scheduler", "work-session-clock"}
