"""Write-behind of received files: which ranges are pushed out, and that the bytes stay."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from fleetgate.shared.files.writeback import WINDOW, WriteBehind, windows_due


W = 4


def test_nothing_is_due_within_the_first_two_windows() -> None:
    assert windows_due(2 * W, 2 * W - 1, drop=True, window=W) == (2 * W, [])


def test_drop_flushes_the_window_before_the_last_and_drops_the_one_before() -> None:
    due, ranges = windows_due(2 * W, 2 * W, drop=True, window=W)
    assert (due, ranges) == (3 * W, [(0, W)])
    due, ranges = windows_due(due, 3 * W, drop=True, window=W)
    assert (due, ranges) == (4 * W, [(0, 2 * W)])
    due, ranges = windows_due(due, 4 * W + 1, drop=True, window=W)
    assert (due, ranges) == (5 * W, [(W, 2 * W)])


def test_keeping_the_cache_only_flushes_each_window_once() -> None:
    due, ranges = windows_due(2 * W, 5 * W, drop=False, window=W)
    assert due == 6 * W
    assert ranges == [(0, W), (W, W), (2 * W, W), (3 * W, W)]


def test_one_large_write_catches_up_on_every_window_it_crossed() -> None:
    due, ranges = windows_due(2 * W, 6 * W - 1, drop=True, window=W)
    assert due == 6 * W
    assert [start for start, _ in ranges] == [0, 0, W, 2 * W]


@pytest.mark.parametrize("drop", [True, False])
@pytest.mark.parametrize("offset", [0, WINDOW + 12345])
def test_the_file_keeps_every_byte(tmp_path: Path, drop: bool, offset: int) -> None:
    piece = os.urandom(1 << 20)
    path = tmp_path / "received"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    expected = hashlib.sha256()
    try:
        prefix = bytes(offset)
        os.pwrite(fd, prefix, 0)
        expected.update(prefix)
        behind = WriteBehind(fd, offset, drop=drop)
        position = offset
        for _ in range(5 * WINDOW // len(piece)):
            os.pwrite(fd, piece, position)
            expected.update(piece)
            position += len(piece)
            behind.written(position)
        os.fsync(fd)
    finally:
        os.close(fd)
    assert path.stat().st_size == offset + 5 * WINDOW
    with open(path, "rb") as written:
        assert hashlib.file_digest(written, "sha256").hexdigest() == expected.hexdigest()
