"""Fixtures of the agent's integration tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack

import pytest

from tests.support.users import CreatedUser, temporary_user


@pytest.fixture
def make_user() -> Iterator[Callable[[], CreatedUser]]:
    """Factory of throw-away users (root only; skips otherwise), removed after the test."""
    with ExitStack() as stack:
        yield lambda: stack.enter_context(temporary_user())


@pytest.fixture
def scratch_user(make_user: Callable[[], CreatedUser]) -> CreatedUser:
    """One throw-away user with a supplementary group."""
    return make_user()
