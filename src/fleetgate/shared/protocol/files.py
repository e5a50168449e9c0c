"""Control frames of the ``files`` channel (pure models, no I/O).

A files channel carries one transfer. Binary frames are the payload (file bytes, or a tar
stream for a directory); text frames are the JSON objects below. The agent (its worker)
sends :class:`FileReady` first, then for a download the data, then :class:`FileDone` or
:class:`FileError`; the client, for an upload, sends the data from the ready ``offset``
and then :class:`FileEnd`. ``docs/protocol.md`` ("File transfer") has the sequences.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter


__all__ = [
    "SHA256_PATTERN",
    "TRANSFER_ID_PATTERN",
    "FileDone",
    "FileEnd",
    "FileError",
    "FileFrame",
    "FileReady",
    "decode_file_frame",
]

SHA256_PATTERN = r"^[0-9a-f]{64}$"
TRANSFER_ID_PATTERN = r"^[0-9a-f]{16,64}$"

FILE_ERROR_CODES = (
    "invalid",
    "malformed",
    "nul",
    "relative",
    "escape",
    "too_long",
    "outside_roots",
    "not_found",
    "not_dir",
    "is_dir",
    "special",
    "symlink",
    "permission",
    "exists",
    "changed",
    "busy",
    "too_large",
    "size_mismatch",
    "checksum",
    "no_space",
    "read_only",
    "io",
    "disabled",
    "unavailable",
    "internal",
)
"""Every ``code`` an :class:`FileError` may carry (``docs/protocol.md`` explains each)."""


class _Frame(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class FileReady(_Frame):
    """The worker is in place. Upload: send from ``offset`` (what a previous attempt of the
    same transfer id left). Download: data follows from ``offset`` of ``size`` bytes."""

    type: Literal["ready"] = "ready"
    offset: int = Field(ge=0)
    path: str = Field(max_length=4096)
    """The resolved path on the server (an existing directory target gets the name)."""
    size: int | None = Field(default=None, ge=0)
    mode: int | None = Field(default=None, ge=0, le=0o7777)


class FileEnd(_Frame):
    """Client, upload: every byte was sent; the whole file's size and SHA-256."""

    type: Literal["end"] = "end"
    size: int = Field(ge=0)
    sha256: str = Field(pattern=SHA256_PATTERN)


class FileDone(_Frame):
    """Agent: the transfer is complete; the whole file's (or stream's) size and SHA-256.
    For an upload the file is durable and in place when this is sent."""

    type: Literal["done"] = "done"
    size: int = Field(ge=0)
    sha256: str = Field(pattern=SHA256_PATTERN)
    path: str | None = Field(default=None, max_length=4096)


class FileError(_Frame):
    """Agent: the transfer was refused or failed; nothing was put in place."""

    type: Literal["error"] = "error"
    code: str = Field(max_length=64)
    message: str = Field(max_length=4096)


FileFrame = Annotated[FileReady | FileEnd | FileDone | FileError, Field(discriminator="type")]

_ADAPTER: TypeAdapter[FileReady | FileEnd | FileDone | FileError] = TypeAdapter(FileFrame)


def decode_file_frame(text: str | bytes) -> FileReady | FileEnd | FileDone | FileError:
    """Parse one text frame of a files channel.

    Raises:
        pydantic.ValidationError: not one of the frames above.
    """
    return _ADAPTER.validate_json(text)
