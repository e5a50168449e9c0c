"""Fixtures of the file-transfer tests: a shared directory the test users can reach."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.users import CreatedUser, require_root, temporary_user


@pytest.fixture
def area() -> Iterator[Path]:
    """A world-writable sticky directory under /tmp (like /tmp itself), removed after."""
    require_root()
    path = Path(tempfile.mkdtemp(prefix="files-test-", dir="/tmp"))
    os.chmod(path, 0o1777)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def user() -> Iterator[CreatedUser]:
    with temporary_user() as created:
        yield created


@pytest.fixture
def other_user() -> Iterator[CreatedUser]:
    with temporary_user() as created:
        yield created
