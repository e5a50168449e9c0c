"""Path rules of file transfers (pure: no file system access).

A transfer names one absolute path on the server. Before anything touches the file system
the path is validated and normalised here: absolute, no NUL byte, no ``..`` component at
all (we refuse rather than resolve it, so a path never means something other than what
it says), each component within the file system's 255-byte limit. Members of a directory
stream (tar) follow the same rules relative to the directory they land in.

Symbolic links are the worker's business (``fleetgate.agent.files.walk``): they can only be judged
while walking the real tree, one ``openat`` at a time.
"""

from __future__ import annotations

from fleetgate.shared.errors import TransferError


__all__ = [
    "MAX_NAME_BYTES",
    "MAX_PATH_BYTES",
    "check_member",
    "normalise",
    "split",
    "temp_name",
    "within_roots",
]

MAX_PATH_BYTES = 4096
"""Linux PATH_MAX."""

MAX_NAME_BYTES = 255
"""Linux NAME_MAX (one path component)."""

TEMP_SUFFIX = ".fleet-part"
"""Suffix of the temporary files uploads write before the atomic rename."""


def _encoded(text: str) -> bytes:
    # surrogateescape: names that are not UTF-8 on disk come back as surrogates.
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raise TransferError("invalid", f"{text!r} cannot be encoded as a file name") from None


def components(path: str, *, relative: bool = False) -> list[str]:
    """Split ``path`` into checked components (``.`` and empty ones dropped).

    Raises:
        TransferError: ``nul``, ``relative``/``absolute``, ``escape`` or ``too_long``.
    """
    if "\0" in path:
        raise TransferError("nul", "the path contains a NUL byte")
    if len(_encoded(path)) > MAX_PATH_BYTES:
        raise TransferError("too_long", f"the path is longer than {MAX_PATH_BYTES} bytes")
    if relative and path.startswith("/"):
        raise TransferError("escape", f"{path!r} is absolute")
    if not relative and not path.startswith("/"):
        raise TransferError("relative", f"{path!r} is not an absolute path")
    parts = [part for part in path.split("/") if part not in ("", ".")]
    for part in parts:
        if part == "..":
            raise TransferError("escape", f"{path!r} contains '..'")
        if len(_encoded(part)) > MAX_NAME_BYTES:
            raise TransferError("too_long", f"a component of {path!r} is too long")
    return parts


def normalise(path: str) -> str:
    """The absolute, normalised form of ``path`` (``//a/./b/`` becomes ``/a/b``).

    Raises:
        TransferError: see :func:`components`.
    """
    return "/" + "/".join(components(path))


def split(path: str) -> tuple[str, str]:
    """``(parent, name)`` of a normalised path; the name is empty for ``/``."""
    parent, _, name = path.rpartition("/")
    return parent or "/", name


def check_member(name: str) -> list[str]:
    """The components of a directory-stream member name, refusing escapes.

    Raises:
        TransferError: the name is absolute, contains ``..`` or a NUL byte, or is too long.
    """
    return components(name, relative=True)


def within_roots(path: str, roots: tuple[str, ...] | list[str]) -> bool:
    """Whether normalised ``path`` is one of ``roots`` or below one (no roots: anything)."""
    if not roots:
        return True
    for root in roots:
        if root == "/" or path == root or path.startswith(root.rstrip("/") + "/"):
            return True
    return False


def temp_name(name: str, transfer_id: str) -> str:
    """The deterministic temporary name an upload of ``name`` writes to.

    It lives beside the target (same directory, so the final rename is atomic), is hidden
    (leading dot) and is derived from the transfer id, so a second attempt of the same
    transfer finds it and resumes. Long names are shortened with a digest so the result
    stays within NAME_MAX.
    """
    stem = name
    if len(_encoded(stem)) > 160:
        import hashlib  # here: the worker, which every transfer waits for, starts without it

        stem = hashlib.sha256(_encoded(name)).hexdigest()[:32]
    return f".{stem}.{transfer_id}{TEMP_SUFFIX}"
