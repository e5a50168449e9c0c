"""Direct I/O of transferred files: every byte lands or comes back, around the page cache
where the file system allows it and through it where not (ramfs), and errors surface."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import mmap
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleetgate.shared.files.direct import (
    ALIGN,
    WRITE_BLOCK,
    CacheAwareReader,
    DirectWriter,
    align_down,
    align_up,
    cached_pages,
)


SIZES = [1, 4095, 4097, 1 << 20, (1 << 20) + 3, WRITE_BLOCK - 1, WRITE_BLOCK + 5]


@contextlib.contextmanager
def mounted(path: Path, kind: str, *options: str) -> Iterator[Path]:
    """Mount a ``kind`` file system at ``path`` for the duration (root only)."""
    path.mkdir()
    argv = ["mount", "-t", kind, *(["-o", ",".join(options)] if options else []), kind, str(path)]
    subprocess.run(argv, check=True, timeout=10)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True, timeout=10)


def pieces(data: bytes) -> Iterator[bytes]:
    """``data`` cut in pieces of every size in SIZES, in turn."""
    position, turn = 0, 0
    while position < len(data):
        size = SIZES[turn % len(SIZES)]
        yield data[position : position + size]
        position, turn = position + size, turn + 1


def write_file(path: Path, data: bytes, prefix: bytes = b"") -> bool:
    """Write ``prefix`` plainly, then ``data`` through a DirectWriter; whether it went direct."""
    path.write_bytes(prefix)
    fd = os.open(path, os.O_RDWR)
    try:
        writer = DirectWriter(fd, len(prefix), drop=False)
        for piece in pieces(data):
            writer.write(piece)
        direct = writer.direct
        writer.flush()
        assert not writer.direct
        assert not fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT, "O_DIRECT left on"
        writer.close()
    finally:
        os.close(fd)
    return direct


def read_file(path: Path, start: int = 0, chunk: int = 1 << 20) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    out = bytearray()
    try:
        reader = CacheAwareReader(fd, chunk, buffers=2)
        position = start
        while view := reader.read(position):
            out += view
            position += len(view)
            view.release()
        reader.close()
        assert not fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT, "O_DIRECT left on"
    finally:
        os.close(fd)
    return bytes(out)


def uncache(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def pages_cached(path: Path) -> int:
    fd = os.open(path, os.O_RDONLY)
    try:
        cached = cached_pages(fd, 0, 0)
    finally:
        os.close(fd)
    assert cached is not None, "cachestat (Linux 6.5+) is expected on the test machines"
    return cached


def test_alignment_arithmetic() -> None:
    assert (align_down(0), align_down(ALIGN - 1), align_down(ALIGN)) == (0, 0, ALIGN)
    assert (align_up(0), align_up(1), align_up(ALIGN), align_up(ALIGN + 1)) == (
        0,
        ALIGN,
        ALIGN,
        2 * ALIGN,
    )


@pytest.mark.parametrize("total", [0, 1, ALIGN, 3 * WRITE_BLOCK + 12345])
def test_the_writer_keeps_every_byte_and_writes_direct(tmp_path: Path, total: int) -> None:
    data = os.urandom(total)
    path = tmp_path / "received"
    assert write_file(path, data)
    assert path.read_bytes() == data


@pytest.mark.parametrize("prefix", [1, ALIGN - 1, ALIGN, WRITE_BLOCK + 17])
def test_a_resumed_file_keeps_its_prefix(tmp_path: Path, prefix: int) -> None:
    head, data = os.urandom(prefix), os.urandom(2 * WRITE_BLOCK + 99)
    path = tmp_path / "resumed"
    write_file(path, data, prefix=head)
    assert path.read_bytes() == head + data


def test_direct_writes_leave_the_page_cache_alone(tmp_path: Path) -> None:
    path = tmp_path / "big"
    write_file(path, os.urandom(4 * WRITE_BLOCK))
    # Only the last partial block (none here) and nothing else went through the cache.
    assert pages_cached(path) == 0


def test_closing_an_unflushed_writer_leaves_o_direct_off(tmp_path: Path) -> None:
    path = tmp_path / "interrupted"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        writer = DirectWriter(fd, 0, drop=False)
        writer.write(os.urandom(WRITE_BLOCK + 100))
        assert writer.direct
        writer.close()  # e.g. a write failed: no flush
        assert not fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT
        assert len(os.pread(fd, 10, 3)) == 10  # an unaligned read works again
    finally:
        os.close(fd)
    assert path.stat().st_size == WRITE_BLOCK  # the whole blocks; the rest was dropped


@pytest.mark.root  # mounts a ramfs, which refuses O_DIRECT
def test_the_writer_falls_back_where_o_direct_is_refused(tmp_path: Path) -> None:
    with mounted(tmp_path / "ram", "ramfs") as mount:
        data = os.urandom(2 * WRITE_BLOCK + 4321)
        assert not write_file(mount / "f", data, prefix=b"x" * 5000)
        assert (mount / "f").read_bytes() == b"x" * 5000 + data


def fill(writer: DirectWriter) -> None:
    """Four blocks into a 1 MiB file system."""
    for _ in range(4):
        writer.write(os.urandom(WRITE_BLOCK))
    writer.flush()


@pytest.mark.root  # mounts a tiny tmpfs
def test_a_full_disk_is_an_error_not_a_short_file(tmp_path: Path) -> None:
    with mounted(tmp_path / "full", "tmpfs", "size=1m") as mount:
        fd = os.open(mount / "f", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            writer = DirectWriter(fd, 0, drop=False)
            with pytest.raises(OSError) as caught:
                fill(writer)
            assert caught.value.errno == errno.ENOSPC
            writer.close()
        finally:
            os.close(fd)


@pytest.mark.parametrize("start", [0, 1, ALIGN - 1, ALIGN, (1 << 20) + 7])
def test_a_cold_file_is_read_whole_without_filling_the_cache(tmp_path: Path, start: int) -> None:
    data = os.urandom(3 * (1 << 20) + 1234)
    path = tmp_path / "cold"
    path.write_bytes(data)
    uncache(path)
    assert pages_cached(path) == 0
    assert read_file(path, start) == data[start:]
    assert pages_cached(path) <= 1  # at most a partial block read at an unaligned start


def test_a_cached_file_is_read_from_the_cache(tmp_path: Path) -> None:
    data = os.urandom(2 * (1 << 20) + 99)
    path = tmp_path / "hot"
    path.write_bytes(data)
    before = pages_cached(path)
    assert before == align_up(len(data)) // ALIGN
    assert read_file(path, 0, chunk=100_000) == data
    assert pages_cached(path) == before


def test_a_half_cached_file_is_read_whole(tmp_path: Path) -> None:
    data = os.urandom(4 * (1 << 20))
    path = tmp_path / "half"
    path.write_bytes(data)
    uncache(path)
    with open(path, "rb") as warm:  # the first half comes back into the cache
        assert hashlib.sha256(warm.read(len(data) // 2)).digest()
    assert read_file(path, 0, chunk=(1 << 20) + 10) == data


def test_reading_past_the_end_gives_nothing(tmp_path: Path) -> None:
    path = tmp_path / "short"
    path.write_bytes(b"abc")
    uncache(path)
    assert read_file(path, 3) == b""
    assert read_file(path, 10 * ALIGN) == b""
    assert read_file(path, 1) == b"bc"


@pytest.mark.root  # mounts a ramfs, which refuses O_DIRECT
def test_the_reader_falls_back_where_o_direct_is_refused(tmp_path: Path) -> None:
    with mounted(tmp_path / "ram", "ramfs") as mount:
        data = os.urandom(3 * (1 << 20) + 5)
        (mount / "f").write_bytes(data)
        assert read_file(mount / "f", 17) == data[17:]


def write_aligned_file(
    path: Path, data: bytes, prefix: bytes = b"", piece: int = WRITE_BLOCK
) -> bool:
    """``write_file`` with ``write_aligned`` from a page-aligned buffer; whether it went
    direct to the end (every write straight from the buffer)."""
    path.write_bytes(prefix)
    fd = os.open(path, os.O_RDWR)
    buffer = mmap.mmap(-1, piece)
    view = memoryview(buffer)
    try:
        writer = DirectWriter(fd, len(prefix), drop=False)
        for start in range(0, len(data), piece):
            part = data[start : start + piece]
            view[: len(part)] = part
            writer.write_aligned(view[: len(part)])
        direct = writer.direct
        writer.flush()
        writer.close()
    finally:
        view.release()
        buffer.close()
        os.close(fd)
    return direct


@pytest.mark.parametrize(
    ("total", "piece"), [(0, WRITE_BLOCK), (3 * WRITE_BLOCK + 77, WRITE_BLOCK), (99_999, 8192)]
)
def test_aligned_buffers_are_written_direct(tmp_path: Path, total: int, piece: int) -> None:
    data = os.urandom(total)
    path = tmp_path / "aligned"
    assert write_aligned_file(path, data, piece=piece)
    assert pages_cached(path) <= 1  # only the last partial block went through the cache
    assert path.read_bytes() == data


@pytest.mark.parametrize("prefix", [1, ALIGN - 1, ALIGN, WRITE_BLOCK + 17])
def test_aligned_writes_after_an_unaligned_resume(tmp_path: Path, prefix: int) -> None:
    head, data = os.urandom(prefix), os.urandom(2 * WRITE_BLOCK + 99)
    path = tmp_path / "resumed"
    write_aligned_file(path, data, prefix=head, piece=1 << 20)
    assert path.read_bytes() == head + data


@pytest.mark.root  # mounts a ramfs, which refuses O_DIRECT
def test_aligned_writes_fall_back_where_o_direct_is_refused(tmp_path: Path) -> None:
    with mounted(tmp_path / "ram", "ramfs") as mount:
        data = os.urandom(2 * WRITE_BLOCK + 4321)
        assert not write_aligned_file(mount / "f", data)
        assert (mount / "f").read_bytes() == data
