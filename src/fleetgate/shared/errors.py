"""The errors both ends of the wire raise: the shared part's exception hierarchy.

    FleetgateError             root of every error the package raises on purpose
    ├── ProtocolViolation      a wire message could not be decoded or is too large
    └── TransferError          a file transfer was refused or failed (``code`` says why)

The agent's, the control plane's and agentctl's own hierarchies derive from
:class:`FleetgateError` too, so one ``except FleetgateError`` catches every deliberate error.
"""

from __future__ import annotations


__all__ = ["MAX_MESSAGE", "FleetgateError", "ProtocolViolation", "TransferError"]

MAX_MESSAGE = 1024
"""The longest message of a :class:`ProtocolViolation` (a websh ``error`` frame's bound)."""


class FleetgateError(Exception):
    """Root of every error the package raises on purpose."""


class ProtocolViolation(FleetgateError):
    """A wire message is malformed, of an unknown type, or too large.

    Attributes:
        code: a stable machine-readable reason (``malformed``, ``too_large``,
            ``unknown_type``, ``invalid``, ``unsupported_version``).
    """

    def __init__(self, code: str, message: str) -> None:
        # Bounded: the message may quote what a peer sent (a field name), and the error
        # reply built from it must stay within the reply models' limits.
        message = message if len(message) <= MAX_MESSAGE else message[: MAX_MESSAGE - 3] + "..."
        super().__init__(message)
        self.code = code
        self.message = message


class TransferError(FleetgateError):
    """A file transfer was refused or failed; reported to the client as an ``error`` frame.

    Attributes:
        code: a stable machine-readable reason (see ``docs/protocol.md`` "File transfer").
        message: the human-readable explanation.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
