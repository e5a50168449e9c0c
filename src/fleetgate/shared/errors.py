"""The errors both ends of the wire raise: the shared part's exception hierarchy.

    FleetgateError             root of every error the package raises on purpose
    ├── ProtocolViolation      a wire message could not be decoded or is too large
    └── TransferError          a file transfer was refused or failed (``code`` says why)

The agent's, the control plane's and agentctl's own hierarchies derive from
:class:`FleetgateError` too, so one ``except FleetgateError`` catches every deliberate error.
"""

from __future__ import annotations


__all__ = ["FleetgateError", "ProtocolViolation", "TransferError"]


class FleetgateError(Exception):
    """Root of every error the package raises on purpose."""


class ProtocolViolation(FleetgateError):
    """A wire message is malformed, of an unknown type, or too large.

    Attributes:
        code: a stable machine-readable reason (``malformed``, ``too_large``,
            ``unknown_type``, ``invalid``, ``unsupported_version``).
    """

    def __init__(self, code: str, message: str) -> None:
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
