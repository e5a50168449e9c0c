"""What a file worker is asked to do, and the bookkeeping of one transfer (pure).

The agent hands the worker one :class:`Request` (a JSON object, first frame on its stdin);
the worker checks it again here without pydantic (it starts faster and smaller without
it) and keeps a :class:`Ledger` of the bytes that went through: limits, the resume offset
and the end-to-end SHA-256 check all live here, away from any file descriptor.
"""

from __future__ import annotations

import re
import stat
from typing import Any, Literal, NamedTuple

from fleetgate.shared.errors import TransferError
from fleetgate.shared.files.paths import MAX_NAME_BYTES, components, normalise


__all__ = [
    "DEFAULT_UMASK",
    "WRITE_PIECE_BYTES",
    "Ledger",
    "Request",
    "final_mode",
    "parse_request",
    "resume_offset",
]

DEFAULT_UMASK = 0o022
"""The umask a new file is created under (the login default of the session user)."""

WRITE_PIECE_BYTES = 256 * 1024
"""Most bytes handed to one ``write`` into a file. Measured (Linux 6.18, ext4, a VM):
writing 512 MiB in 2 MiB pieces cost 1.2 s of CPU and 7 s, in 1 MiB or smaller pieces
0.15 s and 0.5 s; a 2 MiB write at a 2 MiB boundary makes the kernel allocate one large
page-cache folio, which is far dearer to come by than small ones. Again on fresh pages
(Linux 6.18, ext4, a VM, 512 MiB from a 1 MiB buffer): 1 MiB pieces 0.9-1.1 s of system
time, 512 KiB 0.16-0.31 s, 256 KiB and smaller 0.10-0.12 s."""

_TRANSFER_ID = re.compile(r"[0-9a-f]{16,64}")
_SHA256 = re.compile(r"[0-9a-f]{64}")

Op = Literal["upload", "download"]


class Request(NamedTuple):
    """One transfer, as the worker performs it. (A named tuple, not a dataclass: the
    worker starts once per transfer, and ``dataclasses`` with the ``inspect`` it loads
    were 6 ms of that start.)

    Attributes:
        op: ``upload`` (client to server) or ``download`` (server to client).
        path: the normalised absolute path on the server.
        name: for uploads, the name used when ``path`` is an existing directory.
        recursive: a directory as a tar stream instead of one file.
        overwrite: an upload may replace an existing target.
        transfer_id: lowercase hex; names the upload's temporary file (resume).
        offset: for downloads, the byte to start sending from.
        size: for uploads, the size the client announced (None: unknown, e.g. a tree).
        expect_sha256: for uploads, the SHA-256 the existing target must still have.
        max_file_bytes: largest file accepted or sent.
        allowed_roots: normalised roots the path must be under (empty: anywhere).
        chunk_bytes: payload bytes per data frame.
        handover: a single file's descriptor goes to the agent, which moves the bytes
            (the worker's stdout must then be a Unix socket).
    """

    op: Op
    path: str
    name: str | None = None
    recursive: bool = False
    overwrite: bool = False
    transfer_id: str = "0" * 32
    offset: int = 0
    size: int | None = None
    expect_sha256: str | None = None
    max_file_bytes: int = 1 << 40
    allowed_roots: tuple[str, ...] = ()
    chunk_bytes: int = 1 << 20
    handover: bool = False


def _int(obj: dict[str, Any], key: str, default: int | None, *, low: int = 0) -> int | None:
    value = obj.get(key, default)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise TransferError("invalid", f"{key} must be an integer >= {low}")
    return value


