"""Large websocket frames sent without the serializing copy (a protocol mixin).

websockets' sans-I/O protocol serializes every frame it sends into one ``bytes``: the
header and the payload are written to a ``BytesIO`` (a copy of the payload; a client
first masks it, another copy) and taken out of it again. For a file transfer's frames of
1-2 MiB that is one pass over every byte of the file in each process that sends it (the
agent for a download, agentctl for an upload, the control plane both ways) on a machine
where the whole transfer is CPU-bound.

:class:`BulkWritesMixin`, placed before websockets' ``Protocol`` subclass in a subclass
(this module does not import websockets: only the parts talking to the network do), sends
a binary frame of at least :data:`BULK_BYTES` as two pieces, its header and its payload
(masked on a client, as such on a server): the caller's transport writes them in order, or,
when the protocol has a ``bulk_writer`` (the control plane's uvloop transport, whose
``writelines`` sends a list without joining it), they go out at once through it, after any
bytes the protocol still held. Everything else (text, control frames, small frames, an
extension that rewrites frames, debug logging) takes websockets' own path.

:func:`use_bulk_writes` switches a live protocol's class, so it can be applied to a
connection websockets or uvicorn created, at any point between two sends.
"""

from __future__ import annotations

import secrets
import struct
from collections.abc import Callable
from typing import Any, ClassVar


__all__ = ["BULK_BYTES", "BulkWritesMixin", "frame_header", "use_bulk_writes"]

BULK_BYTES = 64 * 1024
"""Binary frames at least this large are sent as header + payload."""

_BINARY, _CONT = 0x02, 0x00
_FIN, _MASKED = 0x80, 0x80


def frame_header(opcode: int, fin: bool, length: int, mask: bytes | None) -> bytes:
    """The RFC 6455 header of a frame with no reserved bits set (the mask key last)."""
    head1 = (_FIN if fin else 0) | opcode
    head2 = _MASKED if mask is not None else 0
    if length < 126:
        header = struct.pack("!BB", head1, head2 | length)
    elif length < 65536:
        header = struct.pack("!BBH", head1, head2 | 126, length)
    else:
        header = struct.pack("!BBQ", head1, head2 | 127, length)
    return header if mask is None else header + mask


class BulkWritesMixin:
    """Overrides ``send_frame`` of websockets' ``Protocol`` for large binary frames.

    The concrete subclass sets ``masking`` (a client's frames are masked) and, if it
    masks, overrides :meth:`mask` with websockets' ``apply_mask``. ``bulk_writer``, when
    set on the instance, sends a list of pieces in order at once.
    """

    masking: ClassVar[bool]
    bulk_writer: Callable[[list[Any]], None] | None = None
    writes: list[bytes]
    extensions: list[Any]
    debug: bool

    @staticmethod
    def mask(data: Any, key: bytes) -> bytes:
        """``data`` masked with ``key`` (RFC 6455, 5.3)."""
        raise NotImplementedError("a masking protocol provides websockets' apply_mask")

    def send_frame(self, frame: Any) -> None:
        """Queue (or write) ``frame``; large binary frames as header and payload."""
        data = frame.data
        if (
            len(data) < BULK_BYTES
            or frame.opcode not in (_BINARY, _CONT)
            or frame.rsv1
            or frame.rsv2
            or frame.rsv3
            or self.extensions
            or self.debug
            # Unmasked, the payload itself is handed on: only an immutable one may be.
            or (not self.masking and type(data) is not bytes)
        ):
            super().send_frame(frame)  # type: ignore[misc]
            return
        if self.masking:
            key = secrets.token_bytes(4)
            pieces = [frame_header(frame.opcode, frame.fin, len(data), key), self.mask(data, key)]
        else:
            pieces = [frame_header(frame.opcode, frame.fin, len(data), None), data]
        if self.bulk_writer is None:
            self.writes += pieces
            return
        held, self.writes = self.writes, []
        self.bulk_writer([*held, *pieces])


def use_bulk_writes(
    protocol: object, bulk_class: type, writer: Callable[[list[Any]], None] | None = None
) -> None:
    """Make ``protocol`` (a websockets ``Protocol``) an instance of ``bulk_class`` (its
    subclass with :class:`BulkWritesMixin` first), unless it is one already; ``writer``
    becomes its ``bulk_writer``."""
    if not isinstance(protocol, bulk_class):
        if not issubclass(bulk_class, type(protocol)):
            raise TypeError(f"{bulk_class.__name__} does not extend {type(protocol).__name__}")
        protocol.__class__ = bulk_class
    if writer is not None:
        protocol.bulk_writer = writer  # type: ignore[attr-defined]
