"""The members of an incoming tar stream, each checked before it is extracted (pure policy).

Both ends extract trees: the agent's worker (an upload, as the user) and agentctl (a
download, into the operator's directory). Both refuse the same members: escapes through
``..``, absolute names, symlinks or hard links, device nodes and FIFOs, oversized files,
set-id bits.
"""

from __future__ import annotations

import os
import tarfile
from collections.abc import Iterator

from fleetgate.shared.errors import TransferError
from fleetgate.shared.files.paths import check_member
from fleetgate.shared.files.transfer import Request


__all__ = ["CheckedMembers", "tar_filter"]


def _inside(dest: str, name: str) -> bool:
    real, target = os.path.realpath(dest), os.path.realpath(os.path.join(dest, name))
    return os.path.commonpath([real, target]) == real


class CheckedMembers:
    """The members of an incoming stream, each checked before ``extractall`` sees it.

    The checks are ours, not ``tarfile``'s extraction filters: the worker may run under
    another Python than the agent (the user's view of the interpreter), and filters only
    exist from 3.11.4 on; where they exist, the ``tar`` filter runs as well.
    """

    def __init__(self, tar: tarfile.TarFile, dest: str, request: Request) -> None:
        self.tar, self.dest, self.request = tar, dest, request
        self.root = False
        """Whether the tree's own entry (``.``) came by (it sets the tree's mode)."""

    def __iter__(self) -> Iterator[tarfile.TarInfo]:
        for member in self.tar:
            self.check(member)
            self.root = self.root or member.name in (".", "./")
            yield member

    def check(self, member: tarfile.TarInfo) -> None:
        """Refuse escapes, special files and oversized files; drop set-id bits."""
        parts = check_member(member.name)
        if member.ischr() or member.isblk() or member.isfifo():
            raise TransferError("special", f"{member.name}: device nodes and FIFOs are refused")
        if not member.isfile() and not member.isdir() and not member.issym() and not member.islnk():
            raise TransferError("special", f"{member.name}: unsupported member type")
        # Nothing is written through a symlink that an earlier member put in the tree.
        parent = "/".join(parts[:-1])
        if parent and not _inside(self.dest, parent):
            raise TransferError("escape", f"{member.name}: would be written outside the tree")
        if parts and os.path.islink(os.path.join(self.dest, *parts)) and not member.issym():
            raise TransferError("escape", f"{member.name}: would be written through a symlink")
        if member.islnk() and not (
            check_member(member.linkname) and _inside(self.dest, member.linkname)
        ):
            raise TransferError("escape", f"{member.name}: hard link outside the tree")
        if member.isfile() and member.size > self.request.max_file_bytes:
            raise TransferError("too_large", f"{member.name}: {member.size} bytes exceed the limit")
        member.mode &= 0o1777


def tar_filter(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo:
    """``tarfile``'s own ``tar`` filter (Python >= 3.11.4), translated to our errors."""
    try:
        result: tarfile.TarInfo = tarfile.tar_filter(member, dest)
    except tarfile.FilterError as exc:
        raise TransferError("escape", f"{member.name}: {exc}") from None
    return result