def parse_request(obj: dict[str, Any]) -> Request:
    """Check a request object and build the :class:`Request`.

    Raises:
        TransferError: ``invalid`` for a missing or ill-typed field, or the path errors
            of :func:`fleetgate.shared.files.paths.normalise`.
    """
    op = obj.get("op")
    if op not in ("upload", "download"):
        raise TransferError("invalid", "op must be 'upload' or 'download'")
    raw_path = obj.get("path")
    if not isinstance(raw_path, str):
        raise TransferError("invalid", "path must be a string")
    name = obj.get("name")
    if name is not None:
        if not isinstance(name, str) or name in ("", ".", "..") or "/" in name or "\0" in name:
            raise TransferError("invalid", "name must be a single path component")
        if (
            len(components(name, relative=True)[0].encode("utf-8", "surrogateescape"))
            > MAX_NAME_BYTES
        ):
            raise TransferError("too_long", "name is too long")
    transfer_id = obj.get("transfer_id", "0" * 32)
    if not isinstance(transfer_id, str) or not _TRANSFER_ID.fullmatch(transfer_id):
        raise TransferError("invalid", "transfer_id must be 16 to 64 lowercase hex digits")
    expect = obj.get("expect_sha256")
    if expect is not None and (not isinstance(expect, str) or not _SHA256.fullmatch(expect)):
        raise TransferError("invalid", "expect_sha256 must be 64 lowercase hex digits")
    roots = obj.get("allowed_roots") or []
    if not isinstance(roots, list) or not all(isinstance(r, str) for r in roots):
        raise TransferError("invalid", "allowed_roots must be a list of paths")
    flags = {key: obj.get(key, False) for key in ("recursive", "overwrite", "handover")}
    if not all(isinstance(v, bool) for v in flags.values()):
        raise TransferError("invalid", "recursive, overwrite and handover must be booleans")
    return Request(
        op=op,
        path=normalise(raw_path),
        name=name,
        recursive=flags["recursive"],
        overwrite=flags["overwrite"],
        transfer_id=transfer_id,
        offset=_int(obj, "offset", 0) or 0,
        size=_int(obj, "size", None),
        expect_sha256=expect,
        max_file_bytes=_int(obj, "max_file_bytes", 1 << 40, low=1) or 1,
        allowed_roots=tuple(normalise(r) for r in roots),
        chunk_bytes=_int(obj, "chunk_bytes", 1 << 20, low=4096) or 4096,
        handover=flags["handover"],
    )


def resume_offset(existing: int, declared: int | None) -> int:
    """Where an upload resumes, given the bytes already in its temporary file.

    A temporary file longer than the announced size cannot be a prefix of this upload
    (the source changed): start again from zero.
    """
    if declared is not None and existing > declared:
        return 0
    return existing


def final_mode(existing_mode: int | None, umask: int = DEFAULT_UMASK) -> int:
    """Permission bits of the renamed file: an existing target keeps its own (without
    set-id bits, as an editor saving it would), a new one gets ``0666 & ~umask``."""
    if existing_mode is not None:
        return stat.S_IMODE(existing_mode) & ~(stat.S_ISUID | stat.S_ISGID)
    return 0o666 & ~umask


class Ledger:
    """Counts the bytes of one upload against its limits and checks its end.

    Args:
        offset: bytes already present (resume), counted as received.
        declared: the size the client announced, or None.
        limit: the largest file accepted.
    """

    def __init__(self, offset: int, declared: int | None, limit: int) -> None:
        if declared is not None and declared > limit:
            raise TransferError("too_large", f"{declared} bytes exceed the limit of {limit}")
        self.received = offset
        self.declared = declared
        self.limit = limit

    def add(self, count: int) -> None:
        """Account for ``count`` more bytes; refuse once a limit is crossed."""
        self.received += count
        if self.received > self.limit:
            raise TransferError("too_large", f"the file exceeds the limit of {self.limit} bytes")
        if self.declared is not None and self.received > self.declared:
            raise TransferError("size_mismatch", f"more than the announced {self.declared} bytes")

    def finish(self, size: object, claimed: object, computed: str) -> None:
        """Check the client's ``end`` frame against what arrived.

        Raises:
            TransferError: ``size_mismatch`` or ``checksum``.
        """
        if not isinstance(size, int) or size != self.received:
            raise TransferError(
                "size_mismatch", f"the client sent {size} bytes, {self.received} arrived"
            )
        if claimed != computed:
            raise TransferError("checksum", f"SHA-256 mismatch: sent {claimed}, got {computed}")
